#include "model/convert.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io/text.hpp"
#include "model/model.hpp"

namespace infini::model {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json(const fs::path& p) {
  json j = json::parse(io::read_file(p.string()), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(p.string() + ": not a JSON object");
  return j;
}

// --out naming the input directory itself (or a link to it) would overwrite the input while
// it is being read, and leave a sharded input's index pointing at the old shards.
void reject_same_dir(const std::string& in, const std::string& out, const char* in_flag) {
  std::error_code ec;
  if (fs::equivalent(in, out, ec))
    throw Error(std::string("--out must differ from ") + in_flag + " (" + in +
                " is not overwritten)");
}

// The tokenizer files, copied into the output unchanged (name -> contents). Read before
// anything is written, so that one that cannot be read (a directory, a link loop) stops the
// command with no output. Their contents are not checked: a checkpoint's tokenizer is its own.
std::vector<std::pair<std::string, std::string>> read_tokenizer_files(const fs::path& from) {
  std::vector<std::pair<std::string, std::string>> files;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json"}) {
    std::error_code ec;
    if (fs::exists(fs::symlink_status(from / name, ec)))
      files.emplace_back(name, io::read_file((from / name).string()));
  }
  return files;
}

// Keys of Hugging Face configs whose values change the math in ways we do not implement.
void reject_unsupported(const json& j, const std::string& src) {
  if (auto it = j.find("hidden_act");
      it != j.end() && !it->is_null() && (!it->is_string() || *it != "silu"))
    throw Error(src + ": hidden_act " +
                it->dump(-1, ' ', true, json::error_handler_t::replace).substr(0, 60) +
                " is not supported (silu only)");
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null())
    throw Error(src + ": rope_scaling is not supported");
  if (auto it = j.find("mlp_bias");
      it != j.end() && !it->is_null() && (!it->is_boolean() || it->get<bool>()))
    throw Error(src + ": mlp_bias is not supported");
  // Qwen2: sliding-window attention in some layers, which the local attention here lacks.
  if (auto it = j.find("use_sliding_window");
      it != j.end() && !it->is_null() && (!it->is_boolean() || it->get<bool>()))
    throw Error(src + ": use_sliding_window is not supported");
}

// Newer Hugging Face configs write the rotary base inside "rope_parameters"
// ({"rope_type": "default", "rope_theta": ...}) instead of a top-level rope_theta. Moved to
// rope_theta here, so that it is not silently replaced by the default; any other rope type or
// setting is rejected, as rope_scaling is.
void take_rope_parameters(json& j, const std::string& src) {
  auto it = j.find("rope_parameters");
  if (it == j.end() || it->is_null()) return;
  if (!it->is_object()) throw Error(src + ": key 'rope_parameters' must be an object");
  // The type first: a scaled rope is named as such, not by one of its settings.
  for (const char* k : {"rope_type", "type"}) {
    auto t = it->find(k);
    if (t != it->end() && (!t->is_string() || *t != "default"))
      throw Error(src + ": rope_parameters." + k + " " +
                  t->dump(-1, ' ', true, json::error_handler_t::replace).substr(0, 60) +
                  " is not supported (default only)");
  }
  for (const auto& [k, v] : it->items()) {
    if (k == "rope_type" || k == "type") {
      continue;
    } else if (k == "rope_theta") {
      if (!v.is_number()) throw Error(src + ": key 'rope_parameters.rope_theta' must be a number");
      auto top = j.find("rope_theta");
      if (top == j.end() || top->is_null())
        j["rope_theta"] = v;
      else if (!top->is_number() || top->get<double>() != v.get<double>())
        throw Error(src + ": 'rope_theta' and 'rope_parameters.rope_theta' disagree");
    } else {
      throw Error(src + ": rope_parameters key " +
                  json(k.substr(0, 60)).dump(-1, ' ', true, json::error_handler_t::replace) +
                  " is not supported");
    }
  }
}

void write_tokenizer_files(const std::vector<std::pair<std::string, std::string>>& files,
                           const fs::path& to) {
  for (const auto& [name, contents] : files) write_file_atomic((to / name).string(), contents);
}

// Streams the tensors of `layout` from `store` (the weights of `src_dir`) into one safetensors
// file at `path`, F32 or BF16, a chunk at a time: the process holds one chunk of floats (and
// its source pages, dropped after each chunk), never a whole tensor, let alone the model. A tensor
// the store lacks (a beta, as check_weights allowed) is filled with `gate_fill`. Every value is
// checked to be finite, naming `src_dir` and the tensor; on any error nothing is left at `path`.
// The file is byte-identical to writing the loaded model (save_tensors, or BF16 by f32_to_bf16).
void stream_weights(const ParamLayout& layout, const io::WeightStore& store,
                    const std::string& src_dir, const fs::path& path, bool bf16, double gate_fill) {
  constexpr int64_t kChunk = int64_t(1) << 22;  // floats: 16 MB, plus 8 MB of BF16 out
  std::vector<io::TensorSpec> specs;
  specs.reserve(layout.params.size());
  for (const auto& p : layout.params)
    specs.push_back({p.name, bf16 ? io::DType::BF16 : io::DType::F32, p.shape});
  std::vector<float> buf;
  std::vector<uint16_t> half;
  auto produce = [&](size_t i, const io::ByteSink& out) {
    const ParamInfo& p = layout.params[i];
    const bool present = store.has(p.name);
    for (int64_t at = 0; at < p.numel; at += kChunk) {
      const int64_t n = std::min(kChunk, p.numel - at);
      buf.resize(size_t(n));
      if (present) {
        store.read_f32_range(p.name, at, n, buf.data());
        store.release(p.name);  // the source pages just read: resident memory stays a chunk
        for (int64_t k = 0; k < n; ++k)
          if (!std::isfinite(buf[size_t(k)]))
            throw Error(src_dir + ": tensor '" + p.name +
                        "' contains a non-finite value (NaN or Inf)");
      } else {
        std::fill(buf.begin(), buf.end(), float(gate_fill));
      }
      if (bf16) {
        half.resize(size_t(n));
        for (int64_t k = 0; k < n; ++k) half[size_t(k)] = io::f32_to_bf16(buf[size_t(k)]);
        out(half.data(), size_t(n) * 2);
      } else {
        out(buf.data(), size_t(n) * 4);
      }
    }
  };
  io::write_safetensors_streaming(path.string(), specs, produce, {{"format", "pt"}});
}

const char* hf_architecture(const ModelConfig& c) {
  if (c.model_type == "qwen2_moe") return "Qwen2MoeForCausalLM";
  return c.model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
}

}  // namespace

std::string convert_hf_checkpoint(const std::string& from, const std::string& out,
                                  const ConvertOptions& opts) {
  const fs::path src(from), dst(out);
  if (!fs::is_directory(src)) throw Error("checkpoint directory " + from + " does not exist");
  reject_same_dir(from, out, "--from");
  json j = read_json(src / "config.json");
  reject_unsupported(j, (src / "config.json").string());
  take_rope_parameters(j, (src / "config.json").string());
  if (j.contains("infini") && !j["infini"].is_null() && !j["infini"].is_object())
    throw Error((src / "config.json").string() + ": key 'infini' must be an object");
  json inf = j.contains("infini") && j["infini"].is_object() ? j["infini"] : json::object();
  if (opts.segment_length) inf["segment_length"] = *opts.segment_length;
  if (!inf.contains("segment_length")) inf["segment_length"] = 2048;
  if (opts.memory_update) inf["memory_update"] = memory_update_name(*opts.memory_update);
  if (!inf.contains("memory_update")) inf["memory_update"] = "linear";
  if (!inf.contains("use_memory")) inf["use_memory"] = true;
  j["infini"] = inf;
  const ModelConfig cfg = config_from_json(j, (src / "config.json").string());

  // Tensor by tensor (stream_weights): a checkpoint larger than the memory converts.
  LoadOptions lo;
  lo.allow_missing_gates = true;
  lo.gate_init = opts.gate_init;
  const ParamLayout layout = ParamLayout::build(cfg);
  const io::WeightStore store = io::WeightStore::open_dir(from);
  check_weights(layout, store, from, lo);
  const auto tokenizer_files = read_tokenizer_files(src);
  write_model_dir(
      out,
      [&] {
        stream_weights(layout, store, from, dst / "model.safetensors", opts.bf16, opts.gate_init);
        write_file_atomic((dst / "config.json").string(), config_to_json(cfg).dump(2) + "\n");
        write_tokenizer_files(tokenizer_files, dst);
      },
      "output directory");
  std::ostringstream msg;
  msg << "converted " << from << " (" << cfg.model_type << ", " << layout.total
      << " parameters) to " << out << ": segment_length " << cfg.segment_length << ", "
      << memory_update_name(cfg.memory_update) << " memory, gate init " << opts.gate_init
      << (opts.bf16 ? ", BF16" : ", F32");
  return msg.str();
}

std::string export_hf_checkpoint(const std::string& model_dir, const std::string& out, bool bf16) {
  if (fs::is_directory(model_dir)) reject_same_dir(model_dir, out, "--model");
  // As load_model, but tensor by tensor into the output (stream_weights).
  if (!fs::is_directory(model_dir)) throw Error("model directory " + model_dir + " does not exist");
  const ModelConfig cfg = load_config((fs::path(model_dir) / "config.json").string());
  const ParamLayout layout = ParamLayout::build(cfg);
  const io::WeightStore store = io::WeightStore::open_dir(model_dir);
  check_weights(layout, store, model_dir);
  const auto tokenizer_files = read_tokenizer_files(model_dir);
  const fs::path dst(out);
  json j = config_to_json(cfg);
  j["architectures"] = {hf_architecture(cfg)};
  j["hidden_act"] = "silu";
  j["torch_dtype"] = bf16 ? "bfloat16" : "float32";
  write_model_dir(
      out,
      [&] {
        stream_weights(layout, store, model_dir, dst / "model.safetensors", bf16, 0.0);
        write_file_atomic((dst / "config.json").string(), j.dump(2) + "\n");
        write_tokenizer_files(tokenizer_files, dst);
      },
      "output directory");
  return "exported " + model_dir + " to " + out +
         " in Hugging Face layout; the memory gates (self_attn.beta) and the \"infini\" config "
         "block are kept: a stock Llama/Qwen2/Qwen2-MoE loader will ignore them and run without "
         "memory";
}

}  // namespace infini::model

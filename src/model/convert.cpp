#include "model/convert.hpp"

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

void write_tokenizer_files(const std::vector<std::pair<std::string, std::string>>& files,
                           const fs::path& to) {
  for (const auto& [name, contents] : files) write_file_atomic((to / name).string(), contents);
}

void write_weights(const Model<float>& m, const fs::path& path, bool bf16) {
  if (!bf16) {
    save_tensors(m.layout, m.weights.data(), path.string());
    return;
  }
  std::vector<io::RawTensor> raw;
  for (const auto& p : m.layout.params) {
    io::RawTensor t{p.name, io::DType::BF16, p.shape, {}};
    t.bytes.resize(size_t(p.numel) * 2);
    for (int64_t i = 0; i < p.numel; ++i) {
      const uint16_t v = io::f32_to_bf16(m.weights[size_t(p.offset + i)]);
      std::memcpy(t.bytes.data() + 2 * i, &v, 2);
    }
    raw.push_back(std::move(t));
  }
  io::write_safetensors_raw(path.string(), raw, {{"format", "pt"}});
}

}  // namespace

std::string convert_hf_checkpoint(const std::string& from, const std::string& out,
                                  const ConvertOptions& opts) {
  const fs::path src(from), dst(out);
  if (!fs::is_directory(src)) throw Error("checkpoint directory " + from + " does not exist");
  reject_same_dir(from, out, "--from");
  json j = read_json(src / "config.json");
  reject_unsupported(j, (src / "config.json").string());
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

  LoadOptions lo;
  lo.allow_missing_gates = true;
  lo.gate_init = opts.gate_init;
  const Model<float> m = load_weights(cfg, from, lo);
  const auto tokenizer_files = read_tokenizer_files(src);
  write_model_dir(
      out,
      [&] {
        write_weights(m, dst / "model.safetensors", opts.bf16);
        write_file_atomic((dst / "config.json").string(), config_to_json(m.config).dump(2) + "\n");
        write_tokenizer_files(tokenizer_files, dst);
      },
      "output directory");
  std::ostringstream msg;
  msg << "converted " << from << " (" << cfg.model_type << ", " << m.layout.total
      << " parameters) to " << out << ": segment_length " << cfg.segment_length << ", "
      << memory_update_name(cfg.memory_update) << " memory, gate init " << opts.gate_init
      << (opts.bf16 ? ", BF16" : ", F32");
  return msg.str();
}

std::string export_hf_checkpoint(const std::string& model_dir, const std::string& out, bool bf16) {
  if (fs::is_directory(model_dir)) reject_same_dir(model_dir, out, "--model");
  const Model<float> m = load_model(model_dir);
  const auto tokenizer_files = read_tokenizer_files(model_dir);
  const fs::path dst(out);
  json j = config_to_json(m.config);
  j["architectures"] = {m.config.model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["hidden_act"] = "silu";
  j["torch_dtype"] = bf16 ? "bfloat16" : "float32";
  write_model_dir(
      out,
      [&] {
        write_weights(m, dst / "model.safetensors", bf16);
        write_file_atomic((dst / "config.json").string(), j.dump(2) + "\n");
        write_tokenizer_files(tokenizer_files, dst);
      },
      "output directory");
  return "exported " + model_dir + " to " + out +
         " in Hugging Face layout; the memory gates (self_attn.beta) and the \"infini\" config "
         "block are kept: a stock Llama/Qwen2 loader will ignore them and run without memory";
}

}  // namespace infini::model

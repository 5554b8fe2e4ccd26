#include "model/convert.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "model/model.hpp"

namespace infini::model {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw Error("cannot open " + p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(p.string() + ": not a JSON object");
  return j;
}

// Keys of Hugging Face configs whose values change the math in ways we do not implement.
void reject_unsupported(const json& j, const std::string& src) {
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string() && *it != "silu")
    throw Error(src + ": hidden_act '" + it->get<std::string>() + "' is not supported (silu only)");
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null())
    throw Error(src + ": rope_scaling is not supported");
  if (auto it = j.find("mlp_bias"); it != j.end() && it->is_boolean() && it->get<bool>())
    throw Error(src + ": mlp_bias is not supported");
}

void copy_tokenizer_files(const fs::path& from, const fs::path& to) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json"})
    if (fs::exists(from / name)) {
      std::error_code ec;
      fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing, ec);
      if (ec) throw Error("cannot copy " + (from / name).string() + ": " + ec.message());
    }
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

void make_dir(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out))
    throw Error("cannot create output directory " + out.string() + (ec ? ": " + ec.message() : ""));
}

}  // namespace

std::string convert_hf_checkpoint(const std::string& from, const std::string& out,
                                  const ConvertOptions& opts) {
  const fs::path src(from), dst(out);
  if (!fs::is_directory(src)) throw Error("checkpoint directory " + from + " does not exist");
  json j = read_json(src / "config.json");
  reject_unsupported(j, (src / "config.json").string());
  json inf = j.contains("infini") && j["infini"].is_object() ? j["infini"] : json::object();
  if (opts.segment_length) inf["segment_length"] = *opts.segment_length;
  if (!inf.contains("segment_length")) inf["segment_length"] = 2048;
  if (opts.memory_update) inf["memory_update"] = memory_update_name(*opts.memory_update);
  if (!inf.contains("memory_update")) inf["memory_update"] = "linear";
  if (!inf.contains("use_memory")) inf["use_memory"] = true;
  j["infini"] = inf;
  const ModelConfig cfg = config_from_json(j, (src / "config.json").string());

  make_dir(dst);
  LoadOptions lo;
  lo.allow_missing_gates = true;
  lo.gate_init = opts.gate_init;
  const Model<float> m = load_weights(cfg, from, lo);
  write_weights(m, dst / "model.safetensors", opts.bf16);
  write_file_atomic((dst / "config.json").string(), config_to_json(m.config).dump(2) + "\n");
  copy_tokenizer_files(src, dst);
  std::ostringstream msg;
  msg << "converted " << from << " (" << cfg.model_type << ", " << m.layout.total
      << " parameters) to " << out << ": segment_length " << cfg.segment_length << ", "
      << memory_update_name(cfg.memory_update) << " memory, gate init " << opts.gate_init
      << (opts.bf16 ? ", BF16" : ", F32");
  return msg.str();
}

std::string export_hf_checkpoint(const std::string& model_dir, const std::string& out, bool bf16) {
  const Model<float> m = load_model(model_dir);
  const fs::path dst(out);
  make_dir(dst);
  json j = config_to_json(m.config);
  j["architectures"] = {m.config.model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["hidden_act"] = "silu";
  j["torch_dtype"] = bf16 ? "bfloat16" : "float32";
  write_weights(m, dst / "model.safetensors", bf16);
  write_file_atomic((dst / "config.json").string(), j.dump(2) + "\n");
  copy_tokenizer_files(model_dir, dst);
  return "exported " + model_dir + " to " + out +
         " in Hugging Face layout; the memory gates (self_attn.beta) and the \"infini\" config "
         "block are kept: a stock Llama/Qwen2 loader will ignore them and run without memory";
}

}  // namespace infini::model

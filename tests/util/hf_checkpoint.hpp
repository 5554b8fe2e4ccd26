// Writes a synthetic plain Hugging Face Llama/Qwen2 checkpoint the way Hugging Face lays it
// out: config.json without an "infini" block, model.safetensors (or two shards with an index)
// without beta tensors, and a tokenizer.json. Shared by the tests that convert checkpoints.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"
#include "model/config.hpp"
#include "model/model.hpp"

namespace infini::testutil {

struct HfCheckpoint {
  std::string model_type = "llama";  // "llama" or "qwen2" (qwen2 gets attention biases)
  int64_t vocab_size = 300, hidden_size = 32, intermediate_size = 48, num_layers = 2;
  int64_t num_heads = 4, num_kv_heads = 4, head_dim = 8;
  bool tied = false;     // tie_word_embeddings: no lm_head.weight
  bool bf16 = false;     // tensors stored as BF16 instead of F32
  bool sharded = false;  // two shards and model.safetensors.index.json
  uint64_t seed = 5;
  double init_std = 0.2;
  // Copied in as tokenizer.json; empty: a "{}" placeholder (enough to check that it is copied).
  std::filesystem::path tokenizer;
};

// Writes the checkpoint to `dir` and returns the model it holds (weights rounded to what the
// file stores, so comparisons against it can be exact). Biases and norm weights are moved off
// their init values so that a loader that ignored them would be caught.
inline model::Model<float> write_hf_checkpoint(const HfCheckpoint& c,
                                               const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  using model::ParamKind;
  model::ModelConfig cfg;
  cfg.model_type = c.model_type;
  cfg.vocab_size = c.vocab_size;
  cfg.hidden_size = c.hidden_size;
  cfg.intermediate_size = c.intermediate_size;
  cfg.num_layers = c.num_layers;
  cfg.num_heads = c.num_heads;
  cfg.num_kv_heads = c.num_kv_heads;
  cfg.head_dim = c.head_dim;
  cfg.tie_word_embeddings = c.tied;
  cfg.attention_bias = c.model_type == "qwen2";
  cfg.use_memory = false;  // the layout of a plain checkpoint: no beta
  cfg.segment_length = 1 << 20;
  model::Model<float> m = model::init_model(cfg, {c.seed, c.init_std, 0.0});
  std::vector<io::RawTensor> raw;
  for (const auto& p : m.layout.params) {
    io::RawTensor t{p.name, c.bf16 ? io::DType::BF16 : io::DType::F32, p.shape, {}};
    for (int64_t i = 0; i < p.numel; ++i) {
      float& w = m.weights[size_t(p.offset + i)];
      if (p.kind == ParamKind::Bias || p.kind == ParamKind::Norm) w += 0.05f * float(i % 7);
      if (c.bf16) {
        const uint16_t b = io::f32_to_bf16(w);
        w = io::bf16_to_f32(b);
        t.bytes.push_back(uint8_t(b & 0xff));
        t.bytes.push_back(uint8_t(b >> 8));
      } else {
        const auto* bytes = reinterpret_cast<const uint8_t*>(&w);
        t.bytes.insert(t.bytes.end(), bytes, bytes + 4);
      }
    }
    raw.push_back(std::move(t));
  }
  fs::create_directories(dir);
  nlohmann::json j = model::config_to_json(cfg);
  j.erase("infini");
  j["architectures"] = {c.model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["hidden_act"] = "silu";
  std::ofstream(dir / "config.json") << j.dump(2);
  if (c.sharded) {
    const size_t half = raw.size() / 2;
    std::vector<io::RawTensor> a(raw.begin(), raw.begin() + long(half)),
        b(raw.begin() + long(half), raw.end());
    io::write_safetensors_raw((dir / "model-00001-of-00002.safetensors").string(), a);
    io::write_safetensors_raw((dir / "model-00002-of-00002.safetensors").string(), b);
    nlohmann::json idx;
    for (const auto& t : a) idx["weight_map"][t.name] = "model-00001-of-00002.safetensors";
    for (const auto& t : b) idx["weight_map"][t.name] = "model-00002-of-00002.safetensors";
    std::ofstream(dir / "model.safetensors.index.json") << idx.dump();
  } else {
    io::write_safetensors_raw((dir / "model.safetensors").string(), raw);
  }
  if (c.tokenizer.empty())
    std::ofstream(dir / "tokenizer.json") << "{}";
  else
    fs::copy_file(c.tokenizer, dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  return m;
}

}  // namespace infini::testutil

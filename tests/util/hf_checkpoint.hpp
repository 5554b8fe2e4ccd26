// Writes a synthetic plain Hugging Face Llama/Qwen2/Qwen2-MoE checkpoint the way Hugging Face
// lays it out: config.json without an "infini" block, model.safetensors (or shards with an
// index) without beta tensors, and a tokenizer.json. Shared by the tests that convert
// checkpoints.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
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
  // "llama", "qwen2" or "qwen2_moe" (qwen2 and qwen2_moe get attention biases)
  std::string model_type = "llama";
  int64_t vocab_size = 300, hidden_size = 32, intermediate_size = 48, num_layers = 2;
  int64_t num_heads = 4, num_kv_heads = 4, head_dim = 8;
  bool tied = false;     // tie_word_embeddings: no lm_head.weight
  bool bf16 = false;     // tensors stored as BF16 instead of F32
  bool sharded = false;  // `shards` shards and model.safetensors.index.json
  int shards = 2;
  // qwen2_moe only (SPEC §7): config.json as Qwen2MoeConfig writes it (no attention_bias).
  int64_t num_experts = 4, num_experts_per_tok = 2, moe_intermediate_size = 24;
  int64_t shared_expert_intermediate_size = 40, decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  bool norm_topk_prob = false;
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
  cfg.attention_bias = c.model_type == "qwen2" || c.model_type == "qwen2_moe";
  if (c.model_type == "qwen2_moe") {
    cfg.num_experts = c.num_experts;
    cfg.num_experts_per_tok = c.num_experts_per_tok;
    cfg.moe_intermediate_size = c.moe_intermediate_size;
    cfg.shared_expert_intermediate_size = c.shared_expert_intermediate_size;
    cfg.decoder_sparse_step = c.decoder_sparse_step;
    cfg.mlp_only_layers = c.mlp_only_layers;
    cfg.norm_topk_prob = c.norm_topk_prob;
  }
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
  j["architectures"] = {c.model_type == "qwen2_moe" ? "Qwen2MoeForCausalLM"
                        : c.model_type == "qwen2"   ? "Qwen2ForCausalLM"
                                                    : "LlamaForCausalLM"};
  j["hidden_act"] = "silu";
  if (c.model_type == "qwen2_moe") {
    // As Qwen/Qwen1.5-MoE-A2.7B's config.json: no attention_bias key, and a few keys that
    // conversion carries along uninterpreted.
    j.erase("attention_bias");
    j["use_sliding_window"] = false;
    j["sliding_window"] = 32768;
    j["max_window_layers"] = 21;
    j["torch_dtype"] = c.bf16 ? "bfloat16" : "float32";
  }
  std::ofstream(dir / "config.json") << j.dump(2);
  if (c.sharded) {
    // Consecutive runs of tensors, one per shard, named as Hugging Face names them.
    const size_t n = size_t(std::max(1, c.shards));
    nlohmann::json idx;
    size_t total = 0;
    for (const auto& t : raw) total += t.bytes.size();
    idx["metadata"] = {{"total_size", total}};
    for (size_t s = 0; s < n; ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
      std::vector<io::RawTensor> part(raw.begin() + long(raw.size() * s / n),
                                      raw.begin() + long(raw.size() * (s + 1) / n));
      io::write_safetensors_raw((dir / name).string(), part, {{"format", "pt"}});
      for (const auto& t : part) idx["weight_map"][t.name] = name;
    }
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

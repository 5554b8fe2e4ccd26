// Model configuration: the Hugging Face Llama/Qwen2/Qwen2-MoE keys plus the "infini" block
// (SPEC §5, §7).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace infini::model {

enum class MemoryUpdate { Linear, Delta };
const char* memory_update_name(MemoryUpdate u);

struct ModelConfig {
  std::string model_type = "llama";  // "llama", "qwen2" or "qwen2_moe"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // always true for qwen2_moe (SPEC §7)
  // Mixture of experts (qwen2_moe only, SPEC §7; ignored otherwise). Hugging Face key names.
  int64_t num_experts = 0;                      // E, routed experts per sparse layer
  int64_t num_experts_per_tok = 0;              // k, experts chosen per token (top-k)
  int64_t moe_intermediate_size = 0;            // Fm, width of each routed expert
  int64_t shared_expert_intermediate_size = 0;  // Fs, width of the shared expert (> 0)
  bool norm_topk_prob = false;                  // renormalise the k routing weights to sum 1
  int64_t decoder_sparse_step = 1;              // layer l sparse iff (l + 1) % step == 0 ...
  std::vector<int64_t> mlp_only_layers;         // ... and l is not listed here
  double router_aux_loss_coef = 0.001;          // load-balancing loss weight (training only)
  bool output_router_logits = false;            // training adds the load-balancing loss
  // infini block
  int64_t segment_length = 2048;
  MemoryUpdate memory_update = MemoryUpdate::Linear;
  bool use_memory = true;
  // Keys of config.json that we do not interpret, kept so that a saved model round-trips.
  nlohmann::json extra = nlohmann::json::object();

  int64_t q_width() const { return num_heads * head_dim; }
  int64_t kv_width() const { return num_kv_heads * head_dim; }
  int64_t group_size() const { return num_heads / num_kv_heads; }
  bool is_moe() const { return model_type == "qwen2_moe"; }
  // SPEC §7: layer l has the mixture-of-experts MLP iff the model is qwen2_moe, l is not in
  // mlp_only_layers and (l + 1) % decoder_sparse_step == 0. Always false for other models and
  // for l outside [0, num_layers).
  bool is_sparse_layer(int64_t l) const;
};

// Parses and validates; errors name `source` (a file path) and the offending key.
ModelConfig config_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json config_to_json(const ModelConfig& c);
ModelConfig load_config(const std::string& path);
// Throws Error naming `source` and the key when a value is out of range or inconsistent.
void validate_config(const ModelConfig& c, const std::string& source);

}  // namespace infini::model

// Model configuration: the Hugging Face Llama/Qwen2 keys plus the "infini" block (SPEC §5).
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace infini::model {

enum class MemoryUpdate { Linear, Delta };
const char* memory_update_name(MemoryUpdate u);

struct ModelConfig {
  std::string model_type = "llama";  // "llama" or "qwen2"
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
  bool attention_bias = false;
  // infini block
  int64_t segment_length = 2048;
  MemoryUpdate memory_update = MemoryUpdate::Linear;
  bool use_memory = true;
  // Keys of config.json that we do not interpret, kept so that a saved model round-trips.
  nlohmann::json extra = nlohmann::json::object();

  int64_t q_width() const { return num_heads * head_dim; }
  int64_t kv_width() const { return num_kv_heads * head_dim; }
  int64_t group_size() const { return num_heads / num_kv_heads; }
};

// Parses and validates; errors name `source` (a file path) and the offending key.
ModelConfig config_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json config_to_json(const ModelConfig& c);
ModelConfig load_config(const std::string& path);
// Throws Error naming `source` and the key when a value is out of range or inconsistent.
void validate_config(const ModelConfig& c, const std::string& source);

}  // namespace infini::model

#include "model/config.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "io/text.hpp"

namespace infini::model {

using nlohmann::json;

const char* memory_update_name(MemoryUpdate u) {
  return u == MemoryUpdate::Delta ? "delta" : "linear";
}

bool ModelConfig::is_sparse_layer(int64_t l) const {
  if (!is_moe() || num_experts <= 0 || decoder_sparse_step < 1 || l < 0 || l >= num_layers)
    return false;
  for (int64_t d : mlp_only_layers)
    if (d == l) return false;
  return (l + 1) % decoder_sparse_step == 0;
}

namespace {

const json* find_key(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t get_int(const json& j, const char* key, const std::string& src, bool required,
                int64_t fallback) {
  const json* v = find_key(j, key);
  if (!v) {
    if (required) throw Error(src + ": missing required key '" + key + "'");
    return fallback;
  }
  if (v->is_number_integer() || v->is_number_unsigned()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
      throw Error(src + ": key '" + key + "' is too large");
    return v->get<int64_t>();
  }
  if (v->is_number_float()) {
    double d = v->get<double>();
    // Range first: converting an out-of-range double to int64_t is undefined behaviour.
    if (d > -9e18 && d < 9e18 && d == double(int64_t(d))) return int64_t(d);
  }
  throw Error(src + ": key '" + key + "' must be an integer");
}

double get_num(const json& j, const char* key, const std::string& src, double fallback) {
  const json* v = find_key(j, key);
  if (!v) return fallback;
  if (!v->is_number()) throw Error(src + ": key '" + key + "' must be a number");
  return v->get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& src, bool fallback) {
  const json* v = find_key(j, key);
  if (!v) return fallback;
  if (!v->is_boolean()) throw Error(src + ": key '" + key + "' must be true or false");
  return v->get<bool>();
}

// True when v nests containers deeper than `limit`; iterative, as v may come from any file.
bool nests_deeper_than(const json& v, int limit) {
  std::vector<std::pair<const json*, int>> stack{{&v, 0}};
  while (!stack.empty()) {
    const auto [p, depth] = stack.back();
    stack.pop_back();
    if (!p->is_structured()) continue;
    if (depth >= limit) return true;
    for (const json& child : *p) stack.emplace_back(&child, depth + 1);
  }
  return false;
}

const char* kKnownKeys[] = {"model_type",          "vocab_size",        "hidden_size",
                            "intermediate_size",   "num_hidden_layers", "num_attention_heads",
                            "num_key_value_heads", "head_dim",          "rms_norm_eps",
                            "rope_theta",          "tie_word_embeddings", "attention_bias",
                            "infini"};

// Interpreted for qwen2_moe only; other model types keep them as uninterpreted extras.
const char* kMoeKeys[] = {"num_experts",           "num_experts_per_tok",
                          "moe_intermediate_size", "shared_expert_intermediate_size",
                          "norm_topk_prob",        "decoder_sparse_step",
                          "mlp_only_layers",       "router_aux_loss_coef",
                          "output_router_logits"};

// mlp_only_layers: a list of integers (null or absent: empty).
std::vector<int64_t> get_int_list(const json& j, const char* key, const std::string& src) {
  std::vector<int64_t> out;
  const json* v = find_key(j, key);
  if (!v) return out;
  if (!v->is_array()) throw Error(src + ": key '" + key + "' must be a list of layer indices");
  for (const json& e : *v) {
    if (!e.is_number_integer() && !e.is_number_unsigned())
      throw Error(src + ": key '" + key + "' must be a list of layer indices (integers)");
    if (e.is_number_unsigned() && e.get<uint64_t>() > uint64_t(INT64_MAX))
      throw Error(src + ": key '" + key + "' has an entry that is too large");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

// Parses the mixture-of-experts keys of a qwen2_moe config (SPEC §7).
void parse_moe(const json& j, const std::string& src, ModelConfig& c) {
  c.num_experts = get_int(j, "num_experts", src, true, 0);
  c.num_experts_per_tok = get_int(j, "num_experts_per_tok", src, true, 0);
  c.moe_intermediate_size = get_int(j, "moe_intermediate_size", src, true, 0);
  c.shared_expert_intermediate_size = get_int(j, "shared_expert_intermediate_size", src, true, 0);
  c.norm_topk_prob = get_bool(j, "norm_topk_prob", src, false);
  c.decoder_sparse_step = get_int(j, "decoder_sparse_step", src, false, 1);
  c.mlp_only_layers = get_int_list(j, "mlp_only_layers", src);
  c.router_aux_loss_coef = get_num(j, "router_aux_loss_coef", src, 0.001);
  c.output_router_logits = get_bool(j, "output_router_logits", src, false);
  // Hugging Face's Qwen2MoeConfig has no attention_bias (newer versions: qkv_bias, default
  // true); its q/k/v projections always carry biases, and so do ours.
  for (const char* key : {"attention_bias", "qkv_bias"})
    if (!get_bool(j, key, src, true))
      throw Error(src + ": key '" + key +
                  "' is false, but qwen2_moe always has q/k/v biases (SPEC §7)");
  c.attention_bias = true;
}

}  // namespace

ModelConfig config_from_json(const json& j, const std::string& src) {
  if (!j.is_object()) throw Error(src + ": config must be a JSON object");
  ModelConfig c;
  const json* mt = find_key(j, "model_type");
  if (!mt)
    throw Error(src +
                ": missing required key 'model_type' (\"llama\", \"qwen2\" or \"qwen2_moe\")");
  if (!mt->is_string()) throw Error(src + ": key 'model_type' must be a string");
  c.model_type = mt->get<std::string>();
  if (c.model_type != "llama" && c.model_type != "qwen2" && c.model_type != "qwen2_moe")
    throw Error(src + ": unsupported model_type '" + c.model_type +
                "' (expected llama, qwen2 or qwen2_moe)");
  c.vocab_size = get_int(j, "vocab_size", src, true, 0);
  c.hidden_size = get_int(j, "hidden_size", src, true, 0);
  c.intermediate_size = get_int(j, "intermediate_size", src, true, 0);
  c.num_layers = get_int(j, "num_hidden_layers", src, true, 0);
  c.num_heads = get_int(j, "num_attention_heads", src, true, 0);
  c.num_kv_heads = get_int(j, "num_key_value_heads", src, false, c.num_heads);
  if (c.num_heads <= 0) throw Error(src + ": key 'num_attention_heads' must be positive");
  if (find_key(j, "head_dim")) {
    c.head_dim = get_int(j, "head_dim", src, true, 0);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      throw Error(src + ": 'hidden_size' (" + std::to_string(c.hidden_size) +
                  ") is not divisible by 'num_attention_heads' (" +
                  std::to_string(c.num_heads) + ") and no 'head_dim' is given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  c.rope_theta = get_num(j, "rope_theta", src, 10000.0);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  // Qwen2 checkpoints carry q/k/v biases without saying so in config.json.
  c.attention_bias = get_bool(j, "attention_bias", src, c.model_type == "qwen2");
  if (c.is_moe()) parse_moe(j, src, c);
  if (const json* inf = find_key(j, "infini")) {
    if (!inf->is_object()) throw Error(src + ": key 'infini' must be an object");
    const std::string isrc = src + " (infini)";
    c.segment_length = get_int(*inf, "segment_length", isrc, false, c.segment_length);
    c.use_memory = get_bool(*inf, "use_memory", isrc, true);
    if (const json* mu = find_key(*inf, "memory_update")) {
      if (!mu->is_string()) throw Error(isrc + ": key 'memory_update' must be a string");
      const std::string s = mu->get<std::string>();
      if (s == "linear") c.memory_update = MemoryUpdate::Linear;
      else if (s == "delta") c.memory_update = MemoryUpdate::Delta;
      else throw Error(isrc + ": memory_update must be \"linear\" or \"delta\", got \"" + s + "\"");
    }
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* k : kKnownKeys) known = known || it.key() == k;
    if (c.is_moe())
      for (const char* k : kMoeKeys) known = known || it.key() == k;
    if (known) continue;
    // Copying a json value recurses: a deeply nested unknown key would overflow the stack.
    if (nests_deeper_than(it.value(), 64)) {
      std::string key = it.key().substr(0, 100);
      for (char& ch : key)
        if (static_cast<unsigned char>(ch) < 0x20) ch = '?';  // keep the message on one line
      throw Error(src + ": key '" + key + "' nests too deeply");
    }
    c.extra[it.key()] = it.value();
  }
  validate_config(c, src);
  return c;
}

void validate_config(const ModelConfig& c, const std::string& src) {
  auto check = [&](bool ok, const std::string& msg) {
    if (!ok) throw Error(src + ": " + msg);
  };
  auto in_range = [&](int64_t v, const char* key, int64_t lo, int64_t hi) {
    check(v >= lo && v <= hi, "key '" + std::string(key) + "' = " + std::to_string(v) +
                                  " is out of range [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "]");
  };
  in_range(c.vocab_size, "vocab_size", 1, 1 << 24);
  in_range(c.hidden_size, "hidden_size", 1, 1 << 16);
  in_range(c.intermediate_size, "intermediate_size", 1, 1 << 18);
  in_range(c.num_layers, "num_hidden_layers", 1, 1024);
  in_range(c.num_heads, "num_attention_heads", 1, 1024);
  in_range(c.num_kv_heads, "num_key_value_heads", 1, 1024);
  in_range(c.head_dim, "head_dim", 2, 4096);
  in_range(c.segment_length, "infini.segment_length", 1, 1 << 20);
  check(c.num_heads % c.num_kv_heads == 0,
        "'num_attention_heads' (" + std::to_string(c.num_heads) +
            ") must be a multiple of 'num_key_value_heads' (" + std::to_string(c.num_kv_heads) +
            ")");
  check(c.head_dim % 2 == 0, "'head_dim' must be even for rotary embeddings");
  check(c.rms_norm_eps > 0 && c.rms_norm_eps < 1, "'rms_norm_eps' must be in (0, 1)");
  check(c.rope_theta > 1 && c.rope_theta < 1e12, "'rope_theta' must be in (1, 1e12)");
  double moe_layers = 0;  // sparse layers, counted for the size guard below
  if (c.is_moe()) {
    check(c.attention_bias,
          "qwen2_moe always has q/k/v biases (SPEC §7): 'attention_bias' "
          "must be true");
    in_range(c.num_experts, "num_experts", 1, 1 << 12);
    in_range(c.num_experts_per_tok, "num_experts_per_tok", 1, 1 << 12);
    check(c.num_experts_per_tok <= c.num_experts,
          "'num_experts_per_tok' (" + std::to_string(c.num_experts_per_tok) +
              ") must not exceed 'num_experts' (" + std::to_string(c.num_experts) + ")");
    in_range(c.moe_intermediate_size, "moe_intermediate_size", 1, 1 << 18);
    in_range(c.shared_expert_intermediate_size, "shared_expert_intermediate_size", 1, 1 << 18);
    in_range(c.decoder_sparse_step, "decoder_sparse_step", 1, 1 << 20);
    check(c.mlp_only_layers.size() <= size_t(c.num_layers),
          "'mlp_only_layers' lists more layers than 'num_hidden_layers' (" +
              std::to_string(c.num_layers) + ")");
    std::vector<bool> listed(size_t(c.num_layers), false);
    for (int64_t l : c.mlp_only_layers) {
      check(l >= 0 && l < c.num_layers,
            "'mlp_only_layers' entry " + std::to_string(l) + " is out of range [0, " +
                std::to_string(c.num_layers - 1) + "] (num_hidden_layers " +
                std::to_string(c.num_layers) + ")");
      check(!listed[size_t(l)],
            "'mlp_only_layers' lists layer " + std::to_string(l) + " more than once");
      listed[size_t(l)] = true;
    }
    check(std::isfinite(c.router_aux_loss_coef) && c.router_aux_loss_coef >= 0,
          "'router_aux_loss_coef' must be a finite number >= 0");
    for (int64_t l = 0; l < c.num_layers; ++l) moe_layers += c.is_sparse_layer(l) ? 1 : 0;
  }
  // Guard against configs that would need absurd memory before we allocate anything.
  const double D = double(c.hidden_size);
  const double moe_mlp = D * (double(c.num_experts) + 1) +
                         3.0 * D * double(c.moe_intermediate_size) * double(c.num_experts) +
                         3.0 * D * double(c.shared_expert_intermediate_size);
  const double params =
      double(c.vocab_size) * D * 2 +
      double(c.num_layers) * (D * double(c.q_width()) * 2 + D * double(c.kv_width()) * 2) +
      (double(c.num_layers) - moe_layers) * 3.0 * D * double(c.intermediate_size) +
      moe_layers * moe_mlp;
  check(params < 2.0e10, "the configured model is too large (" + std::to_string(params) +
                             " parameters)");
}

json config_to_json(const ModelConfig& c) {
  json j = c.extra;
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  if (c.is_moe()) {
    j["num_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["decoder_sparse_step"] = c.decoder_sparse_step;
    j["mlp_only_layers"] = c.mlp_only_layers;
    j["router_aux_loss_coef"] = c.router_aux_loss_coef;
    j["output_router_logits"] = c.output_router_logits;
  }
  j["infini"] = {{"segment_length", c.segment_length},
                 {"memory_update", memory_update_name(c.memory_update)},
                 {"use_memory", c.use_memory}};
  return j;
}

ModelConfig load_config(const std::string& path) {
  io::check_not_dir_or_device(path);
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open config file " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw Error(path + ": not valid JSON");
  return config_from_json(j, path);
}

}  // namespace infini::model

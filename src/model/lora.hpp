// LoRA adapters (Hu et al. 2021) on the attention projections q, k, v, o, plus trainable
// memory gates beta. Exact and engine-neutral: the forward runs on merged weights
//   W' = W + s·B·A,   s = alpha / r,   A [r, in], B [out, r]
// and the full gradient dW' of the standard backward maps to the adapters by the chain rule
//   dA = s·Bᵀ·dW',   dB = s·dW'·Aᵀ,   dbeta = dbeta'.
//
// Files (the PEFT layout, so PEFT-aware tools can read the adapters):
//   adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules
//                              [q_proj, k_proj, v_proj, o_proj], plus "infini_trained_params":
//                              ["beta"] (PEFT itself has no notion of the gates)
//   adapter_model.safetensors  base_model.model.model.layers.{l}.self_attn.{m}.lora_A.weight [r, in]
//                              base_model.model.model.layers.{l}.self_attn.{m}.lora_B.weight [out, r]
//                              base_model.model.model.layers.{l}.self_attn.beta [H]  (the trained
//                              gates, replacing the base model's; absent without memory)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.hpp"

namespace infini::model {

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16.0;
};

// One adapted matrix: its place in the model's weights and its A, B in the adapter buffer.
struct LoraSlot {
  int64_t layer = 0;
  std::string module;        // "q_proj", "k_proj", "v_proj", "o_proj"
  int64_t w = 0;             // offset of W [out, in] in the model's weights
  int64_t out = 0, in = 0;
  int64_t a = 0, b = 0;      // offsets of A [r, in] and B [out, r] in the adapter buffer
};

struct LoraGates {
  int64_t layer = 0;
  int64_t model = 0, adapter = 0;  // offsets of beta [H] in the model and the adapter buffer
};

struct LoraLayout {
  LoraConfig config;
  int64_t heads = 0;
  std::vector<LoraSlot> slots;
  std::vector<LoraGates> gates;  // empty for a model without memory
  int64_t total = 0;             // length of the adapter buffer
  int64_t gate_begin = 0;        // the gates occupy [gate_begin, total)
  double scale() const { return config.alpha / double(config.rank); }
  static LoraLayout build(const ModelConfig& c, const ParamLayout& p, const LoraConfig& cfg);
};

template <class T>
struct LoraAdapter {
  LoraLayout layout;
  std::vector<T> values;  // layout.total
};

// PEFT's initialisation: A uniform in ±1/sqrt(in) (kaiming-uniform with a = sqrt(5)), B = 0,
// so the adapted model starts equal to the base; the gates start at the base model's.
LoraAdapter<float> lora_init(const Model<float>& base, const LoraConfig& cfg, uint64_t seed);

// out.weights = base.weights with W += s·B·A on every slot and beta taken from the adapter.
// `out` must have base's layout (it is resized and overwritten).
template <class T>
void lora_apply(const LoraLayout& l, const T* values, const Model<T>& base, Model<T>& out);

// grad (=, l.total) from the gradient with respect to the merged model's weights.
template <class T>
void lora_map_gradient(const LoraLayout& l, const T* values, const T* model_grad, T* grad);

// A new model with the adapter folded in.
Model<float> lora_merge(const Model<float>& base, const LoraAdapter<float>& a);

// Writes adapter_config.json and adapter_model.safetensors into dir (created if needed).
void save_lora(const LoraAdapter<float>& a, const std::string& dir,
               const std::string& base_model_path);
// Reads an adapter directory written by save_lora (or by PEFT for these target modules) and
// checks every tensor against `base`; errors name the file and the tensor.
LoraAdapter<float> load_lora(const std::string& dir, const Model<float>& base);

}  // namespace infini::model

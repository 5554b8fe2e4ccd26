// LoRA fine-tuning as a train::Trainable: the base weights stay frozen; the optimizer updates
// the adapters and the memory gates (model/lora.hpp); the trainer runs forward/backward on the
// merged weights and the gradient is mapped back exactly.
#pragma once
#include <string>

#include "model/lora.hpp"
#include "train/optimizer.hpp"
#include "train/trainer.hpp"

namespace infini::tasks {

class LoraTrainable final : public train::Trainable {
 public:
  // tokenizer_json: contents copied into every saved directory ("" for the byte tokenizer).
  LoraTrainable(model::Model<float> base, const model::LoraConfig& cfg, uint64_t seed,
                std::string tokenizer_json, std::string base_path);
  int64_t size() const override { return adapter_.layout.total; }
  float* params() override { return adapter_.values.data(); }
  const model::Model<float>& forward_model() override;
  void map_gradient(const float* model_grad, float* grad) override;
  // A loadable merged model (config.json, model.safetensors, tokenizer.json) plus the adapter
  // (adapter_config.json, adapter_model.safetensors) in the same directory.
  void save(const std::string& dir) override;
  void restore(const std::string& dir) override;

  // "lora" (the adapters, lr, no weight decay) and "gates" (beta, gate_lr).
  std::vector<train::ParamGroup> param_groups(double lr, double gate_lr) const;
  const model::Model<float>& base() const { return base_; }
  const model::LoraAdapter<float>& adapter() const { return adapter_; }

 private:
  model::Model<float> base_, merged_;
  model::LoraAdapter<float> adapter_;
  std::string tokenizer_json_, base_path_;
};

}  // namespace infini::tasks

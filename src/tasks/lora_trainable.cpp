#include "tasks/lora_trainable.hpp"

#include <filesystem>

#include "core/error.hpp"

namespace infini::tasks {

namespace fs = std::filesystem;

LoraTrainable::LoraTrainable(model::Model<float> base, const model::LoraConfig& cfg,
                             uint64_t seed, std::string tokenizer_json, std::string base_path)
    : base_(std::move(base)),
      adapter_(model::lora_init(base_, cfg, seed)),
      tokenizer_json_(std::move(tokenizer_json)),
      base_path_(std::move(base_path)) {}

const model::Model<float>& LoraTrainable::forward_model() {
  // Recomputed on every call: params() may have changed since (W' costs r·in·out per matrix).
  model::lora_apply(adapter_.layout, adapter_.values.data(), base_, merged_);
  return merged_;
}

void LoraTrainable::map_gradient(const float* model_grad, float* grad) {
  model::lora_map_gradient(adapter_.layout, adapter_.values.data(), model_grad, grad);
}

void LoraTrainable::save(const std::string& dir) {
  model::save_model(model::lora_merge(base_, adapter_), dir);
  model::write_tokenizer_json(dir, tokenizer_json_);
  model::save_lora(adapter_, dir, base_path_);
}

void LoraTrainable::restore(const std::string& dir) {
  model::LoraAdapter<float> a = model::load_lora(dir, base_);
  if (a.layout.total != adapter_.layout.total || a.layout.config.rank != adapter_.layout.config.rank)
    throw Error(dir + ": the checkpoint's adapter has another rank than this run");
  adapter_.values = std::move(a.values);
  adapter_.layout = a.layout;
}

std::vector<train::ParamGroup> LoraTrainable::param_groups(double lr, double gate_lr) const {
  std::vector<train::ParamGroup> g;
  g.push_back({"lora", {{0, adapter_.layout.gate_begin}}, lr, 0.0});
  if (adapter_.layout.total > adapter_.layout.gate_begin)
    g.push_back({"gates", {{adapter_.layout.gate_begin,
                            adapter_.layout.total - adapter_.layout.gate_begin}}, gate_lr, 0.0});
  return g;
}

}  // namespace infini::tasks

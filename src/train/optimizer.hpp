// AdamW over an arbitrary flat float buffer with parameter groups, global-norm clipping and
// the learning-rate schedule.
//
// The optimizer knows nothing of models: a group is a set of ranges of the flat buffer with
// its own peak learning rate and weight decay. model_param_groups() builds the groups of a
// whole model from model::ParamLayout; a LoRA trainer builds its own over its adapter buffer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/params.hpp"

namespace infini::train {

struct ParamRange {
  int64_t offset = 0, count = 0;
};

struct ParamGroup {
  std::string name;
  std::vector<ParamRange> ranges;  // into the flat buffer; groups must not overlap
  double lr = 1e-3;                // peak learning rate; the schedule multiplies it
  double weight_decay = 0.0;       // decoupled (AdamW): p -= lr * weight_decay * p
};

// Groups for training every weight of a model (ParamKind decides the group):
//   "matrices"  Embedding + Matrix      lr,      weight_decay
//   "norms"     Norm + Bias             lr,      no decay
//   "gates"     Gate (beta)             gate_lr, no decay
//   "routers"   Router (MoE mlp.gate, mlp.shared_expert_gate)   lr, weight_decay
// Empty groups are left out (a dense model has no "routers" group, so its groups and saved
// optimizer states are as before). The routers get the matrices' hyperparameters but a group
// of their own, so they show in the group list and can be tuned or frozen apart.
std::vector<ParamGroup> model_param_groups(const model::ParamLayout& layout, double lr,
                                           double gate_lr, double weight_decay);

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
};

class AdamW {
 public:
  // `size`: length of the flat buffer. Entries in no group are never changed (frozen).
  AdamW(int64_t size, std::vector<ParamGroup> groups, AdamWOptions opts = {});

  // One update (PyTorch AdamW semantics, bias-corrected):
  //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  p -= lr (wd p);
  //   p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps),   lr = group.lr * lr_factor.
  void step(float* params, const float* grads, double lr_factor);

  int64_t size() const { return size_; }
  int64_t steps_taken() const { return t_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  const AdamWOptions& options() const { return opts_; }
  const std::vector<float>& exp_avg() const { return m_; }
  const std::vector<float>& exp_avg_sq() const { return v_; }

  // safetensors: tensors "exp_avg" and "exp_avg_sq" [size] (F32), metadata with the step
  // count and the group layout. load() checks that the file fits this optimizer.
  void save(const std::string& path) const;
  void load(const std::string& path);

 private:
  std::string layout_signature() const;
  int64_t size_;
  std::vector<ParamGroup> groups_;
  AdamWOptions opts_;
  int64_t t_ = 0;
  std::vector<float> m_, v_;
};

// The L2 norm of g, summed in double in a fixed order (the same on every run).
double global_norm(const float* g, int64_t n);
// Scales g so that its norm is at most max_norm (max_norm <= 0: no clipping). Returns the norm
// before clipping.
double clip_global_norm(float* g, int64_t n, double max_norm);

enum class ScheduleKind { Cosine, Constant };
const char* schedule_name(ScheduleKind k);
ScheduleKind parse_schedule(const std::string& name);  // throws naming --schedule

// Learning-rate multiplier of step `step` (0-based): linear warm-up over `warmup` steps
// ((step+1)/warmup), then constant 1, or a cosine from 1 at the end of warm-up down to
// min_ratio at step total_steps.
struct Schedule {
  ScheduleKind kind = ScheduleKind::Cosine;
  int64_t warmup = 0, total_steps = 1;
  double min_ratio = 0.1;
  double factor(int64_t step) const;
};

}  // namespace infini::train

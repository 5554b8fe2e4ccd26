// The training loop as a library: full-BPTT steps over global batches, gradient accumulation,
// clipping, AdamW with parameter groups, evaluation, crash-safe checkpoints, exact resume.
//
// Seams for other trainers (documented here because they are the contract):
//  1. Data: any BatchSource (train/data.hpp) - e.g. passkey prompts with a loss mask over
//     the answer tokens only.
//  2. What is trained: any Trainable. FullModelTrainable trains every weight of a model; a
//     LoRA trainable keeps base weights frozen, exposes adapters + beta as its flat params(),
//     merges W' = W + s·B·A in forward_model() and maps dW to dA, dB in map_gradient(). The
//     optimizer runs over params() with the caller's ParamGroups (train/optimizer.hpp).
//  3. Gradient hooks: TrainHooks::after_step_gradient sees the complete gradient of a step
//     (and its loss sum and count) before the non-finite check, clipping and the update: a
//     data-parallel all-reduce plugs in there. TrainOptions::rank/world make each process
//     compute only its rows of the global batch (--batch is the global batch); the gradient
//     is already scaled by 1 / (predictions in the global batch), so the all-reduce is a sum.
//
// Determinism: the same options, data, thread count and starting checkpoint give the same
// losses and bit-identical weights (OpenMP loops use static schedules; every reduction the
// trainer itself does runs in a fixed order).
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "model/bptt.hpp"
#include "train/data.hpp"
#include "train/metrics.hpp"
#include "train/optimizer.hpp"

namespace infini::train {

// What the optimizer updates, and how that maps onto the model the forward runs.
class Trainable {
 public:
  virtual ~Trainable() = default;
  virtual int64_t size() const = 0;  // length of params()
  virtual float* params() = 0;       // the flat buffer the optimizer updates
  // The model to run forward/backward on, reflecting the current params().
  virtual const model::Model<float>& forward_model() = 0;
  // grad (=, size()) from model_grad (the gradient with respect to forward_model().weights).
  virtual void map_gradient(const float* model_grad, float* grad) = 0;
  // Writes into `dir` a loadable model directory (config.json, model.safetensors, and
  // tokenizer.json when the model has one) plus anything restore() needs.
  virtual void save(const std::string& dir) = 0;
  // Restores params() from a directory written by save(); throws naming the file at fault.
  virtual void restore(const std::string& dir) = 0;
};

// Trains every weight: params() is the model's weight buffer.
class FullModelTrainable final : public Trainable {
 public:
  // tokenizer_json: the CONTENTS of a tokenizer.json written into every saved directory
  // ("" for the byte tokenizer). Held in memory: the file it came from may be pruned.
  FullModelTrainable(model::Model<float> m, std::string tokenizer_json);
  int64_t size() const override { return model_.layout.total; }
  float* params() override { return model_.weights.data(); }
  const model::Model<float>& forward_model() override { return model_; }
  void map_gradient(const float* model_grad, float* grad) override;
  void save(const std::string& dir) override;
  void restore(const std::string& dir) override;
  model::Model<float>& model() { return model_; }

 private:
  model::Model<float> model_;
  std::string tokenizer_json_;
};

struct TrainOptions {
  std::string out;            // run directory: checkpoints, metrics.jsonl, loss.svg, final/
  int64_t steps = 1000;       // total optimizer steps; also the schedule's length
  int64_t stop_at = 0;        // > 0: end after this step with a checkpoint, as if interrupted
  int64_t batch = 8;          // global batch: sequences per optimizer step
  int64_t seq_len = 2048;     // tokens per sequence
  int64_t grad_accum = 1;     // micro-batches per step; (batch / world) % grad_accum == 0
  int64_t bptt_segments = 0;  // 0: full BPTT through M and z; K: truncate every K segments
  // Activations kept for the backward (model::SequenceOptions::keep_activations_bytes).
  int64_t keep_activations_bytes = model::SequenceOptions::kDefaultKeepActivationsBytes;
  double grad_clip = 1.0;     // global-norm clip; 0 disables
  Schedule schedule;
  AdamWOptions adam;
  int64_t save_every = 0;       // checkpoint every N steps (0: only at the end / on interrupt)
  int64_t eval_every = 0;       // validate every N steps and at the end (0: never)
  int64_t keep = 3;             // checkpoints kept (older ones deleted after a new one is complete)
  int64_t log_every = 10;       // a log line every N steps when not drawing a progress bar
  int64_t val_tokens = 65536;   // validation reads at most this many tokens in all (<= 0: all)
  bool progress_bar = false;    // redraw one status line on the log stream (a terminal)
  nlohmann::json run_record;    // stored as "args" in trainer.json; the CLI checks it on resume
  int64_t rank = 0, world = 1;  // data parallel: this process's share of each global batch
  model::Precision precision = model::Precision::FP32;  // of the products (training and validation)
};

struct StepGradient {
  int64_t step = 0;       // 0-based index of the step this gradient is for
  float* grad = nullptr;  // [size] in the Trainable's layout, d(mean loss over the global batch)
  int64_t size = 0;
  double loss_sum = 0;    // summed loss of this process's rows
  int64_t predicted = 0;  // predictions of this process's rows
  // Mixture-of-experts models: the load-balancing loss (SPEC §7, mean over the micro-batches;
  // in the objective only when the config's output_router_logits is true) and the tokens
  // routed to each expert of each sparse layer, this process's rows.
  double aux_loss = 0;
  std::vector<std::vector<int64_t>> expert_counts;
};

struct TrainHooks {
  // After each micro-batch: the model-layout gradient accumulated so far in this step.
  std::function<void(int64_t step, int64_t micro, const float* model_grad, int64_t n)>
      after_micro_batch;
  // After the step's gradient is complete (see the seams above). May modify it in place.
  std::function<void(StepGradient&)> after_step_gradient;
  // After each step, with the JSON line written to metrics.jsonl.
  std::function<void(const nlohmann::json&)> on_step;
};

// A non-finite loss, gradient or weight: the run stops and the bad state is never saved.
class NonFiniteError : public Error {
 public:
  using Error::Error;
};

class Trainer {
 public:
  Trainer(Trainable& trainable, std::vector<ParamGroup> groups, BatchSource& source,
          std::vector<Document> val_docs, TrainOptions opts, TrainHooks hooks = {});

  // Restores parameters, optimizer state and data position from a checkpoint directory
  // written by this trainer. Returns its trainer.json.
  nlohmann::json resume_from(const std::string& checkpoint_dir);

  enum class Outcome { Finished, Stopped, Interrupted };
  // Trains until opts.steps (Finished: final/ is written), opts.stop_at (Stopped) or until
  // *interrupt becomes true (Interrupted, checked between steps). Each ends with a checkpoint.
  // Throws NonFiniteError (without saving) when a loss, gradient or weight is not finite.
  Outcome run(const std::atomic<bool>* interrupt = nullptr, std::FILE* log = stderr);

  // The gradient of one global batch (this process's rows) into grad (=, size floats), with
  // the hooks called. Used by run(); public for tests and other drivers.
  StepGradient compute_gradient(const Batch& batch, float* grad);

  int64_t step() const { return step_; }
  const std::string& last_checkpoint() const { return last_checkpoint_; }
  const AdamW& optimizer() const { return opt_; }

 private:
  std::string save_checkpoint(std::FILE* log);
  nlohmann::json evaluate();
  void write_plot(const MetricsLog& metrics) const;

  Trainable& trainable_;
  BatchSource& source_;
  std::vector<Document> val_;
  TrainOptions opts_;
  TrainHooks hooks_;
  AdamW opt_;
  model::ForwardContext<float> ctx_;
  model::SequenceWorkspace<float> ws_;
  std::vector<float> model_grad_, grad_;
  model::MemoryState<float> start_;  // a micro-batch's rows of Batch::initial_state
  Batch batch_;
  int64_t step_ = 0, tokens_seen_ = 0, saved_step_ = -1;
  bool resumed_ = false;
  std::string last_checkpoint_;
};

}  // namespace infini::train

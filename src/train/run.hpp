// A whole training run from its options: what `infini train` and Python's `infini.train` do.
// The front ends parse and validate flags (each declared once, in cli/train_cmd.cpp) and
// decide --resume; this builds the model, tokenizer and data, checks them, and drives a
// Trainer to the end, a --stop-at step or an interrupt.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/bptt.hpp"
#include "train/distributed.hpp"
#include "train/trainer.hpp"

namespace infini::train {

// The options of `infini train`, one field per flag (the flag's help text is its contract).
struct TrainRunOptions {
  std::string config, model, tokenizer, out, token_cache, schedule = "cosine", precision = "fp32";
  std::vector<std::string> data, val_data;
  double val_fraction = 0.05, lr = 3e-4, gate_lr = 1e-2, weight_decay = 0.1, grad_clip = 1.0;
  double min_lr_ratio = 0.1, init_std = 0.02, gate_init = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.95, adam_eps = 1e-8;
  int64_t seq_len = 2048, batch = 8, steps = 1000, warmup = -1, grad_accum = 1;
  int64_t activation_mb = model::SequenceOptions::kDefaultKeepActivationsBytes >> 20;
  int64_t bptt_segments = 0, save_every = 500, eval_every = 500, keep = 3, log_every = 10;
  int64_t val_tokens = 65536, stop_at = 0;
  uint64_t seed = 0;
  bool resume = false;
};

struct TrainRunResult {
  Trainer::Outcome outcome = Trainer::Outcome::Finished;
  int64_t step = 0;            // optimizer steps done, resumed ones included
  std::string final_dir;       // OUT/final when Finished
  std::string last_checkpoint; // the newest checkpoint this run wrote ("" if none)
};

// Throws when --batch x `len_flag` exceeds the 2^28 tokens one training step may hold (train,
// passkey train, bench), so that such a run fails before anything is allocated.
void check_tokens_per_step(int64_t batch, int64_t len, const std::string& len_flag);

// Runs training as `infini train` does. `resume_dir`: the checkpoint to continue from (its
// flags already restored into `o` by the front end), or nullopt for a fresh run. `run_record`
// is stored in every checkpoint. `on_step` sees each metrics line (metrics.jsonl) after its
// step. The run ends with a checkpoint when *interrupt becomes true (checked between steps;
// under MPI every rank stops at the same step). `before_steps`, if given, is called once the
// model and data are ready, just before the first step: the command line installs its signal
// handler there, so that Ctrl-C while a large corpus is tokenized still ends it at once. Progress and the final message go to `log`
// on rank 0. Throws Error (naming the flag or file) on bad options or data, NonFiniteError
// on a non-finite loss, and CollectiveError when MPI ranks disagree.
TrainRunResult run_training(TrainRunOptions o, const nlohmann::json& run_record,
                            const std::optional<std::string>& resume_dir, Distributed& dist,
                            const std::function<void(const nlohmann::json&)>& on_step,
                            const std::atomic<bool>* interrupt, std::FILE* log,
                            const std::function<void()>& before_steps = nullptr);

}  // namespace infini::train

// infini train: long-document training with full BPTT (the run itself is train/run.hpp).
#include "cli/train_cmd.hpp"

#include <optional>
#include <string>

#include "cli/commands.hpp"
#include "core/error.hpp"

namespace infini::cli {

TrainCommand add_train_flags(CLI::App* cmd) {
  TrainCommand c{std::make_shared<train::TrainRunOptions>(), std::make_shared<RunFlags>()};
  train::TrainRunOptions* o = c.opts.get();
  RunFlags& f = *c.flags;  // recorded in checkpoints; see --resume
  auto range = [](double lo, double hi) { return CLI::Range(lo, hi); };
  auto count = [](int64_t lo, int64_t hi) { return CLI::Range(lo, hi); };
  const int64_t big = int64_t(1) << 40;

  // Trajectory flags: they shape the weights, so a resumed run keeps them.
  f.trajectory(
      cmd->add_option("--config", o->config, "Start a fresh model from this config.json (SPEC §5)")
          ->check(CLI::ExistingFile),
      o->config);
  f.trajectory(cmd->add_option("--model", o->model,
                               "Start from this model directory (continual pre-training)")
                   ->check(CLI::ExistingDirectory),
               o->model);
  f.trajectory(cmd->add_option("--tokenizer", o->tokenizer,
                               "tokenizer.json for a fresh --config model (default: the byte "
                               "tokenizer); copied into every checkpoint")
                   ->check(CLI::ExistingFile),
               o->tokenizer);
  f.trajectory(cmd->add_option("--data", o->data,
                               "Training text: files or directories (recursive); each file is "
                               "one document"),
               o->data);
  f.trajectory(cmd->add_option("--val-data", o->val_data,
                               "Validation documents (files or directories); default: held out "
                               "of --data by --val-fraction"),
               o->val_data);
  f.trajectory(cmd->add_option("--val-fraction", o->val_fraction,
                               "Without --val-data: share of documents held out (evenly "
                               "spread); with too few documents, the tail of the last one")
                   ->capture_default_str()
                   ->check(range(0.0, 0.9)),
               o->val_fraction);
  cmd->add_option("--out", o->out,
                  "Run directory: checkpoints/, latest, final/, metrics.jsonl, loss.svg, "
                  "tokens.bin")
      ->required();
  f.setting(cmd->add_option("--token-cache", o->token_cache,
                            "Binary token cache (default OUT/tokens.bin); share it between runs "
                            "on the same data"),
            o->token_cache);
  f.trajectory(cmd->add_option("--seq-len", o->seq_len,
                               "Tokens per training sequence (a window of the documents)")
                   ->capture_default_str()
                   ->check(count(2, int64_t(1) << 24)),
               o->seq_len);
  f.trajectory(
      cmd->add_option("--batch", o->batch, "Sequences per optimizer step (the global batch)")
          ->capture_default_str()
          ->check(count(1, 65536)),
      o->batch);
  // A setting, though it sets the schedule's length: a resumed run may extend the run.
  f.setting(cmd->add_option("--steps", o->steps,
                            "Total optimizer steps (also the length of the schedule)")
                ->capture_default_str()
                ->check(count(1, big)),
            o->steps);
  f.trajectory(
      cmd->add_option("--lr", o->lr, "Peak learning rate of matrices, embeddings, norms, biases")
          ->capture_default_str()
          ->check(range(1e-12, 10.0)),
      o->lr);
  f.trajectory(cmd->add_option("--gate-lr", o->gate_lr,
                               "Peak learning rate of the memory gates beta (no weight decay); "
                               "larger than --lr so gates can leave 0.5")
                   ->capture_default_str()
                   ->check(range(0.0, 100.0)),
               o->gate_lr);
  f.trajectory(
      cmd->add_option("--warmup", o->warmup, "Linear warm-up steps (-1: min(100, steps/10))")
          ->capture_default_str()
          ->check(count(-1, big)),
      o->warmup);
  f.trajectory(cmd->add_option("--schedule", o->schedule,
                               "After warm-up: cosine (down to --min-lr-ratio) or constant")
                   ->capture_default_str()
                   ->check(CLI::IsMember({"cosine", "constant"})),
               o->schedule);
  f.trajectory(cmd->add_option("--min-lr-ratio", o->min_lr_ratio,
                               "Cosine schedule: final learning rate as a fraction of peak")
                   ->capture_default_str()
                   ->check(range(0.0, 1.0)),
               o->min_lr_ratio);
  f.trajectory(cmd->add_option("--weight-decay", o->weight_decay,
                               "AdamW decoupled weight decay of matrices and embeddings (never "
                               "of norms, biases or gates)")
                   ->capture_default_str()
                   ->check(range(0.0, 10.0)),
               o->weight_decay);
  f.trajectory(cmd->add_option("--adam-beta1", o->adam_beta1, "AdamW beta1")
                   ->capture_default_str()
                   ->check(range(0.0, 0.999999)),
               o->adam_beta1);
  f.trajectory(cmd->add_option("--adam-beta2", o->adam_beta2, "AdamW beta2")
                   ->capture_default_str()
                   ->check(range(0.0, 0.999999)),
               o->adam_beta2);
  f.trajectory(cmd->add_option("--adam-eps", o->adam_eps, "AdamW epsilon")
                   ->capture_default_str()
                   ->check(range(1e-30, 1.0)),
               o->adam_eps);
  f.trajectory(cmd->add_option("--grad-clip", o->grad_clip,
                               "Clip the global gradient norm to this (0: no clipping)")
                   ->capture_default_str()
                   ->check(range(0.0, 1e6)),
               o->grad_clip);
  f.trajectory(cmd->add_option("--grad-accum", o->grad_accum,
                               "Micro-batches per step (must divide --batch); same gradient, "
                               "less memory")
                   ->capture_default_str()
                   ->check(count(1, 65536)),
               o->grad_accum);
  f.setting(add_activation_memory_option(cmd, o->activation_mb), o->activation_mb);
  f.trajectory_added_later(add_precision_option(cmd, o->precision), o->precision);
  f.trajectory(cmd->add_option("--bptt-segments", o->bptt_segments,
                               "0: full back-propagation through M and z across the whole "
                               "sequence; K: cut the memory gradient every K segments")
                   ->capture_default_str()
                   ->check(count(0, int64_t(1) << 30)),
               o->bptt_segments);
  f.trajectory(
      cmd->add_option("--seed", o->seed, "Seed of the initial weights and of the data order")
          ->capture_default_str()
          ->check(non_negative_integer()),
      o->seed);
  f.trajectory(cmd->add_option("--init-std", o->init_std,
                               "Fresh model: std-dev of the normal init of weight matrices")
                   ->capture_default_str()
                   ->check(range(0.0, 10.0)),
               o->init_std);
  f.trajectory(cmd->add_option("--gate-init", o->gate_init,
                               "Initial beta of a fresh model (or of a --model without gates); "
                               "sigmoid(beta) weights memory")
                   ->capture_default_str()
                   ->check(range(-30.0, 30.0)),
               o->gate_init);
  // Settings: the weights do not depend on them; a resumed run keeps them unless given.
  f.setting(cmd->add_option("--save-every", o->save_every,
                            "Checkpoint every N steps (0: only at the end or on interrupt)")
                ->capture_default_str()
                ->check(count(0, big)),
            o->save_every);
  f.setting(cmd->add_option("--keep", o->keep,
                            "Checkpoints kept in OUT/checkpoints; older ones are deleted after "
                            "a new one is complete")
                ->capture_default_str()
                ->check(count(1, 1000000)),
            o->keep);
  f.setting(cmd->add_option("--eval-every", o->eval_every,
                            "Validation loss/perplexity every N steps and at the end (0: never)")
                ->capture_default_str()
                ->check(count(0, big)),
            o->eval_every);
  f.setting(cmd->add_option("--val-tokens", o->val_tokens,
                            "Validation reads at most this many tokens (whole documents in "
                            "order, the last one cut; 0: all)")
                ->capture_default_str()
                ->check(count(0, big)),
            o->val_tokens);
  f.setting(cmd->add_option("--log-every", o->log_every,
                            "A log line every N steps when stderr is not a terminal")
                ->capture_default_str()
                ->check(count(1, big)),
            o->log_every);
  cmd->add_flag("--resume", o->resume,
                "Continue from the latest complete checkpoint in --out. Omitted flags are taken "
                "from it; given ones must match it, except " +
                    f.setting_names() + " (they may change)");
  cmd->add_option("--stop-at", o->stop_at,
                  "End after this step with a checkpoint, as if interrupted (schedule unchanged; "
                  "0: run to --steps); not recorded")
      ->capture_default_str()
      ->check(count(0, big));
  return c;
}

train::TrainRunResult run_train_command(const TrainCommand& c, train::Distributed& dist,
                                        const std::function<void(const nlohmann::json&)>& on_step,
                                        const std::atomic<bool>* interrupt, std::FILE* log,
                                        const std::function<void()>& before_steps) {
  try {
    const std::optional<std::string> resume_dir =
        prepare_resume(c.opts->out, c.opts->resume, *c.flags, dist.rank() == 0 ? log : nullptr);
    return train::run_training(*c.opts, c.flags->record(), resume_dir, dist, on_step, interrupt,
                               log, before_steps);
  } catch (const train::CollectiveError&) {
    throw;  // every rank throws it at the same point: a normal exit on all ranks
  } catch (const train::NonFiniteError&) {
    throw;  // so does this: every rank holds the same gradient and weights
  } catch (const std::exception& e) {
    dist.abort_on_error(e.what());  // this rank alone: abort all ranks instead of a hang
    throw;
  }
}

void register_train(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train on long documents with full back-propagation through the memory (docs/training.md)");
  const TrainCommand c = add_train_flags(cmd);
  cmd->callback([c] {
    train::Distributed dist;  // MPI, when launched by mpirun (docs/distributed.md)
    // From the first step on, SIGINT/SIGTERM end the run with a checkpoint; before it
    // (tokenizing a corpus) they end the process at once, as there is nothing to save.
    std::optional<StopSignalGuard> guard;
    run_train_command(c, dist, nullptr, &stop_requested(), stderr, [&guard] { guard.emplace(); });
  });
}

}  // namespace infini::cli

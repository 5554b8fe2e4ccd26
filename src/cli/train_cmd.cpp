// infini train: long-document training with full BPTT (the library is src/train/).
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/error.hpp"
#include "io/text.hpp"
#include "io/tokenizer.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"
#include "train/data.hpp"
#include "train/distributed.hpp"
#include "train/trainer.hpp"

namespace infini::cli {

namespace fs = std::filesystem;

namespace {

struct Opts {
  std::string config, model, tokenizer, out, token_cache, schedule = "cosine";
  std::vector<std::string> data, val_data;
  double val_fraction = 0.05, lr = 3e-4, gate_lr = 1e-2, weight_decay = 0.1, grad_clip = 1.0;
  double min_lr_ratio = 0.1, init_std = 0.02, gate_init = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.95, adam_eps = 1e-8;
  int64_t seq_len = 2048, batch = 8, steps = 1000, warmup = -1, grad_accum = 1;
  int64_t activation_mb = default_activation_memory_mb();
  int64_t bptt_segments = 0, save_every = 500, eval_every = 500, keep = 3, log_every = 10;
  int64_t val_tokens = 65536, stop_at = 0;
  uint64_t seed = 0;
  bool resume = false;
};

std::string tokenizer_identity(const std::string& tokenizer_json) {
  if (tokenizer_json.empty()) return "byte";
  return "hf:" + train::hex64(train::fnv1a(tokenizer_json.data(), tokenizer_json.size()));
}

void run_train(Opts& o, RunFlags& flags, train::Distributed& dist) {
  namespace tr = infini::train;
  // Under MPI only rank 0 talks; the others' log lines go nowhere.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> quiet(
      dist.rank() == 0 ? nullptr : std::fopen("/dev/null", "w"), &std::fclose);
  std::FILE* log = quiet ? quiet.get() : stderr;
  model::Model<float> m;
  std::string tokenizer_json;  // contents; empty for the byte tokenizer
  std::unique_ptr<io::Tokenizer> tok;
  const std::optional<std::string> resume_dir = prepare_resume(o.out, o.resume, flags, log);
  if (resume_dir) {
    m = model::load_model(*resume_dir);
    const fs::path tj = fs::path(*resume_dir) / "tokenizer.json";
    if (fs::exists(tj)) tokenizer_json = io::read_file(tj.string());
    tok = io::load_tokenizer_for_model(*resume_dir);
  } else {
    if (o.config.empty() == o.model.empty())
      throw Error("give exactly one of --config (fresh model) and --model (continue a model)");
    if (o.data.empty()) throw Error("--data is required");
    if (!o.config.empty()) {
      model::InitOptions io;
      io.seed = o.seed;
      io.init_std = o.init_std;
      io.gate_init = o.gate_init;
      m = model::init_model(model::load_config(o.config), io);
      if (!o.tokenizer.empty()) {
        tokenizer_json = io::read_file(o.tokenizer);
        tok = io::load_hf_tokenizer(o.tokenizer);
      } else {
        tok = std::make_unique<io::ByteTokenizer>();
      }
    } else {
      if (!o.tokenizer.empty())
        throw Error("--tokenizer is only for --config; a --model uses its own tokenizer.json");
      m = model::load_model(o.model, {true, o.gate_init});
      const fs::path tj = fs::path(o.model) / "tokenizer.json";
      if (fs::exists(tj)) tokenizer_json = io::read_file(tj.string());
      tok = io::load_tokenizer_for_model(o.model);
    }
  }
  // Data parallel: every rank must train the same run (collective checks, fail on all ranks).
  {
    nlohmann::json rec = flags.record();
    rec["--stop-at"] = o.stop_at;
    rec["--resume"] = o.resume;
    dist.check_same(tr::hash_text(rec.dump()), "the training flags");
    dist.check_same(tr::hash_text(model::config_to_json(m.config).dump()), "the model config");
  }
  if (o.batch % (int64_t(dist.world()) * o.grad_accum) != 0)
    throw Error("--batch " + std::to_string(o.batch) + " (the global batch) must be a multiple "
                "of " + std::to_string(dist.world()) + " MPI processes x --grad-accum " +
                std::to_string(o.grad_accum));
  if (tok->vocab_size() > m.config.vocab_size)
    throw Error("the tokenizer has " + std::to_string(tok->vocab_size()) +
                " ids but the model's vocab_size is " + std::to_string(m.config.vocab_size));
  const int32_t eos = tok->eos_id();
  if (eos < 0)
    throw Error("the tokenizer has no <eos> token, so documents cannot be separated; add one "
                "to tokenizer.json");
  if (o.warmup < 0) o.warmup = std::min<int64_t>(100, o.steps / 10);
  if (o.warmup >= o.steps && o.steps > 1)
    throw Error("--warmup " + std::to_string(o.warmup) + " must be less than --steps " +
                std::to_string(o.steps));
  if (o.batch % o.grad_accum != 0)
    throw Error("--grad-accum " + std::to_string(o.grad_accum) + " must divide --batch " +
                std::to_string(o.batch));
  check_tokens_per_step(o.batch, o.seq_len, "--seq-len");

  tr::DataOptions dopt;
  dopt.train_paths = o.data;
  dopt.val_paths = o.val_data;
  dopt.val_fraction = o.val_fraction;
  dopt.cache_path = o.token_cache.empty() ? (fs::path(o.out) / "tokens.bin").string() : o.token_cache;
  // Only rank 0 writes into --out; other ranks tokenize in memory (no race on the cache).
  if (dist.rank() != 0) dopt.cache_path.clear();
  dopt.tokenizer_id = tokenizer_identity(tokenizer_json);
  // --out is made before the data is read (the token cache lives there); a run that made it
  // and then fails on its data removes again what it made, new parent directories included,
  // so a bad --data leaves nothing behind.
  fs::path made_root;  // the outermost directory this run created, if any
  if (dist.rank() == 0) {
    std::error_code ec;
    fs::path top = o.out;
    while (top.has_parent_path() && top.parent_path() != top &&
           !fs::exists(top.parent_path(), ec))
      top = top.parent_path();
    if (fs::create_directories(o.out, ec)) made_root = top;  // false when it was there already
    if (!fs::is_directory(o.out)) throw Error("cannot create --out " + o.out);
  }
  std::string data_log;
  tr::Corpus corpus;
  try {
    corpus = tr::load_corpus(*tok, dopt, &data_log);
  } catch (...) {
    std::error_code ec;
    if (!made_root.empty()) fs::remove_all(made_root, ec);
    throw;
  }
  std::fputs(data_log.c_str(), log);
  dist.check_same(tr::hash_text(corpus.fingerprint),
                  "the training data (--data/--val-data files, their contents or the tokenizer)");
  tr::WindowSource source(corpus.train, eos, o.seq_len, o.seed, corpus.fingerprint);
  std::fprintf(log,
               "data: %zu train documents (%lld tokens, %lld windows of %lld per epoch), %zu "
               "validation documents (%lld tokens)\n",
               corpus.train.size(), (long long)corpus.train_tokens(),
               (long long)source.windows_per_epoch(), (long long)o.seq_len, corpus.val.size(),
               (long long)corpus.val_tokens());
  std::fprintf(log, "model: %lld parameters, segment %lld, %s; %lld segments per sequence\n",
               (long long)m.layout.total, (long long)m.config.segment_length,
               m.config.use_memory ? model::memory_update_name(m.config.memory_update)
                                   : "no memory (local attention only)",
               (long long)((o.seq_len + m.config.segment_length - 1) / m.config.segment_length));

  tr::TrainOptions to;
  to.out = o.out;
  to.steps = o.steps;
  to.stop_at = o.stop_at;
  to.batch = o.batch;
  to.seq_len = o.seq_len;
  to.grad_accum = o.grad_accum;
  to.bptt_segments = o.bptt_segments;
  to.keep_activations_bytes = o.activation_mb << 20;
  to.grad_clip = o.grad_clip;
  to.schedule = {tr::parse_schedule(o.schedule), o.warmup, o.steps, o.min_lr_ratio};
  to.adam = {o.adam_beta1, o.adam_beta2, o.adam_eps};
  to.save_every = o.save_every;
  to.eval_every = o.eval_every;
  to.keep = o.keep;
  to.log_every = o.log_every;
  to.val_tokens = o.val_tokens;
  to.progress_bar = dist.rank() == 0 && ::isatty(::fileno(log)) != 0;
  to.rank = dist.rank();
  to.world = dist.world();
  to.run_record = flags.record();

  auto groups = tr::model_param_groups(m.layout, o.lr, o.gate_lr, o.weight_decay);
  tr::FullModelTrainable trainable(std::move(m), tokenizer_json);
  // A stop signal ends the run only once every rank has seen it, at the same step.
  std::atomic<bool> agreed_stop{false};
  tr::TrainHooks hooks;
  if (dist.world() > 1) {
    hooks.after_step_gradient = [&dist](tr::StepGradient& sg) { dist.allreduce_gradient(sg); };
    hooks.on_step = [&](const nlohmann::json&) { agreed_stop = dist.any(stop_requested().load()); };
  }
  tr::Trainer trainer(trainable, std::move(groups), source, std::move(corpus.val), to, hooks);
  if (resume_dir) {
    trainer.resume_from(*resume_dir);
    std::fprintf(log, "resumed from %s (step %lld)\n", resume_dir->c_str(),
                 (long long)trainer.step());
  }
  if (dist.world() > 1) {
    const uint64_t wh = tr::fnv1a(trainable.params(), size_t(trainable.size()) * sizeof(float),
                                  uint64_t(trainer.step()) + 0x9e3779b97f4a7c15ULL);
    dist.check_same(wh, "the starting weights (or the --resume checkpoint's step)");
    std::fprintf(log, "mpi: %d processes, %lld sequences each per step\n", dist.world(),
                 (long long)(o.batch / dist.world()));
  }
  StopSignalGuard guard;
  const auto outcome = trainer.run(dist.world() > 1 ? &agreed_stop : &stop_requested(), log);
  if (dist.world() > 1)
    std::fprintf(log, "mpi: gradient all-reduce took %.3f s in all on rank 0\n",
                 dist.comm_seconds());
  switch (outcome) {
    case tr::Trainer::Outcome::Finished:
      std::fprintf(log, "done: %lld steps; model in %s\n", (long long)trainer.step(),
                   (fs::path(o.out) / "final").c_str());
      break;
    case tr::Trainer::Outcome::Stopped:
      std::fprintf(log, "stopped at step %lld (--stop-at); continue with --resume\n",
                   (long long)trainer.step());
      break;
    case tr::Trainer::Outcome::Interrupted:
      std::fprintf(log, "interrupted at step %lld; %s; continue with --resume\n",
                   (long long)trainer.step(),
                   trainer.last_checkpoint().empty()
                       ? "no checkpoint (no step was completed)"
                       : ("checkpoint " + trainer.last_checkpoint()).c_str());
      break;
  }
}

}  // namespace

void register_train(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto flags = std::make_shared<RunFlags>();  // recorded in checkpoints; see --resume
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train on long documents with full back-propagation through the memory (docs/training.md)");
  RunFlags& f = *flags;
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
  cmd->callback([o, flags] {
    train::Distributed dist;  // MPI, when launched by mpirun (docs/distributed.md)
    try {
      run_train(*o, *flags, dist);
    } catch (const train::CollectiveError&) {
      throw;  // every rank throws it at the same point: a normal exit on all ranks
    } catch (const train::NonFiniteError&) {
      throw;  // so does this: every rank holds the same gradient and weights
    } catch (const std::exception& e) {
      dist.abort_on_error(e.what());  // this rank alone: abort all ranks instead of a hang
      throw;
    }
  });
}

}  // namespace infini::cli

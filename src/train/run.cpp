#include "train/run.hpp"

#include <unistd.h>

#include <filesystem>
#include <memory>

#include "core/error.hpp"
#include "io/text.hpp"
#include "io/tokenizer.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"
#include "train/data.hpp"

namespace infini::train {

namespace fs = std::filesystem;

namespace {

// Names the tokenizer in the token cache, so that a cache made with another one is refused.
std::string tokenizer_identity(const std::string& tokenizer_json) {
  if (tokenizer_json.empty()) return "byte";
  return "hf:" + hex64(fnv1a(tokenizer_json.data(), tokenizer_json.size()));
}

struct Start {
  model::Model<float> m;
  std::string tokenizer_json;  // contents; empty for the byte tokenizer
  std::unique_ptr<io::Tokenizer> tok;
};

Start load_start(const TrainRunOptions& o, const std::optional<std::string>& resume_dir) {
  Start s;
  if (resume_dir) {
    s.m = model::load_model(*resume_dir);
    s.tokenizer_json = model::read_tokenizer_json(*resume_dir);
    s.tok = io::load_tokenizer_for_model(*resume_dir);
    return s;
  }
  if (o.config.empty() == o.model.empty())
    throw Error("give exactly one of --config (fresh model) and --model (continue a model)");
  if (o.data.empty()) throw Error("--data is required");
  if (!o.config.empty()) {
    model::InitOptions init;
    init.seed = o.seed;
    init.init_std = o.init_std;
    init.gate_init = o.gate_init;
    s.m = model::init_model(model::load_config(o.config), init);
    if (!o.tokenizer.empty()) {
      s.tokenizer_json = io::read_file(o.tokenizer);
      s.tok = io::load_hf_tokenizer(o.tokenizer);
    } else {
      s.tok = std::make_unique<io::ByteTokenizer>();
    }
    return s;
  }
  if (!o.tokenizer.empty())
    throw Error("--tokenizer is only for --config; a --model uses its own tokenizer.json");
  s.m = model::load_model(o.model, {true, o.gate_init});
  s.tokenizer_json = model::read_tokenizer_json(o.model);
  s.tok = io::load_tokenizer_for_model(o.model);
  return s;
}

void check_options(TrainRunOptions& o, const Start& s, const Distributed& dist) {
  if (o.batch % (int64_t(dist.world()) * o.grad_accum) != 0)
    throw Error("--batch " + std::to_string(o.batch) + " (the global batch) must be a multiple "
                "of " + std::to_string(dist.world()) + " MPI processes x --grad-accum " +
                std::to_string(o.grad_accum));
  if (s.tok->vocab_size() > s.m.config.vocab_size)
    throw Error("the tokenizer has " + std::to_string(s.tok->vocab_size()) +
                " ids but the model's vocab_size is " + std::to_string(s.m.config.vocab_size));
  if (s.tok->eos_id() < 0)
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
}

// Reads the corpus. --out is made first (the token cache lives there); a run that made it and
// then fails on its data removes again what it made, new parent directories included, so a
// bad --data leaves nothing behind.
Corpus read_corpus(const TrainRunOptions& o, const io::Tokenizer& tok,
                   const std::string& tokenizer_json, const Distributed& dist, std::FILE* log) {
  DataOptions dopt;
  dopt.train_paths = o.data;
  dopt.val_paths = o.val_data;
  dopt.val_fraction = o.val_fraction;
  dopt.cache_path =
      o.token_cache.empty() ? (fs::path(o.out) / "tokens.bin").string() : o.token_cache;
  // Only rank 0 writes into --out; other ranks tokenize in memory (no race on the cache).
  if (dist.rank() != 0) dopt.cache_path.clear();
  dopt.tokenizer_id = tokenizer_identity(tokenizer_json);
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
  Corpus corpus;
  try {
    corpus = load_corpus(tok, dopt, &data_log);
  } catch (...) {
    std::error_code ec;
    if (!made_root.empty()) fs::remove_all(made_root, ec);
    throw;
  }
  std::fputs(data_log.c_str(), log);
  return corpus;
}

TrainOptions trainer_options(const TrainRunOptions& o, const nlohmann::json& run_record,
                             const Distributed& dist, std::FILE* log) {
  TrainOptions to;
  to.out = o.out;
  to.steps = o.steps;
  to.stop_at = o.stop_at;
  to.batch = o.batch;
  to.seq_len = o.seq_len;
  to.grad_accum = o.grad_accum;
  to.bptt_segments = o.bptt_segments;
  to.keep_activations_bytes = o.activation_mb << 20;
  to.grad_clip = o.grad_clip;
  to.schedule = {parse_schedule(o.schedule), o.warmup, o.steps, o.min_lr_ratio};
  to.adam = {o.adam_beta1, o.adam_beta2, o.adam_eps};
  to.save_every = o.save_every;
  to.eval_every = o.eval_every;
  to.keep = o.keep;
  to.log_every = o.log_every;
  to.val_tokens = o.val_tokens;
  to.progress_bar = dist.rank() == 0 && ::isatty(::fileno(log)) != 0;
  to.rank = dist.rank();
  to.world = dist.world();
  to.run_record = run_record;
  to.precision = model::parse_precision(o.precision, "--precision");
  return to;
}

}  // namespace

void check_tokens_per_step(int64_t batch, int64_t len, const std::string& len_flag) {
  if (batch * len > (int64_t(1) << 28))
    throw Error("--batch x " + len_flag + " (" + std::to_string(batch * len) +
                " tokens per step) is above the limit of 2^28");
}

TrainRunResult run_training(TrainRunOptions o, const nlohmann::json& run_record,
                            const std::optional<std::string>& resume_dir, Distributed& dist,
                            const std::function<void(const nlohmann::json&)>& on_step,
                            const std::atomic<bool>* interrupt, std::FILE* log,
                            const std::function<void()>& before_steps) {
  // Under MPI only rank 0 talks; the others' log lines go nowhere.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> quiet(
      dist.rank() == 0 ? nullptr : std::fopen("/dev/null", "w"), &std::fclose);
  if (quiet) log = quiet.get();
  Start s = load_start(o, resume_dir);
  // Data parallel: every rank must train the same run (collective checks, fail on all ranks).
  {
    nlohmann::json rec = run_record;
    rec["--stop-at"] = o.stop_at;
    rec["--resume"] = resume_dir.has_value();
    dist.check_same(hash_text(rec.dump()), "the training flags");
    dist.check_same(hash_text(model::config_to_json(s.m.config).dump()), "the model config");
  }
  check_options(o, s, dist);
  Corpus corpus = read_corpus(o, *s.tok, s.tokenizer_json, dist, log);
  dist.check_same(hash_text(corpus.fingerprint),
                  "the training data (--data/--val-data files, their contents or the tokenizer)");
  WindowSource source(corpus.train, s.tok->eos_id(), o.seq_len, o.seed, corpus.fingerprint);
  std::fprintf(log,
               "data: %zu train documents (%lld tokens, %lld windows of %lld per epoch), %zu "
               "validation documents (%lld tokens)\n",
               corpus.train.size(), (long long)corpus.train_tokens(),
               (long long)source.windows_per_epoch(), (long long)o.seq_len, corpus.val.size(),
               (long long)corpus.val_tokens());
  std::fprintf(log, "model: %lld parameters, segment %lld, %s; %lld segments per sequence\n",
               (long long)s.m.layout.total, (long long)s.m.config.segment_length,
               s.m.config.use_memory ? model::memory_update_name(s.m.config.memory_update)
                                     : "no memory (local attention only)",
               (long long)((o.seq_len + s.m.config.segment_length - 1) /
                           s.m.config.segment_length));

  auto groups = model_param_groups(s.m.layout, o.lr, o.gate_lr, o.weight_decay);
  FullModelTrainable trainable(std::move(s.m), s.tokenizer_json);
  // A stop request ends the run only once every rank has seen it, at the same step.
  std::atomic<bool> agreed_stop{false};
  TrainHooks hooks;
  if (dist.world() > 1)
    hooks.after_step_gradient = [&dist](StepGradient& sg) { dist.allreduce_gradient(sg); };
  hooks.on_step = [&](const nlohmann::json& line) {
    if (on_step) on_step(line);
    if (dist.world() > 1) agreed_stop = dist.any(interrupt && interrupt->load());
  };
  Trainer trainer(trainable, std::move(groups), source, std::move(corpus.val),
                  trainer_options(o, run_record, dist, log), hooks);
  if (resume_dir) {
    trainer.resume_from(*resume_dir);
    std::fprintf(log, "resumed from %s (step %lld)\n", resume_dir->c_str(),
                 (long long)trainer.step());
  }
  if (dist.world() > 1) {
    const uint64_t wh = fnv1a(trainable.params(), size_t(trainable.size()) * sizeof(float),
                              uint64_t(trainer.step()) + 0x9e3779b97f4a7c15ULL);
    dist.check_same(wh, "the starting weights (or the --resume checkpoint's step)");
    std::fprintf(log, "mpi: %d processes, %lld sequences each per step\n", dist.world(),
                 (long long)(o.batch / dist.world()));
  }
  if (before_steps) before_steps();
  TrainRunResult r;
  r.outcome = trainer.run(dist.world() > 1 ? &agreed_stop : interrupt, log);
  r.step = trainer.step();
  r.last_checkpoint = trainer.last_checkpoint();
  if (dist.world() > 1)
    std::fprintf(log, "mpi: gradient all-reduce took %.3f s in all on rank 0\n",
                 dist.comm_seconds());
  switch (r.outcome) {
    case Trainer::Outcome::Finished:
      r.final_dir = (fs::path(o.out) / "final").string();
      std::fprintf(log, "done: %lld steps; model in %s\n", (long long)r.step,
                   r.final_dir.c_str());
      break;
    case Trainer::Outcome::Stopped:
      std::fprintf(log, "stopped at step %lld (--stop-at); continue with --resume\n",
                   (long long)r.step);
      break;
    case Trainer::Outcome::Interrupted:
      std::fprintf(log, "interrupted at step %lld; %s; continue with --resume\n",
                   (long long)r.step,
                   r.last_checkpoint.empty() ? "no checkpoint (no step was completed)"
                                             : ("checkpoint " + r.last_checkpoint).c_str());
      break;
  }
  return r;
}

}  // namespace infini::train

// infini train: long-document training with full BPTT (the library is src/train/).
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
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

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

// First SIGINT/SIGTERM: finish the step, checkpoint, exit 0. A second one kills at once
// (the checkpoint protocol keeps the previous checkpoint intact).
extern "C" void on_stop_signal(int sig) {
  if (g_stop.exchange(true)) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

class SignalGuard {
 public:
  SignalGuard() {
    g_stop = false;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

struct Opts {
  std::string config, model, tokenizer, out, token_cache, schedule = "cosine";
  std::vector<std::string> data, val_data;
  double val_fraction = 0.05, lr = 3e-4, gate_lr = 1e-2, weight_decay = 0.1, grad_clip = 1.0;
  double min_lr_ratio = 0.1, init_std = 0.02, gate_init = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.95, adam_eps = 1e-8;
  int64_t seq_len = 2048, batch = 8, steps = 1000, warmup = -1, grad_accum = 1;
  int64_t bptt_segments = 0, save_every = 500, eval_every = 500, keep = 3, log_every = 10;
  int64_t val_tokens = 65536, stop_at = 0;
  uint64_t seed = 0;
  bool resume = false;
};

// A flag that shapes the training trajectory: recorded in trainer.json; on --resume a given
// value must match the record, and an omitted one is taken from it.
struct Tracked {
  CLI::Option* opt;
  std::function<nlohmann::json()> get;
  std::function<void(const nlohmann::json&)> set;
};

template <class T>
Tracked track(CLI::Option* o, T& ref) {
  return {o, [&ref] { return nlohmann::json(ref); },
          [&ref](const nlohmann::json& j) { ref = j.get<T>(); }};
}

std::string tokenizer_identity(const std::string& tokenizer_json) {
  if (tokenizer_json.empty()) return "byte";
  return "hf:" + train::hex64(train::fnv1a(tokenizer_json.data(), tokenizer_json.size()));
}

void run_train(Opts& o, std::vector<Tracked>& tracked, CLI::Option* steps_opt,
               train::Distributed& dist) {
  namespace tr = infini::train;
  // Under MPI only rank 0 talks; the others' log lines go nowhere.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> quiet(
      dist.rank() == 0 ? nullptr : std::fopen("/dev/null", "w"), &std::fclose);
  std::FILE* log = quiet ? quiet.get() : stderr;
  model::Model<float> m;
  std::string tokenizer_json;  // contents; empty for the byte tokenizer
  std::unique_ptr<io::Tokenizer> tok;
  std::optional<std::string> resume_dir;

  if (o.resume) {
    resume_dir = tr::find_latest_checkpoint(o.out);
    if (!resume_dir) throw Error("--resume: no complete checkpoint in " + o.out);
    const auto st = nlohmann::json::parse(
        io::read_file((fs::path(*resume_dir) / "trainer.json").string()), nullptr, false);
    if (st.is_discarded() || !st.contains("args") || !st["args"].is_object())
      throw Error(*resume_dir + "/trainer.json has no record of the run's flags");
    const nlohmann::json& rec = st["args"];
    for (auto& t : tracked) {
      const std::string key = t.opt->get_name();
      if (!rec.contains(key)) throw Error(*resume_dir + "/trainer.json has no record of " + key);
      if (t.opt->count() > 0 && t.get() != rec[key])
        throw Error(key + " " + t.get().dump() + " differs from the checkpoint's " +
                    rec[key].dump() + " (a resumed run must repeat the run's settings)");
      t.set(rec[key]);
    }
    if (steps_opt->count() == 0 && rec.contains("--steps")) o.steps = rec["--steps"].get<int64_t>();
    if (rec.contains("--steps") && rec["--steps"].get<int64_t>() != o.steps)
      std::fprintf(log, "note: --steps changed from %lld to %lld; the schedule changes with it\n",
                   (long long)rec["--steps"].get<int64_t>(), (long long)o.steps);
    if (st.value("omp_threads", 0) != omp_get_max_threads())
      std::fprintf(log, "note: the checkpoint was written with %d threads, this run uses %d; "
                   "results will not be bit-identical to an uninterrupted run\n",
                   st.value("omp_threads", 0), omp_get_max_threads());
    m = model::load_model(*resume_dir);
    const fs::path tj = fs::path(*resume_dir) / "tokenizer.json";
    if (fs::exists(tj)) tokenizer_json = io::read_file(tj.string());
    tok = io::load_tokenizer_for_model(*resume_dir);
  } else {
    if (o.config.empty() == o.model.empty())
      throw Error("give exactly one of --config (fresh model) and --model (continue a model)");
    if (o.data.empty()) throw Error("--data is required");
    if (tr::find_latest_checkpoint(o.out))
      throw Error("--out " + o.out + " already holds checkpoints; add --resume to continue "
                  "that run or choose another --out");
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
    nlohmann::json rec;
    for (auto& t : tracked) rec[t.opt->get_name()] = t.get();
    rec["--steps"] = o.steps;
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
  if (o.batch * o.seq_len > (int64_t(1) << 28))
    throw Error("--batch x --seq-len (" + std::to_string(o.batch * o.seq_len) +
                " tokens per step) is above the limit of 2^28");

  tr::DataOptions dopt;
  dopt.train_paths = o.data;
  dopt.val_paths = o.val_data;
  dopt.val_fraction = o.val_fraction;
  dopt.cache_path = o.token_cache.empty() ? (fs::path(o.out) / "tokens.bin").string() : o.token_cache;
  // Only rank 0 writes into --out; other ranks tokenize in memory (no race on the cache).
  if (dist.rank() != 0) dopt.cache_path.clear();
  dopt.tokenizer_id = tokenizer_identity(tokenizer_json);
  if (dist.rank() == 0) {
    std::error_code ec;
    fs::create_directories(o.out, ec);
    if (!fs::is_directory(o.out)) throw Error("cannot create --out " + o.out);
  }
  std::string data_log;
  tr::Corpus corpus = tr::load_corpus(*tok, dopt, &data_log);
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
  for (auto& t : tracked) to.run_record[t.opt->get_name()] = t.get();
  to.run_record["--steps"] = o.steps;

  auto groups = tr::model_param_groups(m.layout, o.lr, o.gate_lr, o.weight_decay);
  tr::FullModelTrainable trainable(std::move(m), tokenizer_json);
  // A stop signal ends the run only once every rank has seen it, at the same step.
  std::atomic<bool> agreed_stop{false};
  tr::TrainHooks hooks;
  if (dist.world() > 1) {
    hooks.after_step_gradient = [&dist](tr::StepGradient& sg) { dist.allreduce_gradient(sg); };
    hooks.on_step = [&](const nlohmann::json&) { agreed_stop = dist.any(g_stop.load()); };
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
  SignalGuard guard;
  const auto outcome = trainer.run(dist.world() > 1 ? &agreed_stop : &g_stop, log);
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
  auto tracked = std::make_shared<std::vector<Tracked>>();
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train on long documents with full back-propagation through the memory (docs/training.md)");
  auto& t = *tracked;
  auto range = [](double lo, double hi) { return CLI::Range(lo, hi); };

  t.push_back(track(cmd->add_option("--config", o->config,
                                    "Start a fresh model from this config.json (SPEC §5)")
                        ->check(CLI::ExistingFile),
                    o->config));
  t.push_back(track(cmd->add_option("--model", o->model,
                                    "Start from this model directory (continual pre-training)")
                        ->check(CLI::ExistingDirectory),
                    o->model));
  t.push_back(track(cmd->add_option("--tokenizer", o->tokenizer,
                                    "tokenizer.json for a fresh --config model (default: the "
                                    "byte tokenizer); copied into every checkpoint")
                        ->check(CLI::ExistingFile),
                    o->tokenizer));
  t.push_back(track(cmd->add_option("--data", o->data,
                                    "Training text: files or directories (recursive); each "
                                    "file is one document"),
                    o->data));
  t.push_back(track(cmd->add_option("--val-data", o->val_data,
                                    "Validation documents (files or directories); default: "
                                    "held out of --data by --val-fraction"),
                    o->val_data));
  t.push_back(track(cmd->add_option("--val-fraction", o->val_fraction,
                                    "Without --val-data: share of documents held out (evenly "
                                    "spread); with too few documents, the tail of the last one")
                        ->capture_default_str()
                        ->check(range(0.0, 0.9)),
                    o->val_fraction));
  cmd->add_option("--out", o->out,
                  "Run directory: checkpoints/, latest, final/, metrics.jsonl, loss.svg, "
                  "tokens.bin")
      ->required();
  cmd->add_option("--token-cache", o->token_cache,
                  "Binary token cache (default OUT/tokens.bin); share it between runs on the "
                  "same data");
  t.push_back(track(cmd->add_option("--seq-len", o->seq_len,
                                    "Tokens per training sequence (a window of the documents)")
                        ->capture_default_str()
                        ->check(CLI::Range(int64_t(2), int64_t(1) << 24)),
                    o->seq_len));
  t.push_back(track(cmd->add_option("--batch", o->batch,
                                    "Sequences per optimizer step (the global batch)")
                        ->capture_default_str()
                        ->check(CLI::Range(int64_t(1), int64_t(65536))),
                    o->batch));
  auto* steps_opt = cmd->add_option("--steps", o->steps,
                                    "Total optimizer steps (also the length of the schedule)")
                        ->capture_default_str()
                        ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  t.push_back(track(cmd->add_option("--lr", o->lr,
                                    "Peak learning rate of matrices, embeddings, norms, biases")
                        ->capture_default_str()
                        ->check(range(1e-12, 10.0)),
                    o->lr));
  t.push_back(track(cmd->add_option("--gate-lr", o->gate_lr,
                                    "Peak learning rate of the memory gates beta (no weight "
                                    "decay); larger than --lr so gates can leave 0.5")
                        ->capture_default_str()
                        ->check(range(0.0, 100.0)),
                    o->gate_lr));
  t.push_back(track(cmd->add_option("--warmup", o->warmup,
                                    "Linear warm-up steps (-1: min(100, steps/10))")
                        ->capture_default_str()
                        ->check(CLI::Range(int64_t(-1), int64_t(1) << 40)),
                    o->warmup));
  t.push_back(track(cmd->add_option("--schedule", o->schedule,
                                    "After warm-up: cosine (down to --min-lr-ratio) or constant")
                        ->capture_default_str()
                        ->check(CLI::IsMember({"cosine", "constant"})),
                    o->schedule));
  t.push_back(track(cmd->add_option("--min-lr-ratio", o->min_lr_ratio,
                                    "Cosine schedule: final learning rate as a fraction of peak")
                        ->capture_default_str()
                        ->check(range(0.0, 1.0)),
                    o->min_lr_ratio));
  t.push_back(track(cmd->add_option("--weight-decay", o->weight_decay,
                                    "AdamW decoupled weight decay of matrices and embeddings "
                                    "(never of norms, biases or gates)")
                        ->capture_default_str()
                        ->check(range(0.0, 10.0)),
                    o->weight_decay));
  t.push_back(track(cmd->add_option("--adam-beta1", o->adam_beta1, "AdamW beta1")
                        ->capture_default_str()
                        ->check(range(0.0, 0.999999)),
                    o->adam_beta1));
  t.push_back(track(cmd->add_option("--adam-beta2", o->adam_beta2, "AdamW beta2")
                        ->capture_default_str()
                        ->check(range(0.0, 0.999999)),
                    o->adam_beta2));
  t.push_back(track(cmd->add_option("--adam-eps", o->adam_eps, "AdamW epsilon")
                        ->capture_default_str()
                        ->check(range(1e-30, 1.0)),
                    o->adam_eps));
  t.push_back(track(cmd->add_option("--grad-clip", o->grad_clip,
                                    "Clip the global gradient norm to this (0: no clipping)")
                        ->capture_default_str()
                        ->check(range(0.0, 1e6)),
                    o->grad_clip));
  t.push_back(track(cmd->add_option("--grad-accum", o->grad_accum,
                                    "Micro-batches per step (must divide --batch); same "
                                    "gradient, less memory")
                        ->capture_default_str()
                        ->check(CLI::Range(int64_t(1), int64_t(65536))),
                    o->grad_accum));
  t.push_back(track(cmd->add_option("--bptt-segments", o->bptt_segments,
                                    "0: full back-propagation through M and z across the whole "
                                    "sequence; K: cut the memory gradient every K segments")
                        ->capture_default_str()
                        ->check(CLI::Range(int64_t(0), int64_t(1) << 30)),
                    o->bptt_segments));
  t.push_back(track(cmd->add_option("--seed", o->seed,
                                    "Seed of the initial weights and of the data order")
                        ->capture_default_str(),
                    o->seed));
  t.push_back(track(cmd->add_option("--init-std", o->init_std,
                                    "Fresh model: std-dev of the normal init of weight matrices")
                        ->capture_default_str()
                        ->check(range(0.0, 10.0)),
                    o->init_std));
  t.push_back(track(cmd->add_option("--gate-init", o->gate_init,
                                    "Initial beta of a fresh model (or of a --model without "
                                    "gates); sigmoid(beta) weights memory")
                        ->capture_default_str()
                        ->check(range(-30.0, 30.0)),
                    o->gate_init));
  cmd->add_option("--save-every", o->save_every,
                  "Checkpoint every N steps (0: only at the end or on interrupt)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->add_option("--keep", o->keep,
                  "Checkpoints kept in OUT/checkpoints; older ones are deleted after a new one "
                  "is complete")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1000000)));
  cmd->add_option("--eval-every", o->eval_every,
                  "Validation loss/perplexity every N steps and at the end (0: never)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->add_option("--val-tokens", o->val_tokens,
                  "Validation reads at most this many tokens (whole documents in order, the "
                  "last one cut; 0: all)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->add_option("--log-every", o->log_every,
                  "A log line every N steps when stderr is not a terminal")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  cmd->add_flag("--resume", o->resume,
                "Continue from the latest complete checkpoint in --out; omitted flags are taken "
                "from it, given ones must match it (--steps may change)");
  cmd->add_option("--stop-at", o->stop_at,
                  "End after this step with a checkpoint, as if interrupted (schedule unchanged; "
                  "0: run to --steps)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->callback([o, tracked, steps_opt] {
    train::Distributed dist;  // MPI, when launched by mpirun (docs/distributed.md)
    try {
      run_train(*o, *tracked, steps_opt, dist);
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

// infini passkey: the passkey-retrieval task (docs/passkey.md).
//   passkey train   fine-tune (full or LoRA) or train from scratch on generated prompts
//   passkey eval    accuracy over a (length x depth) grid, streamed through the memory
//   passkey sample  print one generated prompt
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/error.hpp"
#include "io/text.hpp"
#include "io/tokenizer.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "model/packed_weights.hpp"
#include "tasks/lora_trainable.hpp"
#include "tasks/passkey.hpp"
#include "tasks/passkey_eval.hpp"
#include "train/run.hpp"
#include "train/background_state.hpp"
#include "train/checkpoint.hpp"
#include "train/optimizer.hpp"
#include "train/trainer.hpp"

namespace infini::cli {

namespace fs = std::filesystem;

namespace {

std::vector<int64_t> parse_lengths(const std::string& s, const std::string& flag) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ','))
    if (!part.empty()) v.push_back(tasks::parse_length(part, flag));
  if (v.empty()) throw Error(flag + ": no lengths given");
  return v;
}

std::vector<double> parse_depths(const std::string& s, const std::string& flag) {
  std::vector<double> v;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if (part.empty()) continue;
    size_t used = 0;
    double d = 0;
    try {
      d = std::stod(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != part.size() || !(d >= 0 && d <= 1))
      throw Error(flag + ": '" + part + "' is not a depth in [0, 1]");
    v.push_back(d);
  }
  if (v.empty()) throw Error(flag + ": no depths given");
  return v;
}

std::shared_ptr<const io::Tokenizer> tokenizer_for(const std::string& model_dir) {
  return std::shared_ptr<const io::Tokenizer>(io::load_tokenizer_for_model(model_dir));
}

// Memory gates per layer and head: sigmoid(beta), the share each head reads from memory.
nlohmann::json gate_table(const model::Model<float>& m) { return model::memory_gates(m); }

std::string gate_text(const model::Model<float>& m) {
  std::string s;
  const nlohmann::json g = gate_table(m);
  for (size_t l = 0; l < g.size(); ++l) {
    s += "  layer " + std::to_string(l) + ":";
    for (const auto& v : g[l]) {
      char b[16];
      std::snprintf(b, sizeof b, " %.3f", v.get<double>());
      s += b;
    }
    s += "\n";
  }
  return s;
}

// ---------------------------------------------------------------------------------------
// passkey train

struct TrainOpts {
  std::string config, model, tokenizer, out, loss = "answer", schedule = "cosine";
  std::string precision = "fp32";
  std::string eval_lengths = "1K,4K,16K", eval_depths = "0,0.5,1";
  int64_t steps = 2000, batch = 8, min_len = 256, max_len = 2048, curriculum = 0, len_multiple = 1;
  int64_t warmup = -1, save_every = 500, keep = 3, log_every = 10, eval_every = 250;
  int64_t activation_mb = default_activation_memory_mb();
  int64_t eval_trials = 4, bptt_segments = 0, digits = 5, lora_rank = 0, stop_at = 0;
  double lr = 1e-3, gate_lr = 1e-1, weight_decay = 0.0, grad_clip = 1.0, min_lr_ratio = 0.1;
  double init_std = 0.02, gate_init = 0.0, lora_alpha = 16.0, end_fraction = 0.0;
  // State passing (train/background_state.hpp): chains of filler read without gradient.
  int64_t background_chains = 0, background_per_step = 0;
  std::string background_max = "2M";
  double background_share = 0.5;
  uint64_t seed = 0;
  bool resume = false;

};

void run_passkey_train(TrainOpts& o, RunFlags& flags) {
  namespace tr = infini::train;
  std::FILE* log = stderr;
  const std::optional<std::string> resume_dir = prepare_resume(o.out, o.resume, flags, log);
  if (o.config.empty() == o.model.empty())
    throw Error("give exactly one of --config (train from scratch) and --model (fine-tune)");
  if (o.lora_rank > 0 && o.model.empty())
    throw Error("--lora-rank needs --model: LoRA adapts an existing model");
  if (o.warmup < 0) o.warmup = std::min<int64_t>(100, o.steps / 10);
  if (o.warmup >= o.steps && o.steps > 1) throw Error("--warmup must be less than --steps");
  train::check_tokens_per_step(o.batch, o.max_len, "--max-len");

  // The model and its tokenizer.
  model::Model<float> m;
  std::string tokenizer_json;
  std::shared_ptr<const io::Tokenizer> tok;
  if (!o.config.empty()) {
    model::InitOptions io;
    io.seed = o.seed;
    io.init_std = o.init_std;
    io.gate_init = o.gate_init;
    m = model::init_model(model::load_config(o.config), io);
    if (!o.tokenizer.empty()) {
      tokenizer_json = io::read_file(o.tokenizer);
      tok = std::shared_ptr<const io::Tokenizer>(io::load_hf_tokenizer(o.tokenizer));
    } else {
      tok = std::make_shared<io::ByteTokenizer>();
    }
  } else {
    if (!o.tokenizer.empty()) throw Error("--tokenizer is only for --config");
    m = model::load_model(o.model, {true, o.gate_init});
    tokenizer_json = model::read_tokenizer_json(o.model);
    tok = tokenizer_for(o.model);
  }
  if (tok->vocab_size() > m.config.vocab_size)
    throw Error("the tokenizer has " + std::to_string(tok->vocab_size()) +
                " ids but the model's vocab_size is " + std::to_string(m.config.vocab_size));

  auto gen = std::make_shared<tasks::PasskeyGenerator>(tok, int(o.digits));
  tasks::PasskeySourceOptions so;
  so.min_len = o.min_len;
  so.max_len = o.max_len;
  so.curriculum_steps = o.curriculum;
  so.len_multiple = o.len_multiple;
  so.loss = tasks::parse_passkey_loss(o.loss);
  so.end_fraction = o.end_fraction;
  so.seed = o.seed;
  tasks::PasskeySource passkey_source(gen, so);

  std::unique_ptr<tr::Trainable> trainable;
  std::vector<tr::ParamGroup> groups;
  if (o.lora_rank > 0) {
    auto lt = std::make_unique<tasks::LoraTrainable>(
        std::move(m), model::LoraConfig{o.lora_rank, o.lora_alpha}, o.seed, tokenizer_json,
        o.model);
    groups = lt->param_groups(o.lr, o.gate_lr);
    std::fprintf(log, "LoRA: rank %lld, alpha %g on q/k/v/o of %lld layers: %lld trainable "
                 "values (adapters and gates)\n",
                 (long long)o.lora_rank, o.lora_alpha, (long long)lt->base().config.num_layers,
                 (long long)lt->size());
    trainable = std::move(lt);
  } else {
    groups = tr::model_param_groups(m.layout, o.lr, o.gate_lr, o.weight_decay);
    trainable = std::make_unique<tr::FullModelTrainable>(std::move(m), tokenizer_json);
  }
  const model::ModelConfig& cfg = trainable->forward_model().config;
  tr::BackgroundOptions bo;
  bo.chains = o.background_chains;
  bo.tokens_per_step = o.background_per_step > 0 ? o.background_per_step : 16 * cfg.segment_length;
  bo.max_tokens = tasks::parse_length(o.background_max, "--background-max-tokens");
  bo.share = o.background_share;
  bo.seed = o.seed;
  tr::Trainable* tp = trainable.get();
  tr::BackgroundStateSource source(
      passkey_source, cfg, [tp]() -> const model::Model<float>& { return tp->forward_model(); },
      [gen](int64_t start, int64_t count, int32_t* out) { gen->filler_tokens(start, count, out); },
      bo);
  if (bo.chains > 0)
    std::fprintf(log,
                 "state passing: %lld of every %lld rows start from one of %lld filler chains, "
                 "each reading %lld more tokens per step (no gradient) and restarting after "
                 "%lld..%lld tokens\n",
                 (long long)std::llround(bo.share * double(o.batch)), (long long)o.batch,
                 (long long)bo.chains, (long long)bo.tokens_per_step,
                 (long long)(bo.max_tokens / 2), (long long)bo.max_tokens);
  std::fprintf(log,
               "passkey train: %lld-digit keys, lengths %lld..%lld tokens (%lld..%lld segments "
               "of %lld), loss on %s tokens, %s\n",
               (long long)o.digits, (long long)o.min_len, (long long)o.max_len,
               (long long)((o.min_len + cfg.segment_length - 1) / cfg.segment_length),
               (long long)((o.max_len + cfg.segment_length - 1) / cfg.segment_length),
               (long long)cfg.segment_length, o.loss.c_str(),
               cfg.use_memory ? model::memory_update_name(cfg.memory_update)
                              : "no memory (local attention only)");

  tr::TrainOptions to;
  to.out = o.out;
  to.steps = o.steps;
  to.stop_at = o.stop_at;
  to.batch = o.batch;
  to.seq_len = o.max_len;
  to.bptt_segments = o.bptt_segments;
  to.keep_activations_bytes = o.activation_mb << 20;
  to.grad_clip = o.grad_clip;
  to.schedule = {tr::parse_schedule(o.schedule), o.warmup, o.steps, o.min_lr_ratio};
  to.save_every = o.save_every;
  to.keep = o.keep;
  to.log_every = o.log_every;
  to.run_record = flags.record();
  to.precision = model::parse_precision(o.precision, "--precision");

  // Passkey accuracy during training: a small grid every --eval-every steps, appended to
  // OUT/passkey_eval.jsonl.
  tasks::PasskeyEvalOptions eo;
  eo.lengths = parse_lengths(o.eval_lengths, "--eval-lengths");
  eo.depths = parse_depths(o.eval_depths, "--eval-depths");
  eo.trials = o.eval_trials;
  eo.seed = o.seed + 1000003;
  eo.precision = to.precision;
  const std::string eval_log = (fs::path(o.out) / "passkey_eval.jsonl").string();
  tr::TrainHooks hooks;
  hooks.on_step = [&, tp](const nlohmann::json& line) {
    const int64_t step = line.at("step").get<int64_t>();
    if (o.eval_every <= 0 || (step % o.eval_every != 0 && step != o.steps)) return;
    const model::Model<float>& fm = tp->forward_model();
    const tasks::PasskeyEvalResult r = tasks::evaluate_passkey(fm, *gen, eo);
    nlohmann::json j = {{"step", step}, {"gates", gate_table(fm)}};
    j.update(r.to_json());
    std::ofstream(eval_log, std::ios::app) << j.dump() << "\n";
    std::string cells;
    for (const auto& c : r.cells) {
      char b[64];
      std::snprintf(b, sizeof b, " %s@%g:%.0f%%", tasks::length_label(c.length).c_str(), c.depth,
                    100 * c.accuracy());
      cells += b;
    }
    std::fprintf(log, "passkey at step %lld: exact %.1f%% digits %.1f%% |%s\n", (long long)step,
                 100 * r.accuracy(), 100 * r.digit_accuracy(), cells.c_str());
    std::fflush(log);
  };

  tr::Trainer trainer(*trainable, std::move(groups), source, {}, to, hooks);
  if (resume_dir) {
    trainer.resume_from(*resume_dir);
    std::fprintf(log, "resumed from %s (step %lld)\n", resume_dir->c_str(),
                 (long long)trainer.step());
  }
  const auto outcome = [&] {
    StopSignalGuard guard;
    return trainer.run(&stop_requested(), log);
  }();
  if (outcome == tr::Trainer::Outcome::Finished) {
    std::fprintf(log, "done: %lld steps; model in %s\n", (long long)trainer.step(),
                 (fs::path(o.out) / "final").c_str());
    std::fprintf(log, "memory gates sigmoid(beta) per layer and head:\n%s",
                 gate_text(trainable->forward_model()).c_str());
  } else {
    std::fprintf(log, "stopped at step %lld; continue with --resume\n", (long long)trainer.step());
  }
}

void register_passkey_train(CLI::App& parent) {
  auto o = std::make_shared<TrainOpts>();
  auto flags = std::make_shared<RunFlags>();  // recorded in checkpoints; see --resume
  RunFlags& f = *flags;
  CLI::App* cmd = parent.add_subcommand(
      "train",
      "Train on generated passkey prompts. Uses the same trainer as `infini train`: BPTT "
      "through memory, checkpoints and metrics");
  f.trajectory(cmd->add_option("--config", o->config, "Train a fresh model from this config.json")
                   ->check(CLI::ExistingFile),
               o->config);
  f.trajectory(
      cmd->add_option("--model", o->model, "Fine-tune this model directory (full, or LoRA)")
          ->check(CLI::ExistingDirectory),
      o->model);
  f.trajectory(
      cmd->add_option("--tokenizer", o->tokenizer,
                      "tokenizer.json for a fresh --config model (default: the byte tokenizer)")
          ->check(CLI::ExistingFile),
      o->tokenizer);
  cmd->add_option("--out", o->out,
                  "Run directory: checkpoints/, final/, metrics.jsonl, passkey_eval.jsonl")
      ->required();
  f.setting(cmd->add_option("--steps", o->steps, "Optimizer steps")
                ->capture_default_str()
                ->check(CLI::Range(int64_t(1), int64_t(1) << 40)),
            o->steps);
  f.trajectory(cmd->add_option("--batch", o->batch, "Prompts per step (all of one length)")
                   ->capture_default_str()
                   ->check(CLI::Range(int64_t(1), int64_t(4096))),
               o->batch);
  f.trajectory(cmd->add_option("--min-len", o->min_len,
                               "Shortest training sequence (prompt + answer tokens)")
                   ->capture_default_str()
                   ->check(CLI::Range(int64_t(2), int64_t(1) << 24)),
               o->min_len);
  f.trajectory(
      cmd->add_option("--max-len", o->max_len, "Longest training sequence (prompt + answer tokens)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(2), int64_t(1) << 24)),
      o->max_len);
  f.trajectory(
      cmd->add_option("--curriculum-steps", o->curriculum,
                      "Grow the longest length linearly from --min-len to --max-len over this many "
                      "steps (0: no curriculum)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(0), int64_t(1) << 40)),
      o->curriculum);
  f.trajectory(
      cmd->add_option(
             "--len-multiple", o->len_multiple,
             "Round each drawn length down to a multiple of this (e.g. the segment length)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(1), int64_t(1) << 24)),
      o->len_multiple);
  f.trajectory(
      cmd->add_option("--loss", o->loss,
                      "Which predictions count: answer (the answer tokens), recall (the answer and "
                      "the key's second copy in the info line) or all (every token)")
          ->capture_default_str()
          ->check(CLI::IsMember({"answer", "recall", "all"})),
      o->loss);
  f.trajectory(cmd->add_option("--digits", o->digits, "Digits of the passkey")
                   ->capture_default_str()
                   ->check(CLI::Range(int64_t(1), int64_t(18))),
               o->digits);
  f.trajectory_added_later(
      cmd->add_option("--background-chains", o->background_chains,
                      "State passing: keep this many chains of filler text, each read on without "
                      "gradient by the current weights; rows of a batch start from their memory "
                      "instead of the empty one (0: off, every sequence starts empty)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(0), int64_t(1024))),
      o->background_chains);
  f.trajectory_added_later(
      cmd->add_option("--background-tokens-per-step", o->background_per_step,
                      "Filler tokens each chain reads per step, a multiple of the segment length "
                      "(0: 16 segments)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(0), int64_t(1) << 30)),
      o->background_per_step);
  f.trajectory_added_later(cmd->add_option("--background-max-tokens", o->background_max,
                               "A chain restarts from the empty memory after a cycle whose length "
                               "is drawn uniformly in [this/2, this] (e.g. 2M)")
                   ->capture_default_str(),
               o->background_max);
  f.trajectory_added_later(cmd->add_option("--background-share", o->background_share,
                               "Share of each batch's rows that start from a chain's memory")
                   ->capture_default_str()
                   ->check(CLI::Range(0.0, 1.0)),
               o->background_share);
  f.trajectory(
      cmd->add_option("--end-fraction", o->end_fraction,
                      "Share of samples with the passkey at depth 1, right before the question "
                      "(the case local attention must solve; uniform depths rarely draw it)")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 1.0)),
      o->end_fraction);
  f.trajectory(
      cmd->add_option(
             "--lora-rank", o->lora_rank,
             "LoRA rank on q, k, v and o projections (0: full fine-tuning); the gates beta "
             "are trained too")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(0), int64_t(4096))),
      o->lora_rank);
  f.trajectory(
      cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha; the update is (alpha/rank)·B·A")
          ->capture_default_str()
          ->check(CLI::Range(1e-6, 1e6)),
      o->lora_alpha);
  f.trajectory(cmd->add_option("--lr", o->lr, "Peak learning rate (weights, or LoRA adapters)")
                   ->capture_default_str()
                   ->check(CLI::Range(1e-12, 10.0)),
               o->lr);
  f.trajectory(
      cmd->add_option("--gate-lr", o->gate_lr,
                      "Peak learning rate of the memory gates beta (separate and larger, so gates "
                      "can move)")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 100.0)),
      o->gate_lr);
  f.trajectory(cmd->add_option("--weight-decay", o->weight_decay,
                               "AdamW decoupled weight decay of matrices and embeddings")
                   ->capture_default_str()
                   ->check(CLI::Range(0.0, 10.0)),
               o->weight_decay);
  f.trajectory(
      cmd->add_option("--warmup", o->warmup, "Linear warm-up steps (-1: min(100, steps/10))")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(-1), int64_t(1) << 40)),
      o->warmup);
  f.trajectory(cmd->add_option("--schedule", o->schedule, "After warm-up: cosine or constant")
                   ->capture_default_str()
                   ->check(CLI::IsMember({"cosine", "constant"})),
               o->schedule);
  f.trajectory(
      cmd->add_option("--min-lr-ratio", o->min_lr_ratio, "Cosine: final learning rate / peak")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 1.0)),
      o->min_lr_ratio);
  f.trajectory(cmd->add_option("--grad-clip", o->grad_clip, "Global gradient-norm clip (0: none)")
                   ->capture_default_str()
                   ->check(CLI::Range(0.0, 1e6)),
               o->grad_clip);
  f.setting(add_activation_memory_option(cmd, o->activation_mb), o->activation_mb);
  f.trajectory_added_later(add_precision_option(cmd, o->precision), o->precision);
  f.trajectory(
      cmd->add_option(
             "--bptt-segments", o->bptt_segments,
             "0: full BPTT through the memory; K: cut the memory gradient every K segments")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(0), int64_t(1) << 30)),
      o->bptt_segments);
  f.trajectory(
      cmd->add_option("--seed", o->seed, "Seed of the initial weights, adapters and the prompts")
          ->capture_default_str()
          ->check(non_negative_integer()),
      o->seed);
  f.trajectory(cmd->add_option("--init-std", o->init_std, "Fresh model: std-dev of the weight init")
                   ->capture_default_str()
                   ->check(CLI::Range(0.0, 10.0)),
               o->init_std);
  f.trajectory(cmd->add_option("--gate-init", o->gate_init,
                               "Initial beta of a fresh model (or of a --model without gates)")
                   ->capture_default_str()
                   ->check(CLI::Range(-30.0, 30.0)),
               o->gate_init);
  f.setting(cmd->add_option("--save-every", o->save_every,
                            "Checkpoint every N steps (0: only at the end)")
                ->capture_default_str()
                ->check(CLI::Range(int64_t(0), int64_t(1) << 40)),
            o->save_every);
  f.setting(cmd->add_option("--keep", o->keep, "Checkpoints kept")
                ->capture_default_str()
                ->check(CLI::Range(int64_t(1), int64_t(1000000))),
            o->keep);
  f.setting(cmd->add_option("--log-every", o->log_every, "A log line every N steps")
                ->capture_default_str()
                ->check(CLI::Range(int64_t(1), int64_t(1) << 40)),
            o->log_every);
  f.setting(
      cmd->add_option("--eval-every", o->eval_every,
                      "Passkey accuracy on a small grid every N steps and at the end (0: never)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t(0), int64_t(1) << 40)),
      o->eval_every);
  f.setting(
      cmd->add_option("--eval-lengths", o->eval_lengths, "Lengths of that grid (e.g. 1K,4K,16K)")
          ->capture_default_str(),
      o->eval_lengths);
  f.setting(cmd->add_option("--eval-depths", o->eval_depths, "Depths of that grid")
                ->capture_default_str(),
            o->eval_depths);
  f.setting(cmd->add_option("--eval-trials", o->eval_trials, "Keys per cell of that grid")
                ->capture_default_str()
                ->check(CLI::Range(int64_t(1), int64_t(100000))),
            o->eval_trials);
  cmd->add_flag("--resume", o->resume,
                "Continue from the latest complete checkpoint in --out. Omitted flags are taken "
                "from it; given ones must match it, except " +
                    f.setting_names() + " (they may change)");
  cmd->add_option(
         "--stop-at", o->stop_at,
         "End after this step with a checkpoint, as if interrupted (0: run to --steps); not "
         "recorded")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->callback([o, flags] { run_passkey_train(*o, *flags); });
}

// ---------------------------------------------------------------------------------------
// passkey eval

struct EvalOpts {
  std::string model, adapter, lengths = "1K,4K,16K,64K,256K,1M", depths = "0,0.25,0.5,0.75,1";
  std::string plot, precision = "fp32";
  int64_t trials = 5, digits = 5;
  uint64_t seed = 0;
  bool json = false;
};

void run_passkey_eval(const EvalOpts& o) {
  check_output_file(o.plot, "--plot");
  const model::Precision precision = model::parse_precision(o.precision, "--precision");
  model::Model<float> m;
  if (o.adapter.empty()) {
    m = model::load_inference_model(o.model, precision);
  } else {  // merged in float32 first
    m = model::load_model(o.model);
    m = model::to_inference_model(model::lora_merge(m, model::load_lora(o.adapter, m)), precision);
  }
  auto tok = tokenizer_for(o.model);
  tasks::PasskeyGenerator gen(tok, int(o.digits));
  tasks::PasskeyEvalOptions eo;
  eo.lengths = parse_lengths(o.lengths, "--lengths");
  eo.depths = parse_depths(o.depths, "--depths");
  eo.trials = o.trials;
  eo.seed = o.seed;
  eo.precision = precision;
  Stopwatch sw;
  auto progress = [&](const tasks::PasskeyLengthStats& st,
                      const std::vector<tasks::PasskeyCell>& cells) {
    double acc = 0;
    for (const auto& c : cells) acc += c.accuracy();
    std::fprintf(stderr, "length %s: exact %.0f%% over %lld prompts, %.2f s per prompt\n",
                 tasks::length_label(st.length).c_str(), 100 * acc / double(cells.size()),
                 (long long)st.prompts, st.seconds / double(std::max<int64_t>(1, st.prompts)));
  };
  const tasks::PasskeyEvalResult r = tasks::evaluate_passkey(m, gen, eo, progress);
  const std::string title = "passkey retrieval: " + o.model +
                            (o.adapter.empty() ? "" : " + " + o.adapter);
  if (!o.plot.empty()) {
    model::write_file_atomic(o.plot, tasks::passkey_heatmap_svg(r, title));
    std::fprintf(stderr, "heatmap: %s\n", o.plot.c_str());
  }
  if (o.json) {
    nlohmann::json j = r.to_json();
    j["model"] = o.model;
    if (!o.adapter.empty()) j["adapter"] = o.adapter;
    j["seed"] = o.seed;
    j["trials"] = o.trials;
    j["segment_length"] = m.config.segment_length;
    j["memory_update"] = m.config.use_memory ? model::memory_update_name(m.config.memory_update)
                                             : "none";
    j["gates"] = gate_table(m);
    j["seconds"] = sw.seconds();
    j["threads"] = omp_threads();
    j["precision"] = o.precision;
    j["peak_rss_mb"] = peak_rss_mb();
    if (!o.plot.empty()) j["plot"] = o.plot;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s", r.markdown().c_str());
    if (m.config.use_memory)
      std::printf("\nMemory gates sigmoid(beta) per layer and head:\n%s", gate_text(m).c_str());
    std::printf("\n%.1f s in all, %d threads, peak RSS %.0f MB\n", sw.seconds(),
                omp_threads(), peak_rss_mb());
  }
}

void register_passkey_eval(CLI::App& parent) {
  auto o = std::make_shared<EvalOpts>();
  CLI::App* cmd = parent.add_subcommand(
      "eval", "Passkey accuracy over a grid of lengths and depths, streamed through the memory");
  cmd->add_option("--model", o->model, "Model directory")->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter", o->adapter,
                  "LoRA adapter directory (adapter_config.json) applied to --model")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--lengths", o->lengths, "Prompt lengths in tokens, comma-separated; K and M "
                  "suffixes multiply by 1024 and 1048576")
      ->capture_default_str();
  cmd->add_option("--depths", o->depths, "Depths in [0, 1] (fraction of filler before the key)")
      ->capture_default_str();
  cmd->add_option("--trials", o->trials, "Random keys per (length, depth) cell")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1000000)));
  cmd->add_option("--digits", o->digits, "Digits of the passkey")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(18)));
  cmd->add_option("--seed", o->seed, "Seed of the keys")
      ->capture_default_str()
      ->check(non_negative_integer());
  cmd->add_flag("--json", o->json, "Print one JSON object instead of the markdown table");
  add_precision_option(cmd, o->precision);
  cmd->add_option("--plot", o->plot, "Write an SVG heatmap (length x depth) to this file");
  cmd->callback([o] { run_passkey_eval(*o); });
}

// ---------------------------------------------------------------------------------------
// passkey sample

struct SampleOpts {
  std::string model, length = "512";
  double depth = 0.5;
  int64_t digits = 5;
  uint64_t seed = 0;
  bool ids = false;
};

void register_passkey_sample(CLI::App& parent) {
  auto o = std::make_shared<SampleOpts>();
  CLI::App* cmd = parent.add_subcommand("sample", "Print one generated prompt and its answer");
  cmd->add_option("--model", o->model, "Use this model directory's tokenizer (default: bytes)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--length", o->length, "Prompt length in tokens (K/M suffixes allowed)")
      ->capture_default_str();
  cmd->add_option("--depth", o->depth, "Depth in [0, 1]")->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--digits", o->digits, "Digits of the passkey")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(18)));
  cmd->add_option("--seed", o->seed, "Seed of the key")
      ->capture_default_str()
      ->check(non_negative_integer());
  cmd->add_flag("--ids", o->ids, "Print token ids instead of text");
  cmd->callback([o] {
    std::shared_ptr<const io::Tokenizer> tok =
        o->model.empty() ? std::make_shared<io::ByteTokenizer>() : tokenizer_for(o->model);
    tasks::PasskeyGenerator gen(tok, int(o->digits));
    std::mt19937_64 rng(o->seed);
    const int64_t L = tasks::parse_length(o->length, "--length");
    if (L > (int64_t(1) << 22)) throw Error("--length: sample prints at most 4M tokens");
    const tasks::PasskeyPrompt p = gen.make(L, o->depth, gen.random_key(rng));
    const std::vector<int32_t> ids = p.all_tokens();
    if (o->ids) {
      for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
      std::printf("\n");
    } else {
      std::printf("%s\n", tok->decode(ids).c_str());
    }
    std::fprintf(stderr, "key %s, %lld tokens, info line at tokens [%lld, %lld), answer %zu tokens\n",
                 p.key.c_str(), (long long)p.length, (long long)p.info_begin,
                 (long long)p.info_end(), p.answer.size());
  });
}

}  // namespace

void register_passkey(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "passkey", "Passkey retrieval: train, evaluate over lengths and depths, print a sample");
  cmd->require_subcommand(1);
  register_passkey_train(*cmd);
  register_passkey_eval(*cmd);
  register_passkey_sample(*cmd);
}

}  // namespace infini::cli

#include "train/trainer.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/process.hpp"
#include "io/text.hpp"
#include "model/model.hpp"
#include "ops/moe.hpp"
#include "train/checkpoint.hpp"
#include "train/evaluate.hpp"

namespace infini::train {

namespace fs = std::filesystem;

namespace {

std::string duration_text(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long long t = (long long)std::llround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  return buf;
}

bool all_finite(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

}  // namespace

FullModelTrainable::FullModelTrainable(model::Model<float> m, std::string tokenizer_json)
    : model_(std::move(m)), tokenizer_json_(std::move(tokenizer_json)) {}

void FullModelTrainable::map_gradient(const float* model_grad, float* grad) {
  std::copy_n(model_grad, model_.layout.total, grad);
}

void FullModelTrainable::save(const std::string& dir) {
  model::save_model(model_, dir);
  model::write_tokenizer_json(dir, tokenizer_json_);
}

void FullModelTrainable::restore(const std::string& dir) {
  model::Model<float> m = model::load_model(dir);
  if (m.layout.total != model_.layout.total ||
      model::config_to_json(m.config) != model::config_to_json(model_.config))
    throw Error(dir + ": the checkpoint's config.json differs from the model being trained");
  model_.weights = std::move(m.weights);
}

Trainer::Trainer(Trainable& trainable, std::vector<ParamGroup> groups, BatchSource& source,
                 std::vector<Document> val_docs, TrainOptions opts, TrainHooks hooks)
    : trainable_(trainable),
      source_(source),
      val_(std::move(val_docs)),
      opts_(std::move(opts)),
      hooks_(std::move(hooks)),
      opt_(trainable.size(), std::move(groups), opts_.adam),
      ctx_(trainable.forward_model().config) {
  const auto& o = opts_;
  if (o.steps < 1) throw Error("--steps must be at least 1");
  if (o.batch < 1 || o.seq_len < 2) throw Error("--batch must be >= 1 and --seq-len >= 2");
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world || o.batch % o.world != 0)
    throw Error("--batch " + std::to_string(o.batch) + " must divide evenly over " +
                std::to_string(o.world) + " processes");
  if (o.grad_accum < 1 || (o.batch / o.world) % o.grad_accum != 0)
    throw Error("--grad-accum " + std::to_string(o.grad_accum) + " must divide the batch " +
                std::to_string(o.batch / o.world) + " (per process)");
  ctx_.precision = o.precision;
  model_grad_.assign(size_t(trainable.forward_model().layout.total), 0.0f);
  grad_.assign(size_t(trainable.size()), 0.0f);
}

nlohmann::json Trainer::resume_from(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer.json").string();
  const auto st = nlohmann::json::parse(io::read_file(path), nullptr, false);
  if (st.is_discarded() || !st.is_object() || !st.contains("format") ||
      st["format"] != "infini-trainer")
    throw Error(path + " is not a trainer state file");
  if (!st.contains("version") || st["version"] != 1)
    throw Error(path + ": unsupported trainer state version " +
                (st.contains("version") ? st["version"].dump().substr(0, 40) : "(none)") +
                " (this build reads version 1)");
  // Counters must be JSON integers: a float such as 1e30 would not convert to int64_t.
  for (const char* key : {"step", "tokens_seen"})
    if (!st.contains(key) || !(st[key].is_number_integer() || st[key].is_number_unsigned()) ||
        (st[key].is_number_unsigned() && st[key].get<uint64_t>() > uint64_t(INT64_MAX)) ||
        (st[key].is_number_integer() && st[key].get<int64_t>() < 0))
      throw Error(path + ": '" + key + "' is not a non-negative integer");
  try {
    if (st.at("data_fingerprint").get<std::string>() != source_.fingerprint())
      throw Error(path +
                  ": the training data or its order differs from the checkpoint's "
                  "(data files, tokenizer, --seq-len or --seed changed)");
    trainable_.restore(dir);
    opt_.load((fs::path(dir) / "optimizer.safetensors").string());
    source_.restore(st.at("data"));
    step_ = st.at("step").get<int64_t>();
    tokens_seen_ = st.at("tokens_seen").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": malformed trainer state (" + std::string(e.what()) + ")");
  }
  if (opt_.steps_taken() != step_)
    throw Error(path + ": step " + std::to_string(step_) + " but the optimizer has taken " +
                std::to_string(opt_.steps_taken()) + " steps");
  saved_step_ = step_;
  resumed_ = true;
  last_checkpoint_ = dir;
  return st;
}

StepGradient Trainer::compute_gradient(const Batch& b, float* grad) {
  const model::Model<float>& m = trainable_.forward_model();
  const int64_t B = b.batch, T = b.seq_len;
  if (int64_t(b.tokens.size()) != B * T ||
      (!b.loss_mask.empty() && int64_t(b.loss_mask.size()) != B * T))
    throw Error("batch source returned a batch of the wrong size");
  if (!b.initial_state.M.empty() &&
      (b.initial_state.batch != B || b.initial_state.layers != m.config.num_layers ||
       b.initial_state.kv_heads != m.config.num_kv_heads ||
       b.initial_state.head_dim != m.config.head_dim))
    throw Error("batch source returned an initial memory state of the wrong shape");
  for (int32_t t : b.tokens)
    if (t < 0 || t >= m.config.vocab_size)
      throw Error("token id " + std::to_string(t) + " is outside the model's vocabulary (" +
                  std::to_string(m.config.vocab_size) + ")");
  // Scale by the predictions of the GLOBAL batch, so that micro-batches and processes sum.
  int64_t global = B * (T - 1);
  if (!b.loss_mask.empty()) {
    global = 0;
    for (int64_t r = 0; r < B; ++r)
      for (int64_t t = 0; t + 1 < T; ++t) global += b.loss_mask[size_t(r * T + t)] != 0;
  }
  const int64_t local_rows = B / opts_.world, micro = local_rows / opts_.grad_accum;
  std::fill(model_grad_.begin(), model_grad_.end(), 0.0f);
  StepGradient sg;
  sg.step = step_;
  for (int64_t a = 0; a < opts_.grad_accum; ++a) {
    const int64_t row = opts_.rank * local_rows + a * micro;
    model::SequenceOptions so;
    so.bptt_segments = opts_.bptt_segments;
    so.keep_activations_bytes = opts_.keep_activations_bytes;
    // grad_scale 0 would mean "1 / own count"; a batch with no prediction contributes nothing.
    so.grad_scale = global > 0 ? 1.0 / double(global) : 1e-30;
    so.loss_mask = b.loss_mask.empty() ? nullptr : b.loss_mask.data() + row * T;
    // The load-balancing loss is a mean per micro-batch; the step's objective averages them
    // (the language-model gradient is summed over ranks, hence the world size too).
    if (m.config.is_moe() && m.config.output_router_logits)
      so.moe_aux_scale = 1.0 / double(opts_.grad_accum * opts_.world);
    model::MemoryState<float>* start = nullptr;
    if (!b.initial_state.M.empty()) {
      start_ = model::MemoryState<float>::zeros(m.config, micro);
      for (int64_t i = 0; i < micro; ++i) b.initial_state.copy_sequence(row + i, start_, i);
      start = &start_;
    }
    const model::LossResult r = model::sequence_loss<float>(
        m, ctx_, b.tokens.data() + row * T, micro, T, model_grad_.data(), so, ws_, start);
    sg.loss_sum += r.loss_sum;
    sg.predicted += r.predicted;
    sg.aux_loss += r.aux_loss / double(opts_.grad_accum);
    if (sg.expert_counts.empty()) sg.expert_counts = r.expert_counts;
    else
      for (size_t l = 0; l < r.expert_counts.size(); ++l)
        for (size_t e = 0; e < r.expert_counts[l].size(); ++e)
          sg.expert_counts[l][e] += r.expert_counts[l][e];
    if (hooks_.after_micro_batch)
      hooks_.after_micro_batch(step_, a, model_grad_.data(), int64_t(model_grad_.size()));
  }
  trainable_.map_gradient(model_grad_.data(), grad);
  sg.grad = grad;
  sg.size = trainable_.size();
  if (hooks_.after_step_gradient) hooks_.after_step_gradient(sg);
  return sg;
}

nlohmann::json Trainer::evaluate() {
  const model::Model<float>& m = trainable_.forward_model();
  nlohmann::json j = evaluate_documents(m, val_, opts_.val_tokens, opts_.precision).to_json();
  // sigmoid(beta) per layer and head: the share of each head's output read from memory.
  if (m.config.use_memory) j["gates"] = model::memory_gates(m);
  return j;
}

std::string Trainer::save_checkpoint(std::FILE* log) {
  if (opts_.rank != 0) return {};
  const nlohmann::json st = {{"format", "infini-trainer"},
                             {"version", 1},
                             {"step", step_},
                             {"tokens_seen", tokens_seen_},
                             {"data", source_.state()},
                             {"data_fingerprint", source_.fingerprint()},
                             {"omp_threads", omp_threads()},
                             {"precision", model::precision_name(opts_.precision)},
                             {"args", opts_.run_record}};
  last_checkpoint_ = commit_checkpoint(
      opts_.out, step_,
      [&](const std::string& dir) {
        trainable_.save(dir);
        opt_.save((fs::path(dir) / "optimizer.safetensors").string());
        // Written last: its presence marks a complete checkpoint.
        model::write_file_atomic((fs::path(dir) / "trainer.json").string(), st.dump(2) + "\n");
      },
      opts_.keep);
  saved_step_ = step_;
  if (log) std::fprintf(log, "checkpoint: %s\n", last_checkpoint_.c_str());
  return last_checkpoint_;
}

void Trainer::write_plot(const MetricsLog& metrics) const {
  if (opts_.rank != 0) return;
  model::write_file_atomic(
      (fs::path(opts_.out) / "loss.svg").string(),
      loss_curve_svg(metrics.train_loss(), metrics.val_loss(), "infini train: " + opts_.out));
}

Trainer::Outcome Trainer::run(const std::atomic<bool>* interrupt, std::FILE* log) {
  const bool writer = opts_.rank == 0;
  std::error_code ec;
  if (writer) {
    fs::create_directories(opts_.out, ec);
    if (!fs::is_directory(opts_.out)) throw Error("cannot create --out " + opts_.out);
    remove_stale_checkpoint_temps(opts_.out);
  }
  MetricsLog metrics(writer ? (fs::path(opts_.out) / "metrics.jsonl").string() : std::string(),
                     resumed_ ? step_ : -1);
  const int64_t target = opts_.stop_at > 0 ? std::min(opts_.steps, opts_.stop_at) : opts_.steps;
  const int64_t first_step = step_;
  const double t_start = now_s();
  bool bar_open = false;  // a progress bar is drawn and its line not yet ended
  auto finish_line = [&] {
    if (bar_open && log) std::fputc('\n', log);
    bar_open = false;
  };

  while (step_ < target) {
    if (interrupt && interrupt->load()) break;
    const double t0 = now_s();
    source_.next(opts_.batch, opts_.seq_len, batch_);
    StepGradient sg = compute_gradient(batch_, grad_.data());
    const double loss = sg.predicted ? sg.loss_sum / double(sg.predicted) : 0.0;
    const std::string where =
        " at step " + std::to_string(step_ + 1) + "; stopped without saving it" +
        (last_checkpoint_.empty() ? std::string(" (no checkpoint was written yet)")
                                  : "; the last good checkpoint is " + last_checkpoint_);
    if (!std::isfinite(sg.loss_sum)) {
      finish_line();
      throw NonFiniteError("non-finite training loss (" + std::to_string(loss) + ")" + where);
    }
    const double norm = clip_global_norm(sg.grad, sg.size, opts_.grad_clip);
    if (!std::isfinite(norm)) {
      finish_line();
      throw NonFiniteError("non-finite gradient norm" + where);
    }
    const double factor = opts_.schedule.factor(step_);
    opt_.step(trainable_.params(), sg.grad, factor);
    if (!all_finite(trainable_.params(), trainable_.size())) {
      finish_line();
      throw NonFiniteError("the update made a weight non-finite (learning rate too high?)" + where);
    }
    ++step_;
    const int64_t step_tokens = batch_.batch * batch_.seq_len;  // a source may vary the length
    tokens_seen_ += step_tokens;
    const double t1 = now_s(), secs = t1 - t0;

    nlohmann::json line = {{"step", step_},
                           {"loss", loss},
                           {"lr", opt_.groups().empty() ? 0.0 : opt_.groups()[0].lr * factor},
                           {"grad_norm", norm},
                           {"tokens", tokens_seen_},
                           {"tokens_per_s", secs > 0 ? double(step_tokens) / secs : 0.0},
                           {"step_s", secs}};
    for (const auto& g : opt_.groups())
      if (g.name == "gates") line["gate_lr"] = g.lr * factor;
    if (!sg.expert_counts.empty()) {
      // A collapsed router is how MoE training fails silently: the busiest and the idlest
      // expert's share of each sparse layer's assignments (1/E each when balanced).
      line["aux_loss"] = sg.aux_loss;
      nlohmann::json most = nlohmann::json::array(), least = nlohmann::json::array();
      for (const auto& counts : sg.expert_counts) {
        const ops::MoeLoad load = ops::moe_load(counts);
        most.push_back(load.max_fraction);
        least.push_back(load.min_fraction);
      }
      line["expert_load_max"] = most;
      line["expert_load_min"] = least;
    }
    const bool do_eval = opts_.eval_every > 0 && !val_.empty() &&
                         (step_ % opts_.eval_every == 0 || step_ == opts_.steps);
    if (do_eval) {
      const double te = now_s();
      line.update(evaluate());
      line["eval_s"] = now_s() - te;
    }
    line["elapsed_s"] = now_s() - t_start;
    if (writer) metrics.append(line);
    if (hooks_.on_step) hooks_.on_step(line);

    if (log && writer) {
      const double per_step = (now_s() - t_start) / double(step_ - first_step);
      const std::string eta = duration_text(per_step * double(target - step_));
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "step %lld/%lld  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s  ETA %s",
                    (long long)step_, (long long)opts_.steps, loss, line["lr"].get<double>(), norm,
                    line["tokens_per_s"].get<double>(), eta.c_str());
      if (opts_.progress_bar) {
        const int width = 24;
        const int filled = int(double(width) * double(step_) / double(opts_.steps));
        std::string bar(size_t(filled), '#');
        bar.resize(size_t(width), '.');
        std::fprintf(log, "\r\033[K[%s] %s", bar.c_str(), buf);
        bar_open = true;
      } else if (step_ % std::max<int64_t>(1, opts_.log_every) == 0 || step_ == target) {
        std::fprintf(log, "%s\n", buf);
      }
      if (do_eval) {
        finish_line();
        std::fprintf(log, "eval at step %lld: val_loss %.4f  val_ppl %.3f  (%lld tokens)\n",
                     (long long)step_, line["val_loss"].get<double>(),
                     line["val_ppl"].get<double>(), (long long)line["val_tokens"].get<int64_t>());
      }
      std::fflush(log);
    }
    const bool do_save = opts_.save_every > 0 && step_ % opts_.save_every == 0;
    if (do_save) {
      finish_line();
      save_checkpoint(log);
    }
    if (do_eval || do_save) write_plot(metrics);
  }
  finish_line();

  if (saved_step_ != step_ && step_ > 0) save_checkpoint(log);
  write_plot(metrics);
  if (step_ >= opts_.steps) {
    if (writer) {
      const std::string fin = (fs::path(opts_.out) / "final").string();
      publish_directory(fin, [&](const std::string& dir) { trainable_.save(dir); });
      if (log) std::fprintf(log, "final model: %s\n", fin.c_str());
    }
    return Outcome::Finished;
  }
  return step_ >= target ? Outcome::Stopped : Outcome::Interrupted;
}

}  // namespace infini::train

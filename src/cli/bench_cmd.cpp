// infini bench: throughput of the real training step (forward, full-BPTT backward, AdamW),
// of evaluation and of prefill, on random tokens, with the model-FLOP utilisation against the
// SGEMM throughput measured on the spot.
//
// Model FLOPs are the useful FLOPs of the model, counted analytically (docs/benchmarks.md):
//   forward  = 2 P_mm tokens                        P_mm: weights of all matmuls, lm_head too;
//                                                   in a sparse (MoE) layer the active ones:
//                                                   router, k routed experts, shared expert
//            + L 4 d H B sum_segments n(n+1)/2      causal QK^T and PV, the unmasked half only
//            + L 2 d^2 tokens (H + u Hkv)           memory read + update (u = 1 linear, 2 delta)
//   training = 3 forward                            (backward = 2 forward)
// The recomputation of each segment's forward during BPTT is not counted: it is work the
// implementation chooses to do, not work the model needs.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/error.hpp"
#include "model/bptt.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/fma_peak.hpp"
#include "ops/gemm.hpp"
#include "ops/sgemm.hpp"
#include "train/run.hpp"
#include "train/optimizer.hpp"

extern "C" void openblas_set_num_threads(int);

namespace infini::cli {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct FlopCount {
  double forward = 0, matmul = 0, attention = 0, memory = 0;
};

FlopCount model_flops(const model::ModelConfig& c, int64_t batch, int64_t T_len) {
  const double D = double(c.hidden_size), F = double(c.intermediate_size);
  const double qw = double(c.q_width()), kw = double(c.kv_width()), d = double(c.head_dim);
  const double H = double(c.num_heads), Hkv = double(c.num_kv_heads), L = double(c.num_layers);
  const double tokens = double(batch * T_len);
  double p_mm = double(c.vocab_size) * D;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const double mlp = c.is_sparse_layer(l)
                           ? double(c.num_experts) * D + D +  // router and shared gate
                                 3 * D * double(c.num_experts_per_tok * c.moe_intermediate_size +
                                                c.shared_expert_intermediate_size)
                           : 3 * D * F;
    p_mm += D * qw + 2 * D * kw + qw * D + mlp;
  }
  double pairs = 0;  // causal (query, key) pairs per sequence, summed over segments
  for (int64_t s = 0; s * c.segment_length < T_len; ++s) {
    const double n = double(std::min(c.segment_length, T_len - s * c.segment_length));
    pairs += n * (n + 1) / 2;
  }
  FlopCount f;
  f.matmul = 2 * p_mm * tokens;
  f.attention = L * 4 * d * H * double(batch) * pairs;
  if (c.use_memory) {
    const double u = c.memory_update == model::MemoryUpdate::Delta ? 2 : 1;
    f.memory = L * 2 * d * d * tokens * (H + Hkv * u);
  }
  f.forward = f.matmul + f.attention + f.memory;
  return f;
}

// Best GFLOP/s of an SGEMM (m x n x k, all threads) over a few repetitions: per wall second
// (the machine's throughput) and per CPU second of all threads (the kernel's rate whatever
// else runs on the machine). `best` is raised, never lowered. `native`: infini's AVX-512
// kernel (ops::gemm<float> with the Native backend), else OpenBLAS's cblas_sgemm. Every
// row of the matrices is padded by `pad` floats: rows exactly 4 KiB apart share cache sets,
// which at times cost this machine's 1024-wide products a fifth of their speed (265-277
// against 339-354 GFLOP/s with rows of 1040 floats, in the same minute; 390 both at others).
struct SgemmRate {
  double wall = 0, cpu = 0;
};
// Random operands of an m x n x k product whose rows are `pad` floats longer than the matrix.
struct GemmOperands {
  int lda, ldb, ldc;
  std::vector<float> a, b, c;
  GemmOperands(int m, int n, int k, int pad)
      : lda(k + pad), ldb(n + pad), ldc(n + pad), a(size_t(m) * size_t(lda)),
        b(size_t(k) * size_t(ldb)), c(size_t(m) * size_t(ldc)) {
    std::mt19937 g(1);
    std::uniform_real_distribution<float> u(-1, 1);
    for (auto& x : a) x = u(g);
    for (auto& x : b) x = u(g);
  }
};

// Runs `product` reps + 1 times (the first warms up) and raises `best` to its rates.
template <class Product>
void time_product(int m, int n, int k, int reps, SgemmRate& best, Product&& product) {
  const double flop = 2.0 * m * n * k / 1e9;
  for (int r = 0; r < reps + 1; ++r) {
    const double c0 = process_cpu_seconds();
    Stopwatch sw;
    product();
    const double s = sw.seconds(), cs = process_cpu_seconds() - c0;
    if (r == 0) continue;
    best.wall = std::max(best.wall, flop / s);
    if (cs > 0) best.cpu = std::max(best.cpu, flop / cs);
  }
}

void measure_sgemm(int m, int n, int k, int pad, int reps, bool native, SgemmRate& best) {
  GemmOperands o(m, n, k, pad);
  const ops::GemmBackend saved = ops::gemm_backend();
  if (native) ops::set_gemm_backend(ops::GemmBackend::Native);
  time_product(m, n, k, reps, best, [&] {
    if (native)
      ops::gemm<float>(false, false, m, n, k, 1.0f, o.a.data(), o.lda, o.b.data(), o.ldb, 0.0f,
                       o.c.data(), o.ldc);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, o.a.data(), o.lda,
                  o.b.data(), o.ldb, 0.0f, o.c.data(), o.ldc);
  });
  ops::set_gemm_backend(saved);
}

// The same for the bf16 product (B packed once, as the model's weights are; A rounded on the
// fly), rows shared over the threads. Nothing where the CPU has no AVX512-BF16.
void measure_bf16_gemm(int m, int n, int k, int pad, int reps, int threads, SgemmRate& best) {
  if (!ops::bf16_native_available()) return;
  GemmOperands o(m, n, k, pad);
  ops::PackedBf16 packed;
  ops::bf16_pack(false, k, n, o.b.data(), o.ldb, packed);
  time_product(m, n, k, reps, best, [&] {
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int r0 = m * t / nt, r1 = m * (t + 1) / nt;
      ops::bf16_gemm_packed(r1 - r0, n, k, 1.0f, o.a.data() + size_t(r0) * size_t(o.lda), o.lda,
                            packed, 0.0f, o.c.data() + size_t(r0) * size_t(o.ldc), o.ldc);
    }
  });
}

// The three timed steps of one precision on a model: a training step (forward, full BPTT,
// AdamW), a loss-only pass, and a prefill.
class StepRunner {
 public:
  StepRunner(model::Model<float>& m, const std::vector<int32_t>& ids, int64_t B, int64_t T,
             model::Precision precision, int64_t activation_bytes)
      : m_(m),
        ids_(ids),
        B_(B),
        T_(T),
        ctx_(m.config),
        grads_(size_t(m.layout.total)),
        // Same hyper-parameters as torch.optim.AdamW's defaults in reference/bench_torch.py.
        opt_(m.layout.total, train::model_param_groups(m.layout, 1e-3, 1e-3, 0.01),
             {0.9, 0.999, 1e-8}) {
    ctx_.precision = precision;
    train_opts_.keep_activations_bytes = activation_bytes;
    // Prefill packs the weights once beforehand, as infer::Session does.
    model::pack_weights(m, false, model::kDefaultMaxPackedWeightBytes, prefill_packed_, precision);
  }
  void train() {
    std::fill(grads_.begin(), grads_.end(), 0.0f);
    last_loss_ =
        model::sequence_loss<float>(m_, ctx_, ids_.data(), B_, T_, grads_.data(), train_opts_, ws_)
            .mean();
    opt_.step(m_.weights.data(), grads_.data(), 1.0);
  }
  void eval() { model::sequence_loss<float>(m_, ctx_, ids_.data(), B_, T_, nullptr, {}, ws_); }
  // The prompt goes through every segment, carrying the memory; only the logits of the last
  // segment are computed (what generation needs to pick its first token).
  void prefill() {
    const model::ModelConfig& cfg = m_.config;
    model::MemoryState<float> state = model::MemoryState<float>::zeros(cfg, B_);
    const int64_t N = cfg.segment_length;
    for (int64_t s = 0; s * N < T_; ++s) {
      const int64_t n = std::min(N, T_ - s * N);
      seg_.resize(size_t(B_ * n));
      for (int64_t b = 0; b < B_; ++b)
        std::copy_n(ids_.data() + b * T_ + s * N, n, seg_.data() + b * n);
      model::forward_chunk<float>(m_, ctx_, seg_.data(), B_, n, state, pacts_, nullptr,
                                  (s + 1) * N >= T_, &prefill_packed_);
    }
  }
  double last_loss() const { return last_loss_; }
  int64_t kept_segments() const { return ws_.kept_segments; }

 private:
  model::Model<float>& m_;
  const std::vector<int32_t>& ids_;
  int64_t B_, T_;
  model::ForwardContext<float> ctx_;
  model::SequenceWorkspace<float> ws_;
  std::vector<float> grads_;
  train::AdamW opt_;
  model::SequenceOptions train_opts_;
  model::SegmentActs<float> pacts_;
  model::PackedWeights prefill_packed_;
  std::vector<int32_t> seg_;
  double last_loss_ = 0;
};

using Step = void (StepRunner::*)();
struct StepKind {
  const char* name;
  Step step;
};
constexpr StepKind kStepKinds[] = {
    {"train", &StepRunner::train}, {"eval", &StepRunner::eval}, {"prefill", &StepRunner::prefill}};

// The keys both reports (one precision, interleaved) open with: what ran, where, on what.
nlohmann::json report_header(int threads, int64_t T, int64_t B, int64_t steps,
                             const std::string& cpu) {
  return {{"impl", "infini"}, {"threads", threads}, {"seq_len", T},
          {"batch", B},       {"steps", steps},     {"bf16_backend", ops::bf16_backend_name()},
          {"cpu", cpu}};
}

// --interleave-precisions: fp32 and bf16 steps of each kind alternately in this one process, so
// that load on a shared machine that comes and goes over seconds falls on both alike; each pair
// of neighbouring steps gives a ratio, and their median and range are reported.
void run_interleaved(model::Model<float>& m, const std::vector<int32_t>& ids, int64_t B, int64_t T,
                     int64_t activation_bytes, int64_t warmup, int64_t steps, bool json) {
  StepRunner fp32(m, ids, B, T, model::Precision::FP32, activation_bytes);
  StepRunner bf16(m, ids, B, T, model::Precision::BF16, activation_bytes);
  const double tokens = double(B * T);
  const std::string cpu = cpu_model();
  nlohmann::json j = report_header(omp_threads(), T, B, steps, cpu);
  j["interleaved"] = true;
  if (!json)
    std::printf(
        "infini bench, fp32 and bf16 interleaved (%d threads of %s, bf16 %s): B=%lld "
        "T=%lld, medians of %lld pairs\n",
        omp_threads(), cpu.c_str(), ops::bf16_backend_name().c_str(), (long long)B, (long long)T,
        (long long)steps);
  for (const StepKind& kind : kStepKinds) {
    std::vector<double> s32, s16, ratio;
    for (int64_t i = 0; i < warmup + steps; ++i) {
      Stopwatch a;
      (fp32.*kind.step)();
      const double t32 = a.seconds();
      Stopwatch b;
      (bf16.*kind.step)();
      const double t16 = b.seconds();
      if (i < warmup) continue;
      s32.push_back(t32);
      s16.push_back(t16);
      ratio.push_back(t32 / t16);
    }
    const double r32 = tokens / median(s32), r16 = tokens / median(s16), r = median(ratio);
    const auto [lo, hi] = std::minmax_element(ratio.begin(), ratio.end());
    j[std::string(kind.name) + "_fp32_tokens_per_s"] = r32;
    j[std::string(kind.name) + "_bf16_tokens_per_s"] = r16;
    j[std::string(kind.name) + "_bf16_over_fp32"] = r;
    j[std::string(kind.name) + "_bf16_over_fp32_per_pair"] = ratio;
    if (!json)
      std::printf(
          "  %-7s fp32 %9.1f tokens/s  bf16 %9.1f tokens/s  bf16/fp32 %.3f (pairs "
          "%.3f .. %.3f)\n",
          kind.name, r32, r16, r, *lo, *hi);
  }
  j["final_loss_fp32"] = fp32.last_loss();
  j["final_loss_bf16"] = bf16.last_loss();
  j["peak_rss_mb"] = peak_rss_mb();
  if (json) std::printf("%s\n", j.dump().c_str());
}

}  // namespace

void register_bench(CLI::App& app) {
  struct Opts {
    std::string config, precision = "fp32";
    int64_t seq_len = 2048, batch = 1, steps = 3, warmup = 1;
    int64_t activation_mb = default_activation_memory_mb();
    int threads = 0;
    uint64_t seed = 0;
    bool json = false, no_sgemm = false, interleave = false;
    std::string gemm = ops::gemm_backend() == ops::GemmBackend::Native ? "native" : "openblas";
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Tokens/s and model-FLOP utilisation of training, eval and prefill on random tokens");
  cmd->add_option("--config", o->config, "config.json with the model's shape, or a model directory")
      ->required();
  cmd->add_option("--seq-len", o->seq_len, "Tokens per sequence (T)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(2), int64_t(1) << 30));
  cmd->add_option("--batch", o->batch, "Sequences per step (B)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--steps", o->steps, "Timed steps of each kind; medians are reported")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--warmup", o->warmup, "Untimed steps of each kind before the timed ones")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("--threads", o->threads,
                  "Threads for OpenMP and OpenBLAS (0: OMP_NUM_THREADS or all cores)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--seed", o->seed, "Seed of the random weights and tokens")
      ->capture_default_str();
  add_activation_memory_option(cmd, o->activation_mb);
  CLI::Option* precision = add_precision_option(cmd, o->precision);
  cmd->add_flag("--interleave-precisions", o->interleave,
                "Time fp32 and bf16 steps alternately in this one process and report both, with "
                "the median and range of the bf16/fp32 ratios of neighbouring steps, which saw "
                "the same load on the machine (no SGEMM or MFU figures)")
      ->excludes(precision);
  cmd->add_option("--gemm", o->gemm,
                  "Matrix multiplies of the model: native (infini's AVX-512 kernel, the default "
                  "where the CPU has AVX-512) or openblas")
      ->capture_default_str()
      ->check(CLI::IsMember({"native", "openblas"}));
  cmd->add_flag("--no-sgemm", o->no_sgemm,
                "Skip the SGEMM and FMA-ceiling reference measurements (MFU is then not "
                "reported: n/a in the text, 0 in --json)");
  cmd->add_flag("--json", o->json, "Print one JSON object instead of text");
  cmd->callback([o] {
    train::check_tokens_per_step(o->batch, o->seq_len, "--seq-len");  // the same limit as train
    if (o->threads > 0) omp_set_num_threads(o->threads);
    const int threads = omp_threads();
    openblas_set_num_threads(threads);
    if (o->gemm == "native" && !ops::sgemm_native_available())
      throw Error("--gemm native: this CPU or build has no AVX-512 kernel; use --gemm openblas");
    ops::set_gemm_backend(o->gemm == "native" ? ops::GemmBackend::Native
                                              : ops::GemmBackend::OpenBLAS);

    std::string cfg_path = o->config;
    if (std::filesystem::is_directory(cfg_path)) cfg_path += "/config.json";
    const model::ModelConfig cfg = model::load_config(cfg_path);
    model::InitOptions init;
    init.seed = o->seed;
    model::Model<float> m = model::init_model(cfg, init);
    const int64_t B = o->batch, T = o->seq_len, tokens = B * T;

    std::mt19937_64 g(o->seed + 1);
    std::vector<int32_t> ids(static_cast<size_t>(tokens));
    const uint64_t span = uint64_t(std::min<int64_t>(cfg.vocab_size, 256));
    for (auto& x : ids) x = int32_t(g() % span);

    if (o->interleave) {
      run_interleaved(m, ids, B, T, o->activation_mb << 20, o->warmup, o->steps, o->json);
      return;
    }
    const model::Precision precision = model::parse_precision(o->precision, "--precision");
    const bool bf16 = precision == model::Precision::BF16;
    StepRunner run(m, ids, B, T, precision, o->activation_mb << 20);
    // Median wall seconds and median CPU seconds (all threads) of one step. Steps of 5 s or
    // more are reported on stderr as they finish, so a long run shows that it is moving.
    auto timed = [&](const char* kind, auto&& step) {
      const int64_t total = o->warmup + o->steps;
      std::vector<double> secs, cpu;
      for (int64_t i = 0; i < total; ++i) {
        const double c0 = process_cpu_seconds();
        Stopwatch sw;
        step();
        const double s = sw.seconds(), c = process_cpu_seconds() - c0;
        if (s >= 5.0)
          std::fprintf(stderr, "bench: %s step %lld of %lld%s: %.1f s\n", kind,
                       static_cast<long long>(i + 1), static_cast<long long>(total),
                       i < o->warmup ? " (warm-up)" : "", s);
        if (i < o->warmup) continue;
        secs.push_back(s);
        cpu.push_back(c);
      }
      return std::pair{median(secs), median(cpu)};
    };
    // SGEMM before and after the model's steps, the best of all: on a machine whose load
    // changes, the reference is the best it gave during the run. Both OpenBLAS and, where
    // the CPU has it, infini's own kernel are measured; the machine's SGEMM throughput is the
    // faster of the two, and utilisation is reported against it.
    SgemmRate sq, tall, native_sq, native_tall;
    const bool has_native = ops::sgemm_native_available();
    double fma_peak = 0;  // and the FMA ceiling, which no SGEMM can pass
    // With --precision bf16 also the bf16 product's rate and ceiling (VDPBF16PS on registers,
    // or TDPBF16PS on tiles where AMX runs the products).
    SgemmRate bf16_sq, bf16_tall;
    double bf16_peak = 0;
    auto reference = [&] {
      if (o->no_sgemm) return;
      fma_peak = std::max(fma_peak, ops::fma_peak_gflops(threads));
      if (bf16) {
        bf16_peak = std::max(bf16_peak, ops::bf16_peak_gflops(threads));
        for (const int pad : {0, 16}) {
          measure_bf16_gemm(1024, 1024, 1024, pad, 3, threads, bf16_sq);
          measure_bf16_gemm(4096, 1024, 1024, pad, 2, threads, bf16_tall);
        }
      }
      for (const int pad : {0, 16}) {
        measure_sgemm(1024, 1024, 1024, pad, 3, false, sq);
        measure_sgemm(4096, 1024, 1024, pad, 2, false, tall);
        if (!has_native) continue;
        measure_sgemm(1024, 1024, 1024, pad, 3, true, native_sq);
        measure_sgemm(4096, 1024, 1024, pad, 2, true, native_tall);
      }
    };
    reference();
    const auto [t_train, c_train] = timed("train", [&] { run.train(); });
    const auto [t_eval, c_eval] = timed("eval", [&] { run.eval(); });
    const auto [t_prefill, c_prefill] = timed("prefill", [&] { run.prefill(); });
    reference();
    const double sgemm_openblas = std::max(sq.wall, tall.wall);
    const double sgemm_native = std::max(native_sq.wall, native_tall.wall);
    const double sgemm = std::max(sgemm_openblas, sgemm_native);
    const double sgemm_cpu = std::max({sq.cpu, tall.cpu, native_sq.cpu, native_tall.cpu});
    const FlopCount f = model_flops(cfg, B, T);
    const double train_gflops = 3 * f.forward / t_train / 1e9;
    const double eval_gflops = f.forward / t_eval / 1e9;
    const double prefill_gflops = f.forward / t_prefill / 1e9;
    const double bf16_gemm = std::max(bf16_sq.wall, bf16_tall.wall);
    // Utilisation against the matrix product of the precision that ran: SGEMM for fp32, the
    // bf16 product for bf16 (emulated bf16 has no rate of its own: SGEMM's, since it runs on it).
    const double matmul_rate = bf16 && bf16_gemm > 0 ? bf16_gemm : sgemm;
    auto util = [&](double x) { return matmul_rate > 0 ? x / matmul_rate : 0.0; };
    // The same ratio per CPU second: model FLOPs per CPU second of the step against SGEMM
    // FLOPs per CPU second. Blind to threads left idle, but not to other load on the machine.
    auto cpu_util = [&](double gflop, double cpu_s) {
      return sgemm_cpu > 0 && cpu_s > 0 ? gflop / cpu_s / sgemm_cpu : 0.0;
    };

    const std::string cpu = cpu_model();  // read from /proc/cpuinfo once, for both reports
    nlohmann::json j = report_header(threads, T, B, o->steps, cpu);
    j.update({{"segment_length", cfg.segment_length},
              {"activation_memory_mb", o->activation_mb},
              {"kept_segments", run.kept_segments()},
              {"train_tokens_per_s", double(tokens) / t_train},
              {"eval_tokens_per_s", double(tokens) / t_eval},
              {"prefill_tokens_per_s", double(tokens) / t_prefill},
              {"train_step_s", t_train},
              {"eval_step_s", t_eval},
              {"prefill_step_s", t_prefill},
              {"train_cpu_s_per_step", c_train},
              {"eval_cpu_s_per_step", c_eval},
              {"prefill_cpu_s_per_step", c_prefill},
              // CPU time over wall time x threads: well below 1 on a busy machine.
              {"train_cpu_share", c_train / (t_train * threads)},
              {"model_gflop_per_train_step", 3 * f.forward / 1e9},
              {"model_gflop_per_eval_step", f.forward / 1e9},
              {"train_gflops", train_gflops},
              {"eval_gflops", eval_gflops},
              {"prefill_gflops", prefill_gflops},
              {"sgemm_gflops", sgemm},
              {"sgemm_openblas_gflops", sgemm_openblas},
              {"sgemm_native_gflops", sgemm_native},
              {"sgemm_1024_gflops", std::max(sq.wall, native_sq.wall)},
              {"sgemm_4096x1024x1024_gflops", std::max(tall.wall, native_tall.wall)},
              {"sgemm_gflops_per_cpu_s", sgemm_cpu},
              {"fma_peak_gflops", fma_peak},
              {"precision", o->precision},
              {"bf16_gemm_gflops", bf16_gemm},
              {"bf16_peak_gflops", bf16_peak},
              {"mfu_reference_gflops", matmul_rate},
              {"train_bf16_peak_fraction", bf16_peak > 0 ? train_gflops / bf16_peak : 0.0},
              {"train_cpu_efficiency", cpu_util(3 * f.forward / 1e9, c_train)},
              {"eval_cpu_efficiency", cpu_util(f.forward / 1e9, c_eval)},
              {"train_mfu", util(train_gflops)},
              {"eval_mfu", util(eval_gflops)},
              {"prefill_mfu", util(prefill_gflops)},
              {"final_loss", run.last_loss()},
              {"blas_core", ops::blas_core_name()},
              {"gemm", ops::gemm_backend_name()},
              {"omp_wait_policy",
               std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "default"},
              {"peak_rss_mb", peak_rss_mb()}});
    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::printf("infini bench (%d thread%s of %s): B=%lld T=%lld N=%lld, %s, median of %lld "
                "step%s\n",
                threads, threads == 1 ? "" : "s", cpu.c_str(), (long long)B,
                (long long)T, (long long)cfg.segment_length,
                bf16 ? ("bf16 products, " + ops::bf16_backend_name()).c_str() : "fp32",
                (long long)o->steps, o->steps == 1 ? "" : "s");
    // Without the SGEMM reference (--no-sgemm) there is nothing to divide by: "n/a", not 0%.
    auto mfu = [&](double gflops) {
      char text[16] = "  n/a";
      if (matmul_rate > 0) std::snprintf(text, sizeof text, "%5.1f%%", 100 * util(gflops));
      return std::string(text);
    };
    std::printf(
        "  train   %9.1f tokens/s  %7.1f GFLOP/s  MFU %s  (%.3f s/step, %.3f CPU s, "
        "loss %.4f)\n",
        double(tokens) / t_train, train_gflops, mfu(train_gflops).c_str(), t_train, c_train,
        run.last_loss());
    std::printf("  eval    %9.1f tokens/s  %7.1f GFLOP/s  MFU %s\n", double(tokens) / t_eval,
                eval_gflops, mfu(eval_gflops).c_str());
    std::printf("  prefill %9.1f tokens/s  %7.1f GFLOP/s  MFU %s\n", double(tokens) / t_prefill,
                prefill_gflops, mfu(prefill_gflops).c_str());
    std::printf("  model FLOPs/step: train %.2f G (matmul %.1f%%, attention %.1f%%, "
                "memory %.1f%%)\n",
                3 * f.forward / 1e9, 100 * f.matmul / f.forward, 100 * f.attention / f.forward,
                100 * f.memory / f.forward);
    if (sgemm > 0) {
      std::printf("  per CPU second: train %.1f%%, eval %.1f%% of SGEMM's %.1f GFLOP/s\n",
                  100 * cpu_util(3 * f.forward / 1e9, c_train),
                  100 * cpu_util(f.forward / 1e9, c_eval), sgemm_cpu);
      char native_rate[32] = "n/a";
      if (has_native) std::snprintf(native_rate, sizeof native_rate, "%.1f", sgemm_native);
      std::printf("  SGEMM %.1f GFLOP/s: OpenBLAS (%s kernels) %.1f, infini native %s "
                  "(best of 1024^3 and 4096x1024x1024, rows 1024 or 1040 floats apart); "
                  "model GEMMs: %s\n",
                  sgemm, ops::blas_core_name().c_str(), sgemm_openblas, native_rate,
                  ops::gemm_backend_name().c_str());
      std::printf("  FMA ceiling %.1f GFLOP/s (registers only): SGEMM at %.1f%% of it, "
                  "training at %.1f%%\n",
                  fma_peak, 100 * sgemm / fma_peak, 100 * train_gflops / fma_peak);
      if (bf16 && bf16_peak > 0)
        std::printf(
            "  bf16: product %.1f GFLOP/s (MFU above is against it), ceiling %.1f "
            "GFLOP/s (%s, registers only): product at %.1f%%, training at %.1f%%\n",
            bf16_gemm, bf16_peak, ops::bf16_amx_active() ? "AMX TDPBF16PS on tiles" : "VDPBF16PS",
            100 * bf16_gemm / bf16_peak, 100 * train_gflops / bf16_peak);
    }
  });
}

}  // namespace infini::cli

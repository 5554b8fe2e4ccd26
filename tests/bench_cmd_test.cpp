// `infini bench`: runs the real training step on a short sequence, reports the fields that
// outside checks and bench/compare.py read, and counts model FLOPs by the documented formula.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/cli.hpp"

using infini::testutil::CliResult;
using infini::testutil::run_infini;
using infini::testutil::run_shell;

TEST(BenchCommand, ReportsThroughputAndCountsModelFlops) {
  // configs/bench_small.json, 300 tokens: segments of 256 and 44.
  const std::string cfg = std::string(INFINI_SOURCE_DIR) + "/configs/bench_small.json";
  const CliResult r = run_infini("bench --config " + cfg +
                                 " --seq-len 300 --batch 1 --steps 1 --warmup 0 --threads 2 "
                                 "--no-sgemm --json");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const char* key : {"train_tokens_per_s", "eval_tokens_per_s", "prefill_tokens_per_s"})
    EXPECT_GT(j.at(key).get<double>(), 0) << key;
  EXPECT_EQ(j.at("threads").get<int>(), 2);
  // One AdamW step from a fresh model: the loss is near log(320) (uniform over the vocabulary).
  EXPECT_NEAR(j.at("final_loss").get<double>(), std::log(320.0), 0.3);

  // docs/benchmarks.md: forward = 2 P_mm tokens + L 4 d H B sum n(n+1)/2
  //                              + L 2 d^2 tokens (H + 2 Hkv)  (delta rule); training = 3x.
  const double L = 4, D = 256, F = 704, V = 320, H = 4, d = 64, tokens = 300;
  const double p_mm = L * (4 * D * D + 3 * D * F) + V * D;
  const double pairs = 256.0 * 257 / 2 + 44.0 * 45 / 2;
  const double forward =
      2 * p_mm * tokens + L * 4 * d * H * pairs + L * 2 * d * d * tokens * (H + 2 * H);
  EXPECT_NEAR(j.at("model_gflop_per_eval_step").get<double>(), forward / 1e9, 1e-9);
  EXPECT_NEAR(j.at("model_gflop_per_train_step").get<double>(), 3 * forward / 1e9, 1e-9);
}

namespace {
// The first processor's "model name" in /proc/cpuinfo, "" where there is none.
std::string first_cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line) && !line.empty())
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "";
}
}  // namespace

TEST(BenchCommand, SaysWhichCpuTheFiguresComeFrom) {
  // Figures from two machines are only comparable with the CPU named next to them.
  const std::string cfg = std::string(INFINI_SOURCE_DIR) + "/configs/tiny.json";
  const std::string args = " --seq-len 16 --steps 1 --warmup 0 --threads 1 --no-sgemm";
  const CliResult json = run_infini("bench --config " + cfg + args + " --json");
  ASSERT_EQ(json.code, 0) << json.out << json.err;
  const std::string cpu = nlohmann::json::parse(json.out).at("cpu").get<std::string>();
  const CliResult text = run_infini("bench --config " + cfg + args);
  ASSERT_EQ(text.code, 0) << text.out << text.err;
  EXPECT_NE(text.out.find("thread of " + cpu + "):"), std::string::npos) << text.out;
  const std::string name = first_cpu_name();
  if (name.empty()) GTEST_SKIP() << "no model name in /proc/cpuinfo";
  EXPECT_EQ(cpu.rfind(name + " (family ", 0), 0u) << cpu;
}

TEST(BenchCommand, ReportsTheThreadsThatRanNotTheThreadsAskedFor) {
  // OMP_THREAD_LIMIT caps every parallel region below --threads / OMP_NUM_THREADS; the report
  // (and the utilisation derived from it) must say how many threads actually computed.
  const std::string cfg = std::string(INFINI_SOURCE_DIR) + "/configs/tiny.json";
  const CliResult r = run_shell("OMP_THREAD_LIMIT=1 " + std::string(INFINI_BINARY) +
                                " bench --config " + cfg +
                                " --seq-len 16 --steps 1 --warmup 0 --threads 2 --no-sgemm --json");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).at("threads").get<int>(), 1);
}

TEST(BenchCommand, TextReportSaysWhenThereIsNoSgemmReference) {
  // With --no-sgemm nothing was measured to divide by: the text says n/a rather than 0%.
  const std::string cfg = std::string(INFINI_SOURCE_DIR) + "/configs/tiny.json";
  const CliResult r = run_infini("bench --config " + cfg +
                                 " --seq-len 16 --steps 1 --warmup 0 --threads 1 --no-sgemm");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* kind : {"  train ", "  eval ", "  prefill "}) {
    const size_t at = r.out.find(kind);
    ASSERT_NE(at, std::string::npos) << kind << "\n" << r.out;
    const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    EXPECT_NE(line.find("MFU   n/a"), std::string::npos) << line;
    EXPECT_EQ(line.find('%'), std::string::npos) << line;
  }
  EXPECT_EQ(r.out.find("SGEMM"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("FMA ceiling"), std::string::npos) << r.out;
}

TEST(BenchCommand, RejectsAMissingConfig) {
  const CliResult r =
      run_infini("bench --config /nonexistent/config.json --seq-len 8 --no-sgemm --json");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("/nonexistent/config.json"), std::string::npos) << r.err;
}

TEST(BenchCommand, BothGemmBackendsRunTheSameStep) {
  // --gemm chooses who multiplies: infini's AVX-512 kernel (where the CPU has it) or OpenBLAS.
  // The JSON says which, and the first step's loss does not depend on it beyond rounding.
  const std::string cfg = std::string(INFINI_SOURCE_DIR) + "/configs/bench_small.json";
  const std::string args = "bench --config " + cfg +
                           " --seq-len 64 --batch 1 --steps 1 --warmup 0 --threads 2 --json";
  const CliResult blas = run_infini(args + " --no-sgemm --gemm openblas");
  ASSERT_EQ(blas.code, 0) << blas.err;
  const auto jb = nlohmann::json::parse(blas.out);
  EXPECT_EQ(jb.at("gemm").get<std::string>(), "openblas");
  const CliResult native = run_infini(args + " --gemm native");
  const CliResult fallback = run_infini(args + " --no-sgemm");
  ASSERT_EQ(fallback.code, 0) << fallback.err;
  const auto jf = nlohmann::json::parse(fallback.out);
  if (native.code != 0) {  // a CPU without AVX-512: refused with a reason, OpenBLAS by default
    EXPECT_NE(native.err.find("AVX-512"), std::string::npos) << native.err;
    EXPECT_EQ(jf.at("gemm").get<std::string>(), "openblas");
    return;
  }
  const auto jn = nlohmann::json::parse(native.out);
  EXPECT_EQ(jn.at("gemm").get<std::string>(), "native-avx512");
  EXPECT_EQ(jf.at("gemm").get<std::string>(), "native-avx512");  // the default
  EXPECT_NEAR(jn.at("final_loss").get<double>(), jb.at("final_loss").get<double>(), 1e-4);
  // The SGEMM reference measures both and takes the faster.
  const double ob = jn.at("sgemm_openblas_gflops").get<double>();
  const double nat = jn.at("sgemm_native_gflops").get<double>();
  EXPECT_GT(ob, 0);
  EXPECT_GT(nat, 0);
  EXPECT_DOUBLE_EQ(jn.at("sgemm_gflops").get<double>(), std::max(ob, nat));
  // and the FMA ceiling beside it; --no-sgemm measures neither.
  EXPECT_GT(jn.at("fma_peak_gflops").get<double>(), 0);
  EXPECT_EQ(jf.at("fma_peak_gflops").get<double>(), 0);
}

TEST(BenchCommand, InterleavesPrecisionsInOneProcess) {
  // --interleave-precisions: fp32 and bf16 steps of each kind alternately, both speeds and the
  // median of the per-pair ratios; --precision makes no sense with it and is refused.
  const std::string cfg = std::string(INFINI_SOURCE_DIR) + "/configs/tiny.json";
  const std::string args =
      "bench --config " + cfg + " --seq-len 16 --steps 3 --warmup 0 --threads 1 --json";
  const CliResult r = run_infini(args + " --interleave-precisions");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j.at("interleaved").get<bool>());
  for (const std::string kind : {"train", "eval", "prefill"}) {
    const double fp32 = j.at(kind + "_fp32_tokens_per_s").get<double>();
    const double bf16 = j.at(kind + "_bf16_tokens_per_s").get<double>();
    EXPECT_GT(fp32, 0) << kind;
    EXPECT_GT(bf16, 0) << kind;
    std::vector<double> pairs = j.at(kind + "_bf16_over_fp32_per_pair").get<std::vector<double>>();
    ASSERT_EQ(pairs.size(), 3u) << kind;
    std::sort(pairs.begin(), pairs.end());
    EXPECT_EQ(j.at(kind + "_bf16_over_fp32").get<double>(), pairs[1]) << kind;
  }
  for (const char* key : {"final_loss_fp32", "final_loss_bf16"})
    EXPECT_TRUE(std::isfinite(j.at(key).get<double>())) << key;

  const CliResult both = run_infini(args + " --interleave-precisions --precision bf16");
  EXPECT_NE(both.code, 0);
  EXPECT_NE(both.err.find("--interleave-precisions"), std::string::npos) << both.err;
}

// `infini bench`: runs the real training step on a short sequence, reports the fields that
// outside checks and bench/compare.py read, and counts model FLOPs by the documented formula.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "util/cli.hpp"

using infini::testutil::CliResult;
using infini::testutil::run_infini;

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

TEST(BenchCommand, RejectsAMissingConfig) {
  const CliResult r =
      run_infini("bench --config /nonexistent/config.json --seq-len 8 --no-sgemm --json");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("/nonexistent/config.json"), std::string::npos) << r.err;
}

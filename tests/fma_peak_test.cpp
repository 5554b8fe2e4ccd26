// ops::fma_chains and fma_peak_gflops: the FMA ceiling `infini bench` reports next to SGEMM.
#include "ops/fma_peak.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "ops/bf16_amx.hpp"
#include "ops/bf16_gemm.hpp"

namespace {

// Vector lanes the widest FMA this CPU has works on: what fma_chains should pick.
int expected_lanes() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) return 16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
  return 1;
}

}  // namespace

TEST(FmaPeak, ChainsDoTheArithmeticTheyCount) {
  const int64_t steps = 1000;
  float sink = 0;
  const double flops = infini::ops::fma_chains(steps, &sink);
  const int lanes = expected_lanes();
  EXPECT_EQ(flops, 2.0 * lanes * 24 * double(steps));
  // Chain i: x <- 0.9999 x + 1e-4 from 0.001 i, i.e. x_n = a^n x_0 + b (1 - a^n) / (1 - a);
  // every lane of every chain is summed into sink.
  const double a = 0.9999, b = 1e-4, an = std::pow(a, double(steps));
  double want = 0;
  for (int i = 0; i < 24; ++i) want += an * 0.001 * i + b * (1 - an) / (1 - a);
  EXPECT_NEAR(sink, lanes * want, 1e-4 * lanes * want);
}

TEST(FmaPeak, ReportsAPositiveRateOnEveryThreadCount) {
  for (int threads : {1, 2}) {
    const double gflops = infini::ops::fma_peak_gflops(threads, 1 << 14, 2);
    EXPECT_GT(gflops, 0.0) << threads;
    EXPECT_TRUE(std::isfinite(gflops)) << threads;
  }
}

TEST(Bf16Peak, ChainsDoTheArithmeticTheyCount) {
  const int64_t steps = 1000;
  float sink = -1;
  const double flops = infini::ops::bf16_dot_chains(steps, &sink);
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool has = __builtin_cpu_supports("avx512bf16");
#else
  const bool has = false;
#endif
  if (!has) {
    EXPECT_EQ(flops, 0.0);
    EXPECT_EQ(infini::ops::bf16_peak_gflops(1, 1 << 10, 1), 0.0);
    return;
  }
  EXPECT_EQ(flops, 4.0 * 16 * 24 * double(steps));
  // Chain i: 2^-10 i + steps * 2 * 2^-20 in each of 16 lanes, every step exact in fp32.
  double want = 0;
  for (int i = 0; i < 24; ++i) want += i / 1024.0 + double(steps) * 2.0 / 1048576.0;
  EXPECT_NEAR(sink, 16 * want, 1e-5 * 16 * want);
  EXPECT_GT(infini::ops::bf16_peak_gflops(2, 1 << 14, 2), 0.0);
}

TEST(Bf16Peak, AmxTileChainsDoTheArithmeticTheyCount) {
  const int64_t steps = 1000;
  float sink = -1;
  const double flops = infini::ops::amx::tile_chains(steps, &sink);
  if (!infini::ops::amx::supported()) {
    EXPECT_EQ(flops, 0.0);
    EXPECT_EQ(sink, 0.0f);
    GTEST_SKIP() << "no AMX-BF16 here";
  }
  // Four tiles of 16 x 16 fp32, each TDPBF16PS 32 products per element, 2 FLOPs each.
  EXPECT_EQ(flops, 4.0 * double(steps) * 16 * 16 * 32 * 2);
  // One element of each tile: steps * 32 * 2^-20, exact.
  EXPECT_EQ(double(sink), 4.0 * double(steps) * 32 / 1048576.0);
  EXPECT_GT(infini::ops::bf16_peak_gflops(1, 1 << 14, 2), 0.0);
}

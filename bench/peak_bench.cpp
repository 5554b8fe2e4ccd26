// The machine's FP32 arithmetic ceiling per core: fused multiply-adds on registers only (24
// independent 512-bit accumulators, or 256-bit ones without AVX-512), no loads or stores. No
// float32 matrix multiply, ours or a library's, can run faster than this per core; the
// "why not faster" arithmetic of docs/benchmarks.md is measured against it.
//
// BM_Bf16DotPeak does the same with AVX-512 BF16 dot products (vdpbf16ps: 32 bfloat16 products
// summed into 16 float lanes), where the CPU has them: the ceiling of BF16 matrix products
// with float accumulation, which PyTorch reaches through oneDNN under torch.autocast
// (docs/benchmarks.md, "PyTorch with BF16 products"). infini computes in float32 only.
#include <immintrin.h>

#include "bench_util.hpp"
#include "ops/fma_peak.hpp"

namespace {

// ops::fma_chains, the loop `infini bench` measures its FMA ceiling with (fma_peak_gflops).
void BM_FmaPeak(benchmark::State& state) {
  constexpr int64_t kSteps = 4096;
  double flops = 0;
  float sink = 0, total = 0;
  for (auto _ : state) {
    flops = infini::ops::fma_chains(kSteps, &sink);
    total += sink;
  }
  benchmark::DoNotOptimize(total);
  infini::bench::set_flops(state, flops);
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f,avx512bf16"))) void bf16_dot_loop(benchmark::State& state,
                                                                   int64_t steps) {
  constexpr int kAcc = 24;
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(0.001f * float(i));
  // 0x3F80 is bfloat16 1.0, 0x3727 about 1e-5: every lane adds 2e-5 per step, no overflow.
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3F80), b = (__m512bh)_mm512_set1_epi16(0x3727);
  for (auto _ : state) {
    for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 24
      for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
  }
  alignas(64) float lanes[16];
  float total = 0;
  for (int i = 0; i < kAcc; ++i) {
    _mm512_store_ps(lanes, acc[i]);
    for (float x : lanes) total += x;
  }
  benchmark::DoNotOptimize(total);
}

void BM_Bf16DotPeak(benchmark::State& state) {
  constexpr int64_t kSteps = 4096;
  if (!__builtin_cpu_supports("avx512bf16")) {
    state.SkipWithError("this CPU has no AVX-512 BF16");
    return;
  }
  bf16_dot_loop(state, kSteps);
  // Each vdpbf16ps: 16 lanes x 2 products, each a multiply and an add.
  infini::bench::set_flops(state, 2.0 * 32 * 24 * double(kSteps));
}
#endif

}  // namespace

BENCHMARK(BM_FmaPeak)->UseRealTime();
#if defined(__GNUC__) && defined(__x86_64__)
BENCHMARK(BM_Bf16DotPeak)->UseRealTime();
#endif
BENCHMARK_MAIN();

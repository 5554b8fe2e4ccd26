// The machine's FP32 arithmetic ceiling: fused multiply-adds on registers only (24
// independent 512-bit accumulators, or 256-bit ones without AVX-512), no loads or stores. No
// float32 matrix multiply, ours or a library's, can run faster than this per core; the
// "why not faster" arithmetic of docs/benchmarks.md is measured against it.
#include <immintrin.h>

#include <cstring>

#include "bench_util.hpp"

namespace {

#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec splat(float x) { return _mm512_set1_ps(x); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
#else
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec splat(float x) { return _mm256_set1_ps(x); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
#endif
inline float sum(Vec v) {
  alignas(64) float f[kLanes];
  std::memcpy(f, &v, sizeof v);
  float s = 0;
  for (float x : f) s += x;
  return s;
}

void BM_FmaPeak(benchmark::State& state) {
  constexpr int kAcc = 24;  // enough independent chains to cover latency x pipes
  constexpr int64_t kSteps = 4096;
  Vec acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = splat(0.001f * float(i));
  const Vec a = splat(0.9999f), b = splat(1e-4f);
  for (auto _ : state) {
    for (int64_t s = 0; s < kSteps; ++s) {
#pragma GCC unroll 24
      for (int i = 0; i < kAcc; ++i) acc[i] = fma(a, acc[i], b);
    }
  }
  float total = 0;
  for (int i = 0; i < kAcc; ++i) total += sum(acc[i]);
  benchmark::DoNotOptimize(total);
  infini::bench::set_flops(state, 2.0 * kLanes * kAcc * double(kSteps));
}

}  // namespace

BENCHMARK(BM_FmaPeak)->UseRealTime();
BENCHMARK_MAIN();

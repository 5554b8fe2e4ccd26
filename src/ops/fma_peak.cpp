#include "ops/fma_peak.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>

#include "ops/bf16_amx.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace infini::ops {

namespace {

constexpr int kChains = 24;  // enough independent chains to cover FMA latency x pipes

// acc = a acc + b with a just below 1: the chains neither overflow nor go denormal.
#if defined(__x86_64__)
__attribute__((target("avx512f,fma"))) double chains_avx512(int64_t steps, float* sink) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(0.001f * float(i));
  const __m512 a = _mm512_set1_ps(0.9999f), b = _mm512_set1_ps(1e-4f);
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(a, acc[i], b);
  }
  __m512 total = acc[0];
  for (int i = 1; i < kChains; ++i) total = _mm512_add_ps(total, acc[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, total);
  float sum = 0;
  for (float x : lanes) sum += x;
  *sink = sum;
  return 2.0 * 16 * kChains * double(steps);
}

__attribute__((target("avx2,fma"))) double chains_avx2(int64_t steps, float* sink) {
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(0.001f * float(i));
  const __m256 a = _mm256_set1_ps(0.9999f), b = _mm256_set1_ps(1e-4f);
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(a, acc[i], b);
  }
  __m256 total = acc[0];
  for (int i = 1; i < kChains; ++i) total = _mm256_add_ps(total, acc[i]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, total);
  float s = 0;
  for (float x : lanes) s += x;
  *sink = s;
  return 2.0 * 8 * kChains * double(steps);
}

__attribute__((target("avx512f,avx512bf16"))) double chains_bf16(int64_t steps, float* sink) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(float(i) / 1024.0f);
  // Both operands 2^-10 in every bf16 slot: each instruction adds 2 * 2^-20 to every lane.
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3A80);
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, a);
  }
  __m512 total = acc[0];
  for (int i = 1; i < kChains; ++i) total = _mm512_add_ps(total, acc[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, total);
  float sum = 0;
  for (float x : lanes) sum += x;
  *sink = sum;
  return 4.0 * 16 * kChains * double(steps);
}
#endif

double chains_scalar(int64_t steps, float* sink) {
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = 0.001f * float(i);
  for (int64_t s = 0; s < steps; ++s)
    for (int i = 0; i < kChains; ++i) acc[i] = 0.9999f * acc[i] + 1e-4f;
  float total = 0;
  for (float x : acc) total += x;
  *sink = total;
  return 2.0 * kChains * double(steps);
}

}  // namespace

double fma_chains(int64_t steps, float* sink) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
    return chains_avx512(steps, sink);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return chains_avx2(steps, sink);
#endif
  return chains_scalar(steps, sink);
}

double bf16_dot_chains(int64_t steps, float* sink) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bf16")) return chains_bf16(steps, sink);
#endif
  *sink = 0;
  return 0;
}

namespace {

double peak_gflops(double (*chains)(int64_t, float*), int threads, int64_t steps, int reps) {
  threads = std::max(1, threads);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    double flops = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
    {
      float sink = 0;
      flops += chains(steps, &sink);
      volatile float keep = sink;  // the results are used: the chains cannot be optimised away
      (void)keep;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > 0) best = std::max(best, flops / s / 1e9);
  }
  return best;
}

}  // namespace

double fma_peak_gflops(int threads, int64_t steps, int reps) {
  return peak_gflops(&fma_chains, threads, steps, reps);
}

double bf16_peak_gflops(int threads, int64_t steps, int reps) {
  if (bf16_amx_active()) return peak_gflops(&amx::tile_chains, threads, steps / 4, reps);
  return peak_gflops(&bf16_dot_chains, threads, steps, reps);
}

}  // namespace infini::ops

// Shared helpers of the microbenchmarks: random buffers and the rate counters.
#pragma once
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

namespace infini::bench {

inline std::vector<float> random_floats(int64_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

// GFLOP/s from the floating-point operations of one iteration.
inline void set_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_iter * 1e-9 * double(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}

// GB/s from the bytes one iteration must read and write at least once.
inline void set_bytes(benchmark::State& state, double bytes_per_iter) {
  state.counters["GB/s"] = benchmark::Counter(bytes_per_iter * 1e-9 * double(state.iterations()),
                                              benchmark::Counter::kIsRate);
}

}  // namespace infini::bench

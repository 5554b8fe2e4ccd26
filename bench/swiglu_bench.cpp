// SwiGLU forward and backward, in GB/s of the bytes each must move at least once.
#include "bench_util.hpp"
#include "ops/activation.hpp"

using namespace infini;

namespace {

constexpr double kF = sizeof(float);

void BM_SwiGluForward(benchmark::State& state) {
  const int64_t n = state.range(0) * state.range(1);
  auto g = bench::random_floats(n, 1), u = bench::random_floats(n, 2);
  std::vector<float> out(static_cast<size_t>(n));
  for (auto _ : state) {
    ops::swiglu_forward(out.data(), g.data(), u.data(), n);
    benchmark::DoNotOptimize(out.data());
  }
  bench::set_bytes(state, kF * 3 * n);
}

void BM_SwiGluBackward(benchmark::State& state) {
  const int64_t n = state.range(0) * state.range(1);
  auto g = bench::random_floats(n, 1), u = bench::random_floats(n, 2);
  auto dout = bench::random_floats(n, 3);
  std::vector<float> dg(static_cast<size_t>(n)), du(static_cast<size_t>(n));
  for (auto _ : state) {
    ops::swiglu_backward(dg.data(), du.data(), dout.data(), g.data(), u.data(), n);
    benchmark::DoNotOptimize(dg.data());
  }
  bench::set_bytes(state, kF * 5 * n);
}

}  // namespace

BENCHMARK(BM_SwiGluForward)->ArgNames({"rows", "F"})->Args({512, 704})->Args({512, 1408});
BENCHMARK(BM_SwiGluBackward)->ArgNames({"rows", "F"})->Args({512, 704})->Args({512, 1408});
BENCHMARK_MAIN();

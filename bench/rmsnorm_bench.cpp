// RMSNorm forward and backward, in GB/s of the bytes each must move at least once
// (512 rows = one segment; D of the benchmark configurations).
#include "bench_util.hpp"
#include "ops/norm.hpp"

using namespace infini;

namespace {

constexpr double kF = sizeof(float);

void BM_RmsNormForward(benchmark::State& state) {
  const int64_t r = state.range(0), D = state.range(1);
  auto x = bench::random_floats(r * D, 1), w = bench::random_floats(D, 2);
  std::vector<float> y(size_t(r * D)), rstd(static_cast<size_t>(r));
  for (auto _ : state) {
    ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), r, D, 1e-6);
    benchmark::DoNotOptimize(y.data());
  }
  bench::set_bytes(state, kF * 2 * r * D);
}

void BM_RmsNormBackward(benchmark::State& state) {
  const int64_t r = state.range(0), D = state.range(1);
  auto x = bench::random_floats(r * D, 1), w = bench::random_floats(D, 2);
  auto dy = bench::random_floats(r * D, 3);
  std::vector<float> y(size_t(r * D)), rstd(static_cast<size_t>(r)), dx(size_t(r * D));
  std::vector<float> dw(static_cast<size_t>(D));
  ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), r, D, 1e-6);
  for (auto _ : state) {
    ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), rstd.data(), w.data(), r, D,
                          false);
    benchmark::DoNotOptimize(dx.data());
  }
  bench::set_bytes(state, kF * 3 * r * D);
}

}  // namespace

BENCHMARK(BM_RmsNormForward)->ArgNames({"rows", "D"})->Args({512, 256})->Args({512, 512});
BENCHMARK(BM_RmsNormBackward)->ArgNames({"rows", "D"})->Args({512, 256})->Args({512, 512});
BENCHMARK_MAIN();

// RoPE forward and backward (the rotation by +angle and -angle), in GB/s of the bytes moved.
#include "bench_util.hpp"
#include "ops/rope.hpp"

using namespace infini;

namespace {

constexpr double kF = sizeof(float);

// Forward and backward are the same rotation (by +angle and -angle).
template <bool kInverse>
void BM_Rope(benchmark::State& state) {
  const int64_t r = state.range(0), H = state.range(1), d = 64;
  ops::RopeTable<float> table(d, r, 10000.0);
  std::vector<int32_t> pos(static_cast<size_t>(r));
  for (int64_t i = 0; i < r; ++i) pos[size_t(i)] = int32_t(i);
  auto x = bench::random_floats(r * H * d, 1);
  for (auto _ : state) {
    ops::rope_apply(x.data(), r, H, pos.data(), table, kInverse);
    benchmark::DoNotOptimize(x.data());
  }
  bench::set_bytes(state, kF * 2 * r * H * d);
}

}  // namespace

BENCHMARK(BM_Rope<false>)->Name("BM_RopeForward")->ArgNames({"rows", "H"})->Args({512, 4})
    ->Args({512, 8});
BENCHMARK(BM_Rope<true>)->Name("BM_RopeBackward")->ArgNames({"rows", "H"})->Args({512, 4})
    ->Args({512, 8});
BENCHMARK_MAIN();

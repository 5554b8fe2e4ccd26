// Compressive memory: retrieve and update (linear and delta), forward and backward, at the
// shapes of the benchmark configurations (head dim 64). FLOPs count the matrix products:
// retrieve 2 d^2 per (token, query head); update 2 d^2 per (token, kv head), twice for delta;
// backward twice the forward.
#include "bench_util.hpp"
#include "ops/memory.hpp"

using namespace infini;

namespace {

struct Inputs {
  ops::MemoryShape s;
  std::vector<float> q, k, v, M, z, out, sq, den, dout, dq, dk, dv, dM, dz;
  explicit Inputs(const benchmark::State& state) {
    const int64_t B = state.range(0), n = state.range(1), H = state.range(2), d = 64;
    s = {B, n, n, H, H, d};
    const int64_t r = B * n, w = H * d;
    q = bench::random_floats(r * w, 1);
    k = bench::random_floats(r * w, 2);
    v = bench::random_floats(r * w, 3);
    dout = bench::random_floats(r * w, 4);
    M = bench::random_floats(B * H * d * d, 5, 0.1f);
    z = bench::random_floats(B * H * d, 6);
    for (auto& x : z) x = std::abs(x) + 1.0f;
    dM = bench::random_floats(B * H * d * d, 7);
    dz = bench::random_floats(B * H * d, 8);
    out.resize(size_t(r * w));
    sq = dq = dk = dv = out;
    den.resize(size_t(B * H * n));
  }
  double tokens_heads() const { return double(s.batch * s.n * s.heads); }
};

void BM_RetrieveForward(benchmark::State& state) {
  Inputs in(state);
  for (auto _ : state) {
    ops::memory_retrieve_forward(in.out.data(), in.sq.data(), in.den.data(), in.q.data(),
                                 in.M.data(), in.z.data(), in.s);
    benchmark::DoNotOptimize(in.out.data());
  }
  bench::set_flops(state, 2.0 * 64 * 64 * in.tokens_heads());
}

void BM_RetrieveBackward(benchmark::State& state) {
  Inputs in(state);
  ops::memory_retrieve_forward(in.out.data(), in.sq.data(), in.den.data(), in.q.data(),
                               in.M.data(), in.z.data(), in.s);
  for (auto _ : state) {
    ops::memory_retrieve_backward(in.dq.data(), in.dM.data(), in.dz.data(), in.dout.data(),
                                  in.out.data(), in.sq.data(), in.den.data(), in.q.data(),
                                  in.M.data(), in.z.data(), in.s);
    benchmark::DoNotOptimize(in.dq.data());
  }
  bench::set_flops(state, 4.0 * 64 * 64 * in.tokens_heads());
}

template <bool kDelta>
void BM_UpdateForward(benchmark::State& state) {
  Inputs in(state);
  const auto M0 = in.M, z0 = in.z;
  for (auto _ : state) {
    state.PauseTiming();
    in.M = M0;  // the same starting state every time
    in.z = z0;
    state.ResumeTiming();
    ops::memory_update_forward(in.M.data(), in.z.data(), in.k.data(), in.v.data(), in.s, kDelta);
    benchmark::DoNotOptimize(in.M.data());
  }
  bench::set_flops(state, (kDelta ? 4.0 : 2.0) * 64 * 64 * in.tokens_heads());
}

template <bool kDelta>
void BM_UpdateBackward(benchmark::State& state) {
  Inputs in(state);
  for (auto _ : state) {
    ops::memory_update_backward(in.dk.data(), in.dv.data(), in.dM.data(), in.dz.data(),
                                in.k.data(), in.v.data(), in.M.data(), in.z.data(), in.s, kDelta);
    benchmark::DoNotOptimize(in.dk.data());
  }
  bench::set_flops(state, (kDelta ? 8.0 : 4.0) * 64 * 64 * in.tokens_heads());
}

void Shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "n", "H"})->Args({2, 256, 4})->Args({1, 512, 8})->UseRealTime();
}

}  // namespace

BENCHMARK(BM_RetrieveForward)->Apply(Shapes);
BENCHMARK(BM_RetrieveBackward)->Apply(Shapes);
BENCHMARK(BM_UpdateForward<false>)->Name("BM_UpdateForward/linear")->Apply(Shapes);
BENCHMARK(BM_UpdateForward<true>)->Name("BM_UpdateForward/delta")->Apply(Shapes);
BENCHMARK(BM_UpdateBackward<false>)->Name("BM_UpdateBackward/linear")->Apply(Shapes);
BENCHMARK(BM_UpdateBackward<true>)->Name("BM_UpdateBackward/delta")->Apply(Shapes);
BENCHMARK_MAIN();

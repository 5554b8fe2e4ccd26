// Local causal attention, forward and backward: the causal-block fast path against the
// full-matrix reference. FLOPs count the causal half only (what the model needs):
// forward 4 d per (query, key) pair, backward 8 d.
#include "bench_util.hpp"
#include "ops/attention.hpp"

using namespace infini;

namespace {

struct Inputs {
  ops::AttentionShape s;
  std::vector<float> q, k, v, out, probs, dout, dq, dk, dv;
  double pairs;
  explicit Inputs(const benchmark::State& state) {
    const int64_t B = state.range(0), n = state.range(1), H = state.range(2), d = 64;
    s = {B, n, 0, n, H, H, d};
    const int64_t r = B * n, w = H * d;
    q = bench::random_floats(r * w, 1);
    k = bench::random_floats(r * w, 2);
    v = bench::random_floats(r * w, 3);
    dout = bench::random_floats(r * w, 4);
    out.resize(size_t(r * w));
    dq = dk = dv = out;
    probs.resize(size_t(B * H * n * n));
    pairs = double(B * H) * double(n) * double(n + 1) / 2;
  }
};

template <bool kFast>
void BM_AttentionForward(benchmark::State& state) {
  Inputs in(state);
  for (auto _ : state) {
    if (kFast)
      ops::local_attention_forward(in.out.data(), in.probs.data(), in.q.data(), in.k.data(),
                                   in.v.data(), in.s);
    else
      ops::local_attention_forward_reference(in.out.data(), in.probs.data(), in.q.data(),
                                             in.k.data(), in.v.data(), in.s);
    benchmark::DoNotOptimize(in.out.data());
  }
  bench::set_flops(state, 4.0 * 64 * in.pairs);
}

template <bool kFast>
void BM_AttentionBackward(benchmark::State& state) {
  Inputs in(state);
  // Each path's backward needs its own forward's probabilities.
  if (kFast)
    ops::local_attention_forward(in.out.data(), in.probs.data(), in.q.data(), in.k.data(),
                                 in.v.data(), in.s);
  else
    ops::local_attention_forward_reference(in.out.data(), in.probs.data(), in.q.data(),
                                           in.k.data(), in.v.data(), in.s);
  for (auto _ : state) {
    if (kFast)
      ops::local_attention_backward(in.dq.data(), in.dk.data(), in.dv.data(), in.dout.data(),
                                    in.probs.data(), in.q.data(), in.k.data(), in.v.data(), in.s);
    else
      ops::local_attention_backward_reference(in.dq.data(), in.dk.data(), in.dv.data(),
                                              in.dout.data(), in.probs.data(), in.q.data(),
                                              in.k.data(), in.v.data(), in.s);
    benchmark::DoNotOptimize(in.dq.data());
  }
  bench::set_flops(state, 8.0 * 64 * in.pairs);
}

// Args: batch, segment length n, heads (head dim 64): the two benchmark configurations.
void Shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "n", "H"})->Args({2, 256, 4})->Args({1, 512, 8})->UseRealTime();
}

}  // namespace

BENCHMARK(BM_AttentionForward<true>)->Name("AttentionForward/fast")->Apply(Shapes);
BENCHMARK(BM_AttentionForward<false>)->Name("AttentionForward/reference")->Apply(Shapes);
BENCHMARK(BM_AttentionBackward<true>)->Name("AttentionBackward/fast")->Apply(Shapes);
BENCHMARK(BM_AttentionBackward<false>)->Name("AttentionBackward/reference")->Apply(Shapes);
BENCHMARK_MAIN();

// Matmul paths of the model: y = x W^T (forward), dx = dy W and dW += dy^T x (backward), at the
// shapes of configs/bench_small.json and bench_medium.json (512 rows = one segment's tokens),
// plus the square SGEMM the utilisation figures are measured against. Each runs on infini's
// AVX-512 kernel (gemm:0) and on OpenBLAS (gemm:1); LinearForwardPacked is the forward with W
// packed in advance, as a training step and a session use it, LinearForwardPackedCold
// the same with the weights out of cache, and LinearBackwardWeightBlocks the weight gradient
// in the training step's column tasks (model::kGradBlock).
#include "bench_util.hpp"
#include "model/forward.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/gemm.hpp"
#include "ops/sgemm.hpp"

using namespace infini;

namespace {

// The last argument of every benchmark: 0 = native kernel, 1 = OpenBLAS. False when skipped.
bool use_backend(benchmark::State& state, int64_t arg) {
  if (arg == 0 && !ops::sgemm_native_available()) {
    state.SkipWithError("no AVX-512 kernel on this CPU or build");
    return false;
  }
  ops::set_gemm_backend(arg == 0 ? ops::GemmBackend::Native : ops::GemmBackend::OpenBLAS);
  return true;
}

// Args: rows, in, out.
void BM_LinearForward(benchmark::State& state) {
  if (!use_backend(state, state.range(3))) return;
  const int64_t r = state.range(0), in = state.range(1), out = state.range(2);
  auto x = bench::random_floats(r * in, 1), w = bench::random_floats(out * in, 2);
  std::vector<float> y(size_t(r * out));
  for (auto _ : state) {
    ops::linear_forward(y.data(), x.data(), w.data(), (const float*)nullptr, r, in, out);
    benchmark::DoNotOptimize(y.data());
  }
  bench::set_flops(state, 2.0 * r * in * out);
}

void BM_LinearForwardPacked(benchmark::State& state) {
  if (!use_backend(state, 0)) return;
  const int64_t r = state.range(0), in = state.range(1), out = state.range(2);
  auto x = bench::random_floats(r * in, 1), w = bench::random_floats(out * in, 2);
  std::vector<float> y(size_t(r * out));
  ops::PackedMatrix wt;
  ops::sgemm_pack(true, in, out, w.data(), in, wt);
  for (auto _ : state) {
    ops::gemm_packed(false, r, out, in, 1.0f, x.data(), in, wt, 0.0f, y.data(), out);
    benchmark::DoNotOptimize(y.data());
  }
  bench::set_flops(state, 2.0 * r * in * out);
}

// LinearForwardPacked with bf16 inputs and fp32 accumulation (ops/bf16_gemm.hpp): W packed in
// bf16 once, x rounded on the fly. Side by side with the fp32 one for issue #27's ratio.
void BM_LinearForwardPackedBf16(benchmark::State& state) {
  if (!ops::bf16_native_available()) {
    state.SkipWithError("no AVX512-BF16 on this CPU or build");
    return;
  }
  const int64_t r = state.range(0), in = state.range(1), out = state.range(2);
  auto x = bench::random_floats(r * in, 1), w = bench::random_floats(out * in, 2);
  std::vector<float> y(size_t(r * out));
  ops::PackedBf16 wt;
  ops::bf16_pack(true, in, out, w.data(), in, wt);
  for (auto _ : state) {
    ops::bf16_gemm_packed(r, out, in, 1.0f, x.data(), in, wt, 0.0f, y.data(), out);
    benchmark::DoNotOptimize(y.data());
  }
  bench::set_flops(state, 2.0 * r * in * out);
}

// The same with weights that are not in cache, as in a training step, where each layer's
// packed weights come back from memory: 64 copies (100-380 MB), one after the other.
void BM_LinearForwardPackedCold(benchmark::State& state) {
  if (!use_backend(state, 0)) return;
  const int64_t r = state.range(0), in = state.range(1), out = state.range(2);
  auto x = bench::random_floats(r * in, 1), w = bench::random_floats(out * in, 2);
  std::vector<float> y(size_t(r * out));
  std::vector<ops::PackedMatrix> wt(64);
  for (auto& p : wt) ops::sgemm_pack(true, in, out, w.data(), in, p);
  size_t i = 0;
  for (auto _ : state) {
    ops::gemm_packed(false, r, out, in, 1.0f, x.data(), in, wt[i], 0.0f, y.data(), out);
    i = (i + 1) % wt.size();
    benchmark::DoNotOptimize(y.data());
  }
  bench::set_flops(state, 2.0 * r * in * out);
}

void BM_LinearBackwardInput(benchmark::State& state) {
  if (!use_backend(state, state.range(3))) return;
  const int64_t r = state.range(0), in = state.range(1), out = state.range(2);
  auto dy = bench::random_floats(r * out, 1), w = bench::random_floats(out * in, 2);
  std::vector<float> dx(size_t(r * in));
  for (auto _ : state) {
    ops::linear_backward(dx.data(), (float*)nullptr, (float*)nullptr, dy.data(),
                         (const float*)nullptr, w.data(), r, in, out, false);
    benchmark::DoNotOptimize(dx.data());
  }
  bench::set_flops(state, 2.0 * r * in * out);
}

void BM_LinearBackwardWeight(benchmark::State& state) {
  if (!use_backend(state, state.range(3))) return;
  const int64_t r = state.range(0), in = state.range(1), out = state.range(2);
  auto dy = bench::random_floats(r * out, 1), x = bench::random_floats(r * in, 2);
  std::vector<float> dw(size_t(out * in));
  for (auto _ : state) {
    ops::linear_backward((float*)nullptr, dw.data(), (float*)nullptr, dy.data(), x.data(),
                         (const float*)nullptr, r, in, out, false);
    benchmark::DoNotOptimize(dw.data());
  }
  bench::set_flops(state, 2.0 * r * in * out);
}

// The weight gradient as a training step computes it: dW[:, o0 .. o0+B] += dy^T x[:, o0 ..]
// for each block of B = model::kGradBlock columns (one task each), accumulating.
void BM_LinearBackwardWeightBlocks(benchmark::State& state) {
  if (!use_backend(state, state.range(3))) return;
  const int64_t r = state.range(0), in = state.range(1), out = state.range(2);
  auto dy = bench::random_floats(r * out, 1), x = bench::random_floats(r * in, 2);
  std::vector<float> dw(size_t(out * in));
  for (auto _ : state) {
    for (int64_t o0 = 0; o0 < in; o0 += model::kGradBlock)
      ops::gemm<float>(true, false, out, std::min(model::kGradBlock, in - o0), r, 1.0f, dy.data(),
                       out, x.data() + o0, in, 1.0f, dw.data() + o0, in);
    benchmark::DoNotOptimize(dw.data());
  }
  bench::set_flops(state, 2.0 * r * in * out);
}

// Args: m, n, k (row-major, no transposes), pad (floats added to every row; `infini bench`
// measures its reference with pad 0 and 16, because rows exactly 4 KiB apart share cache sets).
void BM_Sgemm(benchmark::State& state) {
  if (!use_backend(state, state.range(4))) return;
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2), pad = state.range(3);
  const int64_t lda = k + pad, ldb = n + pad, ldc = n + pad;
  auto a = bench::random_floats(m * lda, 1), b = bench::random_floats(k * ldb, 2);
  std::vector<float> c(size_t(m * ldc));
  for (auto _ : state) {
    ops::gemm<float>(false, false, m, n, k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(),
                     ldc);
    benchmark::DoNotOptimize(c.data());
  }
  bench::set_flops(state, 2.0 * m * n * k);
}

void LinearShapes(benchmark::internal::Benchmark* b, bool both_backends) {
  b->ArgNames({"rows", "in", "out", "gemm"});
  for (int64_t backend : both_backends ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{0})
    for (auto [in, out] : {std::pair{256, 256}, {256, 704}, {704, 256}, {256, 320},  // small
                           {512, 512}, {512, 1408}, {1408, 512}, {512, 320}})        // medium
      b->Args({512, in, out, backend});
}
void BothBackends(benchmark::internal::Benchmark* b) { LinearShapes(b, true); }
void NativeOnly(benchmark::internal::Benchmark* b) { LinearShapes(b, false); }

}  // namespace

BENCHMARK(BM_LinearForward)->Apply(BothBackends)->UseRealTime();
BENCHMARK(BM_LinearForwardPacked)->Apply(NativeOnly)->UseRealTime();
BENCHMARK(BM_LinearForwardPackedBf16)->Apply(NativeOnly)->UseRealTime();
BENCHMARK(BM_LinearForwardPackedCold)
    ->ArgNames({"rows", "in", "out", "gemm"})
    ->ArgsProduct({{256, 512}, {512}, {1408}, {0}})
    ->Args({256, 1408, 512, 0})
    ->Args({256, 256, 704, 0})
    ->UseRealTime();
BENCHMARK(BM_LinearBackwardInput)->Apply(BothBackends)->UseRealTime();
BENCHMARK(BM_LinearBackwardWeight)->Apply(BothBackends)->UseRealTime();
BENCHMARK(BM_LinearBackwardWeightBlocks)->Apply(NativeOnly)->UseRealTime();
BENCHMARK(BM_Sgemm)->ArgNames({"m", "n", "k", "pad", "gemm"})
    ->ArgsProduct({{1024, 4096}, {1024}, {1024}, {0, 16}, {0, 1}})
    ->UseRealTime();
BENCHMARK_MAIN();

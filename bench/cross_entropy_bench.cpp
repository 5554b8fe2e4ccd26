// Softmax cross-entropy forward (loss only) and backward (loss and dlogits), in GB/s of the
// logits read (and gradients written). V = 320 (byte vocabulary) and 32000 (a BPE vocabulary).
#include "bench_util.hpp"
#include "ops/cross_entropy.hpp"

using namespace infini;

namespace {

constexpr double kF = sizeof(float);

template <bool kBackward>
void BM_CrossEntropy(benchmark::State& state) {
  const int64_t r = state.range(0), V = state.range(1);
  auto logits = bench::random_floats(r * V, 1, 2.0f);
  std::vector<int32_t> tgt(static_cast<size_t>(r));
  for (int64_t i = 0; i < r; ++i) tgt[size_t(i)] = int32_t((i * 7) % V);
  std::vector<float> dl(kBackward ? size_t(r * V) : 0);
  for (auto _ : state) {
    double loss = ops::cross_entropy(logits.data(), tgt.data(), r, V,
                                     kBackward ? dl.data() : (float*)nullptr, 1.0f / float(r));
    benchmark::DoNotOptimize(loss);
  }
  bench::set_bytes(state, kF * (kBackward ? 2 : 1) * r * V);
}

}  // namespace

BENCHMARK(BM_CrossEntropy<false>)->Name("BM_CrossEntropyForward")->ArgNames({"rows", "V"})
    ->Args({512, 320})->Args({512, 32000});
BENCHMARK(BM_CrossEntropy<true>)->Name("BM_CrossEntropyBackward")->ArgNames({"rows", "V"})
    ->Args({512, 320})->Args({512, 32000});
BENCHMARK_MAIN();

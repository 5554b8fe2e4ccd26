// One AdamW step over the parameters of the benchmark models (configs/bench_*.json), in GB/s of
// the bytes it must move at least once: read weight, gradient and both moments, write back the
// weight and the moments. It is bound by memory bandwidth; the parameter tensors are dozens of
// ranges, so the cost of starting threads per range shows here too.
#include <string>

#include "bench_util.hpp"
#include "model/config.hpp"
#include "model/model.hpp"
#include "train/optimizer.hpp"

using namespace infini;

namespace {

void BM_AdamWStep(benchmark::State& state, const char* config) {
  const model::ModelConfig cfg =
      model::load_config(std::string(INFINI_SOURCE_DIR) + "/configs/" + config);
  model::Model<float> m = model::init_model(cfg, model::InitOptions{});
  const auto grads = bench::random_floats(m.layout.total, 1, 1e-3f);
  train::AdamW opt(m.layout.total, train::model_param_groups(m.layout, 1e-3, 1e-3, 0.01),
                   {0.9, 0.999, 1e-8});
  for (auto _ : state) {
    opt.step(m.weights.data(), grads.data(), 1.0);
    benchmark::DoNotOptimize(m.weights.data());
  }
  state.counters["params"] = double(m.layout.total);
  bench::set_bytes(state, double(sizeof(float)) * 7 * double(m.layout.total));
}

}  // namespace

BENCHMARK_CAPTURE(BM_AdamWStep, small, "bench_small.json")->UseRealTime();
BENCHMARK_CAPTURE(BM_AdamWStep, medium, "bench_medium.json")->UseRealTime();
BENCHMARK_MAIN();

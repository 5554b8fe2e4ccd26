// A random model for the model-level tests: init_model's weights (normal(0, init_std) for the
// matrices and embeddings) in double, with normal(0, noise_std) * scale noise (from seed + 1)
// added to the parameters of the listed kinds, so that norms, gates and biases are not at their
// neutral starting values and every path moves the loss.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "model/model.hpp"
#include "util/gradcheck.hpp"

namespace infini::testing {

inline model::Model<double> noisy_model(const model::ModelConfig& cfg, uint64_t seed,
                                        double init_std, double noise_std, double scale,
                                        std::initializer_list<model::ParamKind> kinds) {
  model::Model<double> m = model::cast_model<double>(model::init_model(cfg, {seed, init_std, 0.0}));
  const auto noise = random_vec(size_t(m.layout.total), seed + 1, noise_std);
  for (const auto& p : m.layout.params)
    for (model::ParamKind k : kinds)
      if (p.kind == k)
        for (int64_t i = 0; i < p.numel; ++i)
          m.weights[size_t(p.offset + i)] += noise[size_t(p.offset + i)] * scale;
  return m;
}

}  // namespace infini::testing

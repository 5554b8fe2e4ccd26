// Next-token sampling: greedy, temperature, top-k and top-p (nucleus), reproducible by seed.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace infini::infer {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // 1: no limit; else the smallest set of most likely tokens whose
                             // probability reaches top_p
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o);
  // Picks an id among logits[0 .. allowed) (ids beyond are padding rows of the vocabulary).
  // Ties go to the lowest id, so top_k = 1 is greedy at any temperature.
  int32_t sample(std::span<const float> logits, int64_t allowed);

 private:
  SamplingOptions o_;
  std::mt19937_64 rng_;
  std::vector<int32_t> ids_;
  std::vector<double> probs_;
};

}  // namespace infini::infer

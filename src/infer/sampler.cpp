#include "infer/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace infini::infer {

Sampler::Sampler(const SamplingOptions& o) : o_(o), rng_(o.seed) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    throw Error("--temperature must be a finite number >= 0");
  if (o.top_k < 0) throw Error("--top-k must be >= 0");
  if (!(o.top_p > 0 && o.top_p <= 1)) throw Error("--top-p must be in (0, 1]");
}

int32_t Sampler::sample(std::span<const float> logits, int64_t allowed) {
  const int64_t V = std::min<int64_t>(allowed, int64_t(logits.size()));
  if (V <= 0) throw Error("sampling from an empty vocabulary");
  for (int64_t i = 0; i < V; ++i)
    if (std::isnan(logits[size_t(i)])) throw Error("the model produced NaN logits");
  // Higher logit first, lower id on ties: a strict total order, so results are deterministic.
  auto before = [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  };
  if (o_.temperature == 0 || o_.top_k == 1) {
    int32_t best = 0;
    for (int32_t i = 1; i < int32_t(V); ++i)
      if (before(i, best)) best = i;
    return best;
  }
  ids_.resize(size_t(V));
  std::iota(ids_.begin(), ids_.end(), 0);
  int64_t n = V;
  if (o_.top_k > 0 && o_.top_k < V) {
    std::partial_sort(ids_.begin(), ids_.begin() + o_.top_k, ids_.end(), before);
    n = o_.top_k;
  } else if (o_.top_p < 1) {
    std::sort(ids_.begin(), ids_.end(), before);
  }
  // Softmax in double over the candidates, at the given temperature.
  probs_.resize(size_t(n));
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, double(logits[size_t(ids_[size_t(i)])]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    probs_[size_t(i)] = std::exp((double(logits[size_t(ids_[size_t(i)])]) - mx) / o_.temperature);
    sum += probs_[size_t(i)];
  }
  if (o_.top_p < 1) {
    // Candidates are in descending order here (partial_sort or sort above).
    double acc = 0;
    int64_t keep = 0;
    while (keep < n && acc < o_.top_p * sum) acc += probs_[size_t(keep++)];
    n = std::max<int64_t>(keep, 1);
    sum = acc > 0 ? acc : probs_[0];
  }
  // 53 random bits -> [0, 1), independent of the standard library's distributions.
  const double u = double(rng_() >> 11) * 0x1.0p-53 * sum;
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += probs_[size_t(i)];
    if (u < acc) return ids_[size_t(i)];
  }
  return ids_[size_t(n - 1)];
}

}  // namespace infini::infer

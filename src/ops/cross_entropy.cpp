#include "ops/cross_entropy.hpp"

#include <algorithm>
#include <cmath>

namespace infini::ops {

template <class T>
double cross_entropy(const T* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                     T* dlogits, T scale) {
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t r = 0; r < rows; ++r) {
    const T* l = logits + r * vocab;
    T* dl = dlogits ? dlogits + r * vocab : nullptr;
    const int32_t t = targets[r];
    if (t < 0) {
      if (dl) std::fill(dl, dl + vocab, T(0));
      continue;
    }
    const T mx = *std::max_element(l, l + vocab);
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(l[j] - mx));
    const double lse = double(mx) + std::log(sum);
    total += lse - double(l[t]);
    if (dl) {
      const double inv = 1.0 / sum;
      for (int64_t j = 0; j < vocab; ++j)
        dl[j] = T(std::exp(double(l[j] - mx)) * inv) * scale;
      dl[t] -= scale;
    }
  }
  return total;
}

template double cross_entropy<float>(const float*, const int32_t*, int64_t, int64_t, float*,
                                     float);
template double cross_entropy<double>(const double*, const int32_t*, int64_t, int64_t, double*,
                                      double);

}  // namespace infini::ops

#include "ops/cross_entropy.hpp"

#include <algorithm>
#include <cmath>

#include "ops/fastmath.hpp"

namespace infini::ops {

template <class T>
double cross_entropy(const T* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                     T* dlogits, T scale) {
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (rows * vocab > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const T* l = logits + r * vocab;
    T* dl = dlogits ? dlogits + r * vocab : nullptr;
    const int32_t t = targets[r];
    if (t < 0) {
      if (dl) std::fill(dl, dl + vocab, T(0));
      continue;
    }
    const T mx = max_of(l, vocab);
    double sum = 0;  // in double: the vocabulary can be large
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < vocab; ++j) sum += double(fast_exp(l[j] - mx));
    const double lse = double(mx) + std::log(sum);
    const T lt = l[t];  // read before dl (which may alias l) is written
    total += lse - double(lt);
    if (dl) {
      const T inv = T(1.0 / sum) * scale;
#pragma omp simd
      for (int64_t j = 0; j < vocab; ++j) dl[j] = fast_exp(l[j] - mx) * inv;
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

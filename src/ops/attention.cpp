#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.hpp"
#include "ops/gemm.hpp"

namespace infini::ops {

template <class T>
void local_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                             const AttentionShape& s) {
  const int64_t n = s.n, ctx = s.ctx(), d = s.head_dim, G = s.heads / s.kv_heads;
  const int64_t qw = s.heads * d, kw = s.kv_heads * d;
  const T scale = T(1.0 / std::sqrt(double(d)));
#pragma omp parallel
  {
    std::vector<T> local(probs ? 0 : size_t(n * ctx));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h) {
        const int64_t g = h / G;
        T* p = probs ? probs + ((b * s.heads + h) * n) * ctx : local.data();
        const T* qh = q + b * n * qw + h * d;
        const T* kg = k + b * s.cap * kw + g * d;
        const T* vg = v + b * s.cap * kw + g * d;
        gemm<T>(false, true, n, ctx, d, scale, qh, qw, kg, kw, T(0), p, ctx);
        for (int64_t i = 0; i < n; ++i) {
          T* row = p + i * ctx;
          const int64_t last = s.p0 + i;  // causal: keys 0..last
          T mx = *std::max_element(row, row + last + 1);
          T sum = 0;
          for (int64_t j = 0; j <= last; ++j) {
            row[j] = std::exp(row[j] - mx);
            sum += row[j];
          }
          const T inv = T(1) / sum;
          for (int64_t j = 0; j <= last; ++j) row[j] *= inv;
          std::fill(row + last + 1, row + ctx, T(0));
        }
        gemm<T>(false, false, n, d, ctx, T(1), p, ctx, vg, kw, T(0), out + b * n * qw + h * d,
                qw);
      }
  }
}

template <class T>
void local_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q,
                              const T* k, const T* v, const AttentionShape& s) {
  if (s.p0 != 0 || s.cap != s.n) throw Error("local_attention_backward needs a whole segment");
  const int64_t n = s.n, d = s.head_dim, G = s.heads / s.kv_heads;
  const int64_t qw = s.heads * d, kw = s.kv_heads * d;
  const T scale = T(1.0 / std::sqrt(double(d)));
#pragma omp parallel
  {
    std::vector<T> ds(size_t(n * n));
    // Parallel over (b, kv head): the G query heads sharing a kv head accumulate into it.
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g) {
        const T* kg = k + b * n * kw + g * d;
        const T* vg = v + b * n * kw + g * d;
        T* dkg = dk + b * n * kw + g * d;
        T* dvg = dv + b * n * kw + g * d;
        for (int64_t i = 0; i < n; ++i) {
          std::fill(dkg + i * kw, dkg + i * kw + d, T(0));
          std::fill(dvg + i * kw, dvg + i * kw + d, T(0));
        }
        for (int64_t h = g * G; h < (g + 1) * G; ++h) {
          const T* p = probs + ((b * s.heads + h) * n) * n;
          const T* qh = q + b * n * qw + h * d;
          const T* doh = dout + b * n * qw + h * d;
          // dV += P^T dO ; dP = dO V^T
          gemm<T>(true, false, n, d, n, T(1), p, n, doh, qw, T(1), dvg, kw);
          gemm<T>(false, true, n, n, d, T(1), doh, qw, vg, kw, T(0), ds.data(), n);
          for (int64_t i = 0; i < n; ++i) {
            T* row = ds.data() + i * n;
            const T* prow = p + i * n;
            T dot = 0;
            for (int64_t j = 0; j <= i; ++j) dot += prow[j] * row[j];
            for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - dot) * scale;
            std::fill(row + i + 1, row + n, T(0));
          }
          // dQ = dS K ; dK += dS^T Q   (scale already folded into dS)
          gemm<T>(false, false, n, d, n, T(1), ds.data(), n, kg, kw, T(0), dq + b * n * qw + h * d,
                  qw);
          gemm<T>(true, false, n, d, n, T(1), ds.data(), n, qh, qw, T(1), dkg, kw);
        }
      }
  }
}

template void local_attention_forward<float>(float*, float*, const float*, const float*,
                                             const float*, const AttentionShape&);
template void local_attention_forward<double>(double*, double*, const double*, const double*,
                                              const double*, const AttentionShape&);
template void local_attention_backward<float>(float*, float*, float*, const float*, const float*,
                                              const float*, const float*, const float*,
                                              const AttentionShape&);
template void local_attention_backward<double>(double*, double*, double*, const double*,
                                               const double*, const double*, const double*,
                                               const double*, const AttentionShape&);

}  // namespace infini::ops

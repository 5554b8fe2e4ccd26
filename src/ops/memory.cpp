#include "ops/memory.hpp"

#include <algorithm>
#include <vector>

#include "ops/bf16_gemm.hpp"
#include "ops/fastmath.hpp"
#include "ops/gemm.hpp"

namespace infini::ops {
namespace {
// The memory's products: bf16 inputs into fp32 sums when `bf16` (float only), else gemm<T>.
template <class T>
void mgemm(bool bf16, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
           int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    if (bf16) return bf16_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
}  // namespace

template <class T>
void memory_retrieve_head(T* out, T* sq, T* den, const T* q, const T* Mg, const T* zg, int64_t n,
                          int64_t d, int64_t ldq, bool bf16) {
  for (int64_t t = 0; t < n; ++t) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) {
      const T e = fast_elu1(q[t * ldq + j]);
      sq[t * ldq + j] = e;
      acc += e * zg[j];
    }
    den[t] = acc + T(kMemoryEps);
  }
  mgemm<T>(bf16, false, false, n, d, d, T(1), sq, ldq, Mg, d, T(0), out, ldq);
  for (int64_t t = 0; t < n; ++t) {
    const T inv = T(1) / den[t];
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) out[t * ldq + j] *= inv;
  }
}

template <class T>
void memory_retrieve_head_backward(T* dq, T* dMg, T* dzg, const T* dout, const T* out, const T* sq,
                                   const T* den, const T* q, const T* Mg, const T* zg, int64_t n,
                                   int64_t d, int64_t ldq, T* scratch, bool bf16) {
  T* dnum = scratch;      // [n, d]
  T* dsq = dnum + n * d;  // [n, d]
  T* dden = dsq + n * d;  // [n]
  for (int64_t t = 0; t < n; ++t) {
    const T inv = T(1) / den[t];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) {
      const T g = dout[t * ldq + j];
      dnum[t * d + j] = g * inv;
      acc += g * out[t * ldq + j];
    }
    dden[t] = -acc * inv;
  }
  // dsq = dnum M^T + dden z^T
  mgemm<T>(bf16, false, true, n, d, d, T(1), dnum, d, Mg, d, T(0), dsq, d);
  for (int64_t t = 0; t < n; ++t)
#pragma omp simd
    for (int64_t j = 0; j < d; ++j)
      dq[t * ldq + j] += (dsq[t * d + j] + dden[t] * zg[j]) * fast_elu1_grad(q[t * ldq + j]);
  // dM += sq^T dnum ; dz += sum_t dden_t sq_t
  mgemm<T>(bf16, true, false, d, d, n, T(1), sq, ldq, dnum, d, T(1), dMg, d);
  for (int64_t t = 0; t < n; ++t)
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) dzg[j] += dden[t] * sq[t * ldq + j];
}

namespace {
// sk[t, :] = sigma(k row t), a dense [n, d] copy.
template <class T>
void sigma_keys(T* sk, const T* k, int64_t n, int64_t d, int64_t ldk) {
  for (int64_t t = 0; t < n; ++t)
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) sk[t * d + j] = fast_elu1(k[t * ldk + j]);
}
// Vr = sk M / (sk z + eps) into vr [n, d]; denominators into den [n].
template <class T>
void delta_retrieve(T* vr, T* den, const T* sk, const T* Mg, const T* zg, int64_t n, int64_t d,
                    bool bf16) {
  mgemm<T>(bf16, false, false, n, d, d, T(1), sk, d, Mg, d, T(0), vr, d);
  for (int64_t t = 0; t < n; ++t) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) acc += sk[t * d + j] * zg[j];
    den[t] = acc + T(kMemoryEps);
    const T inv = T(1) / den[t];
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) vr[t * d + j] *= inv;
  }
}
}  // namespace

template <class T>
void memory_update_group(T* Mg, T* zg, const T* k, const T* v, int64_t n, int64_t d, int64_t ldk,
                         bool delta, T* scratch, bool bf16) {
  T* sk = scratch;     // [n, d]
  T* u = sk + n * d;   // [n, d]
  T* den = u + n * d;  // [n]
  sigma_keys(sk, k, n, d, ldk);
  if (delta) {
    // U = v - sk M / (sk z + eps), from the state before this update.
    delta_retrieve(u, den, sk, Mg, zg, n, d, bf16);
    for (int64_t t = 0; t < n; ++t)
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) u[t * d + j] = v[t * ldk + j] - u[t * d + j];
    mgemm<T>(bf16, true, false, d, d, n, T(1), sk, d, u, d, T(1), Mg, d);
  } else {
    mgemm<T>(bf16, true, false, d, d, n, T(1), sk, d, v, ldk, T(1), Mg, d);
  }
  // Sum the segment in double and add it to z once, as the gemm adds to M: one float rounding
  // per segment instead of one per token (docs/hardening.md, tests/memory_stability_test.cpp).
  // Sixteen columns at a time, so that the sums run in vector lanes (each still adds t = 0, 1,
  // ... in order: the same bits as one column at a time).
  constexpr int64_t W = 16;
  for (int64_t j0 = 0; j0 < d; j0 += W) {
    const int64_t w = std::min(W, d - j0);
    double acc[W] = {};
    for (int64_t t = 0; t < n; ++t)
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) acc[j] += double(sk[t * d + j0 + j]);
    for (int64_t j = 0; j < w; ++j) zg[j0 + j] += T(acc[j]);
  }
}

template <class T>
void memory_update_group_backward(T* dk, T* dv, T* dMg, T* dzg, const T* k, const T* v, const T* Mg,
                                  const T* zg, int64_t n, int64_t d, int64_t ldk, bool delta,
                                  T* scratch, bool bf16) {
  T* sk = scratch;                 // [n, d]
  T* dsk = sk + n * d;             // [n, d]
  T* vr = dsk + n * d;             // [n, d]
  T* du = vr + n * d;              // [n, d]
  T* den = du + n * d;             // [n]
  T* dden = den + n;               // [n]
  T* dm_after = dden + n;          // [d, d]
  T* dz_after = dm_after + d * d;  // [d]
  sigma_keys(sk, k, n, d, ldk);
  std::copy(dMg, dMg + d * d, dm_after);
  std::copy(dzg, dzg + d, dz_after);
  // dU (delta) or dv (linear) = sk dM'
  mgemm<T>(bf16, false, false, n, d, d, T(1), sk, d, dm_after, d, T(0), du, d);
  for (int64_t t = 0; t < n; ++t)
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) dv[t * ldk + j] += du[t * d + j];
  if (delta) {
    delta_retrieve(vr, den, sk, Mg, zg, n, d, bf16);
    // dsk = U dM'^T with U = v - Vr
    for (int64_t t = 0; t < n; ++t)
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) vr[t * d + j] = v[t * ldk + j] - vr[t * d + j];
    mgemm<T>(bf16, false, true, n, d, d, T(1), vr, d, dm_after, d, T(0), dsk, d);
    // Back to Vr = v - U, then through the retrieval Vr = sk M / (sk z + eps), dVr = -dU.
    for (int64_t t = 0; t < n; ++t) {
      const T inv = T(1) / den[t];
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < d; ++j) {
        const T vrj = v[t * ldk + j] - vr[t * d + j];
        const T dvr = -du[t * d + j];
        du[t * d + j] = dvr * inv;  // now dnum
        acc += dvr * vrj;
      }
      dden[t] = -acc * inv;
    }
    mgemm<T>(bf16, false, true, n, d, d, T(1), du, d, Mg, d, T(1), dsk, d);
    for (int64_t t = 0; t < n; ++t)
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dsk[t * d + j] += dden[t] * zg[j];
    mgemm<T>(bf16, true, false, d, d, n, T(1), sk, d, du, d, T(1), dMg, d);
    for (int64_t t = 0; t < n; ++t)
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dzg[j] += dden[t] * sk[t * d + j];
  } else {
    mgemm<T>(bf16, false, true, n, d, d, T(1), v, ldk, dm_after, d, T(0), dsk, d);
  }
  // z' = z + sum_t sk_t; dz passes through unchanged (identity) and feeds every dsk row.
  for (int64_t t = 0; t < n; ++t)
#pragma omp simd
    for (int64_t j = 0; j < d; ++j)
      dk[t * ldk + j] += (dsk[t * d + j] + dz_after[j]) * fast_elu1_grad(k[t * ldk + j]);
}

template <class T>
void memory_retrieve_forward(T* out, T* sq, T* den, const T* q, const T* M, const T* z,
                             const MemoryShape& s, bool bf16) {
  const int64_t n = s.n, d = s.head_dim, G = s.heads / s.kv_heads, qw = s.heads * d;
#pragma omp parallel for collapse(2) schedule(static) if (s.batch * s.heads * n * d * d > 65536)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / G, off = b * n * qw + h * d;
      memory_retrieve_head(out + off, sq + off, den + (b * s.heads + h) * n, q + off,
                           M + (b * s.kv_heads + g) * d * d, z + (b * s.kv_heads + g) * d, n, d, qw,
                           bf16);
    }
}

template <class T>
void memory_retrieve_backward(T* dq, T* dM, T* dz, const T* dout, const T* out, const T* sq,
                              const T* den, const T* q, const T* M, const T* z,
                              const MemoryShape& s, bool bf16) {
  const int64_t n = s.n, d = s.head_dim, G = s.heads / s.kv_heads, qw = s.heads * d;
#pragma omp parallel if (s.batch * s.heads * n * d * d > 65536)
  {
    std::vector<T> scratch(size_t(memory_scratch_size(n, d)));
    // Parallel over (b, kv head): the G query heads of a group all add into dM_g, dz_g.
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g)
        for (int64_t h = g * G; h < (g + 1) * G; ++h) {
          const int64_t off = b * n * qw + h * d;
          memory_retrieve_head_backward(
              dq + off, dM + (b * s.kv_heads + g) * d * d, dz + (b * s.kv_heads + g) * d,
              dout + off, out + off, sq + off, den + (b * s.heads + h) * n, q + off,
              M + (b * s.kv_heads + g) * d * d, z + (b * s.kv_heads + g) * d, n, d, qw,
              scratch.data(), bf16);
        }
  }
}

template <class T>
void memory_update_forward(T* M, T* z, const T* k, const T* v, const MemoryShape& s, bool delta,
                           bool bf16) {
  const int64_t n = s.n, d = s.head_dim, kw = s.kv_heads * d;
#pragma omp parallel if (s.batch * s.kv_heads * n * d * d > 65536)
  {
    std::vector<T> scratch(size_t(memory_scratch_size(n, d)));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g)
        memory_update_group(M + (b * s.kv_heads + g) * d * d, z + (b * s.kv_heads + g) * d,
                            k + b * s.cap * kw + g * d, v + b * s.cap * kw + g * d, n, d, kw, delta,
                            scratch.data(), bf16);
  }
}

template <class T>
void memory_update_backward(T* dk, T* dv, T* dM, T* dz, const T* k, const T* v, const T* M,
                            const T* z, const MemoryShape& s, bool delta, bool bf16) {
  const int64_t n = s.n, d = s.head_dim, kw = s.kv_heads * d;
#pragma omp parallel if (s.batch * s.kv_heads * n * d * d > 65536)
  {
    std::vector<T> scratch(size_t(memory_scratch_size(n, d)));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g) {
        const int64_t kv = b * s.cap * kw + g * d, st = b * s.kv_heads + g;
        memory_update_group_backward(dk + kv, dv + kv, dM + st * d * d, dz + st * d, k + kv, v + kv,
                                     M + st * d * d, z + st * d, n, d, kw, delta, scratch.data(),
                                     bf16);
      }
  }
}

#define INFINI_INSTANTIATE(T)                                                                     \
  template void memory_retrieve_forward<T>(T*, T*, T*, const T*, const T*, const T*,              \
                                           const MemoryShape&, bool);                             \
  template void memory_retrieve_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                            const T*, const T*, const T*, const MemoryShape&,     \
                                            bool);                                                \
  template void memory_update_forward<T>(T*, T*, const T*, const T*, const MemoryShape&, bool,    \
                                         bool);                                                   \
  template void memory_update_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, \
                                          const MemoryShape&, bool, bool);                        \
  template void memory_retrieve_head<T>(T*, T*, T*, const T*, const T*, const T*, int64_t,        \
                                        int64_t, int64_t, bool);                                  \
  template void memory_retrieve_head_backward<T>(T*, T*, T*, const T*, const T*, const T*,        \
                                                 const T*, const T*, const T*, const T*, int64_t, \
                                                 int64_t, int64_t, T*, bool);                     \
  template void memory_update_group<T>(T*, T*, const T*, const T*, int64_t, int64_t, int64_t,     \
                                       bool, T*, bool);                                           \
  template void memory_update_group_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*,     \
                                                const T*, int64_t, int64_t, int64_t, bool, T*,    \
                                                bool);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::ops

#include "ops/memory.hpp"

#include <algorithm>
#include <vector>

#include "ops/activation.hpp"
#include "ops/gemm.hpp"

namespace infini::ops {

template <class T>
void memory_retrieve_forward(T* out, T* sq, T* den, const T* q, const T* M, const T* z,
                             const MemoryShape& s) {
  const int64_t n = s.n, d = s.head_dim, G = s.heads / s.kv_heads, qw = s.heads * d;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / G;
      const T* Mg = M + (b * s.kv_heads + g) * d * d;
      const T* zg = z + (b * s.kv_heads + g) * d;
      T* sqh = sq + b * n * qw + h * d;
      const T* qh = q + b * n * qw + h * d;
      T* oh = out + b * n * qw + h * d;
      T* denh = den + (b * s.heads + h) * n;
      for (int64_t t = 0; t < n; ++t) {
        T acc = 0;
        for (int64_t j = 0; j < d; ++j) {
          const T e = elu1(qh[t * qw + j]);
          sqh[t * qw + j] = e;
          acc += e * zg[j];
        }
        denh[t] = acc + T(kMemoryEps);
      }
      gemm<T>(false, false, n, d, d, T(1), sqh, qw, Mg, d, T(0), oh, qw);
      for (int64_t t = 0; t < n; ++t) {
        const T inv = T(1) / denh[t];
        for (int64_t j = 0; j < d; ++j) oh[t * qw + j] *= inv;
      }
    }
}

template <class T>
void memory_retrieve_backward(T* dq, T* dM, T* dz, const T* dout, const T* out, const T* sq,
                              const T* den, const T* q, const T* M, const T* z,
                              const MemoryShape& s) {
  const int64_t n = s.n, d = s.head_dim, G = s.heads / s.kv_heads, qw = s.heads * d;
#pragma omp parallel
  {
    std::vector<T> dnum(size_t(n * d)), dsq(size_t(n * d)), dden(static_cast<size_t>(n));
    // Parallel over (b, kv head): the G query heads of a group all add into dM_g, dz_g.
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g) {
        const T* Mg = M + (b * s.kv_heads + g) * d * d;
        const T* zg = z + (b * s.kv_heads + g) * d;
        T* dMg = dM + (b * s.kv_heads + g) * d * d;
        T* dzg = dz + (b * s.kv_heads + g) * d;
        for (int64_t h = g * G; h < (g + 1) * G; ++h) {
          const int64_t off = b * n * qw + h * d;
          const T* denh = den + (b * s.heads + h) * n;
          for (int64_t t = 0; t < n; ++t) {
            const T inv = T(1) / denh[t];
            T acc = 0;
            for (int64_t j = 0; j < d; ++j) {
              const T g_ = dout[off + t * qw + j];
              dnum[t * d + j] = g_ * inv;
              acc += g_ * out[off + t * qw + j];
            }
            dden[t] = -acc * inv;
          }
          // dsq = dnum M^T + dden z^T
          gemm<T>(false, true, n, d, d, T(1), dnum.data(), d, Mg, d, T(0), dsq.data(), d);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < d; ++j) {
              dsq[t * d + j] += dden[t] * zg[j];
              dq[off + t * qw + j] += dsq[t * d + j] * elu1_grad(q[off + t * qw + j]);
            }
          // dM += sq^T dnum ; dz += sum_t dden_t sq_t
          gemm<T>(true, false, d, d, n, T(1), sq + off, qw, dnum.data(), d, T(1), dMg, d);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < d; ++j) dzg[j] += dden[t] * sq[off + t * qw + j];
        }
      }
  }
}

namespace {
// sk[t, :] = sigma(k row t of kv head g), a dense [n, d] copy.
template <class T>
void sigma_keys(T* sk, const T* kg, int64_t n, int64_t d, int64_t kw) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) sk[t * d + j] = elu1(kg[t * kw + j]);
}
// Vr = sk M / (sk z + eps) into vr [n, d]; denominators into den [n].
template <class T>
void delta_retrieve(T* vr, T* den, const T* sk, const T* Mg, const T* zg, int64_t n, int64_t d) {
  gemm<T>(false, false, n, d, d, T(1), sk, d, Mg, d, T(0), vr, d);
  for (int64_t t = 0; t < n; ++t) {
    T acc = 0;
    for (int64_t j = 0; j < d; ++j) acc += sk[t * d + j] * zg[j];
    den[t] = acc + T(kMemoryEps);
    const T inv = T(1) / den[t];
    for (int64_t j = 0; j < d; ++j) vr[t * d + j] *= inv;
  }
}
}  // namespace

template <class T>
void memory_update_forward(T* M, T* z, const T* k, const T* v, const MemoryShape& s, bool delta) {
  const int64_t n = s.n, d = s.head_dim, kw = s.kv_heads * d;
#pragma omp parallel
  {
    std::vector<T> sk(size_t(n * d)), u(size_t(n * d)), den(static_cast<size_t>(n));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g) {
        T* Mg = M + (b * s.kv_heads + g) * d * d;
        T* zg = z + (b * s.kv_heads + g) * d;
        const T* kg = k + b * s.cap * kw + g * d;
        const T* vg = v + b * s.cap * kw + g * d;
        sigma_keys(sk.data(), kg, n, d, kw);
        if (delta) {
          // U = v - sk M / (sk z + eps), from the state before this update.
          delta_retrieve(u.data(), den.data(), sk.data(), Mg, zg, n, d);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < d; ++j) u[t * d + j] = vg[t * kw + j] - u[t * d + j];
          gemm<T>(true, false, d, d, n, T(1), sk.data(), d, u.data(), d, T(1), Mg, d);
        } else {
          gemm<T>(true, false, d, d, n, T(1), sk.data(), d, vg, kw, T(1), Mg, d);
        }
        for (int64_t t = 0; t < n; ++t)
          for (int64_t j = 0; j < d; ++j) zg[j] += sk[t * d + j];
      }
  }
}

template <class T>
void memory_update_backward(T* dk, T* dv, T* dM, T* dz, const T* k, const T* v, const T* M,
                            const T* z, const MemoryShape& s, bool delta) {
  const int64_t n = s.n, d = s.head_dim, kw = s.kv_heads * d;
#pragma omp parallel
  {
    std::vector<T> sk(size_t(n * d)), dsk(size_t(n * d)), vr(size_t(n * d)), du(size_t(n * d)),
        den(static_cast<size_t>(n)), dden(static_cast<size_t>(n)), dm_after(size_t(d * d)), dz_after(static_cast<size_t>(d));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g) {
        const T* Mg = M + (b * s.kv_heads + g) * d * d;
        const T* zg = z + (b * s.kv_heads + g) * d;
        T* dMg = dM + (b * s.kv_heads + g) * d * d;
        T* dzg = dz + (b * s.kv_heads + g) * d;
        const T* kg = k + b * s.cap * kw + g * d;
        const T* vg = v + b * s.cap * kw + g * d;
        T* dkg = dk + b * s.cap * kw + g * d;
        T* dvg = dv + b * s.cap * kw + g * d;
        sigma_keys(sk.data(), kg, n, d, kw);
        std::copy(dMg, dMg + d * d, dm_after.begin());
        std::copy(dzg, dzg + d, dz_after.begin());
        // dU (delta) or dv (linear) = sk dM'
        gemm<T>(false, false, n, d, d, T(1), sk.data(), d, dm_after.data(), d, T(0), du.data(), d);
        for (int64_t t = 0; t < n; ++t)
          for (int64_t j = 0; j < d; ++j) dvg[t * kw + j] += du[t * d + j];
        if (delta) {
          delta_retrieve(vr.data(), den.data(), sk.data(), Mg, zg, n, d);
          // dsk = U dM'^T with U = v - Vr
          for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < d; ++j) vr[t * d + j] = vg[t * kw + j] - vr[t * d + j];
          gemm<T>(false, true, n, d, d, T(1), vr.data(), d, dm_after.data(), d, T(0), dsk.data(),
                  d);
          // Back to Vr = v - U, then through the retrieval Vr = sk M / (sk z + eps), dVr = -dU.
          for (int64_t t = 0; t < n; ++t) {
            const T inv = T(1) / den[t];
            T acc = 0;
            for (int64_t j = 0; j < d; ++j) {
              const T vrj = vg[t * kw + j] - vr[t * d + j];
              const T dvr = -du[t * d + j];
              du[t * d + j] = dvr * inv;  // now dnum
              acc += dvr * vrj;
            }
            dden[t] = -acc * inv;
          }
          gemm<T>(false, true, n, d, d, T(1), du.data(), d, Mg, d, T(1), dsk.data(), d);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < d; ++j) dsk[t * d + j] += dden[t] * zg[j];
          gemm<T>(true, false, d, d, n, T(1), sk.data(), d, du.data(), d, T(1), dMg, d);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < d; ++j) dzg[j] += dden[t] * sk[t * d + j];
        } else {
          gemm<T>(false, true, n, d, d, T(1), vg, kw, dm_after.data(), d, T(0), dsk.data(), d);
        }
        // z' = z + sum_t sk_t; dz passes through unchanged (identity) and feeds every dsk row.
        for (int64_t t = 0; t < n; ++t)
          for (int64_t j = 0; j < d; ++j) {
            const T gsk = dsk[t * d + j] + dz_after[j];
            dkg[t * kw + j] += gsk * elu1_grad(kg[t * kw + j]);
          }
      }
  }
}

}  // namespace infini::ops

namespace infini::ops {
#define INFINI_INSTANTIATE(T)                                                                    \
  template void memory_retrieve_forward<T>(T*, T*, T*, const T*, const T*, const T*,             \
                                           const MemoryShape&);                                  \
  template void memory_retrieve_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,  \
                                            const T*, const T*, const T*, const MemoryShape&);   \
  template void memory_update_forward<T>(T*, T*, const T*, const T*, const MemoryShape&, bool);  \
  template void memory_update_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*,          \
                                          const T*, const MemoryShape&, bool);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE
}  // namespace infini::ops

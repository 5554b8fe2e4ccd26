#include "ops/gemm.hpp"

#include <algorithm>
#include <atomic>

#include <cblas.h>
#include <omp.h>

#include "core/error.hpp"
#include "ops/sgemm.hpp"

namespace infini::ops {

namespace {

std::atomic<GemmBackend> g_backend{sgemm_native_available() ? GemmBackend::Native
                                                            : GemmBackend::OpenBLAS};

// Outside a parallel region a large product is split over the threads, as OpenBLAS would do:
// rows or columns, whichever is longer. Every element is computed as on one thread.
// part(row0, rows, col0, cols) computes that part of C.
template <class Part>
void split_over_threads(int64_t m, int64_t n, int64_t k, bool rows_only, const Part& part) {
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads <= 1 || 2.0 * double(m) * double(n) * double(k) < 4e6) {
    part(0, m, 0, n);
    return;
  }
  const bool by_rows = rows_only || m >= n;
  const int64_t total = by_rows ? m : n, unit = by_rows ? 12 : 32;
  const int64_t units = (total + unit - 1) / unit;
  const int parts = int(std::min<int64_t>(threads, units));
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int t = 0; t < parts; ++t) {
    const int64_t lo = std::min(total, units * t / parts * unit);
    const int64_t hi = std::min(total, units * (t + 1) / parts * unit);
    if (hi <= lo) continue;
    if (by_rows)
      part(lo, hi - lo, 0, n);
    else
      part(0, m, lo, hi - lo);
  }
}

}  // namespace

void set_gemm_backend(GemmBackend backend) {
  if (backend == GemmBackend::Native && !sgemm_native_available())
    throw Error("the native GEMM kernel needs a CPU with AVX-512F and a compiler that builds it; "
                "here only OpenBLAS is available");
  g_backend.store(backend);
}

GemmBackend gemm_backend() { return g_backend.load(); }

std::string gemm_backend_name() {
  return gemm_backend() == GemmBackend::Native ? "native-avx512" : "openblas";
}

template <>
void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (g_backend.load(std::memory_order_relaxed) == GemmBackend::Native) {
    split_over_threads(m, n, k, false, [&](int64_t i0, int64_t mi, int64_t j0, int64_t nj) {
      sgemm_native(ta, tb, mi, nj, k, alpha, a + i0 * (ta ? 1 : lda), lda,
                   b + j0 * (tb ? ldb : 1), ldb, beta, c + i0 * ldc + j0, ldc);
    });
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                  int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

void gemm_packed(bool ta, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const PackedMatrix& b, float beta, float* c, int64_t ldc) {
  // Columns j0 > 0 of a packed matrix are not a packed matrix of their own: split rows only.
  split_over_threads(m, n, k, true, [&](int64_t i0, int64_t mi, int64_t, int64_t nj) {
    sgemm_native_packed(ta, mi, nj, k, alpha, a + i0 * (ta ? 1 : lda), lda, b, beta,
                        c + i0 * ldc, ldc);
  });
}

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

template <class T>
void gemm_reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                    int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        T av = ta ? a[p * lda + i] : a[i * lda + p];
        T bv = tb ? b[j * ldb + p] : b[p * ldb + j];
        acc += av * bv;
      }
      c[i * ldc + j] = alpha * acc + (beta == T(0) ? T(0) : beta * c[i * ldc + j]);
    }
}

template <class T>
void linear_forward(T* y, const T* x, const T* w, const T* bias, int64_t rows, int64_t in,
                    int64_t out) {
  if (bias) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) y[r * out + o] = bias[o];
  }
  gemm<T>(false, true, rows, out, in, T(1), x, in, w, in, bias ? T(1) : T(0), y, out);
}

template <class T>
void linear_backward(T* dx, T* dw, T* dbias, const T* dy, const T* x, const T* w, int64_t rows,
                     int64_t in, int64_t out, bool accumulate_dx) {
  if (dx) gemm<T>(false, false, rows, in, out, T(1), dy, out, w, in, accumulate_dx ? T(1) : T(0),
                  dx, in);
  if (dw) gemm<T>(true, false, out, in, rows, T(1), dy, out, x, in, T(1), dw, in);
  if (dbias)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) dbias[o] += dy[r * out + o];
}

#define INFINI_INSTANTIATE(T)                                                                  \
  template void gemm_reference<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t,  \
                                  const T*, int64_t, T, T*, int64_t);                           \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t); \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,  \
                                   int64_t, bool);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::ops

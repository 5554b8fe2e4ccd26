#include "ops/gemm.hpp"

#include <cblas.h>

namespace infini::ops {

template <>
void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
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

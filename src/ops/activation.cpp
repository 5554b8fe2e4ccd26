#include "ops/activation.hpp"

#include <vector>

#include "ops/fastmath.hpp"
#include "ops/parallel.hpp"

namespace infini::ops {

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  parallel_blocks(n, n > 65536, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) out[i] = gate[i] * fast_sigmoid(gate[i]) * up[i];
  });
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  parallel_blocks(n, n > 65536, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const T g = gate[i], s = fast_sigmoid(g);
      dup[i] = dout[i] * g * s;
      dgate[i] = dout[i] * up[i] * s * (T(1) + g * (T(1) - s));
    }
  });
}

template <class T>
void gate_mix_forward(T* out, const T* mem, const T* local, const T* beta, int64_t rows,
                      int64_t heads, int64_t d) {
  const int64_t width = heads * d;
  parallel_blocks(rows, rows * width > 65536, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t h = 0; h < heads; ++h) {
        const T s = sigmoid(beta[h]);
        const int64_t base = r * width + h * d;
        for (int64_t j = 0; j < d; ++j)
          out[base + j] = s * mem[base + j] + (T(1) - s) * local[base + j];
      }
  });
}

template <class T>
void gate_mix_backward(T* dmem, T* dlocal, T* dbeta, const T* dout, const T* mem, const T* local,
                       const T* beta, int64_t rows, int64_t heads, int64_t d) {
  const int64_t width = heads * d;
  for (int64_t h = 0; h < heads; ++h) {
    const T s = sigmoid(beta[h]);
    double acc = 0;
#pragma omp parallel for schedule(static) reduction(+ : acc) if (rows * d > 65536)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t base = r * width + h * d;
      for (int64_t j = 0; j < d; ++j) {
        const T g = dout[base + j];
        dmem[base + j] = s * g;
        dlocal[base + j] = (T(1) - s) * g;
        acc += double(g) * double(mem[base + j] - local[base + j]);
      }
    }
    dbeta[h] += T(acc) * s * (T(1) - s);
  }
}

#define INFINI_INSTANTIATE(T)                                                                \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);                          \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);           \
  template void gate_mix_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t,      \
                                    int64_t);                                                \
  template void gate_mix_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,     \
                                     int64_t, int64_t, int64_t);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::ops

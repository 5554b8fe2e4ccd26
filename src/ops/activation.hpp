// Element-wise pieces: SwiGLU, the memory/local gate mix, sigma = ELU + 1.
#pragma once
#include <cmath>
#include <cstdint>

namespace infini::ops {

// sigma(x) = ELU(x) + 1 and its derivative (1 for x > 0, exp(x) otherwise).
template <class T>
inline T elu1(T x) {
  return x > T(0) ? x + T(1) : std::exp(x);
}
template <class T>
inline T elu1_grad(T x) {
  return x > T(0) ? T(1) : std::exp(x);
}
template <class T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// out[i] = silu(gate[i]) * up[i]  (=)
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
// dgate, dup (=)
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);

// out[r, h*d + j] = s_h * mem + (1 - s_h) * local, s_h = sigmoid(beta[h]).  (=)
template <class T>
void gate_mix_forward(T* out, const T* mem, const T* local, const T* beta, int64_t rows,
                      int64_t heads, int64_t head_dim);
// dmem, dlocal (=); dbeta (+=).
template <class T>
void gate_mix_backward(T* dmem, T* dlocal, T* dbeta, const T* dout, const T* mem, const T* local,
                       const T* beta, int64_t rows, int64_t heads, int64_t head_dim);

}  // namespace infini::ops

// Vectorisable element-wise math for the float fast paths. GCC turns loops over these into
// AVX-512/AVX2 code (std::exp from libm is a scalar call per element). double keeps std::exp:
// it is the precision the gradient checks run in.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace infini::ops {

// exp(x) for float, within about 2 ulp of std::exp over the range where the result is a normal
// float; it saturates at exp(-87.3) below (not 0) and at exp(88.3) above. NaN stays NaN.
// Cephes' expf scheme: x = k ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6 polynomial.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = std::fma(x, 1.44269504088896341f, magic);
  const float kf = t - magic;
  const int32_t k = int32_t(std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(magic));
  float r = std::fma(kf, -0.693359375f, x);
  r = std::fma(kf, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r + 1.0f);
  return p * std::bit_cast<float>(uint32_t(k + 127) << 23);
}
inline double fast_exp(double x) { return std::exp(x); }

// max(x[0 .. n-1]), n >= 1. Sixteen running maxima, so that GCC vectorises it (it does not turn
// an `omp simd` max reduction over floats into vector code without -ffast-math).
template <class T>
inline T max_of(const T* x, int64_t n) {
  constexpr int64_t W = 16;
  T m = x[0];
  int64_t i = 0;
  if (n >= W) {
    T lane[W];
    for (int64_t k = 0; k < W; ++k) lane[k] = x[k];
    for (i = W; i + W <= n; i += W)
      for (int64_t k = 0; k < W; ++k) lane[k] = x[i + k] > lane[k] ? x[i + k] : lane[k];
    for (int64_t k = 0; k < W; ++k) m = lane[k] > m ? lane[k] : m;
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

template <class T>
inline T fast_sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}
// sigma(x) = ELU(x) + 1.
template <class T>
inline T fast_elu1(T x) {
  const T e = fast_exp(std::min(x, T(0)));
  return x > T(0) ? x + T(1) : e;
}
template <class T>
inline T fast_elu1_grad(T x) {
  const T e = fast_exp(std::min(x, T(0)));
  return x > T(0) ? T(1) : e;
}

}  // namespace infini::ops

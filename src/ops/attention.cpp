#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/error.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/fastmath.hpp"
#include "ops/gemm.hpp"

namespace infini::ops {

namespace {
// gemm<T>, or with bf16 inputs (float only) when `bf16`.
template <class T>
void product(bool bf16, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
             const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      bf16_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
  }
  gemm<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
}  // namespace

template <class T>
void local_attention_forward_reference(T* out, T* probs, const T* q, const T* k, const T* v,
                                       const AttentionShape& s, bool bf16) {
  const int64_t n = s.n, ctx = s.ctx(), d = s.head_dim, G = s.heads / s.kv_heads;
  const int64_t qw = s.heads * d, kw = s.kv_heads * d;
  const T scale = T(1.0 / std::sqrt(double(d)));
#pragma omp parallel if (s.batch * s.heads * n * ctx * d > 65536)
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
        product(bf16, false, true, n, ctx, d, scale, qh, qw, kg, kw, T(0), p, ctx);
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
        product(bf16, false, false, n, d, ctx, T(1), p, ctx, vg, kw, T(0), out + b * n * qw + h * d,
                qw);
      }
  }
}

template <class T>
void local_attention_backward_reference(T* dq, T* dk, T* dv, const T* dout, const T* probs,
                                        const T* q, const T* k, const T* v, const AttentionShape& s,
                                        bool bf16) {
  if (s.p0 != 0 || s.cap != s.n)
    throw Error("local_attention_backward_reference needs a whole segment");
  const int64_t n = s.n, d = s.head_dim, G = s.heads / s.kv_heads;
  const int64_t qw = s.heads * d, kw = s.kv_heads * d;
  const T scale = T(1.0 / std::sqrt(double(d)));
#pragma omp parallel if (s.batch * s.heads * n * n * d > 65536)
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
          product(bf16, true, false, n, d, n, T(1), p, n, doh, qw, T(1), dvg, kw);
          product(bf16, false, true, n, n, d, T(1), doh, qw, vg, kw, T(0), ds.data(), n);
          for (int64_t i = 0; i < n; ++i) {
            T* row = ds.data() + i * n;
            const T* prow = p + i * n;
            T dot = 0;
            for (int64_t j = 0; j <= i; ++j) dot += prow[j] * row[j];
            for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - dot) * scale;
            std::fill(row + i + 1, row + n, T(0));
          }
          // dQ = dS K ; dK += dS^T Q   (scale already folded into dS)
          product(bf16, false, false, n, d, n, T(1), ds.data(), n, kg, kw, T(0),
                  dq + b * n * qw + h * d, qw);
          product(bf16, true, false, n, d, n, T(1), ds.data(), n, qh, qw, T(1), dkg, kw);
        }
      }
  }
}

namespace {

// Softmax over row[0 .. last] in place; row[last+1 .. end) is set to 0 (its values on entry
// are not used and may be anything, NaN included). The row is walked in whole blocks of W up
// to the first multiple of W past `last` (within `end`), the entries past `last` masked
// out, so that the loops compile to full vectors without a scalar tail, and the lanes are
// reduced pairwise (scalar tails of up to W - 1 exps and a serial 16-lane reduction per row
// made attention_bench's forward 8-12% slower).
template <class T>
void causal_softmax_row(T* row, int64_t last, int64_t end) {
  constexpr int64_t W = 16;
  const int64_t blocked = std::min(end, (last + W) / W * W) / W * W;
  const T lowest = -std::numeric_limits<T>::infinity();
  T lane[W];
  std::fill_n(lane, W, lowest);
  for (int64_t j0 = 0; j0 < blocked; j0 += W) {
    const int in_row = int(std::min<int64_t>(last - j0, W));  // lanes k <= in_row are in it
#pragma omp simd
    for (int k = 0; k < int(W); ++k) {
      const T x = row[j0 + k];
      const T v = k <= in_row ? x : lowest;
      lane[k] = v > lane[k] ? v : lane[k];
    }
  }
  for (int64_t w = W / 2; w >= 1; w /= 2)
    for (int64_t k = 0; k < w; ++k) lane[k] = lane[k + w] > lane[k] ? lane[k + w] : lane[k];
  T mx = lane[0];
  for (int64_t j = blocked; j <= last; ++j) mx = row[j] > mx ? row[j] : mx;

  std::fill_n(lane, W, T(0));
  for (int64_t j0 = 0; j0 < blocked; j0 += W) {
    const int in_row = int(std::min<int64_t>(last - j0, W));
#pragma omp simd
    for (int k = 0; k < int(W); ++k) {
      const T e = fast_exp(row[j0 + k] - mx);
      const T v = k <= in_row ? e : T(0);
      row[j0 + k] = v;
      lane[k] += v;
    }
  }
  for (int64_t w = W / 2; w >= 1; w /= 2)
    for (int64_t k = 0; k < w; ++k) lane[k] += lane[k + w];
  T sum = lane[0];
  for (int64_t j = blocked; j <= last; ++j) {
    row[j] = fast_exp(row[j] - mx);
    sum += row[j];
  }
  const T inv = T(1) / sum;
  const int64_t valid = std::max(blocked, last + 1);  // zeros past `last` stay zeros
#pragma omp simd
  for (int64_t j = 0; j < valid; ++j) row[j] *= inv;
  std::fill(row + valid, row + end, T(0));
}

// The keys and values of one head as B operands of its query blocks' products. With the native
// GEMM each is packed once per head and every block uses a prefix of it (block i sees keys
// 0 .. e-1); otherwise they are plain pointers for gemm<T>, which packs per call.
template <class T>
class HeadOperand {
 public:
  // op(B) [k_rows, n_cols] = b (trans = false, b is [k_rows, ldb]) or b^T (trans = true).
  HeadOperand(PackedMatrix& buffer, bool trans, int64_t k_rows, int64_t n_cols, const T* b,
              int64_t ldb, PackedBf16* bf16 = nullptr)
      : trans_(trans), b_(b), ldb_(ldb) {
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) {  // bf16 inputs: packed in bf16 natively, else each product emulates
        bf16_ = true;
        if (bf16_native_available()) {
          bf16_pack(trans, k_rows, n_cols, b, ldb, *bf16);
          packed_bf16_ = bf16;
        }
        return;
      }
      if (gemm_backend() == GemmBackend::Native) {
        sgemm_pack(trans, k_rows, n_cols, b, ldb, buffer);
        packed_ = &buffer;
      }
    }
  }
  // C[m, n] = alpha A op(B)[0 .. k, 0 .. n] (+ beta C), A row-major [m, lda].
  void multiply(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, T beta, T* c,
                int64_t ldc) const {
    if constexpr (std::is_same_v<T, float>) {
      if (packed_bf16_) {
        bf16_gemm_packed(m, n, k, alpha, a, lda, *packed_bf16_, beta, c, ldc);
        return;
      }
      if (bf16_) {
        bf16_gemm(false, trans_, m, n, k, alpha, a, lda, b_, ldb_, beta, c, ldc);
        return;
      }
      if (packed_) {
        sgemm_native_packed(false, m, n, k, alpha, a, lda, *packed_, beta, c, ldc);
        return;
      }
    }
    gemm<T>(false, trans_, m, n, k, alpha, a, lda, b_, ldb_, beta, c, ldc);
  }

 private:
  bool trans_, bf16_ = false;
  const PackedBf16* packed_bf16_ = nullptr;
  const T* b_;
  int64_t ldb_;
  const PackedMatrix* packed_ = nullptr;
};

// Where a query block's rows stop being written: the backward's dK and dV read whole key
// blocks of these rows (kKeyBlock may be larger than a query block), so the masked entries
// up to the end of the key block that holds the block's last key must be zeros too.
int64_t written_end(int64_t e, int64_t total) {
  return std::min(total, (e + kKeyBlock - 1) / kKeyBlock * kKeyBlock);
}

// One packing buffer per thread and role, reused by every head the thread computes.
PackedMatrix& head_buffer(int role) {
  thread_local PackedMatrix buffers[2];
  return buffers[role];
}
PackedBf16* head_buffer_bf16(int role) {
  thread_local PackedBf16 buffers[3];
  return &buffers[role];
}

// The key-block products of the backward with bf16 inputs on the native kernel:
// dK[j0 .. j1] += dS[j0 .., j0 .. j1]^T Q[j0 ..] and dV[j0 .. j1] += P[..]^T dO[j0 ..]. The
// transposed A (dS^T, P^T) is avoided by computing dK^T = Q^T dS: Q^T and dO^T are converted
// once per head (d rows of n, as pairs of Q's and dO's rows: ops::bf16_convert_pairs), each
// key block of dS and P is packed as B (rows j0 .. n-1), and the [d, mk] result is added
// transposed.
void key_block_grads_bf16(float* dk, float* dv, const float* dout, const float* probs,
                          const float* dS, const float* q, int64_t n, int64_t d, int64_t ldq,
                          int64_t ldk) {
  const int64_t pairs = (n + 1) / 2, ldt = 2 * d;
  thread_local std::vector<uint16_t> qt, ot;
  thread_local std::vector<float> block;
  qt.resize(size_t(pairs * ldt));
  ot.resize(size_t(pairs * ldt));
  bf16_convert_pairs(q, ldq, 0, n, d, qt.data(), ldt);
  bf16_convert_pairs(dout, ldq, 0, n, d, ot.data(), ldt);
  bf16_zero_pair_pad(qt.data(), ldt, n, d);
  bf16_zero_pair_pad(ot.data(), ldt, n, d);
  block.resize(size_t(d * kKeyBlock));
  PackedBf16& b = *head_buffer_bf16(2);
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t j1 = std::min(n, j0 + kKeyBlock), mk = j1 - j0, rows = n - j0;
    for (int pass = 0; pass < 2; ++pass) {
      const float* src = pass == 0 ? dS : probs;
      bf16_pack(false, rows, mk, src + j0 * n + j0, n, b);
      // Rows j0 .. of Q start at pair j0 / 2 (kKeyBlock is even).
      bf16_gemm_converted_pairs(d, mk, rows, 1.0f, (pass == 0 ? qt : ot).data() + (j0 / 2) * ldt,
                                ldt, b, 0.0f, block.data(), mk);
      float* out = pass == 0 ? dk : dv;
      for (int64_t i = 0; i < mk; ++i) {
        float* o = out + (j0 + i) * ldk;
#pragma omp simd
        for (int64_t e = 0; e < d; ++e) o[e] += block[size_t(e * mk + i)];
      }
    }
  }
}

}  // namespace

template <class T>
void attention_head_forward(T* out, T* probs, const T* q, const T* k, const T* v, int64_t n,
                            int64_t p0, int64_t d, int64_t ldq, int64_t ldk, T* scratch,
                            bool bf16) {
  const int64_t ctx = p0 + n;
  const T scale = T(1.0 / std::sqrt(double(d)));
  bf16 = bf16 && std::is_same_v<T, float>;
  const HeadOperand<T> keys(head_buffer(0), true, d, ctx, k, ldk,  // K^T [d, ctx]
                            bf16 ? head_buffer_bf16(0) : nullptr);
  const HeadOperand<T> values(head_buffer(1), false, ctx, d, v, ldk,  // V [ctx, d]
                              bf16 ? head_buffer_bf16(1) : nullptr);
  for (int64_t i0 = 0; i0 < n; i0 += kAttentionBlock) {
    const int64_t i1 = std::min(n, i0 + kAttentionBlock), m = i1 - i0, e = p0 + i1;
    T* P = probs ? probs + i0 * ctx : scratch;
    // Only keys 0 .. e-1 are visible to any query of this block.
    keys.multiply(m, e, d, scale, q + i0 * ldq, ldq, T(0), P, ctx);
    const int64_t end = probs ? written_end(e, ctx) : e;
    for (int64_t ii = 0; ii < m; ++ii) causal_softmax_row(P + ii * ctx, p0 + i0 + ii, end);
    values.multiply(m, d, e, T(1), P, ctx, T(0), out + i0 * ldq, ldq);
  }
}

template <class T>
void attention_head_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q,
                             const T* k, const T* v, int64_t n, int64_t d, int64_t ldq, int64_t ldk,
                             T* scratch, bool bf16) {
  const T scale = T(1.0 / std::sqrt(double(d)));
  bf16 = bf16 && std::is_same_v<T, float>;
  T* dS = scratch;  // [n, n]; row i holds columns 0 .. (end of i's block) - 1
  const HeadOperand<T> values_t(head_buffer(0), true, d, n, v, ldk,  // V^T [d, n]
                                bf16 ? head_buffer_bf16(0) : nullptr);
  const HeadOperand<T> keys(head_buffer(1), false, n, d, k, ldk,  // K [n, d]
                            bf16 ? head_buffer_bf16(1) : nullptr);
  for (int64_t i0 = 0; i0 < n; i0 += kAttentionBlock) {
    const int64_t i1 = std::min(n, i0 + kAttentionBlock), m = i1 - i0, e = i1;
    const int64_t end = written_end(e, n);
    // dP = dO V^T, then dS = P * (dP - rowsum(P * dP)) * scale
    values_t.multiply(m, e, d, T(1), dout + i0 * ldq, ldq, T(0), dS + i0 * n, n);
    for (int64_t ii = 0; ii < m; ++ii) {
      const int64_t i = i0 + ii;
      T* row = dS + i * n;
      const T* prow = probs + i * n;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j <= i; ++j) dot += prow[j] * row[j];
#pragma omp simd
      for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - dot) * scale;
      std::fill(row + i + 1, row + end, T(0));
    }
    // dQ = dS K  (scale already folded into dS)
    keys.multiply(m, d, e, T(1), dS + i0 * n, n, T(0), dq + i0 * ldq, ldq);
  }
  // Key block j0..j1 is seen by queries j0 .. n-1 only: dK += dS^T Q, dV += P^T dO over them.
  if constexpr (std::is_same_v<T, float>) {
    if (bf16 && bf16_native_available()) {
      key_block_grads_bf16(dk, dv, dout, probs, dS, q, n, d, ldq, ldk);
      return;
    }
  }
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    const int64_t j1 = std::min(n, j0 + kKeyBlock), mk = j1 - j0, rows = n - j0;
    product(bf16, true, false, mk, d, rows, T(1), dS + j0 * n + j0, n, q + j0 * ldq, ldq, T(1),
            dk + j0 * ldk, ldk);
    product(bf16, true, false, mk, d, rows, T(1), probs + j0 * n + j0, n, dout + j0 * ldq, ldq,
            T(1), dv + j0 * ldk, ldk);
  }
}

template <class T>
void local_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                             const AttentionShape& s) {
  const int64_t n = s.n, ctx = s.ctx(), d = s.head_dim, G = s.heads / s.kv_heads;
  const int64_t qw = s.heads * d, kw = s.kv_heads * d;
#pragma omp parallel if (s.batch * s.heads * n * ctx * d > 65536)
  {
    std::vector<T> scratch(probs ? 0 : size_t(kAttentionBlock * ctx));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h) {
        const int64_t g = h / G;
        attention_head_forward(out + b * n * qw + h * d,
                               probs ? probs + ((b * s.heads + h) * n) * ctx : nullptr,
                               q + b * n * qw + h * d, k + b * s.cap * kw + g * d,
                               v + b * s.cap * kw + g * d, n, s.p0, d, qw, kw, scratch.data());
      }
  }
}

template <class T>
void local_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q,
                              const T* k, const T* v, const AttentionShape& s) {
  if (s.p0 != 0 || s.cap != s.n) throw Error("local_attention_backward needs a whole segment");
  const int64_t n = s.n, d = s.head_dim, G = s.heads / s.kv_heads;
  const int64_t qw = s.heads * d, kw = s.kv_heads * d;
#pragma omp parallel if (s.batch * s.heads * n * n * d > 65536)
  {
    std::vector<T> scratch(size_t(n * n));
    // Parallel over (b, kv head): the G query heads sharing a kv head accumulate into it.
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t g = 0; g < s.kv_heads; ++g) {
        T* dkg = dk + b * n * kw + g * d;
        T* dvg = dv + b * n * kw + g * d;
        for (int64_t i = 0; i < n; ++i) {
          std::fill(dkg + i * kw, dkg + i * kw + d, T(0));
          std::fill(dvg + i * kw, dvg + i * kw + d, T(0));
        }
        for (int64_t h = g * G; h < (g + 1) * G; ++h)
          attention_head_backward(dq + b * n * qw + h * d, dkg, dvg, dout + b * n * qw + h * d,
                                  probs + ((b * s.heads + h) * n) * n, q + b * n * qw + h * d,
                                  k + b * n * kw + g * d, v + b * n * kw + g * d, n, d, qw, kw,
                                  scratch.data());
      }
  }
}

#define INFINI_INSTANTIATE(T)                                                                     \
  template void local_attention_forward<T>(T*, T*, const T*, const T*, const T*,                  \
                                           const AttentionShape&);                                \
  template void local_attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                            const T*, const AttentionShape&);                     \
  template void local_attention_forward_reference<T>(T*, T*, const T*, const T*, const T*,        \
                                                     const AttentionShape&, bool);                \
  template void local_attention_backward_reference<T>(                                            \
      T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const AttentionShape&, bool); \
  template void attention_head_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, \
                                          int64_t, int64_t, int64_t, T*, bool);                   \
  template void attention_head_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,    \
                                           const T*, int64_t, int64_t, int64_t, int64_t, T*,      \
                                           bool);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::ops

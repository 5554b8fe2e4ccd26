// Causal softmax attention inside one segment, with GQA (query head h uses kv head h / G).
//
// Layouts (row-major):
//   q, out : [B * n, H * d]      row b*n + i is query i of sequence b; it sits at local
//                                position p0 + i of the segment.
//   k, v   : [B * cap, Hkv * d]  row b*cap + j is key/value at local position j; rows
//                                j < p0 + n must be filled (a decode cache has p0 > 0).
//   probs  : [B, H, n, p0 + n]   softmax probabilities, saved for backward (may be null).
//                                Only the causal part (key <= query) is defined.
// Scale is 1/sqrt(d); q and k are expected to carry RoPE already.
#pragma once
#include <cstdint>

namespace infini::ops {

struct AttentionShape {
  int64_t batch, n, p0, cap, heads, kv_heads, head_dim;
  int64_t ctx() const { return p0 + n; }
};

template <class T>
void local_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                             const AttentionShape& s);

// Training backward (p0 == 0): dq, dk, dv (=). probs must be those of the forward.
template <class T>
void local_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q,
                              const T* k, const T* v, const AttentionShape& s);

// The plain versions: full n x ctx products, then the causal mask. The fast path above is
// tested against them.
template <class T>
void local_attention_forward_reference(T* out, T* probs, const T* q, const T* k, const T* v,
                                       const AttentionShape& s, bool bf16 = false);
template <class T>
void local_attention_backward_reference(T* dq, T* dk, T* dv, const T* dout, const T* probs,
                                        const T* q, const T* k, const T* v,
                                        const AttentionShape& s, bool bf16 = false);

// ---- Single-threaded kernels for one query head (the model's fast path runs them from its
// own parallel region). Query blocks of kAttentionBlock rows only multiply the keys they can
// see, so the masked half of QK^T and PV is skipped. What is left is the masked triangle
// inside each block, so blocks are small: with 32 rows the products are 12% more than the
// causal half for 256 queries and 6% for 512, with 64 rows 25% and 12% (the GEMM walks a
// block 12 rows at a time either way). The backward's dK and dV run over blocks of kKeyBlock
// keys, each packing the queries it sees: larger, so that packing stays a small share. Row
// strides: ldq for q, out, dout, dq; ldk for k, v, dk, dv.
constexpr int64_t kAttentionBlock = 32;
constexpr int64_t kKeyBlock = 64;

// out (=) for the n queries at positions p0 .. p0+n-1 against keys 0 .. p0+n-1.
// probs: [n, p0+n] or null; scratch: kAttentionBlock * (p0+n) values, used when probs is null.
// bf16 (float only; also for local_attention_forward_reference): QK^T and PV take bf16 inputs
// and sum in fp32 (SPEC §8); the softmax and the saved probabilities stay fp32.
template <class T>
void attention_head_forward(T* out, T* probs, const T* q, const T* k, const T* v, int64_t n,
                            int64_t p0, int64_t d, int64_t ldq, int64_t ldk, T* scratch,
                            bool bf16 = false);

// Whole segment (p0 == 0). dq (=); dk, dv (+=). scratch: n * n values.
// bf16 (float only; also for local_attention_backward_reference): all four products (dP =
// dO V^T, dQ = dS K, dK = dS^T Q, dV = P^T dO) take bf16 inputs and sum in fp32; the saved
// probabilities and dS itself are fp32 (docs/precision.md).
template <class T>
void attention_head_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q,
                             const T* k, const T* v, int64_t n, int64_t d, int64_t ldq,
                             int64_t ldk, T* scratch, bool bf16 = false);

}  // namespace infini::ops

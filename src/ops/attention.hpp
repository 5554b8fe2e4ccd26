// Causal softmax attention inside one segment, with GQA (query head h uses kv head h / G).
//
// Layouts (row-major):
//   q, out : [B * n, H * d]      row b*n + i is query i of sequence b; it sits at local
//                                position p0 + i of the segment.
//   k, v   : [B * cap, Hkv * d]  row b*cap + j is key/value at local position j; rows
//                                j < p0 + n must be filled (a decode cache has p0 > 0).
//   probs  : [B, H, n, p0 + n]   softmax probabilities, saved for backward (may be null).
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

}  // namespace infini::ops

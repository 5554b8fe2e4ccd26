// Compressive memory of Infini-attention (SPEC §4), for one layer.
//
// Layouts (row-major):
//   q      : [B * n, H * d]       pre-RoPE queries, row b*n + t
//   k, v   : [B * cap, Hkv * d]   pre-RoPE keys and values, row b*cap + t, t < n
//   M      : [B, Hkv, d, d]       z : [B, Hkv, d]
//   out    : [B * n, H * d]       A_mem
//   sq     : [B * n, H * d]       sigma(q), saved for backward
//   den    : [B, H, n]            sigma(q) z + eps, saved for backward
// sigma(x) = ELU(x) + 1. Query head h reads kv head h / G.
#pragma once
#include <cstdint>

namespace infini::ops {

constexpr double kMemoryEps = 1e-6;

struct MemoryShape {
  int64_t batch, n, cap, heads, kv_heads, head_dim;
};

// out, sq, den (=). Reads M, z (the state left by earlier segments).
template <class T>
void memory_retrieve_forward(T* out, T* sq, T* den, const T* q, const T* M, const T* z,
                             const MemoryShape& s, bool bf16 = false);

// dq, dM, dz (+=).
template <class T>
void memory_retrieve_backward(T* dq, T* dM, T* dz, const T* dout, const T* out, const T* sq,
                              const T* den, const T* q, const T* M, const T* z,
                              const MemoryShape& s, bool bf16 = false);

// In place: (M, z) <- update(M, z, k, v), with the linear or the delta rule.
template <class T>
void memory_update_forward(T* M, T* z, const T* k, const T* v, const MemoryShape& s, bool delta,
                           bool bf16 = false);

// In: dM, dz hold the gradient with respect to the updated state. Out: they hold the gradient
// with respect to the state before the update (through this update only). dk, dv (+=).
// M, z are the state before the update.
template <class T>
void memory_update_backward(T* dk, T* dv, T* dM, T* dz, const T* k, const T* v, const T* M,
                            const T* z, const MemoryShape& s, bool delta, bool bf16 = false);

// ---- Single-threaded kernels for one query head h (retrieve) or one kv head g (update) of one
// sequence; the batched functions above run them in parallel. Mg [d, d] and zg [d] are that
// head's state; q, out, sq, dq, dout have row stride ldq, k, v, dk, dv row stride ldk; den and
// the n rows are this head's. Scratch sizes are in values.
//
// bf16 (float only): the products take bf16 inputs (M rounded as it is read) into fp32 sums
// (SPEC §8); M and z themselves, and every element-wise step, stay fp32.

// out, sq, den (=).
template <class T>
void memory_retrieve_head(T* out, T* sq, T* den, const T* q, const T* Mg, const T* zg, int64_t n,
                          int64_t d, int64_t ldq, bool bf16 = false);
// dq, dMg, dzg (+=). scratch: 2 * n * d + n.
template <class T>
void memory_retrieve_head_backward(T* dq, T* dMg, T* dzg, const T* dout, const T* out, const T* sq,
                                   const T* den, const T* q, const T* Mg, const T* zg, int64_t n,
                                   int64_t d, int64_t ldq, T* scratch, bool bf16 = false);
// In place on Mg, zg. scratch: 2 * n * d + n.
template <class T>
void memory_update_group(T* Mg, T* zg, const T* k, const T* v, int64_t n, int64_t d, int64_t ldk,
                         bool delta, T* scratch, bool bf16 = false);
// dk, dv (+=); dMg, dzg in/out as in memory_update_backward.
// scratch: memory_scratch_size(n, d) = 4 n d + 2 n + d^2 + d.
template <class T>
void memory_update_group_backward(T* dk, T* dv, T* dMg, T* dzg, const T* k, const T* v, const T* Mg,
                                  const T* zg, int64_t n, int64_t d, int64_t ldk, bool delta,
                                  T* scratch, bool bf16 = false);
inline int64_t memory_scratch_size(int64_t n, int64_t d) { return 4 * n * d + 2 * n + d * d + d; }

}  // namespace infini::ops

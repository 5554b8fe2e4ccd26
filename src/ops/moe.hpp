// Building blocks of a sparse mixture-of-experts MLP (Qwen2-MoE, SPEC §7), model-agnostic.
//
//   p = softmax(m W_router^T), (w, idx) = top-k of p (ties to the lower index),
//   w /= sum w only if norm_topk_prob, y = sum_j w_j Expert_idx_j(m),
//   Expert_e(m) = W_down,e (silu(W_gate,e m) * (W_up,e m)).
//
// Expert compute is grouped: the router's assignments (a = row * k + j) are sorted by expert,
// each expert gathers its rows into a contiguous block and multiplies them as one GEMM per
// weight; an expert with no assignment costs nothing. Every function is single-threaded and
// writes only what its arguments name (rows r0..r1, or expert e's assignments and weights), so
// a caller inside one `omp parallel` region can give each thread a share of rows or experts,
// with a barrier between the phases:
//
//   forward : moe_route_rows (rows) | moe_group (one thread) | moe_expert_forward (experts)
//             | moe_combine_rows (rows)
//   backward: moe_expert_backward (experts) | moe_scatter_dx_rows + moe_route_backward_rows
//             (rows); the router's own linear layer (logits = m W_router^T) is the caller's.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/bf16_gemm.hpp"
#include "ops/sgemm.hpp"

namespace infini::ops {

// The router's decision for `rows` tokens, E experts, top-k.
template <class T>
struct MoeRouting {
  int64_t rows = 0, experts = 0, k = 0;
  std::vector<T> probs;        // [rows, E] softmax of the router logits
  std::vector<int32_t> idx;    // [rows, k] chosen experts by descending prob; ties to lower index
  std::vector<T> weight;       // [rows, k] combine weights (renormalised iff norm_topk_prob)
  std::vector<int64_t> begin;  // [E + 1] expert e's assignments are order[begin[e], begin[e+1])
  std::vector<int32_t> order;  // [rows * k] assignment ids grouped by expert, rows ascending
  std::vector<int32_t> pos;    // [rows * k] grouped position of assignment a: order[pos[a]] == a

  int64_t assignments() const { return rows * k; }
  int64_t count(int64_t e) const { return begin[size_t(e + 1)] - begin[size_t(e)]; }
};

// Sizes every array; throws infini::Error unless 1 <= k <= E and rows >= 0.
template <class T>
void moe_routing_resize(MoeRouting<T>& r, int64_t rows, int64_t experts, int64_t k);

// Rows r0..r1 of: probs = softmax(logits), top-k, combine weights. logits [rows, E].
template <class T>
void moe_route_rows(MoeRouting<T>& r, const T* logits, int64_t r0, int64_t r1, bool norm_topk_prob);

// After every row is routed: begin, order and pos (a counting sort by expert).
template <class T>
void moe_group(MoeRouting<T>& r);

// Backward of moe_route_rows for rows r0..r1: dlogits [rows, E] (=) from dweight [rows, k]
// through the optional renormalisation and the softmax (the selection is piecewise constant),
// plus dprobs [rows, E] (a gradient w.r.t. probs, e.g. from moe_aux_loss_backward) when not null.
template <class T>
void moe_route_backward_rows(const MoeRouting<T>& r, const T* dweight, const T* dprobs, T* dlogits,
                             int64_t r0, int64_t r1, bool norm_topk_prob);

// Per-assignment activations, stored at the assignment's grouped position p.
template <class T>
struct MoeExpertActs {
  std::vector<T> xg;    // [A, D]  the assignment's input row (gathered)
  std::vector<T> gate;  // [A, Fm] xg W_gate^T
  std::vector<T> up;    // [A, Fm] xg W_up^T
  std::vector<T> hmid;  // [A, Fm] silu(gate) * up
  std::vector<T> out;   // [A, D]  hmid W_down^T, the expert's output before weighting
};
template <class T>
void moe_acts_resize(MoeExpertActs<T>& a, int64_t assignments, int64_t D, int64_t Fm);

// Optional packed copies of one expert's weights for the float native GEMM (ops/sgemm.hpp),
// packed once per step instead of once per call. For moe_expert_forward: W^T of each weight,
// sgemm_pack(true, in, out, W, in, ...); for moe_expert_backward: W itself,
// sgemm_pack(false, out, in, W, in, ...) (model/packed_weights.hpp's forward / backward).
// Null members, and T = double, use ops::gemm on the plain weights.
// bf16: every product of the expert (forward, input and weight gradients) takes bf16 inputs
// into fp32 sums (SPEC §8), from the packed bf16 op(W) where given (ops/bf16_gemm.hpp's
// bf16_pack, the same orientations), else rounding both inputs on the fly (ops::bf16_gemm).
struct MoeExpertPacks {
  const PackedMatrix* gate = nullptr;
  const PackedMatrix* up = nullptr;
  const PackedMatrix* down = nullptr;
  bool bf16 = false;
  const PackedBf16* gate_bf16 = nullptr;
  const PackedBf16* up_bf16 = nullptr;
  const PackedBf16* down_bf16 = nullptr;
};

// Expert e over its assignments: gathers xg from x [rows, D], then gate, up, hmid, out, each
// one GEMM (or element-wise pass) over the expert's block. w_gate, w_up [Fm, D]; w_down [D, Fm].
// Needs no scratch. Writes only rows begin[e] .. begin[e+1] of `acts`; returns at once (the
// weights not read, they may be null) when e has no assignment.
template <class T>
void moe_expert_forward(int64_t e, const MoeRouting<T>& r, const T* x, int64_t D, int64_t Fm,
                        const T* w_gate, const T* w_up, const T* w_down, MoeExpertActs<T>& acts,
                        const MoeExpertPacks* packs = nullptr);

// y[row] += sum_j weight[row, j] * out[pos[row * k + j]] for rows r0..r1, j = 0 .. k-1 in order.
template <class T>
void moe_combine_rows(const MoeRouting<T>& r, const MoeExpertActs<T>& acts, int64_t D, T* y,
                      int64_t r0, int64_t r1);

// Scratch (elements of T) moe_expert_backward needs for expert e: count(e) * 3 * Fm; the
// second form is the most any expert of `r` needs.
template <class T>
int64_t moe_backward_scratch_size(const MoeRouting<T>& r, int64_t e, int64_t Fm);
template <class T>
int64_t moe_backward_scratch_size(const MoeRouting<T>& r, int64_t Fm);

// Backward of expert e, given dy [rows, D], the gradient w.r.t. the layer output y:
//   dweight[a] (=) dot(dy[row], out[p]) for e's assignments a (at grouped position p);
//   dw_gate, dw_up [Fm, D] and dw_down [D, Fm] of expert e (+=), one GEMM each;
//   dxg [A, D] rows p (=): the input gradient of weight[a] * Expert_e(xg[p]).
// dweight and dw_* may be null when not wanted (a frozen router or frozen experts). dy and dxg
// must not overlap. scratch: moe_backward_scratch_size(r, e, Fm) elements. Touches nothing (the
// weights and their gradients may be null) when e has no assignment.
template <class T>
void moe_expert_backward(int64_t e, const MoeRouting<T>& r, const MoeExpertActs<T>& acts,
                         const T* dy, int64_t D, int64_t Fm, const T* w_gate, const T* w_up,
                         const T* w_down, T* dw_gate, T* dw_up, T* dw_down, T* dweight, T* dxg,
                         T* scratch, const MoeExpertPacks* packs = nullptr);

// dx[row] += sum_j dxg[pos[row * k + j]] for rows r0..r1, j = 0 .. k-1 in order.
template <class T>
void moe_scatter_dx_rows(const MoeRouting<T>& r, const T* dxg, int64_t D, T* dx, int64_t r0,
                         int64_t r1);

// The router statistics of SPEC §7's load-balancing loss, pooled over routings added one at a
// time (a training step's layers and segments need not be alive together): count[e] the
// assignments to expert e, prob_sum[e] the sum of p_t,e, rows T'.
struct MoeRouterPool {
  std::vector<double> count, prob_sum;
  int64_t rows = 0;
  // Throws infini::Error when r's E differs from the routings added before.
  template <class T>
  void add(const MoeRouting<T>& r);
  // coef * E * sum_e f_e P_e, f_e = count[e] / T', P_e = prob_sum[e] / T'; 0 without rows.
  double aux_loss(double coef) const;
  // Its gradient w.r.t. every row's p_t,e, the same for all rows, times scale:
  // scale * coef * E * f_e / T' ([E]; empty without rows).
  std::vector<double> aux_grad(double coef, double scale) const;
};

// Hugging Face's load-balancing loss (SPEC §7) over the router rows of several layers, pooled
// (T' rows in all): coef * E * sum_e f_e P_e, f_e = (1/T') #{t : e in idx_t}, P_e = (1/T')
// sum_t p_t,e. Returns 0 when there is no row. Throws infini::Error when the layers' E differ.
template <class T>
double moe_aux_loss(const std::vector<const MoeRouting<T>*>& layers, double coef);
// Its gradient times `scale` w.r.t. each layer's probs (f_e held constant, as the selection
// is): dprobs[l][t, e] += scale * coef * E * f_e / T'. dprobs[l] is [rows_l, E].
template <class T>
void moe_aux_loss_backward(const std::vector<const MoeRouting<T>*>& layers, double coef, T scale,
                           const std::vector<T*>& dprobs);

// Expert load for metrics: the fraction of the assignments each expert got, its max and min
// over experts (both 0 when there is no row).
struct MoeLoad {
  double max_fraction = 0, min_fraction = 0;
};
template <class T>
MoeLoad moe_load(const MoeRouting<T>& r);
// The same from assignment counts per expert.
MoeLoad moe_load(const std::vector<int64_t>& counts);

// The plain reference: y (=) per token, softmax / top-k / weights of its logits row, then the
// k experts one token at a time (plain loops in double, no grouping, no GEMM). logits
// [rows, E]; w_gate[e], w_up[e] [Fm, D]; w_down[e] [D, Fm] (arrays of E pointers).
template <class T>
void moe_mlp_reference_forward(T* y, const T* x, const T* logits, int64_t rows, int64_t D,
                               int64_t Fm, int64_t E, int64_t k, bool norm_topk_prob,
                               const T* const* w_gate, const T* const* w_up,
                               const T* const* w_down);

}  // namespace infini::ops

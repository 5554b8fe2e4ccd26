// The loss of whole sequences (SPEC §2) and its gradient by back-propagation through time
// across every segment. The memory state at each segment boundary is kept (small: d x d per
// head). A segment's activations are either kept from the forward pass, as long as they fit in
// SequenceOptions::keep_activations_bytes, or recomputed from its boundary state during its
// backward; activation memory is therefore bounded by that budget plus one segment, whatever
// the sequence length.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

#include "core/error.hpp"
#include "model/forward.hpp"

namespace infini::model {

struct SequenceOptions {
  // 0: gradients flow through M and z across all segments (the default and SPEC's gradient).
  // K > 0: the gradient through the memory is cut every K segments (truncated BPTT).
  int64_t bptt_segments = 0;
  // Multiplies d(loss_sum)/d(logits). 0 means 1 / predicted positions, the gradient of the
  // mean loss of this call; a trainer accumulating micro-batches passes 1 / global count.
  double grad_scale = 0;
  // Optional [batch, T] mask (null: every position counts). Position t's prediction of token
  // t+1 counts in the loss, its gradient and `predicted` only when loss_mask[b*T + t] != 0;
  // the forward and the memory still see every token. (Passkey fine-tuning trains on the
  // answer tokens only.)
  const uint8_t* loss_mask = nullptr;
  // Activations of whole segments kept from the forward pass for the backward, at most this
  // many bytes; the other segments are recomputed (one more forward of each). Keeping saves
  // about a quarter of a training step's arithmetic. 0: recompute every segment but the last.
  int64_t keep_activations_bytes = kDefaultKeepActivationsBytes;
  static constexpr int64_t kDefaultKeepActivationsBytes = int64_t(2) << 30;  // 2 GiB
  // Each call packs the linear weights once for the native GEMM (W^T, and W when computing
  // gradients), rather than once per thread, segment and pass, when the copies take at most
  // this many bytes. 0 turns it off. Results are the same bits either way.
  int64_t max_packed_weight_bytes = kDefaultMaxPackedWeightBytes;
  // Optional: checked before each segment of the forward and the backward; when it is true
  // the call throws Interrupted (no result, nothing of `grads` or `state_io` to rely on).
  const std::atomic<bool>* interrupt = nullptr;
  // Optional [batch, T], loss-only calls (no gradient): position t's loss of predicting token
  // t+1 (0 at the last position and where the mask leaves it out). For analyses of where a
  // loss comes from; loss_sum is the same with or without it.
  double* token_losses = nullptr;
  // Mixture-of-experts models, training: > 0 adds the load-balancing loss of SPEC §7 over this
  // call's router rows (every token of every sparse layer, pooled) to the objective, its
  // gradient times this factor (a trainer passes its micro-batch's share of the step). It is
  // never part of loss_sum; LossResult::aux_loss reports it whatever this is.
  double moe_aux_scale = 0;
};

// Thrown by sequence_loss when SequenceOptions::interrupt is set (Ctrl-C in Python).
class Interrupted : public Error {
 public:
  Interrupted() : Error("interrupted") {}
};

struct LossResult {
  double loss_sum = 0;   // summed negative log-likelihood (natural log)
  int64_t predicted = 0; // positions with a target: batch * (T - 1), or the masked-in ones
  // Mixture-of-experts models: tokens routed to each expert, [sparse layer][expert], and the
  // load-balancing loss router_aux_loss_coef * E * sum_e f_e P_e over this call's router rows.
  std::vector<std::vector<int64_t>> expert_counts;
  double aux_loss = 0;
  double mean() const { return predicted ? loss_sum / double(predicted) : 0.0; }
};

// Reusable buffers for sequence_loss, so repeated calls do not reallocate.
template <class T>
struct SequenceWorkspace {
  SegmentActs<T> acts;               // the segment being computed (or recomputed)
  // Activations kept from the forward: segments 0 .. kept_segments-1 of the last call. More
  // may be allocated (from a longer earlier call, within the budget): they are reused rather
  // than freed, because fresh memory costs a page fault per 4 KiB at every step otherwise.
  std::vector<SegmentActs<T>> kept;
  int64_t kept_segments = 0;
  std::vector<MemoryState<T>> boundary;  // state at the start of each segment
  std::vector<T> dlogits;
  std::vector<int32_t> seg_tokens, targets;
  // The weights packed for the native GEMM at the start of each call (float only), within
  // SequenceOptions::max_packed_weight_bytes.
  PackedWeights packed;
};

// Bytes held by a segment's activations (its scratch workspace, shared between segments, is
// not counted): what keeping it for the backward costs.
template <class T>
int64_t activation_bytes(const SegmentActs<T>& a);

// tokens: [batch, T] row-major. state: the memory at the start (zeros when null); on return it
// holds the memory after the last segment. grads: when not null, the gradient (+=) of
// grad_scale * loss_sum with respect to every parameter (layout of m.layout).
template <class T>
LossResult sequence_loss(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                         int64_t batch, int64_t T_len, T* grads, const SequenceOptions& opts,
                         SequenceWorkspace<T>& ws, MemoryState<T>* state = nullptr);

}  // namespace infini::model

// The loss of whole sequences (SPEC §2) and its gradient by back-propagation through time
// across every segment. Only the memory state at each segment boundary is kept; a segment's
// activations are recomputed during its backward, so activation memory is O(one segment).
#pragma once
#include <cstdint>

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
};

struct LossResult {
  double loss_sum = 0;   // summed negative log-likelihood (natural log)
  int64_t predicted = 0; // positions with a target: batch * (T - 1), or the masked-in ones
  double mean() const { return predicted ? loss_sum / double(predicted) : 0.0; }
};

// Reusable buffers for sequence_loss, so repeated calls do not reallocate.
template <class T>
struct SequenceWorkspace {
  SegmentActs<T> acts;
  std::vector<MemoryState<T>> boundary;  // state at the start of each segment
  std::vector<T> dlogits;
  std::vector<int32_t> seg_tokens, targets;
};

// tokens: [batch, T] row-major. state: the memory at the start (zeros when null); on return it
// holds the memory after the last segment. grads: when not null, the gradient (+=) of
// grad_scale * loss_sum with respect to every parameter (layout of m.layout).
template <class T>
LossResult sequence_loss(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                         int64_t batch, int64_t T_len, T* grads, const SequenceOptions& opts,
                         SequenceWorkspace<T>& ws, MemoryState<T>* state = nullptr);

}  // namespace infini::model

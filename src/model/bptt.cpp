#include "model/bptt.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "ops/cross_entropy.hpp"

namespace infini::model {

namespace {

// Gathers segment s ([batch, n]) and its next-token targets; the last position of a segment
// predicts the first token of the next one, and the sequence's last position predicts nothing.
// A masked-out position gets target -1, which cross_entropy skips (no loss, zero gradient).
void gather_segment(const int32_t* tokens, const uint8_t* mask, int64_t batch, int64_t T_len,
                    int64_t start, int64_t n, std::vector<int32_t>& seg,
                    std::vector<int32_t>& targets) {
  seg.resize(size_t(batch * n));
  targets.resize(size_t(batch * n));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = start + i;
      seg[size_t(b * n + i)] = tokens[b * T_len + t];
      const bool counts = t + 1 < T_len && (!mask || mask[b * T_len + t] != 0);
      targets[size_t(b * n + i)] = counts ? tokens[b * T_len + t + 1] : -1;
    }
}

}  // namespace

template <class T>
LossResult sequence_loss(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                         int64_t batch, int64_t T_len, T* grads, const SequenceOptions& opts,
                         SequenceWorkspace<T>& ws, MemoryState<T>* state_io) {
  const ModelConfig& c = m.config;
  if (batch <= 0 || T_len <= 0) throw Error("sequence_loss: empty batch");
  const int64_t N = c.segment_length, S = (T_len + N - 1) / N, V = c.vocab_size;
  LossResult result;
  result.predicted = batch * (T_len - 1);
  if (opts.loss_mask) {
    result.predicted = 0;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t + 1 < T_len; ++t)
        result.predicted += opts.loss_mask[b * T_len + t] != 0;
  }
  const T scale = T(opts.grad_scale != 0 ? opts.grad_scale
                                         : (result.predicted ? 1.0 / double(result.predicted) : 0));

  MemoryState<T> state = state_io ? *state_io : MemoryState<T>::zeros(c, batch);
  if (grads) ws.boundary.resize(size_t(S));

  // Forward over all segments; keep the boundary states (small: d x d per head).
  for (int64_t s = 0; s < S; ++s) {
    const int64_t start = s * N, n = std::min(N, T_len - start);
    gather_segment(tokens, opts.loss_mask, batch, T_len, start, n, ws.seg_tokens, ws.targets);
    if (grads) ws.boundary[size_t(s)] = state;
    forward_chunk(m, ctx, ws.seg_tokens.data(), batch, n, state, ws.acts);
    result.loss_sum += ops::cross_entropy(ws.acts.logits.data(), ws.targets.data(), batch * n, V,
                                          (T*)nullptr, T(0));
  }
  if (state_io) *state_io = state;
  if (!grads) return result;

  // Backward, last segment first, carrying dM and dz. The last segment's activations are still
  // in the workspace; earlier ones are recomputed from their boundary state.
  MemoryState<T> dstate = MemoryState<T>::zeros(c, batch);
  for (int64_t s = S - 1; s >= 0; --s) {
    const int64_t start = s * N, n = std::min(N, T_len - start);
    gather_segment(tokens, opts.loss_mask, batch, T_len, start, n, ws.seg_tokens, ws.targets);
    if (s != S - 1) {
      MemoryState<T> scratch = ws.boundary[size_t(s)];
      forward_chunk(m, ctx, ws.seg_tokens.data(), batch, n, scratch, ws.acts);
    }
    ws.dlogits.resize(size_t(batch * n * V));
    ops::cross_entropy(ws.acts.logits.data(), ws.targets.data(), batch * n, V, ws.dlogits.data(),
                       scale);
    if (opts.bptt_segments > 0 && (s + 1) % opts.bptt_segments == 0) dstate.set_zero();
    backward_segment(m, ctx, ws.seg_tokens.data(), ws.acts, ws.dlogits.data(),
                     ws.boundary[size_t(s)], dstate, grads);
  }
  return result;
}

template LossResult sequence_loss<float>(const Model<float>&, const ForwardContext<float>&,
                                         const int32_t*, int64_t, int64_t, float*,
                                         const SequenceOptions&, SequenceWorkspace<float>&,
                                         MemoryState<float>*);
template LossResult sequence_loss<double>(const Model<double>&, const ForwardContext<double>&,
                                          const int32_t*, int64_t, int64_t, double*,
                                          const SequenceOptions&, SequenceWorkspace<double>&,
                                          MemoryState<double>*);

}  // namespace infini::model

#include "model/bptt.hpp"

#include <algorithm>
#include <type_traits>

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

template <class T>
int64_t vector_bytes(const std::vector<T>& v) {
  return int64_t(v.capacity() * sizeof(T));
}

}  // namespace

template <class T>
int64_t activation_bytes(const SegmentActs<T>& a) {
  int64_t b = vector_bytes(a.positions) + vector_bytes(a.h_final) + vector_bytes(a.rstd_final) +
              vector_bytes(a.f) + vector_bytes(a.logits);
  for (const LayerActs<T>& l : a.layers)
    for (const std::vector<T>* v :
         {&l.x_in, &l.rstd_in, &l.a, &l.q, &l.q_rot, &l.k, &l.k_rot, &l.v, &l.probs, &l.local,
          &l.mem, &l.sq, &l.den, &l.mixed, &l.x_mid, &l.rstd_post, &l.m, &l.gate, &l.up, &l.hmid,
          &l.router_logits, &l.sgate, &l.sup, &l.shmid, &l.sg, &l.sout, &l.routing.probs,
          &l.routing.weight, &l.experts.xg, &l.experts.gate, &l.experts.up, &l.experts.hmid,
          &l.experts.out})
      b += vector_bytes(*v);
  return b;
}

namespace {

// The router statistics of one call: SPEC §7's load-balancing loss pools every token of every
// sparse layer (ops::MoeRouterPool); the assignments per expert of each sparse layer are kept
// for the load summary.
template <class T>
struct RouterStats {
  std::vector<std::vector<int64_t>> counts;  // [sparse layer][E]
  ops::MoeRouterPool pool;

  void add(const Model<T>& m, const SegmentActs<T>& a) {
    size_t s = 0;
    for (size_t l = 0; l < a.layers.size(); ++l) {
      if (!m.layout.layers[l].sparse) continue;
      const ops::MoeRouting<T>& r = a.layers[l].routing;
      if (counts.size() <= s) counts.emplace_back(size_t(r.experts), 0);
      for (int64_t e = 0; e < r.experts; ++e) counts[s][size_t(e)] += r.count(e);
      pool.add(r);
      ++s;
    }
  }
};

}  // namespace

template <class T>
LossResult sequence_loss(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                         int64_t batch, int64_t T_len, T* grads, const SequenceOptions& opts,
                         SequenceWorkspace<T>& ws, MemoryState<T>* state_io) {
  const ModelConfig& c = m.config;
  if (batch <= 0 || T_len <= 0) throw Error("sequence_loss: empty batch");
  if (opts.token_losses && grads)
    throw Error("sequence_loss: token_losses is for loss-only calls");
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
  const PackedWeights* packed = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    if (!ctx.reference && opts.max_packed_weight_bytes > 0) {
      pack_weights(m, grads != nullptr, opts.max_packed_weight_bytes, ws.packed, ctx.precision);
      packed = &ws.packed;  // empty (no packing) when over the budget or not native
    }
  }
  auto check_interrupt = [&opts] {
    if (opts.interrupt && opts.interrupt->load(std::memory_order_relaxed)) throw Interrupted();
  };
  RouterStats<T> router;
  std::vector<T> aux_grad;
  auto finish_router = [&](double scale) {
    result.aux_loss = router.pool.aux_loss(c.router_aux_loss_coef);
    result.expert_counts = router.counts;
    const std::vector<double> g = router.pool.aux_grad(c.router_aux_loss_coef, scale);
    aux_grad.assign(g.begin(), g.end());
  };
  if (!grads) {
    // Loss only: one pass, the activations of one segment at a time.
    for (int64_t s = 0; s < S; ++s) {
      check_interrupt();
      const int64_t start = s * N, n = std::min(N, T_len - start);
      gather_segment(tokens, opts.loss_mask, batch, T_len, start, n, ws.seg_tokens, ws.targets);
      forward_chunk(m, ctx, ws.seg_tokens.data(), batch, n, state, ws.acts, (KVCache<T>*)nullptr,
                    true, packed);
      router.add(m, ws.acts);
      result.loss_sum += ops::cross_entropy(ws.acts.logits.data(), ws.targets.data(), batch * n,
                                            V, (T*)nullptr, T(0));
      if (opts.token_losses)
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t i = 0; i < n; ++i) {
            const int64_t r = b * n + i;
            opts.token_losses[b * T_len + start + i] =
                ws.targets[size_t(r)] < 0
                    ? 0.0
                    : ops::cross_entropy(ws.acts.logits.data() + r * V, ws.targets.data() + r, 1,
                                         V, (T*)nullptr, T(0));
          }
    }
    if (state_io) *state_io = state;
    finish_router(0);
    return result;
  }

  // Forward over all segments, keeping the boundary states. Segments 0 .. kept-1 keep their
  // activations (as many as fit in the budget, measured on the first segment); the last
  // segment's stay in ws.acts; the others are recomputed in the backward. Logits are computed
  // only where the backward will use them: the loss is summed there, once per segment.
  ws.boundary.resize(size_t(S));
  int64_t kept = 0;
  for (int64_t s = 0; s < S; ++s) {
    check_interrupt();
    const int64_t start = s * N, n = std::min(N, T_len - start);
    gather_segment(tokens, opts.loss_mask, batch, T_len, start, n, ws.seg_tokens, ws.targets);
    ws.boundary[size_t(s)] = state;
    const bool keep = s < S - 1 && s == kept && opts.keep_activations_bytes > 0 &&
                      (s == 0 || int64_t(s + 1) * activation_bytes(ws.kept[0]) <=
                                     opts.keep_activations_bytes);
    if (keep) {
      if (ws.kept.size() <= size_t(s)) ws.kept.resize(size_t(s) + 1);
      SegmentActs<T>& a = ws.kept[size_t(s)];
      std::swap(a.work, ws.acts.work);  // one set of scratch buffers for every segment
      forward_chunk(m, ctx, ws.seg_tokens.data(), batch, n, state, a, (KVCache<T>*)nullptr, true,
                    packed);
      std::swap(a.work, ws.acts.work);
      router.add(m, a);
      // The first segment sets the cost of keeping one; drop it if even one does not fit.
      if (s > 0 || activation_bytes(a) <= opts.keep_activations_bytes) kept = s + 1;
    } else {
      forward_chunk(m, ctx, ws.seg_tokens.data(), batch, n, state, ws.acts, (KVCache<T>*)nullptr,
                    /*compute_logits=*/s == S - 1, packed);
      router.add(m, ws.acts);
    }
  }
  ws.kept_segments = kept;
  if (state_io) *state_io = state;
  // The aux loss's gradient needs the whole call's routing, known only now.
  finish_router(opts.moe_aux_scale);
  const T* moe_aux_grad = opts.moe_aux_scale > 0 && !aux_grad.empty() ? aux_grad.data() : nullptr;

  // Backward, last segment first, carrying dM and dz.
  MemoryState<T> dstate = MemoryState<T>::zeros(c, batch);
  for (int64_t s = S - 1; s >= 0; --s) {
    check_interrupt();
    const int64_t start = s * N, n = std::min(N, T_len - start);
    gather_segment(tokens, opts.loss_mask, batch, T_len, start, n, ws.seg_tokens, ws.targets);
    const bool is_kept = s < kept;
    SegmentActs<T>& a = is_kept ? ws.kept[size_t(s)] : ws.acts;
    if (!is_kept && s != S - 1) {
      MemoryState<T> scratch = ws.boundary[size_t(s)];
      forward_chunk(m, ctx, ws.seg_tokens.data(), batch, n, scratch, ws.acts,
                    (KVCache<T>*)nullptr, true, packed);
    }
    ws.dlogits.resize(size_t(batch * n * V));
    result.loss_sum += ops::cross_entropy(a.logits.data(), ws.targets.data(), batch * n, V,
                                          ws.dlogits.data(), scale);
    if (opts.bptt_segments > 0 && (s + 1) % opts.bptt_segments == 0) dstate.set_zero();
    if (is_kept) std::swap(a.work, ws.acts.work);
    backward_segment(m, ctx, ws.seg_tokens.data(), a, ws.dlogits.data(), ws.boundary[size_t(s)],
                     dstate, grads, packed, moe_aux_grad);
    if (is_kept) std::swap(a.work, ws.acts.work);
  }
  return result;
}

template int64_t activation_bytes<float>(const SegmentActs<float>&);
template int64_t activation_bytes<double>(const SegmentActs<double>&);
template LossResult sequence_loss<float>(const Model<float>&, const ForwardContext<float>&,
                                         const int32_t*, int64_t, int64_t, float*,
                                         const SequenceOptions&, SequenceWorkspace<float>&,
                                         MemoryState<float>*);
template LossResult sequence_loss<double>(const Model<double>&, const ForwardContext<double>&,
                                          const int32_t*, int64_t, int64_t, double*,
                                          const SequenceOptions&, SequenceWorkspace<double>&,
                                          MemoryState<double>*);

}  // namespace infini::model

#include "model/forward.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/gemm.hpp"
#include "ops/memory.hpp"
#include "ops/norm.hpp"

namespace infini::model {

namespace {

template <class T>
void resize(std::vector<T>& v, int64_t n) {
  if (int64_t(v.size()) != n) v.resize(size_t(n));
}

template <class T>
ops::MemoryShape memory_shape(const ModelConfig& c, int64_t batch, int64_t n, int64_t cap) {
  return {batch, n, cap, c.num_heads, c.num_kv_heads, c.head_dim};
}

// Where one layer's keys and values live during a forward: the activations (training) or the
// streaming cache.
template <class T>
struct KVSlot {
  T *k, *k_rot, *v;
  int64_t cap, p0;
};

template <class T>
void layer_forward(const Model<T>& m, const ForwardContext<T>& ctx, int64_t l, T* x,
                   LayerActs<T>& A, const int32_t* positions, int64_t B, int64_t n,
                   KVSlot<T> kv, T* M, T* z, bool fold_memory) {
  const ModelConfig& c = m.config;
  const LayerOffsets& o = m.layout.layers[size_t(l)];
  const int64_t D = c.hidden_size, F = c.intermediate_size, r = B * n;
  const int64_t qw = c.q_width(), kw = c.kv_width(), H = c.num_heads, Hkv = c.num_kv_heads;
  const int64_t ctxlen = kv.p0 + n;

  resize(A.x_in, r * D);
  resize(A.rstd_in, r);
  resize(A.a, r * D);
  std::copy_n(x, r * D, A.x_in.data());
  ops::rmsnorm_forward(A.a.data(), A.rstd_in.data(), x, m.at(o.in_norm), r, D, c.rms_norm_eps);

  // Projections. k and v go straight to their slot rows p0 .. p0+n-1 (contiguous: either
  // batch 1 or a whole segment with cap == n).
  resize(A.q, r * qw);
  resize(A.q_rot, r * qw);
  ops::linear_forward(A.q.data(), A.a.data(), m.at(o.wq), m.at(o.bq), r, D, qw);
  T* k_new = kv.k + kv.p0 * kw;
  T* krot_new = kv.k_rot + kv.p0 * kw;
  T* v_new = kv.v + kv.p0 * kw;
  ops::linear_forward(k_new, A.a.data(), m.at(o.wk), m.at(o.bk), r, D, kw);
  ops::linear_forward(v_new, A.a.data(), m.at(o.wv), m.at(o.bv), r, D, kw);
  std::copy_n(A.q.data(), r * qw, A.q_rot.data());
  std::copy_n(k_new, r * kw, krot_new);
  ops::rope_apply(A.q_rot.data(), r, H, positions, ctx.rope, false);
  ops::rope_apply(krot_new, r, Hkv, positions, ctx.rope, false);

  // Local causal attention within the segment.
  const ops::AttentionShape as{B, n, kv.p0, kv.cap, H, Hkv, c.head_dim};
  resize(A.probs, B * H * n * ctxlen);
  resize(A.local, r * qw);
  ops::local_attention_forward(A.local.data(), A.probs.data(), A.q_rot.data(), kv.k_rot, kv.v,
                               as);

  const T* attn_out = A.local.data();
  if (c.use_memory) {
    const auto ms = memory_shape<T>(c, B, n, n);
    resize(A.mem, r * qw);
    resize(A.sq, r * qw);
    resize(A.den, B * H * n);
    resize(A.mixed, r * qw);
    ops::memory_retrieve_forward(A.mem.data(), A.sq.data(), A.den.data(), A.q.data(), M, z, ms);
    ops::gate_mix_forward(A.mixed.data(), A.mem.data(), A.local.data(), m.at(o.beta), r, H,
                          c.head_dim);
    attn_out = A.mixed.data();
    // Retrieval above used the state of earlier segments; only now fold this segment in.
    if (fold_memory)
      ops::memory_update_forward(M, z, kv.k, kv.v, memory_shape<T>(c, B, ctxlen, kv.cap),
                                 c.memory_update == MemoryUpdate::Delta);
  }

  // h = h + O Wo^T
  resize(A.x_mid, r * D);
  std::copy_n(x, r * D, A.x_mid.data());
  ops::gemm<T>(false, true, r, D, qw, T(1), attn_out, qw, m.at(o.wo), qw, T(1), A.x_mid.data(),
               D);

  // h = h + W_down(silu(W_gate m) * W_up m)
  resize(A.rstd_post, r);
  resize(A.m, r * D);
  resize(A.gate, r * F);
  resize(A.up, r * F);
  resize(A.hmid, r * F);
  ops::rmsnorm_forward(A.m.data(), A.rstd_post.data(), A.x_mid.data(), m.at(o.post_norm), r, D,
                       c.rms_norm_eps);
  ops::linear_forward(A.gate.data(), A.m.data(), m.at(o.w_gate), (const T*)nullptr, r, D, F);
  ops::linear_forward(A.up.data(), A.m.data(), m.at(o.w_up), (const T*)nullptr, r, D, F);
  ops::swiglu_forward(A.hmid.data(), A.gate.data(), A.up.data(), r * F);
  std::copy_n(A.x_mid.data(), r * D, x);
  ops::gemm<T>(false, true, r, D, F, T(1), A.hmid.data(), F, m.at(o.w_down), F, T(1), x, D);
}

}  // namespace

template <class T>
void forward_chunk(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                   int64_t batch, int64_t n, MemoryState<T>& state, SegmentActs<T>& acts,
                   KVCache<T>* cache, bool compute_logits) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, V = c.vocab_size, r = batch * n;
  const int64_t p0 = cache ? cache->pos : 0;
  if (n <= 0) throw Error("forward_chunk: empty chunk");
  if (p0 + n > c.segment_length)
    throw Error("forward_chunk: chunk of " + std::to_string(n) + " tokens at position " +
                std::to_string(p0) + " overruns the segment length " +
                std::to_string(c.segment_length));
  if (cache && batch != 1) throw Error("forward_chunk: a streaming cache holds one sequence");
  if (c.use_memory && state.batch != batch)
    throw Error("forward_chunk: memory state has batch " + std::to_string(state.batch) +
                ", chunk has " + std::to_string(batch));

  acts.batch = batch;
  acts.n = n;
  acts.layers.resize(size_t(c.num_layers));
  resize(acts.positions, r);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < n; ++i) acts.positions[size_t(b * n + i)] = int32_t(p0 + i);

  std::vector<T> h(size_t(r * D));
  const T* E = m.at(m.layout.embed);
  for (int64_t i = 0; i < r; ++i) {
    const int32_t t = tokens[i];
    if (t < 0 || t >= V)
      throw Error("token id " + std::to_string(t) + " is outside the vocabulary (size " +
                  std::to_string(V) + ")");
    std::copy_n(E + int64_t(t) * D, D, h.data() + i * D);
  }

  const bool segment_full = cache && p0 + n == cache->capacity;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerActs<T>& A = acts.layers[size_t(l)];
    KVSlot<T> kv;
    if (cache) {
      kv = {cache->k[size_t(l)].data(), cache->k_rot[size_t(l)].data(),
            cache->v[size_t(l)].data(), cache->capacity, p0};
    } else {
      resize(A.k, r * c.kv_width());
      resize(A.k_rot, r * c.kv_width());
      resize(A.v, r * c.kv_width());
      kv = {A.k.data(), A.k_rot.data(), A.v.data(), n, 0};
    }
    T* M = c.use_memory ? state.M_layer(l) : nullptr;
    T* z = c.use_memory ? state.z_layer(l) : nullptr;
    layer_forward(m, ctx, l, h.data(), A, acts.positions.data(), batch, n, kv, M, z,
                  cache ? segment_full : true);
  }
  if (cache) cache->pos = segment_full ? 0 : p0 + n;

  resize(acts.h_final, r * D);
  resize(acts.rstd_final, r);
  resize(acts.f, r * D);
  std::copy(h.begin(), h.end(), acts.h_final.begin());
  ops::rmsnorm_forward(acts.f.data(), acts.rstd_final.data(), h.data(), m.at(m.layout.final_norm),
                       r, D, c.rms_norm_eps);
  if (compute_logits) {
    resize(acts.logits, r * V);
    ops::linear_forward(acts.logits.data(), acts.f.data(), m.at(m.layout.lm_head),
                        (const T*)nullptr, r, D, V);
  }
}

template <class T>
void fold_cache_into_memory(const Model<T>& m, KVCache<T>& cache, MemoryState<T>& state) {
  const ModelConfig& c = m.config;
  if (cache.pos == 0) return;
  if (c.use_memory)
    for (int64_t l = 0; l < c.num_layers; ++l)
      ops::memory_update_forward(state.M_layer(l), state.z_layer(l), cache.k[size_t(l)].data(),
                                 cache.v[size_t(l)].data(),
                                 memory_shape<T>(c, 1, cache.pos, cache.capacity),
                                 c.memory_update == MemoryUpdate::Delta);
  cache.pos = 0;
}

namespace {

template <class T>
struct LayerGrads {
  std::vector<T> dxm, dhmid, dgate, dup, dm, dmixed, dmem, dlocal, dq, dk, dv, da;
};

template <class T>
void layer_backward(const Model<T>& m, const ForwardContext<T>& ctx, int64_t l, T* dx,
                    const LayerActs<T>& A, const int32_t* positions, int64_t B, int64_t n,
                    const T* M, const T* z, T* dM, T* dz, T* grads, LayerGrads<T>& G) {
  const ModelConfig& c = m.config;
  const LayerOffsets& o = m.layout.layers[size_t(l)];
  const int64_t D = c.hidden_size, F = c.intermediate_size, r = B * n;
  const int64_t qw = c.q_width(), kw = c.kv_width(), H = c.num_heads, Hkv = c.num_kv_heads;
  auto g = [&](int64_t off) { return off < 0 ? nullptr : grads + off; };

  // MLP: x_out = x_mid + W_down(hmid)
  resize(G.dhmid, r * F);
  resize(G.dgate, r * F);
  resize(G.dup, r * F);
  resize(G.dm, r * D);
  resize(G.dxm, r * D);
  ops::linear_backward(G.dhmid.data(), g(o.w_down), (T*)nullptr, dx, A.hmid.data(),
                       m.at(o.w_down), r, F, D, false);
  ops::swiglu_backward(G.dgate.data(), G.dup.data(), G.dhmid.data(), A.gate.data(), A.up.data(),
                       r * F);
  ops::linear_backward(G.dm.data(), g(o.w_gate), (T*)nullptr, G.dgate.data(), A.m.data(),
                       m.at(o.w_gate), r, D, F, false);
  ops::linear_backward(G.dm.data(), g(o.w_up), (T*)nullptr, G.dup.data(), A.m.data(),
                       m.at(o.w_up), r, D, F, true);
  std::copy_n(dx, r * D, G.dxm.data());
  ops::rmsnorm_backward(G.dxm.data(), g(o.post_norm), G.dm.data(), A.x_mid.data(),
                        A.rstd_post.data(), m.at(o.post_norm), r, D, true);

  // Attention output: x_mid = x_in + mixed Wo^T
  resize(G.dmixed, r * qw);
  const T* attn_out = c.use_memory ? A.mixed.data() : A.local.data();
  ops::linear_backward(G.dmixed.data(), g(o.wo), (T*)nullptr, G.dxm.data(), attn_out,
                       m.at(o.wo), r, qw, D, false);
  resize(G.dlocal, r * qw);
  if (c.use_memory) {
    resize(G.dmem, r * qw);
    ops::gate_mix_backward(G.dmem.data(), G.dlocal.data(), g(o.beta), G.dmixed.data(),
                           A.mem.data(), A.local.data(), m.at(o.beta), r, H, c.head_dim);
  } else {
    std::copy_n(G.dmixed.data(), r * qw, G.dlocal.data());
  }

  // Local attention, then undo RoPE on the gradients (rotation by -angle).
  resize(G.dq, r * qw);
  resize(G.dk, r * kw);
  resize(G.dv, r * kw);
  const ops::AttentionShape as{B, n, 0, n, H, Hkv, c.head_dim};
  ops::local_attention_backward(G.dq.data(), G.dk.data(), G.dv.data(), G.dlocal.data(),
                                A.probs.data(), A.q_rot.data(), A.k_rot.data(), A.v.data(), as);
  ops::rope_apply(G.dq.data(), r, H, positions, ctx.rope, true);
  ops::rope_apply(G.dk.data(), r, Hkv, positions, ctx.rope, true);

  if (c.use_memory) {
    const auto ms = memory_shape<T>(c, B, n, n);
    // dM, dz arrive as gradients of the state after this segment's update.
    ops::memory_update_backward(G.dk.data(), G.dv.data(), dM, dz, A.k.data(), A.v.data(), M, z,
                                ms, c.memory_update == MemoryUpdate::Delta);
    ops::memory_retrieve_backward(G.dq.data(), dM, dz, G.dmem.data(), A.mem.data(),
                                  A.sq.data(), A.den.data(), A.q.data(), M, z, ms);
  }

  // Projections: a -> q, k, v
  resize(G.da, r * D);
  ops::linear_backward(G.da.data(), g(o.wq), g(o.bq), G.dq.data(), A.a.data(), m.at(o.wq), r, D,
                       qw, false);
  ops::linear_backward(G.da.data(), g(o.wk), g(o.bk), G.dk.data(), A.a.data(), m.at(o.wk), r, D,
                       kw, true);
  ops::linear_backward(G.da.data(), g(o.wv), g(o.bv), G.dv.data(), A.a.data(), m.at(o.wv), r, D,
                       kw, true);
  std::copy_n(G.dxm.data(), r * D, dx);
  ops::rmsnorm_backward(dx, g(o.in_norm), G.da.data(), A.x_in.data(), A.rstd_in.data(),
                        m.at(o.in_norm), r, D, true);
}

}  // namespace

template <class T>
void backward_segment(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                      const SegmentActs<T>& acts, const T* dlogits,
                      const MemoryState<T>& state_before, MemoryState<T>& dstate, T* grads) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, V = c.vocab_size, B = acts.batch, n = acts.n, r = B * n;
  std::vector<T> df(size_t(r * D)), dh(size_t(r * D));
  ops::linear_backward(df.data(), grads + m.layout.lm_head, (T*)nullptr, dlogits, acts.f.data(),
                       m.at(m.layout.lm_head), r, D, V, false);
  ops::rmsnorm_backward(dh.data(), grads + m.layout.final_norm, df.data(), acts.h_final.data(),
                        acts.rstd_final.data(), m.at(m.layout.final_norm), r, D, false);
  LayerGrads<T> scratch;
  for (int64_t l = c.num_layers - 1; l >= 0; --l) {
    const bool mem = c.use_memory;
    layer_backward(m, ctx, l, dh.data(), acts.layers[size_t(l)], acts.positions.data(), B, n,
                   mem ? state_before.M_layer(l) : nullptr, mem ? state_before.z_layer(l) : nullptr,
                   mem ? dstate.M_layer(l) : nullptr, mem ? dstate.z_layer(l) : nullptr, grads,
                   scratch);
  }
  T* dE = grads + m.layout.embed;
  // Serial over rows: two rows may hold the same token.
  for (int64_t i = 0; i < r; ++i) {
    T* row = dE + int64_t(tokens[i]) * D;
    const T* src = dh.data() + i * D;
    for (int64_t j = 0; j < D; ++j) row[j] += src[j];
  }
}

#define INFINI_INSTANTIATE(T)                                                                    \
  template void forward_chunk<T>(const Model<T>&, const ForwardContext<T>&, const int32_t*,      \
                                 int64_t, int64_t, MemoryState<T>&, SegmentActs<T>&,             \
                                 KVCache<T>*, bool);                                             \
  template void fold_cache_into_memory<T>(const Model<T>&, KVCache<T>&, MemoryState<T>&);        \
  template void backward_segment<T>(const Model<T>&, const ForwardContext<T>&, const int32_t*,   \
                                    const SegmentActs<T>&, const T*, const MemoryState<T>&,      \
                                    MemoryState<T>&, T*);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::model

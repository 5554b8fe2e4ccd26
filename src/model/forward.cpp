#include "model/forward.hpp"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "core/error.hpp"
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/bf16_gemm.hpp"
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
void grow(std::vector<T>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
}

template <class T>
ops::MemoryShape memory_shape(const ModelConfig& c, int64_t batch, int64_t n, int64_t cap) {
  return {batch, n, cap, c.num_heads, c.num_kv_heads, c.head_dim};
}

template <class T>
bool bf16_products(const ForwardContext<T>& ctx) {
  return std::is_same_v<T, float> && ctx.precision == Precision::BF16;
}

// The packed copies the forward multiplies with: a bf16-resident model's own (its linear
// weights exist only there, so it runs in bf16 only), else the caller's.
template <class T>
const PackedWeights* weight_packs(const Model<T>& m, const ForwardContext<T>& ctx,
                                  const PackedWeights* packed, const char* who) {
  if (!m.bf16_weights) return packed;
  if (ctx.precision != Precision::BF16)
    throw Error(std::string(who) + ": a model with bf16-resident weights runs in bf16 only");
  return m.bf16_weights.get();
}

// Rows r0 .. r1 of x [rows, hidden] = the embeddings of tokens[r0 .. r1]: widened from a
// bf16-resident model's bf16 rows when it holds the embedding so, else copied.
template <class T>
void embed_rows(const Model<T>& m, const int32_t* tokens, int64_t r0, int64_t r1, T* x) {
  const int64_t D = m.config.hidden_size;
  if constexpr (std::is_same_v<T, float>) {
    if (m.bf16_weights && !m.bf16_weights->embedding.empty()) {
      const uint16_t* E = m.bf16_weights->embedding.data();
      for (int64_t i = r0; i < r1; ++i) {
        const uint16_t* e = E + int64_t(tokens[i]) * D;
        float* o = x + i * D;
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) o[j] = ops::bf16_value(e[j]);
      }
      return;
    }
  }
  const T* E = m.at(m.layout.embed);
  for (int64_t i = r0; i < r1; ++i) std::copy_n(E + int64_t(tokens[i]) * D, D, x + i * D);
}

// y[rows, out] = x W^T (+ bias), or y += x W^T when `add`: the weight at `w` of the model,
// from its packed copy when there is one, with bf16 inputs under Precision::BF16.
template <class T>
void project(const Model<T>& m, const ForwardContext<T>& ctx, const PackedWeights* packed,
             int64_t w, int64_t bias, T* y, const T* x, int64_t rows, int64_t in, int64_t out,
             bool add = false) {
  // The bias goes in first (as ops::linear_forward does), then the product is added to it.
  if (const T* b = m.at(bias))
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < out; ++j) y[i * out + j] = (add ? y[i * out + j] : T(0)) + b[j];
  const T beta = add || bias >= 0 ? T(1) : T(0);
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_products(ctx)) {
      if (const ops::PackedBf16* p = packed ? packed->forward_bf16(w) : nullptr)
        ops::bf16_gemm_packed(rows, out, in, 1.0f, x, in, *p, beta, y, out);
      else
        ops::bf16_gemm(false, true, rows, out, in, 1.0f, x, in, m.at(w), in, beta, y, out);
      return;
    }
    if (const ops::PackedMatrix* p = packed ? packed->forward(w) : nullptr) {
      ops::gemm_packed(false, rows, out, in, 1.0f, x, in, *p, beta, y, out);
      return;
    }
  }
  ops::gemm<T>(false, true, rows, out, in, T(1), x, in, m.at(w), in, beta, y, out);
}

// Several projections of one input x [rows, in] (q, k and v; gate and up), each y = x W^T
// (+ bias). Under bf16 with every weight packed, x is rounded to bf16 once for all of them.
template <class T>
struct Projection {
  int64_t w, bias;
  T* y;
  int64_t out;
};
template <class T>
void project_shared_input(const Model<T>& m, const ForwardContext<T>& ctx,
                          const PackedWeights* packed, const T* x, int64_t rows, int64_t in,
                          std::initializer_list<Projection<T>> ps) {
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_products(ctx) && packed && ops::bf16_native_available()) {
      std::array<ops::Bf16Output, 4> outs{};
      int count = 0;
      for (const Projection<T>& p : ps) {
        const ops::PackedBf16* b = packed->forward_bf16(p.w);
        if (!b || count == int(outs.size())) {
          count = -1;
          break;
        }
        outs[size_t(count++)] = {b, p.out, p.bias >= 0 ? 1.0f : 0.0f, p.y, p.out};
      }
      if (count > 0) {
        for (const Projection<T>& p : ps)
          if (const T* b = m.at(p.bias))
            for (int64_t i = 0; i < rows; ++i) std::copy_n(b, p.out, p.y + i * p.out);
        ops::bf16_gemm_packed_shared_a(rows, in, x, in, outs.data(), count);
        return;
      }
    }
  }
  for (const Projection<T>& p : ps) project(m, ctx, packed, p.w, p.bias, p.y, x, rows, in, p.out);
}

// dx[rows, in] = dy W (= or += when `add`), the input gradient of project().
template <class T>
void project_back(const Model<T>& m, const ForwardContext<T>& ctx, const PackedWeights* packed,
                  int64_t w, T* dx, const T* dy, int64_t rows, int64_t in, int64_t out, bool add) {
  if constexpr (std::is_same_v<T, float>) {
    const float beta = add ? 1.0f : 0.0f;
    if (bf16_products(ctx)) {
      if (const ops::PackedBf16* p = packed ? packed->backward_bf16(w) : nullptr)
        ops::bf16_gemm_packed(rows, in, out, 1.0f, dy, out, *p, beta, dx, in);
      else
        ops::bf16_gemm(false, false, rows, in, out, 1.0f, dy, out, m.at(w), in, beta, dx, in);
      return;
    }
    if (const ops::PackedMatrix* p = packed ? packed->backward(w) : nullptr) {
      ops::gemm_packed(false, rows, in, out, 1.0f, dy, out, *p, beta, dx, in);
      return;
    }
  }
  ops::linear_backward(dx, (T*)nullptr, (T*)nullptr, dy, (const T*)nullptr, m.at(w), rows, in, out,
                       add);
}

// dW (+=) dy^T x alone, under the context's precision; nothing when dw is null.
template <class T>
void linear_back_weights(const ForwardContext<T>& ctx, T* dw, const T* dy, const T* x, int64_t rows,
                         int64_t in, int64_t out) {
  if (!dw) return;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_products(ctx)) {
      ops::bf16_gemm(true, false, out, in, rows, 1.0f, dy, out, x, in, 1.0f, dw, in);
      return;
    }
  }
  ops::gemm<T>(true, false, out, in, rows, T(1), dy, out, x, in, T(1), dw, in);
}

// ops::linear_backward under the context's precision (the plain layer code's backward).
template <class T>
void linear_back(const ForwardContext<T>& ctx, T* dx, T* dw, T* dbias, const T* dy, const T* x,
                 const T* w, int64_t rows, int64_t in, int64_t out, bool accumulate_dx) {
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_products(ctx)) {
      ops::bf16_gemm(false, false, rows, in, out, 1.0f, dy, out, w, in, accumulate_dx ? 1.0f : 0.0f,
                     dx, in);
      linear_back_weights(ctx, dw, dy, x, rows, in, out);
      if (dbias)
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < out; ++j) dbias[j] += dy[i * out + j];
      return;
    }
  }
  ops::linear_backward(dx, dw, dbias, dy, x, w, rows, in, out, accumulate_dx);
}

// ---------------------------------------------------------------------------------------------
// The sparse MLP (mixture of experts, SPEC §7): the block kind a sparse layer has where a dense
// layer has its MLP. Both paths below run it in the same phases (the plain one with one
// thread and all rows):
//   rows    : router logits and routing; the shared expert and its gate, added to x
//   (one)   : the assignments grouped by expert
//   experts : each expert's gate/up/down as one GEMM over its own tokens
//   rows    : x += the routing-weighted expert outputs
// The router and the shared-expert gate are products in fp32 whatever the precision (the
// routing decision is what a bf16 rounding would move); the experts and the shared expert
// follow the precision like a dense MLP.

template <class T>
void moe_prepare(LayerActs<T>& A, const ModelConfig& c, int64_t r) {
  const int64_t D = c.hidden_size, E = c.num_experts, k = c.num_experts_per_tok;
  const int64_t Fs = c.shared_expert_intermediate_size;
  resize(A.router_logits, r * E);
  ops::moe_routing_resize(A.routing, r, E, k);
  ops::moe_acts_resize(A.experts, r * k, D, c.moe_intermediate_size);
  for (auto* v : {&A.sgate, &A.sup, &A.shmid}) resize(*v, r * Fs);
  resize(A.sg, r);
  resize(A.sout, r * D);
}

// How expert e's products run: under bf16, with bf16 inputs, from the packed bf16 copies
// where there are (W^T for the forward, W for the backward); else from the packed fp32
// copies for the fp32 GEMM, or null when they are not all there.
template <class T>
const ops::MoeExpertPacks* expert_packs(const ForwardContext<T>& ctx, const PackedWeights* packed,
                                        const LayerOffsets::ExpertOffsets& ex, bool backward,
                                        ops::MoeExpertPacks& out) {
  out = {};
  if (bf16_products(ctx)) {
    auto get = [&](int64_t w) {
      return !packed ? nullptr : backward ? packed->backward_bf16(w) : packed->forward_bf16(w);
    };
    out.bf16 = true;
    out.gate_bf16 = get(ex.w_gate);
    out.up_bf16 = get(ex.w_up);
    out.down_bf16 = get(ex.w_down);
    return &out;
  }
  if (!packed) return nullptr;
  auto get = [&](int64_t w) { return backward ? packed->backward(w) : packed->forward(w); };
  out.gate = get(ex.w_gate);
  out.up = get(ex.w_up);
  out.down = get(ex.w_down);
  return out.gate && out.up && out.down ? &out : nullptr;
}

template <class T>
void moe_rows_forward(const Model<T>& m, const ForwardContext<T>& ctx, const PackedWeights* packed,
                      const LayerOffsets& o, LayerActs<T>& A, T* x, int64_t r0, int64_t r1) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, E = c.num_experts, Fs = c.shared_expert_intermediate_size;
  const int64_t rows = r1 - r0;
  if (rows <= 0) return;
  const T* mm = A.m.data() + r0 * D;
  ops::gemm<T>(false, true, rows, E, D, T(1), mm, D, m.at(o.router), D, T(0),
               A.router_logits.data() + r0 * E, E);
  ops::moe_route_rows(A.routing, A.router_logits.data(), r0, r1, c.norm_topk_prob);
  project(m, ctx, packed, o.shared.w_gate, -1, A.sgate.data() + r0 * Fs, mm, rows, D, Fs);
  project(m, ctx, packed, o.shared.w_up, -1, A.sup.data() + r0 * Fs, mm, rows, D, Fs);
  ops::swiglu_forward(A.shmid.data() + r0 * Fs, A.sgate.data() + r0 * Fs, A.sup.data() + r0 * Fs,
                      rows * Fs);
  project(m, ctx, packed, o.shared.w_down, -1, A.sout.data() + r0 * D, A.shmid.data() + r0 * Fs,
          rows, Fs, D);
  ops::gemm<T>(false, true, rows, 1, D, T(1), mm, D, m.at(o.shared_gate), D, T(0), A.sg.data() + r0,
               1);
  for (int64_t i = r0; i < r1; ++i) {
    const T s = ops::sigmoid(A.sg[size_t(i)]);
    A.sg[size_t(i)] = s;
    const T* so = A.sout.data() + i * D;
    T* xi = x + i * D;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) xi[j] += s * so[j];
  }
}

template <class T>
void moe_expert_forward(const Model<T>& m, const ForwardContext<T>& ctx,
                        const PackedWeights* packed, const LayerOffsets& o, LayerActs<T>& A,
                        int64_t e) {
  const ModelConfig& c = m.config;
  const auto& ex = o.experts[size_t(e)];
  ops::MoeExpertPacks packs;
  ops::moe_expert_forward(e, A.routing, A.m.data(), c.hidden_size, c.moe_intermediate_size,
                          m.at(ex.w_gate), m.at(ex.w_up), m.at(ex.w_down), A.experts,
                          expert_packs(ctx, packed, ex, false, packs));
}

// Rows r0..r1 of the shared expert's backward: dm (=) its input gradient, and the gradients of
// its product outputs for the weight gradients (dsout = sg dh, dsgate, dsup, dsg the gate
// logit's).
template <class T>
void moe_shared_backward_rows(const Model<T>& m, const ForwardContext<T>& ctx,
                              const PackedWeights* packed, const LayerOffsets& o,
                              const LayerActs<T>& A, const T* dh, T* dm, T* dsout, T* dshmid,
                              T* dsgate, T* dsup, T* dsg, int64_t r0, int64_t r1) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, Fs = c.shared_expert_intermediate_size, rows = r1 - r0;
  if (rows <= 0) return;
  for (int64_t i = r0; i < r1; ++i) {
    const T s = A.sg[size_t(i)];
    const T* d = dh + i * D;
    const T* so = A.sout.data() + i * D;
    T* ds = dsout + i * D;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < D; ++j) {
      ds[j] = s * d[j];
      dot += d[j] * so[j];
    }
    dsg[i] = dot * s * (T(1) - s);
  }
  project_back(m, ctx, packed, o.shared.w_down, dshmid + r0 * Fs, dsout + r0 * D, rows, Fs, D,
               false);
  ops::swiglu_backward(dsgate + r0 * Fs, dsup + r0 * Fs, dshmid + r0 * Fs, A.sgate.data() + r0 * Fs,
                       A.sup.data() + r0 * Fs, rows * Fs);
  project_back(m, ctx, packed, o.shared.w_gate, dm + r0 * D, dsgate + r0 * Fs, rows, D, Fs, false);
  project_back(m, ctx, packed, o.shared.w_up, dm + r0 * D, dsup + r0 * Fs, rows, D, Fs, true);
  // The gate's logit is m W_sg^T, W_sg [1, D]: dm += dsg W_sg.
  ops::gemm<T>(false, false, rows, D, 1, T(1), dsg + r0, 1, m.at(o.shared_gate), D, T(1),
               dm + r0 * D, D);
}

// Expert e's backward: its weight gradients (+=), its assignments' routing-weight gradients
// and input gradients (by grouped position).
template <class T>
void moe_expert_backward(const Model<T>& m, const ForwardContext<T>& ctx,
                         const PackedWeights* packed, const LayerOffsets& o, const LayerActs<T>& A,
                         int64_t e, const T* dh, T* grads, T* dweight, T* dxg) {
  const ModelConfig& c = m.config;
  const auto& ex = o.experts[size_t(e)];
  const int64_t Fm = c.moe_intermediate_size;
  thread_local std::vector<T> scratch;
  grow(scratch, ops::moe_backward_scratch_size(A.routing, e, Fm));
  auto g = [&](int64_t off) { return grads ? grads + off : nullptr; };
  ops::MoeExpertPacks packs;
  ops::moe_expert_backward(e, A.routing, A.experts, dh, c.hidden_size, Fm, m.at(ex.w_gate),
                           m.at(ex.w_up), m.at(ex.w_down), g(ex.w_gate), g(ex.w_up), g(ex.w_down),
                           dweight, dxg, scratch.data(),
                           expert_packs(ctx, packed, ex, true, packs));
}

// Rows r0..r1 after every expert's backward: the router's backward (through the routing
// weights, plus the aux loss's gradient of the probabilities when given) into drouter, and
// dm += drouter W_router + the experts' input gradients.
template <class T>
void moe_route_backward_rows(const Model<T>& m, const LayerOffsets& o, const LayerActs<T>& A,
                             const T* dweight, const T* dxg, const T* aux_grad, T* dprobs,
                             T* drouter, T* dm, int64_t r0, int64_t r1) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, E = c.num_experts, rows = r1 - r0;
  if (rows <= 0) return;
  if (aux_grad)
    for (int64_t i = r0; i < r1; ++i) std::copy_n(aux_grad, E, dprobs + i * E);
  ops::moe_route_backward_rows(A.routing, dweight, aux_grad ? dprobs : nullptr, drouter, r0, r1,
                               c.norm_topk_prob);
  ops::gemm<T>(false, false, rows, D, E, T(1), drouter + r0 * E, E, m.at(o.router), D, T(1),
               dm + r0 * D, D);
  ops::moe_scatter_dx_rows(A.routing, dxg, D, dm, r0, r1);
}

// Where one layer's keys and values live during a forward: the activations (training) or the
// streaming cache.
template <class T>
struct KVSlot {
  T *k, *k_rot, *v;
  int64_t cap, p0;
};

template <class T>
void layer_forward_reference(const Model<T>& m, const ForwardContext<T>& ctx, int64_t l, T* x,
                             LayerActs<T>& A, const int32_t* positions, int64_t B, int64_t n,
                             KVSlot<T> kv, T* M, T* z, bool fold_memory,
                             const PackedWeights* packed) {
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
  project(m, ctx, packed, o.wq, o.bq, A.q.data(), A.a.data(), r, D, qw);
  T* k_new = kv.k + kv.p0 * kw;
  T* krot_new = kv.k_rot + kv.p0 * kw;
  T* v_new = kv.v + kv.p0 * kw;
  project(m, ctx, packed, o.wk, o.bk, k_new, A.a.data(), r, D, kw);
  project(m, ctx, packed, o.wv, o.bv, v_new, A.a.data(), r, D, kw);
  ops::rope_apply(A.q_rot.data(), A.q.data(), r, H, positions, ctx.rope, false);
  ops::rope_apply(krot_new, k_new, r, Hkv, positions, ctx.rope, false);

  // Local causal attention within the segment.
  const ops::AttentionShape as{B, n, kv.p0, kv.cap, H, Hkv, c.head_dim};
  resize(A.probs, B * H * n * ctxlen);
  resize(A.local, r * qw);
  ops::local_attention_forward_reference(A.local.data(), A.probs.data(), A.q_rot.data(), kv.k_rot,
                                         kv.v, as, bf16_products(ctx));

  const T* attn_out = A.local.data();
  if (c.use_memory) {
    const auto ms = memory_shape<T>(c, B, n, n);
    resize(A.mem, r * qw);
    resize(A.sq, r * qw);
    resize(A.den, B * H * n);
    resize(A.mixed, r * qw);
    ops::memory_retrieve_forward(A.mem.data(), A.sq.data(), A.den.data(), A.q.data(), M, z, ms,
                                 bf16_products(ctx));
    ops::gate_mix_forward(A.mixed.data(), A.mem.data(), A.local.data(), m.at(o.beta), r, H,
                          c.head_dim);
    attn_out = A.mixed.data();
    // Retrieval above used the state of earlier segments; only now fold this segment in.
    if (fold_memory)
      ops::memory_update_forward(M, z, kv.k, kv.v, memory_shape<T>(c, B, ctxlen, kv.cap),
                                 c.memory_update == MemoryUpdate::Delta, bf16_products(ctx));
  }

  // h = h + O Wo^T
  resize(A.x_mid, r * D);
  std::copy_n(x, r * D, A.x_mid.data());
  project(m, ctx, packed, o.wo, -1, A.x_mid.data(), attn_out, r, qw, D, /*add=*/true);

  // h = h + W_down(silu(W_gate m) * W_up m), or the sparse MLP
  resize(A.rstd_post, r);
  resize(A.m, r * D);
  ops::rmsnorm_forward(A.m.data(), A.rstd_post.data(), A.x_mid.data(), m.at(o.post_norm), r, D,
                       c.rms_norm_eps);
  if (o.sparse) {
    moe_prepare(A, c, r);
    std::copy_n(A.x_mid.data(), r * D, x);
    moe_rows_forward(m, ctx, packed, o, A, x, 0, r);
    ops::moe_group(A.routing);
    for (int64_t e = 0; e < c.num_experts; ++e) moe_expert_forward(m, ctx, packed, o, A, e);
    ops::moe_combine_rows(A.routing, A.experts, D, x, 0, r);
    return;
  }
  resize(A.gate, r * F);
  resize(A.up, r * F);
  resize(A.hmid, r * F);
  project(m, ctx, packed, o.w_gate, -1, A.gate.data(), A.m.data(), r, D, F);
  project(m, ctx, packed, o.w_up, -1, A.up.data(), A.m.data(), r, D, F);
  ops::swiglu_forward(A.hmid.data(), A.gate.data(), A.up.data(), r * F);
  std::copy_n(A.x_mid.data(), r * D, x);
  project(m, ctx, packed, o.w_down, -1, x, A.hmid.data(), r, F, D, /*add=*/true);
}

template <class T>
struct LayerGrads {
  std::vector<T> dxm, dhmid, dgate, dup, dm, dmixed, dmem, dlocal, dq, dk, dv, da;
  std::vector<T> dsout, dshmid, dsgate, dsup, dsg, drouter, dprobs, dweight, dxg;  // sparse MLP
};

template <class T>
void layer_backward_reference(const Model<T>& m, const ForwardContext<T>& ctx, int64_t l, T* dx,
                              const LayerActs<T>& A, const int32_t* positions, int64_t B, int64_t n,
                              const T* M, const T* z, T* dM, T* dz, T* grads, LayerGrads<T>& G,
                              const T* moe_aux_grad) {
  const ModelConfig& c = m.config;
  const LayerOffsets& o = m.layout.layers[size_t(l)];
  const int64_t D = c.hidden_size, F = c.intermediate_size, r = B * n;
  const int64_t qw = c.q_width(), kw = c.kv_width(), H = c.num_heads, Hkv = c.num_kv_heads;
  auto g = [&](int64_t off) { return off < 0 ? nullptr : grads + off; };

  // MLP: x_out = x_mid + W_down(hmid), or the sparse MLP
  resize(G.dm, r * D);
  resize(G.dxm, r * D);
  if (o.sparse) {
    const int64_t Fs = c.shared_expert_intermediate_size, E = c.num_experts;
    const int64_t k = c.num_experts_per_tok;
    resize(G.dsout, r * D);
    for (auto* v : {&G.dshmid, &G.dsgate, &G.dsup}) resize(*v, r * Fs);
    resize(G.dsg, r);
    resize(G.drouter, r * E);
    resize(G.dprobs, r * E);
    resize(G.dweight, r * k);
    resize(G.dxg, r * k * D);
    moe_shared_backward_rows(m, ctx, (const PackedWeights*)nullptr, o, A, dx, G.dm.data(),
                             G.dsout.data(), G.dshmid.data(), G.dsgate.data(), G.dsup.data(),
                             G.dsg.data(), 0, r);
    linear_back_weights(ctx, g(o.shared.w_down), G.dsout.data(), A.shmid.data(), r, Fs, D);
    linear_back_weights(ctx, g(o.shared.w_gate), G.dsgate.data(), A.m.data(), r, D, Fs);
    linear_back_weights(ctx, g(o.shared.w_up), G.dsup.data(), A.m.data(), r, D, Fs);
    for (int64_t e = 0; e < E; ++e)
      moe_expert_backward(m, ctx, (const PackedWeights*)nullptr, o, A, e, dx, grads,
                          G.dweight.data(), G.dxg.data());
    moe_route_backward_rows(m, o, A, G.dweight.data(), G.dxg.data(), moe_aux_grad, G.dprobs.data(),
                            G.drouter.data(), G.dm.data(), 0, r);
    if (T* gw = g(o.router))  // dW_router += drouter^T m, dW_sg += dsg^T m (fp32, as forward)
      ops::gemm<T>(true, false, E, D, r, T(1), G.drouter.data(), E, A.m.data(), D, T(1), gw, D);
    if (T* gw = g(o.shared_gate))
      ops::gemm<T>(true, false, 1, D, r, T(1), G.dsg.data(), 1, A.m.data(), D, T(1), gw, D);
  } else {
    resize(G.dhmid, r * F);
    resize(G.dgate, r * F);
    resize(G.dup, r * F);
    linear_back(ctx, G.dhmid.data(), g(o.w_down), (T*)nullptr, dx, A.hmid.data(), m.at(o.w_down), r,
                F, D, false);
    ops::swiglu_backward(G.dgate.data(), G.dup.data(), G.dhmid.data(), A.gate.data(), A.up.data(),
                         r * F);
    linear_back(ctx, G.dm.data(), g(o.w_gate), (T*)nullptr, G.dgate.data(), A.m.data(),
                m.at(o.w_gate), r, D, F, false);
    linear_back(ctx, G.dm.data(), g(o.w_up), (T*)nullptr, G.dup.data(), A.m.data(), m.at(o.w_up), r,
                D, F, true);
  }
  std::copy_n(dx, r * D, G.dxm.data());
  ops::rmsnorm_backward(G.dxm.data(), g(o.post_norm), G.dm.data(), A.x_mid.data(),
                        A.rstd_post.data(), m.at(o.post_norm), r, D, true);

  // Attention output: x_mid = x_in + mixed Wo^T
  resize(G.dmixed, r * qw);
  const T* attn_out = c.use_memory ? A.mixed.data() : A.local.data();
  linear_back(ctx, G.dmixed.data(), g(o.wo), (T*)nullptr, G.dxm.data(), attn_out, m.at(o.wo), r, qw,
              D, false);
  resize(G.dlocal, r * qw);
  if (c.use_memory) {
    resize(G.dmem, r * qw);
    ops::gate_mix_backward(G.dmem.data(), G.dlocal.data(), g(o.beta), G.dmixed.data(), A.mem.data(),
                           A.local.data(), m.at(o.beta), r, H, c.head_dim);
  } else {
    std::copy_n(G.dmixed.data(), r * qw, G.dlocal.data());
  }

  // Local attention, then undo RoPE on the gradients (rotation by -angle).
  resize(G.dq, r * qw);
  resize(G.dk, r * kw);
  resize(G.dv, r * kw);
  const ops::AttentionShape as{B, n, 0, n, H, Hkv, c.head_dim};
  ops::local_attention_backward_reference(G.dq.data(), G.dk.data(), G.dv.data(), G.dlocal.data(),
                                          A.probs.data(), A.q_rot.data(), A.k_rot.data(),
                                          A.v.data(), as, bf16_products(ctx));
  ops::rope_apply(G.dq.data(), r, H, positions, ctx.rope, true);
  ops::rope_apply(G.dk.data(), r, Hkv, positions, ctx.rope, true);

  if (c.use_memory) {
    const auto ms = memory_shape<T>(c, B, n, n);
    // dM, dz arrive as gradients of the state after this segment's update.
    ops::memory_update_backward(G.dk.data(), G.dv.data(), dM, dz, A.k.data(), A.v.data(), M, z, ms,
                                c.memory_update == MemoryUpdate::Delta, bf16_products(ctx));
    ops::memory_retrieve_backward(G.dq.data(), dM, dz, G.dmem.data(), A.mem.data(), A.sq.data(),
                                  A.den.data(), A.q.data(), M, z, ms, bf16_products(ctx));
  }

  // Projections: a -> q, k, v
  resize(G.da, r * D);
  linear_back(ctx, G.da.data(), g(o.wq), g(o.bq), G.dq.data(), A.a.data(), m.at(o.wq), r, D, qw,
              false);
  linear_back(ctx, G.da.data(), g(o.wk), g(o.bk), G.dk.data(), A.a.data(), m.at(o.wk), r, D, kw,
              true);
  linear_back(ctx, G.da.data(), g(o.wv), g(o.bv), G.dv.data(), A.a.data(), m.at(o.wv), r, D, kw,
              true);
  std::copy_n(G.dxm.data(), r * D, dx);
  ops::rmsnorm_backward(dx, g(o.in_norm), G.da.data(), A.x_in.data(), A.rstd_in.data(),
                        m.at(o.in_norm), r, D, true);
}

// ---------------------------------------------------------------------------------------------
// The fast path. One OpenMP parallel region per call; inside it each layer is a few phases:
//   rows  : token-wise work (RMSNorm, projections, RoPE, MLP) on this thread's share of the
//           rows, with single-threaded GEMMs (OpenBLAS runs single-threaded inside a parallel
//           region, so there is no oversubscription);
//   heads : attention and memory, one task per (sequence, head), causal blocks only;
//   grads : weight gradients dW += dY^T X split over blocks of output rows, so threads never
//           write the same gradient (no reduction buffers).
// Barriers sit only where a phase needs rows or heads another thread produced: 2 per layer
// forward, 2 per layer backward (plus one for grouped-query memory updates).

template <class T>
bool use_fast_path(const ForwardContext<T>& ctx, int64_t rows) {
  return !ctx.reference && rows > 1;
}

// [first, last) of this thread's share of `total` items.
inline std::pair<int64_t, int64_t> share(int64_t total, int t, int nt) {
  return {total * t / nt, total * (t + 1) / nt};
}

// Threads for one chunk: a barrier costs microseconds (milliseconds on a busy machine), so tiny
// chunks (tests, short prompts) run on one thread.
template <class T>
int chunk_threads(const ForwardContext<T>& ctx, const ModelConfig& c, int64_t rows) {
  if (ctx.threads > 0) return ctx.threads;
  const double D = double(c.hidden_size);
  const double flops =
      2.0 * double(rows) * double(c.num_layers) *
      (D * double(2 * c.q_width() + 2 * c.kv_width()) + 3.0 * D * double(c.intermediate_size));
  return flops < 2e7 ? 1 : omp_get_max_threads();
}

template <class T>
void prepare_layer_acts(LayerActs<T>& A, const ModelConfig& c, int64_t B, int64_t n, int64_t ctxlen,
                        bool own_kv, bool sparse) {
  const int64_t r = B * n, D = c.hidden_size, F = c.intermediate_size;
  const int64_t qw = c.q_width(), kw = c.kv_width();
  for (auto* v : {&A.x_in, &A.a, &A.x_mid, &A.m}) resize(*v, r * D);
  resize(A.rstd_in, r);
  resize(A.rstd_post, r);
  for (auto* v : {&A.q, &A.q_rot, &A.local}) resize(*v, r * qw);
  if (own_kv)
    for (auto* v : {&A.k, &A.k_rot, &A.v}) resize(*v, r * kw);
  resize(A.probs, B * c.num_heads * n * ctxlen);
  if (c.use_memory) {
    for (auto* v : {&A.mem, &A.sq, &A.mixed}) resize(*v, r * qw);
    resize(A.den, B * c.num_heads * n);
  }
  if (sparse)
    moe_prepare(A, c, r);
  else
    for (auto* v : {&A.gate, &A.up, &A.hmid}) resize(*v, r * F);
}

template <class T>
void forward_fast(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens, int64_t B,
                  int64_t n, MemoryState<T>& state, SegmentActs<T>& acts, KVCache<T>* cache,
                  bool compute_logits, int64_t p0, bool fold, const PackedWeights* packed) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, r = B * n;
  const int64_t qw = c.q_width(), kw = c.kv_width(), H = c.num_heads, Hkv = c.num_kv_heads;
  const int64_t d = c.head_dim, G = c.group_size(), L = c.num_layers;
  const int64_t ctxlen = p0 + n, cap = cache ? cache->capacity : n;
  const bool mem = c.use_memory, delta = c.memory_update == MemoryUpdate::Delta;
  // With one query head per kv head, a head task reads its memory and then updates it.
  const bool fused_update = G == 1;
  const double eps = c.rms_norm_eps;

  ChunkWorkspace<T>& W = acts.work;
  resize(W.h, r * D);
  for (int64_t l = 0; l < L; ++l)
    prepare_layer_acts(acts.layers[size_t(l)], c, B, n, ctxlen, cache == nullptr,
                       m.layout.layers[size_t(l)].sparse);
  resize(acts.h_final, r * D);
  resize(acts.rstd_final, r);
  resize(acts.f, r * D);
  if (compute_logits) resize(acts.logits, r * V);
  const int max_threads = chunk_threads(ctx, c, r);
  W.thread.resize(size_t(max_threads));
  for (auto& s : W.thread) grow(s, ops::memory_scratch_size(ctxlen, d));

  const int32_t* pos = acts.positions.data();
#pragma omp parallel num_threads(max_threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const auto [r0, r1] = share(r, t, nt);
    const int64_t rows = r1 - r0;
    T* scratch = W.thread[size_t(t)].data();
    T* x = W.h.data();
    embed_rows(m, tokens, r0, r1, x);

    for (int64_t l = 0; l < L; ++l) {
      LayerActs<T>& A = acts.layers[size_t(l)];
      const LayerOffsets& o = m.layout.layers[size_t(l)];
      T* kb = cache ? cache->k[size_t(l)].data() : A.k.data();
      T* krb = cache ? cache->k_rot[size_t(l)].data() : A.k_rot.data();
      T* vb = cache ? cache->v[size_t(l)].data() : A.v.data();
      // Row i of the chunk is slot row p0 + i of the keys/values (p0 > 0 only with batch 1).
      if (rows > 0) {
        std::copy_n(x + r0 * D, rows * D, A.x_in.data() + r0 * D);
        ops::rmsnorm_forward(A.a.data() + r0 * D, A.rstd_in.data() + r0, x + r0 * D,
                             m.at(o.in_norm), rows, D, eps);
        const T* a = A.a.data() + r0 * D;
        project_shared_input(m, ctx, packed, a, rows, D,
                             {{o.wq, o.bq, A.q.data() + r0 * qw, qw},
                              {o.wk, o.bk, kb + (p0 + r0) * kw, kw},
                              {o.wv, o.bv, vb + (p0 + r0) * kw, kw}});
        ops::rope_apply(A.q_rot.data() + r0 * qw, A.q.data() + r0 * qw, rows, H, pos + r0, ctx.rope,
                        false);
        ops::rope_apply(krb + (p0 + r0) * kw, kb + (p0 + r0) * kw, rows, Hkv, pos + r0, ctx.rope,
                        false);
      }
#pragma omp barrier
      T* M = mem ? state.M_layer(l) : nullptr;
      T* z = mem ? state.z_layer(l) : nullptr;
      // Head tasks cost the same, but the threads need not run at the same speed (a shared
      // machine's vCPUs): dynamic lets the faster one take more of them.
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < B * H; ++task) {
        const int64_t b = task / H, h = task % H, g = h / G;
        const int64_t off = b * n * qw + h * d, kvo = b * cap * kw + g * d;
        ops::attention_head_forward(A.local.data() + off, A.probs.data() + task * n * ctxlen,
                                    A.q_rot.data() + off, krb + kvo, vb + kvo, n, p0, d, qw, kw,
                                    scratch, bf16_products(ctx));
        if (!mem) continue;
        T* Mg = M + (b * Hkv + g) * d * d;
        T* zg = z + (b * Hkv + g) * d;
        ops::memory_retrieve_head(A.mem.data() + off, A.sq.data() + off, A.den.data() + task * n,
                                  A.q.data() + off, Mg, zg, n, d, qw, bf16_products(ctx));
        const T s = ops::sigmoid(m.at(o.beta)[h]);
        for (int64_t i = 0; i < n; ++i) {
          const T* mr = A.mem.data() + off + i * qw;
          const T* lr = A.local.data() + off + i * qw;
          T* out = A.mixed.data() + off + i * qw;
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) out[j] = s * mr[j] + (T(1) - s) * lr[j];
        }
        // Retrieval above used the state of earlier segments; only now fold this segment in.
        if (fold && fused_update)
          ops::memory_update_group(Mg, zg, kb + kvo, vb + kvo, ctxlen, d, kw, delta, scratch,
                                   bf16_products(ctx));
      }
      if (mem && fold && !fused_update) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * Hkv; ++task) {
          const int64_t b = task / Hkv, g = task % Hkv, kvo = b * cap * kw + g * d;
          ops::memory_update_group(M + task * d * d, z + task * d, kb + kvo, vb + kvo, ctxlen, d,
                                   kw, delta, scratch, bf16_products(ctx));
        }
      }
      if (rows > 0) {
        // h = h + O Wo^T ; h = h + W_down(silu(W_gate m) * W_up m)
        const T* attn = (mem ? A.mixed.data() : A.local.data()) + r0 * qw;
        T* xm = A.x_mid.data() + r0 * D;
        std::copy_n(x + r0 * D, rows * D, xm);
        project(m, ctx, packed, o.wo, -1, xm, attn, rows, qw, D, /*add=*/true);
        T* mm = A.m.data() + r0 * D;
        ops::rmsnorm_forward(mm, A.rstd_post.data() + r0, xm, m.at(o.post_norm), rows, D, eps);
        std::copy_n(xm, rows * D, x + r0 * D);
        if (o.sparse) {
          moe_rows_forward(m, ctx, packed, o, A, x, r0, r1);
        } else {
          project_shared_input(
              m, ctx, packed, mm, rows, D,
              {{o.w_gate, -1, A.gate.data() + r0 * F, F}, {o.w_up, -1, A.up.data() + r0 * F, F}});
          ops::swiglu_forward(A.hmid.data() + r0 * F, A.gate.data() + r0 * F, A.up.data() + r0 * F,
                              rows * F);
          project(m, ctx, packed, o.w_down, -1, x + r0 * D, A.hmid.data() + r0 * F, rows, F, D,
                  /*add=*/true);
        }
      }
      if (o.sparse) {  // the experts need every row's routing and input
#pragma omp barrier
#pragma omp single
        ops::moe_group(A.routing);
#pragma omp for schedule(dynamic, 1)
        for (int64_t e = 0; e < c.num_experts; ++e) moe_expert_forward(m, ctx, packed, o, A, e);
        if (rows > 0) ops::moe_combine_rows(A.routing, A.experts, D, x, r0, r1);
      }
    }
    if (rows > 0) {
      std::copy_n(x + r0 * D, rows * D, acts.h_final.data() + r0 * D);
      ops::rmsnorm_forward(acts.f.data() + r0 * D, acts.rstd_final.data() + r0, x + r0 * D,
                           m.at(m.layout.final_norm), rows, D, eps);
      if (compute_logits)
        project(m, ctx, packed, m.layout.lm_head, -1, acts.logits.data() + r0 * V,
                acts.f.data() + r0 * D, rows, D, V);
    }
  }
}

// The weight gradient dW [out, in] += dY^T X (and db += column sums of dY) of one linear layer.
// Under Precision::BF16 with the native kernel, dyt is dY^T converted by ops::bf16_convert_pairs
// (row stride 2 out); else dY is rounded where it is used.
template <class T>
struct LinearGrad {
  const T* dy;  // [r, out]
  T* dw;        // [out, in]
  T* db;        // [out] or null
  int64_t out;
  const uint16_t* dyt = nullptr;
};

// One piece of weight-gradient work for the "grads" phases.
template <class T>
struct GradTask {
  enum Kind { Linear, Norm, Embed } kind;
  const T* dy;         // Norm, Embed: [r, in]
  const T* x;          // Linear: the input X [r, in]; Norm: the normalised input [r, in]
  const T* rstd;       // Norm
  T* dw;               // Norm: [in]; Embed: [V, in]
  int64_t in, o0, o1;  // columns o0..o1 of the weights' `in` columns
  // Linear: the layers whose dW it computes; several (q, k, v; gate, up) when they share X
  // and their dY are converted (bf16), so that X's columns are packed once for all of them.
  std::array<LinearGrad<T>, 3> linear{};
  int count = 0;
  bool bf16 = false;  // Linear: bf16 inputs (Precision::BF16)
};

template <class T>
void add_linear_grad(std::vector<GradTask<T>>& tasks, const T* x, int64_t in,
                     std::initializer_list<LinearGrad<T>> layers, bool bf16 = false) {
  if (layers.size() > 3) throw Error("add_linear_grad: at most three layers share an input");
  const bool share = std::all_of(layers.begin(), layers.end(),
                                 [](const LinearGrad<T>& l) { return l.dyt != nullptr; });
  // Shared, narrower column blocks keep as many tasks to spread over the threads (multiples
  // of the bf16 kernel's 32 columns); unshared layers keep a task per layer and block.
  const int64_t block =
      share ? std::max<int64_t>(32, kGradBlock / int64_t(layers.size()) / 32 * 32) : kGradBlock;
  auto add = [&](std::initializer_list<LinearGrad<T>> group) {
    for (int64_t o0 = 0; o0 < in; o0 += block) {
      GradTask<T> t{GradTask<T>::Linear,     nullptr, x, nullptr, nullptr, in, o0,
                    std::min(in, o0 + block)};
      for (const LinearGrad<T>& l : group) t.linear[size_t(t.count++)] = l;
      t.bf16 = bf16;
      tasks.push_back(t);
    }
  };
  if (share)
    add(layers);
  else
    for (const LinearGrad<T>& l : layers) add({l});
}

template <class T>
void add_norm_grad(std::vector<GradTask<T>>& tasks, const T* dy, const T* x, const T* rstd, T* dw,
                   int64_t dim) {
  tasks.push_back({GradTask<T>::Norm, dy, x, rstd, dw, dim, 0, dim});
}

template <class T>
void run_grad_task(const GradTask<T>& k, int64_t r, const int32_t* tokens) {
  const int64_t w = k.o1 - k.o0;
  switch (k.kind) {
    case GradTask<T>::Linear: {
      bool x_packed = false;
      for (int i = 0; i < k.count; ++i) {
        const LinearGrad<T>& l = k.linear[size_t(i)];
        bool done = false;
        if constexpr (std::is_same_v<T, float>) {
          if (l.dyt) {
            thread_local ops::PackedBf16 xb;  // this task's columns of X, packed once
            if (!x_packed) ops::bf16_pack(false, r, w, k.x + k.o0, k.in, xb);
            x_packed = true;
            ops::bf16_gemm_converted_pairs(l.out, w, r, 1.0f, l.dyt, 2 * l.out, xb, 1.0f,
                                           l.dw + k.o0, k.in);
            done = true;
          } else if (k.bf16) {
            ops::bf16_gemm(true, false, l.out, w, r, 1.0f, l.dy, l.out, k.x + k.o0, k.in, 1.0f,
                           l.dw + k.o0, k.in);
            done = true;
          }
        }
        if (!done)
          ops::gemm<T>(true, false, l.out, w, r, T(1), l.dy, l.out, k.x + k.o0, k.in, T(1),
                       l.dw + k.o0, k.in);
        if (l.db && k.o0 == 0)  // the bias gradient once, by the first column block
          for (int64_t t = 0; t < r; ++t) {
            const T* row = l.dy + t * l.out;
#pragma omp simd
            for (int64_t j = 0; j < l.out; ++j) l.db[j] += row[j];
          }
      }
      break;
    }
    case GradTask<T>::Norm: {
      // dw_j += sum_i dy_ij x_ij rstd_i, accumulated in double (rows can be many).
      std::vector<double> acc(static_cast<size_t>(w), 0.0);
      for (int64_t i = 0; i < r; ++i) {
        const T* dy = k.dy + i * k.in + k.o0;
        const T* x = k.x + i * k.in + k.o0;
        const T rs = k.rstd[i];
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) acc[size_t(j)] += double(dy[j] * x[j] * rs);
      }
      for (int64_t j = 0; j < w; ++j) k.dw[k.o0 + j] += T(acc[size_t(j)]);
      break;
    }
    case GradTask<T>::Embed:
      // Serial over rows (two rows may hold the same token), parallel over columns.
      for (int64_t i = 0; i < r; ++i) {
        T* row = k.dw + int64_t(tokens[i]) * k.in + k.o0;
        const T* src = k.dy + i * k.in + k.o0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) row[j] += src[j];
      }
      break;
  }
}

template <class T>
void backward_fast(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                   const SegmentActs<T>& acts, const T* dlogits, const MemoryState<T>& state_before,
                   MemoryState<T>& dstate, T* grads, const PackedWeights* packed,
                   const T* moe_aux_grad) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t B = acts.batch, n = acts.n, r = B * n;
  const int64_t E = c.num_experts, Fs = c.shared_expert_intermediate_size;
  const int64_t qw = c.q_width(), kw = c.kv_width(), H = c.num_heads, Hkv = c.num_kv_heads;
  const int64_t d = c.head_dim, G = c.group_size(), L = c.num_layers;
  const bool mem = c.use_memory, delta = c.memory_update == MemoryUpdate::Delta;
  auto g = [&](int64_t off) { return off < 0 ? nullptr : grads + off; };

  ChunkWorkspace<T>& W = acts.work;
  for (auto* v : {&W.dh, &W.df, &W.dxm, &W.dm, &W.da}) resize(*v, r * D);
  for (auto* v : {&W.dmixed, &W.dmem, &W.dlocal}) resize(*v, r * qw);
  // dq, dk, dv: two layers' worth, by the layer's parity. Layer l's heads write theirs while
  // the weight-gradient tasks of layer l + 1 still read that layer's (one loop, below).
  resize(W.dq, 2 * r * qw);
  for (auto* v : {&W.dk, &W.dv}) resize(*v, 2 * r * kw);
  auto dq_of = [&](int64_t l) { return W.dq.data() + (l % 2) * r * qw; };
  auto dk_of = [&](int64_t l) { return W.dk.data() + (l % 2) * r * kw; };
  auto dv_of = [&](int64_t l) { return W.dv.data() + (l % 2) * r * kw; };
  for (auto* v : {&W.dhmid, &W.dgate, &W.dup}) resize(*v, r * F);
  resize(W.dbeta, L * B * H);
  if (c.is_moe()) {
    const int64_t k = c.num_experts_per_tok;
    resize(W.dsout, r * D);
    for (auto* v : {&W.dshmid, &W.dsgate, &W.dsup}) resize(*v, r * Fs);
    resize(W.dsg, r);
    for (auto* v : {&W.drouter, &W.dprobs}) resize(*v, r * E);
    resize(W.dweight, r * k);
    resize(W.dxg, r * k * D);
  }
  const int max_threads = chunk_threads(ctx, c, r);
  W.thread.resize(size_t(max_threads));
  for (auto& s : W.thread) grow(s, std::max(n * n, ops::memory_scratch_size(n, d)));

  // bf16: each dY [r, cols] is converted once, as dY^T in pairs of rows
  // (ops::bf16_convert_pairs: rp / 2 rows of 2 cols values, rp = r rounded up to even), by the
  // threads owning its rows, for every column block of its dW.
  const bool bf16 = bf16_products(ctx);
  const bool convert = bf16 && ops::bf16_native_available();
  const int64_t rp = (r + 1) / 2 * 2;
  if (convert) {
    resize(W.dyt_head, V * rp);
    resize(W.dyt_mlp, (2 * D + 2 * F) * rp);
    resize(W.dyt_qkv, (qw + 2 * kw) * rp);
  }
  uint16_t* t_head = convert ? W.dyt_head.data() : nullptr;
  uint16_t* t_dh = convert ? W.dyt_mlp.data() : nullptr;
  uint16_t* t_dgate = convert ? t_dh + D * rp : nullptr;
  uint16_t* t_dup = convert ? t_dgate + F * rp : nullptr;
  uint16_t* t_dxm = convert ? t_dup + F * rp : nullptr;
  uint16_t* t_dq = convert ? W.dyt_qkv.data() : nullptr;
  uint16_t* t_dk = convert ? t_dq + qw * rp : nullptr;
  uint16_t* t_dv = convert ? t_dk + kw * rp : nullptr;
  auto to_bf16_t = [&](const T* dy, int64_t cols, uint16_t* dst, int64_t r0, int64_t r1,
                       uint16_t* rows = nullptr, int64_t ldr = 0) {
    if constexpr (std::is_same_v<T, float>) {
      ops::bf16_convert_pairs(dy, cols, r0, r1, cols, dst, 2 * cols, rows, ldr);
      if (r1 == r) ops::bf16_zero_pair_pad(dst, 2 * cols, r, cols);  // by the last row's owner
    }
  };
  // dx (+= when `add`) = dY W for rows r0 .. r1 of dY [r, out] (dx at row r0; W the weight at
  // w, [out, in]), and dY^T's pairs into dyt when it is given. Where W is packed in bf16, dY is
  // rounded once for both: the same rounded values, so the same bits as rounding it twice.
  auto back = [&](int64_t w, T* dx, const T* dy, int64_t out, int64_t in, bool add, uint16_t* dyt,
                  int64_t r0, int64_t r1) {
    const int64_t rows = r1 - r0;
    if constexpr (std::is_same_v<T, float>) {
      if (const ops::PackedBf16* p = dyt && packed ? packed->backward_bf16(w) : nullptr) {
        thread_local std::vector<uint16_t> dy_rows;
        const int64_t ldr = (out + 1) / 2 * 2;
        dy_rows.resize(size_t(rows * ldr));
        to_bf16_t(dy, out, dyt, r0, r1, dy_rows.data(), ldr);
        ops::bf16_gemm_converted(rows, in, out, 1.0f, dy_rows.data(), ldr, *p, add ? 1.0f : 0.0f,
                                 dx, in);
        return;
      }
    }
    project_back(m, ctx, packed, w, dx, dy + r0 * out, rows, in, out, add);
    if (dyt) to_bf16_t(dy, out, dyt, r0, r1);
  };

  // Weight-gradient work, by the phase it runs in (see the region below).
  std::vector<std::vector<GradTask<T>>> after_mlp(static_cast<size_t>(L + 1));
  std::vector<std::vector<GradTask<T>>> with_heads(static_cast<size_t>(L));
  // after_mlp[L] / with_heads[L-1]: the output head. after_mlp[l] (l < L): q, k, v of layer l,
  // run during the MLP phase of layer l-1 (or at the end for l = 0).
  add_linear_grad(after_mlp[size_t(L)], acts.f.data(), D,
                  {{dlogits, g(m.layout.lm_head), nullptr, V, t_head}}, bf16);
  add_norm_grad(with_heads[size_t(L - 1)], W.df.data(), acts.h_final.data(), acts.rstd_final.data(),
                g(m.layout.final_norm), D);
  for (int64_t l = 0; l < L; ++l) {
    const LayerActs<T>& A = acts.layers[size_t(l)];
    const LayerOffsets& o = m.layout.layers[size_t(l)];
    auto& mlp = with_heads[size_t(l)];
    if (o.sparse) {
      // The shared expert (bf16 inputs converted on the fly under bf16), the router and the
      // shared gate (fp32, as in the forward); the experts' weights are done by expert.
      add_linear_grad(mlp, A.shmid.data(), Fs, {{W.dsout.data(), g(o.shared.w_down), nullptr, D}},
                      bf16);
      add_linear_grad(mlp, A.m.data(), D,
                      {{W.dsgate.data(), g(o.shared.w_gate), nullptr, Fs},
                       {W.dsup.data(), g(o.shared.w_up), nullptr, Fs}},
                      bf16);
      add_linear_grad(mlp, A.m.data(), D,
                      {{W.drouter.data(), g(o.router), nullptr, E},
                       {W.dsg.data(), g(o.shared_gate), nullptr, 1}});
    } else {
      add_linear_grad(mlp, A.hmid.data(), F, {{W.dh.data(), g(o.w_down), nullptr, D, t_dh}}, bf16);
      add_linear_grad(mlp, A.m.data(), D,
                      {{W.dgate.data(), g(o.w_gate), nullptr, F, t_dgate},
                       {W.dup.data(), g(o.w_up), nullptr, F, t_dup}},
                      bf16);
    }
    add_linear_grad(mlp, mem ? A.mixed.data() : A.local.data(), qw,
                    {{W.dxm.data(), g(o.wo), nullptr, D, t_dxm}}, bf16);
    add_norm_grad(mlp, W.dm.data(), A.x_mid.data(), A.rstd_post.data(), g(o.post_norm), D);
    add_linear_grad(after_mlp[size_t(l)], A.a.data(), D,
                    {{dq_of(l), g(o.wq), g(o.bq), qw, t_dq},
                     {dk_of(l), g(o.wk), g(o.bk), kw, t_dk},
                     {dv_of(l), g(o.wv), g(o.bv), kw, t_dv}},
                    bf16);
    // RMSNorm of layer l's input: needs da of every row, so it runs one phase later.
    auto& late = l > 0 ? with_heads[size_t(l - 1)] : after_mlp[size_t(0)];
    add_norm_grad(late, W.da.data(), A.x_in.data(), A.rstd_in.data(), g(o.in_norm), D);
  }
  for (int64_t c0 = 0; c0 < D; c0 += std::max<int64_t>(64, D / (2 * max_threads)))
    after_mlp[0].push_back({GradTask<T>::Embed, W.dh.data(), nullptr, nullptr, g(m.layout.embed), D,
                            c0, std::min(D, c0 + std::max<int64_t>(64, D / (2 * max_threads)))});

  const int32_t* pos = acts.positions.data();
#pragma omp parallel num_threads(max_threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const auto [r0, r1] = share(r, t, nt);
    const int64_t rows = r1 - r0;
    T* scratch = W.thread[size_t(t)].data();
    if (rows > 0) {
      back(m.layout.lm_head, W.df.data() + r0 * D, dlogits, V, D, false, t_head, r0, r1);
      ops::rmsnorm_backward(W.dh.data() + r0 * D, (T*)nullptr, W.df.data() + r0 * D,
                            acts.h_final.data() + r0 * D, acts.rstd_final.data() + r0,
                            m.at(m.layout.final_norm), rows, D, false);
    }
    for (int64_t l = L - 1; l >= 0; --l) {
      const LayerActs<T>& A = acts.layers[size_t(l)];
      const LayerOffsets& o = m.layout.layers[size_t(l)];
      // MLP and output projection, by rows: dh is the gradient of this layer's output.
      if (o.sparse) {
        moe_shared_backward_rows(m, ctx, packed, o, A, W.dh.data(), W.dm.data(), W.dsout.data(),
                                 W.dshmid.data(), W.dsgate.data(), W.dsup.data(), W.dsg.data(), r0,
                                 r1);
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
        for (int64_t e = 0; e < E; ++e)
          moe_expert_backward(m, ctx, packed, o, A, e, W.dh.data(), grads, W.dweight.data(),
                              W.dxg.data());
        moe_route_backward_rows(m, o, A, W.dweight.data(), W.dxg.data(), moe_aux_grad,
                                W.dprobs.data(), W.drouter.data(), W.dm.data(), r0, r1);
      }
      if (rows > 0) {
        const T* dh = W.dh.data() + r0 * D;
        T* dm = W.dm.data() + r0 * D;
        T* dxm = W.dxm.data() + r0 * D;
        if (!o.sparse) {
          T* dhmid = W.dhmid.data() + r0 * F;
          T* dgate = W.dgate.data() + r0 * F;
          T* dup = W.dup.data() + r0 * F;
          back(o.w_down, dhmid, W.dh.data(), D, F, false, t_dh, r0, r1);
          ops::swiglu_backward(dgate, dup, dhmid, A.gate.data() + r0 * F, A.up.data() + r0 * F,
                               rows * F);
          back(o.w_gate, dm, W.dgate.data(), F, D, false, t_dgate, r0, r1);
          back(o.w_up, dm, W.dup.data(), F, D, true, t_dup, r0, r1);
        }
        std::copy_n(dh, rows * D, dxm);
        ops::rmsnorm_backward(dxm, (T*)nullptr, dm, A.x_mid.data() + r0 * D,
                              A.rstd_post.data() + r0, m.at(o.post_norm), rows, D, true);
        back(o.wo, W.dmixed.data() + r0 * qw, W.dxm.data(), D, qw, false, t_dxm, r0, r1);
      }
      // One loop for the rest of the layer: its attention and memory per (sequence, kv head),
      // its MLP weight gradients, and the q, k, v weight gradients of layer l + 1 (or the
      // head's), whose dY every thread has converted by rows before this barrier.
#pragma omp barrier
      {
        const auto& mlp_tasks = with_heads[size_t(l)];
        const auto& qkv_tasks = after_mlp[size_t(l + 1)];
        const int64_t heads = B * Hkv, first_qkv = heads + int64_t(mlp_tasks.size());
        const int64_t total = first_qkv + int64_t(qkv_tasks.size());
        T* const dq_l = dq_of(l);
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < total; ++task) {
          if (task >= first_qkv) {
            run_grad_task(qkv_tasks[size_t(task - first_qkv)], r, tokens);
            continue;
          }
          if (task >= heads) {
            run_grad_task(mlp_tasks[size_t(task - heads)], r, tokens);
            continue;
          }
          const int64_t b = task / Hkv, gk = task % Hkv, kvo = b * n * kw + gk * d;
          T* dkg = dk_of(l) + kvo;
          T* dvg = dv_of(l) + kvo;
          for (int64_t i = 0; i < n; ++i) {
            std::fill_n(dkg + i * kw, d, T(0));
            std::fill_n(dvg + i * kw, d, T(0));
          }
          for (int64_t h = gk * G; h < (gk + 1) * G; ++h) {
            const int64_t off = b * n * qw + h * d, bh = b * H + h;
            const T* dlocal = W.dmixed.data() + off;
            if (mem) {
              // Gate mix: dmem = s dO, dlocal = (1 - s) dO, dbeta = s (1 - s) sum dO (mem - local)
              const T s = ops::sigmoid(m.at(o.beta)[h]);
              double acc = 0;
              for (int64_t i = 0; i < n; ++i) {
                const T* go = W.dmixed.data() + off + i * qw;
                const T* mr = A.mem.data() + off + i * qw;
                const T* lr = A.local.data() + off + i * qw;
                T* dmr = W.dmem.data() + off + i * qw;
                T* dlr = W.dlocal.data() + off + i * qw;
                T row = 0;
#pragma omp simd reduction(+ : row)
                for (int64_t j = 0; j < d; ++j) {
                  dmr[j] = s * go[j];
                  dlr[j] = (T(1) - s) * go[j];
                  row += go[j] * (mr[j] - lr[j]);
                }
                acc += double(row);
              }
              W.dbeta[size_t((l * B + b) * H + h)] = T(acc) * s * (T(1) - s);
              dlocal = W.dlocal.data() + off;
            }
            ops::attention_head_backward(
                dq_l + off, dkg, dvg, dlocal, A.probs.data() + bh * n * n, A.q_rot.data() + off,
                A.k_rot.data() + kvo, A.v.data() + kvo, n, d, qw, kw, scratch, bf16_products(ctx));
            // RoPE's backward is the rotation by the opposite angle.
            ops::rope_apply_head(dq_l + off, n, qw, pos + b * n, ctx.rope, true);
          }
          ops::rope_apply_head(dkg, n, kw, pos + b * n, ctx.rope, true);
          if (mem) {
            const int64_t st = b * Hkv + gk;
            const T* Mg = state_before.M_layer(l) + st * d * d;
            const T* zg = state_before.z_layer(l) + st * d;
            T* dMg = dstate.M_layer(l) + st * d * d;
            T* dzg = dstate.z_layer(l) + st * d;
            // dM, dz arrive as gradients of the state after this segment's update.
            ops::memory_update_group_backward(dkg, dvg, dMg, dzg, A.k.data() + kvo,
                                              A.v.data() + kvo, Mg, zg, n, d, kw, delta, scratch,
                                              bf16_products(ctx));
            for (int64_t h = gk * G; h < (gk + 1) * G; ++h) {
              const int64_t off = b * n * qw + h * d;
              ops::memory_retrieve_head_backward(dq_l + off, dMg, dzg, W.dmem.data() + off,
                                                 A.mem.data() + off, A.sq.data() + off,
                                                 A.den.data() + (b * H + h) * n, A.q.data() + off,
                                                 Mg, zg, n, d, qw, scratch, bf16_products(ctx));
            }
          }
        }
      }
      // Projections a -> q, k, v and the input RMSNorm, by rows: dh becomes the gradient of
      // this layer's input.
      if (rows > 0) {
        T* da = W.da.data() + r0 * D;
        back(o.wq, da, dq_of(l), qw, D, false, t_dq, r0, r1);
        back(o.wk, da, dk_of(l), kw, D, true, t_dk, r0, r1);
        back(o.wv, da, dv_of(l), kw, D, true, t_dv, r0, r1);
        T* dh = W.dh.data() + r0 * D;
        std::copy_n(W.dxm.data() + r0 * D, rows * D, dh);
        ops::rmsnorm_backward(dh, (T*)nullptr, da, A.x_in.data() + r0 * D, A.rstd_in.data() + r0,
                              m.at(o.in_norm), rows, D, true);
      }
    }
#pragma omp barrier
    {
      const auto& tasks = after_mlp[0];
#pragma omp for schedule(dynamic, 1)
      for (size_t i = 0; i < tasks.size(); ++i) run_grad_task(tasks[i], r, tokens);
    }
  }
  if (mem)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h) {
        T sum = 0;
        for (int64_t b = 0; b < B; ++b) sum += W.dbeta[size_t((l * B + b) * H + h)];
        grads[m.layout.layers[size_t(l)].beta + h] += sum;
      }
}

}  // namespace

template <class T>
void forward_chunk(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                   int64_t batch, int64_t n, MemoryState<T>& state, SegmentActs<T>& acts,
                   KVCache<T>* cache, bool compute_logits, const PackedWeights* packed) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, V = c.vocab_size, r = batch * n;
  const int64_t p0 = cache ? cache->pos : 0;
  if (n <= 0) throw Error("forward_chunk: empty chunk");
  if (p0 + n > c.segment_length)
    throw Error("forward_chunk: chunk of " + std::to_string(n) + " tokens at position " +
                std::to_string(p0) + " overruns the segment length " +
                std::to_string(c.segment_length));
  if (cache && batch != 1) throw Error("forward_chunk: a streaming cache holds one sequence");
  packed = weight_packs(m, ctx, packed, "forward_chunk");
  if (c.use_memory && state.batch != batch)
    throw Error("forward_chunk: memory state has batch " + std::to_string(state.batch) +
                ", chunk has " + std::to_string(batch));
  for (int64_t i = 0; i < r; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (size " +
                  std::to_string(V) + ")");

  acts.batch = batch;
  acts.n = n;
  acts.layers.resize(size_t(c.num_layers));
  resize(acts.positions, r);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < n; ++i) acts.positions[size_t(b * n + i)] = int32_t(p0 + i);

  const bool segment_full = cache && p0 + n == cache->capacity;
  if (use_fast_path(ctx, r)) {
    forward_fast(m, ctx, tokens, batch, n, state, acts, cache, compute_logits, p0,
                 cache ? segment_full : true, packed);
    if (cache) cache->pos = segment_full ? 0 : p0 + n;
    return;
  }

  std::vector<T>& h = acts.work.h;
  resize(h, r * D);
  embed_rows(m, tokens, 0, r, h.data());

  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerActs<T>& A = acts.layers[size_t(l)];
    KVSlot<T> kv;
    if (cache) {
      kv = {cache->k[size_t(l)].data(), cache->k_rot[size_t(l)].data(), cache->v[size_t(l)].data(),
            cache->capacity, p0};
    } else {
      resize(A.k, r * c.kv_width());
      resize(A.k_rot, r * c.kv_width());
      resize(A.v, r * c.kv_width());
      kv = {A.k.data(), A.k_rot.data(), A.v.data(), n, 0};
    }
    T* M = c.use_memory ? state.M_layer(l) : nullptr;
    T* z = c.use_memory ? state.z_layer(l) : nullptr;
    layer_forward_reference(m, ctx, l, h.data(), A, acts.positions.data(), batch, n, kv, M, z,
                            cache ? segment_full : true, packed);
  }
  if (cache) cache->pos = segment_full ? 0 : p0 + n;

  resize(acts.h_final, r * D);
  resize(acts.rstd_final, r);
  resize(acts.f, r * D);
  std::copy_n(h.data(), r * D, acts.h_final.data());
  ops::rmsnorm_forward(acts.f.data(), acts.rstd_final.data(), h.data(), m.at(m.layout.final_norm),
                       r, D, c.rms_norm_eps);
  if (compute_logits) {
    resize(acts.logits, r * V);
    project(m, ctx, packed, m.layout.lm_head, -1, acts.logits.data(), acts.f.data(), r, D, V);
  }
}

template <class T>
void head_logits(const Model<T>& m, const ForwardContext<T>& ctx, const T* f, int64_t rows,
                 T* logits, const PackedWeights* packed) {
  packed = weight_packs(m, ctx, packed, "head_logits");
  project(m, ctx, packed, m.layout.lm_head, -1, logits, f, rows, m.config.hidden_size,
          m.config.vocab_size);
}

template <class T>
void fold_cache_into_memory(const Model<T>& m, KVCache<T>& cache, MemoryState<T>& state,
                            Precision precision) {
  const ModelConfig& c = m.config;
  if (cache.pos == 0) return;
  if (c.use_memory)
    for (int64_t l = 0; l < c.num_layers; ++l)
      ops::memory_update_forward(
          state.M_layer(l), state.z_layer(l), cache.k[size_t(l)].data(), cache.v[size_t(l)].data(),
          memory_shape<T>(c, 1, cache.pos, cache.capacity), c.memory_update == MemoryUpdate::Delta,
          std::is_same_v<T, float> && precision == Precision::BF16);
  cache.pos = 0;
}

template <class T>
void backward_segment(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                      const SegmentActs<T>& acts, const T* dlogits,
                      const MemoryState<T>& state_before, MemoryState<T>& dstate, T* grads,
                      const PackedWeights* packed, const T* moe_aux_grad) {
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, V = c.vocab_size, B = acts.batch, n = acts.n, r = B * n;
  require_float_weights(m, "the backward");
  if (use_fast_path(ctx, r)) {
    backward_fast(m, ctx, tokens, acts, dlogits, state_before, dstate, grads, packed, moe_aux_grad);
    return;
  }
  std::vector<T> df(size_t(r * D)), dh(size_t(r * D));
  linear_back(ctx, df.data(), grads + m.layout.lm_head, (T*)nullptr, dlogits, acts.f.data(),
              m.at(m.layout.lm_head), r, D, V, false);
  ops::rmsnorm_backward(dh.data(), grads + m.layout.final_norm, df.data(), acts.h_final.data(),
                        acts.rstd_final.data(), m.at(m.layout.final_norm), r, D, false);
  LayerGrads<T> scratch;
  for (int64_t l = c.num_layers - 1; l >= 0; --l) {
    const bool mem = c.use_memory;
    layer_backward_reference(m, ctx, l, dh.data(), acts.layers[size_t(l)], acts.positions.data(), B,
                             n, mem ? state_before.M_layer(l) : nullptr,
                             mem ? state_before.z_layer(l) : nullptr,
                             mem ? dstate.M_layer(l) : nullptr, mem ? dstate.z_layer(l) : nullptr,
                             grads, scratch, moe_aux_grad);
  }
  T* dE = grads + m.layout.embed;
  // Serial over rows: two rows may hold the same token.
  for (int64_t i = 0; i < r; ++i) {
    T* row = dE + int64_t(tokens[i]) * D;
    const T* src = dh.data() + i * D;
    for (int64_t j = 0; j < D; ++j) row[j] += src[j];
  }
}

#define INFINI_INSTANTIATE(T)                                                                     \
  template void forward_chunk<T>(const Model<T>&, const ForwardContext<T>&, const int32_t*,       \
                                 int64_t, int64_t, MemoryState<T>&, SegmentActs<T>&, KVCache<T>*, \
                                 bool, const PackedWeights*);                                     \
  template void fold_cache_into_memory<T>(const Model<T>&, KVCache<T>&, MemoryState<T>&,          \
                                          Precision);                                             \
  template void head_logits<T>(const Model<T>&, const ForwardContext<T>&, const T*, int64_t, T*,  \
                               const PackedWeights*);                                             \
  template void backward_segment<T>(const Model<T>&, const ForwardContext<T>&, const int32_t*,    \
                                    const SegmentActs<T>&, const T*, const MemoryState<T>&,       \
                                    MemoryState<T>&, T*, const PackedWeights*, const T*);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::model

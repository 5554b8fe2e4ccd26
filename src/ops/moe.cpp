#include "ops/moe.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <type_traits>

#include "core/error.hpp"
#include "ops/activation.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/gemm.hpp"

namespace infini::ops {

namespace {

// c[m, n] = a[m, kk] op(W) (+ beta c), op(W) = W^T (`trans_w`, the forward's x W^T) or W (the
// backward's dy W); W has leading dimension ldw. From the packed op(W) when there is one.
// `which` picks the weight's packed copies (gate, up or down) out of `packs`.
template <class T>
void weight_gemm(bool trans_w, int64_t m, int64_t n, int64_t kk, const T* a, const T* w,
                 int64_t ldw, const MoeExpertPacks* packs, int which, T beta, T* c) {
  if constexpr (std::is_same_v<T, float>) {
    if (packs && packs->bf16) {
      const PackedBf16* p = which == 0 ? packs->gate_bf16 : which == 1 ? packs->up_bf16
                                                                       : packs->down_bf16;
      if (p)
        bf16_gemm_packed(m, n, kk, 1.0f, a, kk, *p, beta, c, n);
      else
        bf16_gemm(false, trans_w, m, n, kk, 1.0f, a, kk, w, ldw, beta, c, n);
      return;
    }
    const PackedMatrix* p = !packs        ? nullptr
                            : which == 0 ? packs->gate
                            : which == 1 ? packs->up
                                         : packs->down;
    if (p && gemm_backend() == GemmBackend::Native) {
      gemm_packed(false, m, n, kk, 1.0f, a, kk, *p, beta, c, n);
      return;
    }
  }
  gemm<T>(false, trans_w, m, n, kk, T(1), a, kk, w, ldw, beta, c, n);
}

// dW (+=) dY^T X [out, in] over n rows, with bf16 inputs when packs say so.
template <class T>
void weight_grad(int64_t out, int64_t in, int64_t n, const T* dy, const T* x,
                 const MoeExpertPacks* packs, T* dw) {
  if (!dw) return;
  if constexpr (std::is_same_v<T, float>) {
    if (packs && packs->bf16) {
      bf16_gemm(true, false, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
      return;
    }
  }
  gemm<T>(true, false, out, in, n, T(1), dy, out, x, in, T(1), dw, in);
}

enum : int { kGate = 0, kUp = 1, kDown = 2 };

}  // namespace

template <class T>
void moe_routing_resize(MoeRouting<T>& r, int64_t rows, int64_t experts, int64_t k) {
  if (experts < 1 || experts > INT32_MAX)
    throw Error("moe: the number of experts must be at least 1, got " + std::to_string(experts));
  if (k < 1 || k > experts)
    throw Error("moe: num_experts_per_tok must be between 1 and num_experts (" +
                std::to_string(experts) + "), got " + std::to_string(k));
  if (rows < 0 || rows * k > INT32_MAX)
    throw Error("moe: bad number of router rows " + std::to_string(rows));
  r.rows = rows;
  r.experts = experts;
  r.k = k;
  r.probs.resize(size_t(rows * experts));
  r.idx.resize(size_t(rows * k));
  r.weight.resize(size_t(rows * k));
  r.begin.assign(size_t(experts + 1), 0);
  r.order.resize(size_t(rows * k));
  r.pos.resize(size_t(rows * k));
}

template <class T>
void moe_route_rows(MoeRouting<T>& r, const T* logits, int64_t r0, int64_t r1,
                    bool norm_topk_prob) {
  const int64_t E = r.experts, k = r.k;
  for (int64_t row = r0; row < r1; ++row) {
    const T* l = logits + row * E;
    T* p = r.probs.data() + row * E;
    T mx = l[0];
    for (int64_t e = 1; e < E; ++e) mx = l[e] > mx ? l[e] : mx;
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = std::exp(l[e] - mx);
      sum += double(p[e]);
    }
    for (int64_t e = 0; e < E; ++e) p[e] = T(double(p[e]) / sum);

    // Top-k by insertion into a list kept in descending order. An expert moves ahead of one
    // already listed only when its probability is strictly larger, so ties keep the lower index
    // first.
    int32_t* id = r.idx.data() + row * k;
    int64_t n = 0;
    for (int64_t e = 0; e < E; ++e) {
      if (n == k && !(p[e] > p[id[k - 1]])) continue;
      int64_t i = n < k ? n++ : k - 1;
      for (; i > 0 && p[e] > p[id[i - 1]]; --i) id[i] = id[i - 1];
      id[i] = int32_t(e);
    }
    T* w = r.weight.data() + row * k;
    double s = 0;
    for (int64_t j = 0; j < k; ++j) {
      w[j] = p[id[j]];
      s += double(w[j]);
    }
    if (norm_topk_prob)
      for (int64_t j = 0; j < k; ++j) w[j] = T(double(w[j]) / s);
  }
}

template <class T>
void moe_group(MoeRouting<T>& r) {
  const int64_t E = r.experts, A = r.assignments();
  std::fill(r.begin.begin(), r.begin.end(), 0);
  for (int64_t a = 0; a < A; ++a) ++r.begin[size_t(r.idx[size_t(a)] + 1)];
  for (int64_t e = 0; e < E; ++e) r.begin[size_t(e + 1)] += r.begin[size_t(e)];
  std::vector<int64_t> next(r.begin.begin(), r.begin.end() - 1);
  for (int64_t a = 0; a < A; ++a) {  // a ascending: rows ascending within an expert
    const int64_t p = next[size_t(r.idx[size_t(a)])]++;
    r.order[size_t(p)] = int32_t(a);
    r.pos[size_t(a)] = int32_t(p);
  }
}

template <class T>
void moe_route_backward_rows(const MoeRouting<T>& r, const T* dweight, const T* dprobs, T* dlogits,
                             int64_t r0, int64_t r1, bool norm_topk_prob) {
  const int64_t E = r.experts, k = r.k;
  for (int64_t row = r0; row < r1; ++row) {
    const T* p = r.probs.data() + row * E;
    const int32_t* id = r.idx.data() + row * k;
    const T* g = dweight + row * k;
    const T* w = r.weight.data() + row * k;
    T* dl = dlogits + row * E;
    // dl = dL/dp first: the aux-loss part, then the selected experts' part. With the
    // renormalisation w_j = p_j / S, dL/dp_m = (g_m - sum_j g_j w_j) / S.
    for (int64_t e = 0; e < E; ++e) dl[e] = dprobs ? dprobs[row * E + e] : T(0);
    if (norm_topk_prob) {
      double S = 0, gw = 0;
      for (int64_t j = 0; j < k; ++j) {
        S += double(p[id[j]]);
        gw += double(g[j]) * double(w[j]);
      }
      for (int64_t j = 0; j < k; ++j) dl[id[j]] += T((double(g[j]) - gw) / S);
    } else {
      for (int64_t j = 0; j < k; ++j) dl[id[j]] += g[j];
    }
    // Softmax: dlogits_e = p_e (dp_e - sum_e' p_e' dp_e').
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += double(p[e]) * double(dl[e]);
    for (int64_t e = 0; e < E; ++e) dl[e] = p[e] * (dl[e] - T(dot));
  }
}

template <class T>
void moe_acts_resize(MoeExpertActs<T>& a, int64_t assignments, int64_t D, int64_t Fm) {
  a.xg.resize(size_t(assignments * D));
  a.gate.resize(size_t(assignments * Fm));
  a.up.resize(size_t(assignments * Fm));
  a.hmid.resize(size_t(assignments * Fm));
  a.out.resize(size_t(assignments * D));
}

template <class T>
void moe_expert_forward(int64_t e, const MoeRouting<T>& r, const T* x, int64_t D, int64_t Fm,
                        const T* w_gate, const T* w_up, const T* w_down, MoeExpertActs<T>& acts,
                        const MoeExpertPacks* packs) {
  const int64_t p0 = r.begin[size_t(e)], n = r.count(e);
  if (n == 0) return;
  T* xg = acts.xg.data() + p0 * D;
  for (int64_t i = 0; i < n; ++i) {
    const T* src = x + int64_t(r.order[size_t(p0 + i)]) / r.k * D;
    std::copy(src, src + D, xg + i * D);
  }
  T* gate = acts.gate.data() + p0 * Fm;
  T* up = acts.up.data() + p0 * Fm;
  T* hmid = acts.hmid.data() + p0 * Fm;
  weight_gemm<T>(true, n, Fm, D, xg, w_gate, D, packs, kGate, T(0), gate);
  weight_gemm<T>(true, n, Fm, D, xg, w_up, D, packs, kUp, T(0), up);
  swiglu_forward(hmid, gate, up, n * Fm);
  weight_gemm<T>(true, n, D, Fm, hmid, w_down, Fm, packs, kDown, T(0), acts.out.data() + p0 * D);
}

template <class T>
void moe_combine_rows(const MoeRouting<T>& r, const MoeExpertActs<T>& acts, int64_t D, T* y,
                      int64_t r0, int64_t r1) {
  const int64_t k = r.k;
  for (int64_t row = r0; row < r1; ++row) {
    T* yr = y + row * D;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t a = row * k + j;
      const T w = r.weight[size_t(a)];
      const T* o = acts.out.data() + int64_t(r.pos[size_t(a)]) * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) yr[d] += w * o[d];
    }
  }
}

template <class T>
int64_t moe_backward_scratch_size(const MoeRouting<T>& r, int64_t e, int64_t Fm) {
  return r.count(e) * 3 * Fm;
}

template <class T>
int64_t moe_backward_scratch_size(const MoeRouting<T>& r, int64_t Fm) {
  int64_t most = 0;
  for (int64_t e = 0; e < r.experts; ++e) most = std::max(most, r.count(e));
  return most * 3 * Fm;
}

template <class T>
void moe_expert_backward(int64_t e, const MoeRouting<T>& r, const MoeExpertActs<T>& acts,
                         const T* dy, int64_t D, int64_t Fm, const T* w_gate, const T* w_up,
                         const T* w_down, T* dw_gate, T* dw_up, T* dw_down, T* dweight, T* dxg,
                         T* scratch, const MoeExpertPacks* packs) {
  const int64_t p0 = r.begin[size_t(e)], n = r.count(e);
  if (n == 0) return;
  const T* xg = acts.xg.data() + p0 * D;
  const T* gate = acts.gate.data() + p0 * Fm;
  const T* up = acts.up.data() + p0 * Fm;
  const T* hmid = acts.hmid.data() + p0 * Fm;
  // dout = weight * dy[row] lives in dxg's rows until dxg itself is written, last.
  T* dout = dxg + p0 * D;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = r.order[size_t(p0 + i)];
    const T* g = dy + a / r.k * D;
    const T* o = acts.out.data() + (p0 + i) * D;
    if (dweight) {
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += double(g[d]) * double(o[d]);
      dweight[a] = T(s);
    }
    const T w = r.weight[size_t(a)];
    T* dr = dout + i * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dr[d] = w * g[d];
  }
  T* dh = scratch;
  T* dgate = scratch + n * Fm;
  T* dup = scratch + 2 * n * Fm;
  weight_gemm<T>(false, n, Fm, D, dout, w_down, Fm, packs, kDown, T(0), dh);
  weight_grad<T>(D, Fm, n, dout, hmid, packs, dw_down);
  swiglu_backward(dgate, dup, dh, gate, up, n * Fm);
  weight_grad<T>(Fm, D, n, dgate, xg, packs, dw_gate);
  weight_grad<T>(Fm, D, n, dup, xg, packs, dw_up);
  weight_gemm<T>(false, n, D, Fm, dgate, w_gate, D, packs, kGate, T(0), dout);
  weight_gemm<T>(false, n, D, Fm, dup, w_up, D, packs, kUp, T(1), dout);
}

template <class T>
void moe_scatter_dx_rows(const MoeRouting<T>& r, const T* dxg, int64_t D, T* dx, int64_t r0,
                         int64_t r1) {
  const int64_t k = r.k;
  for (int64_t row = r0; row < r1; ++row) {
    T* dr = dx + row * D;
    for (int64_t j = 0; j < k; ++j) {
      const T* g = dxg + int64_t(r.pos[size_t(row * k + j)]) * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dr[d] += g[d];
    }
  }
}

template <class T>
void MoeRouterPool::add(const MoeRouting<T>& r) {
  const int64_t E = r.experts;
  if (count.empty()) {
    count.assign(size_t(E), 0.0);
    prob_sum.assign(size_t(E), 0.0);
  } else if (int64_t(count.size()) != E) {
    throw Error("moe aux loss: layers with " + std::to_string(count.size()) + " and " +
                std::to_string(E) + " experts cannot be pooled");
  }
  rows += r.rows;
  for (int64_t a = 0; a < r.assignments(); ++a) count[size_t(r.idx[size_t(a)])] += 1.0;
  for (int64_t t = 0; t < r.rows; ++t)
    for (int64_t e = 0; e < E; ++e) prob_sum[size_t(e)] += double(r.probs[size_t(t * E + e)]);
}

double MoeRouterPool::aux_loss(double coef) const {
  if (rows == 0) return 0.0;
  double s = 0;
  for (size_t e = 0; e < count.size(); ++e) s += count[e] * prob_sum[e];
  return coef * double(count.size()) * s / (double(rows) * double(rows));
}

std::vector<double> MoeRouterPool::aux_grad(double coef, double scale) const {
  if (rows == 0) return {};
  std::vector<double> g(count.size());
  for (size_t e = 0; e < count.size(); ++e)
    g[e] = scale * coef * double(count.size()) * count[e] / (double(rows) * double(rows));
  return g;
}

template <class T>
double moe_aux_loss(const std::vector<const MoeRouting<T>*>& layers, double coef) {
  MoeRouterPool pool;
  for (const MoeRouting<T>* l : layers) pool.add(*l);
  return pool.aux_loss(coef);
}

template <class T>
void moe_aux_loss_backward(const std::vector<const MoeRouting<T>*>& layers, double coef, T scale,
                           const std::vector<T*>& dprobs) {
  if (dprobs.size() != layers.size())
    throw Error("moe aux loss: " + std::to_string(layers.size()) + " layers but " +
                std::to_string(dprobs.size()) + " gradients");
  MoeRouterPool pool;
  for (const MoeRouting<T>* l : layers) pool.add(*l);
  const std::vector<double> g = pool.aux_grad(coef, double(scale));
  const int64_t E = int64_t(g.size());
  for (size_t l = 0; l < layers.size(); ++l)
    for (int64_t t = 0; t < layers[l]->rows; ++t)
      for (int64_t e = 0; e < E; ++e) dprobs[l][t * E + e] += T(g[size_t(e)]);
}

MoeLoad moe_load(const std::vector<int64_t>& counts) {
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  if (total == 0) return {};
  const auto [lo, hi] = std::minmax_element(counts.begin(), counts.end());
  return {double(*hi) / double(total), double(*lo) / double(total)};
}

template <class T>
MoeLoad moe_load(const MoeRouting<T>& r) {
  if (r.rows == 0) return {};
  std::vector<int64_t> counts(size_t(r.experts));
  for (int64_t e = 0; e < r.experts; ++e) counts[size_t(e)] = r.count(e);
  return moe_load(counts);
}

template <class T>
void moe_mlp_reference_forward(T* y, const T* x, const T* logits, int64_t rows, int64_t D,
                               int64_t Fm, int64_t E, int64_t k, bool norm_topk_prob,
                               const T* const* w_gate, const T* const* w_up,
                               const T* const* w_down) {
  std::vector<double> p(static_cast<size_t>(E)), h(static_cast<size_t>(Fm)),
      acc(static_cast<size_t>(D));
  std::vector<int64_t> ids(static_cast<size_t>(E));
  for (int64_t t = 0; t < rows; ++t) {
    const T* l = logits + t * E;
    double mx = -INFINITY, sum = 0;
    for (int64_t e = 0; e < E; ++e) mx = std::max(mx, double(l[e]));
    for (int64_t e = 0; e < E; ++e) sum += p[size_t(e)] = std::exp(double(l[e]) - mx);
    for (double& v : p) v /= sum;
    std::iota(ids.begin(), ids.end(), int64_t(0));
    std::stable_sort(ids.begin(), ids.end(),
                     [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
    double wsum = 0;
    for (int64_t j = 0; j < k; ++j) wsum += p[size_t(ids[size_t(j)])];
    std::fill(acc.begin(), acc.end(), 0.0);
    const T* xt = x + t * D;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ids[size_t(j)];
      const double w = norm_topk_prob ? p[size_t(e)] / wsum : p[size_t(e)];
      for (int64_t f = 0; f < Fm; ++f) {
        double g = 0, u = 0;
        for (int64_t d = 0; d < D; ++d) {
          g += double(w_gate[e][f * D + d]) * double(xt[d]);
          u += double(w_up[e][f * D + d]) * double(xt[d]);
        }
        h[size_t(f)] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t f = 0; f < Fm; ++f) o += double(w_down[e][d * Fm + f]) * h[size_t(f)];
        acc[size_t(d)] += w * o;
      }
    }
    for (int64_t d = 0; d < D; ++d) y[t * D + d] = T(acc[size_t(d)]);
  }
}

#define INFINI_INSTANTIATE(T)                                                                     \
  template void moe_routing_resize<T>(MoeRouting<T>&, int64_t, int64_t, int64_t);                 \
  template void moe_route_rows<T>(MoeRouting<T>&, const T*, int64_t, int64_t, bool);              \
  template void moe_group<T>(MoeRouting<T>&);                                                     \
  template void moe_route_backward_rows<T>(const MoeRouting<T>&, const T*, const T*, T*, int64_t, \
                                           int64_t, bool);                                        \
  template void moe_acts_resize<T>(MoeExpertActs<T>&, int64_t, int64_t, int64_t);                 \
  template void moe_expert_forward<T>(int64_t, const MoeRouting<T>&, const T*, int64_t, int64_t,  \
                                      const T*, const T*, const T*, MoeExpertActs<T>&,            \
                                      const MoeExpertPacks*);                                     \
  template void moe_combine_rows<T>(const MoeRouting<T>&, const MoeExpertActs<T>&, int64_t, T*,   \
                                    int64_t, int64_t);                                            \
  template int64_t moe_backward_scratch_size<T>(const MoeRouting<T>&, int64_t, int64_t);          \
  template int64_t moe_backward_scratch_size<T>(const MoeRouting<T>&, int64_t);                   \
  template void moe_expert_backward<T>(int64_t, const MoeRouting<T>&, const MoeExpertActs<T>&,    \
                                       const T*, int64_t, int64_t, const T*, const T*, const T*,  \
                                       T*, T*, T*, T*, T*, T*, const MoeExpertPacks*);            \
  template void moe_scatter_dx_rows<T>(const MoeRouting<T>&, const T*, int64_t, T*, int64_t,      \
                                       int64_t);                                                  \
  template double moe_aux_loss<T>(const std::vector<const MoeRouting<T>*>&, double);              \
  template void moe_aux_loss_backward<T>(const std::vector<const MoeRouting<T>*>&, double, T,     \
                                         const std::vector<T*>&);                                 \
  template MoeLoad moe_load<T>(const MoeRouting<T>&);                                             \
  template void MoeRouterPool::add<T>(const MoeRouting<T>&);                                     \
  template void moe_mlp_reference_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t,   \
                                             int64_t, int64_t, bool, const T* const*,             \
                                             const T* const*, const T* const*);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::ops

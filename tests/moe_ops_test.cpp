// The mixture-of-experts building blocks (ops/moe.hpp): routing and its ties, the grouped
// expert compute against the plain per-token reference, the whole layer's backward (router,
// experts, load-balancing loss) against central finite differences in double, an expert with
// no token, and row splits that must not change a bit.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "core/error.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/gemm.hpp"
#include "ops/moe.hpp"
#include "ops/sgemm.hpp"
#include "util/gradcheck.hpp"
#include "util/precision_check.hpp"

using namespace infini;
using namespace infini::testing;

namespace {

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// One sparse layer: x [rows, D], router [E, D], experts' gate/up [E, Fm, D], down [E, D, Fm].
template <class T>
struct Layer {
  int64_t rows, D, Fm, E, k;
  std::vector<T> x, wr, wg, wu, wd;
  const T* gate(int64_t e) const { return wg.data() + e * Fm * D; }
  const T* up(int64_t e) const { return wu.data() + e * Fm * D; }
  const T* down(int64_t e) const { return wd.data() + e * D * Fm; }
};

Layer<double> make_layer(int64_t rows, int64_t D, int64_t Fm, int64_t E, int64_t k, uint64_t seed) {
  Layer<double> L{rows, D, Fm, E, k, {}, {}, {}, {}, {}};
  L.x = random_vec(size_t(rows * D), seed);
  L.wr = random_vec(size_t(E * D), seed + 1, 0.8);
  L.wg = random_vec(size_t(E * Fm * D), seed + 2, 0.5);
  L.wu = random_vec(size_t(E * Fm * D), seed + 3, 0.5);
  L.wd = random_vec(size_t(E * D * Fm), seed + 4, 0.5);
  return L;
}

template <class T>
Layer<T> cast_layer(const Layer<double>& L) {
  return {L.rows,       L.D,           L.Fm,          L.E,           L.k,
          cast<T>(L.x), cast<T>(L.wr), cast<T>(L.wg), cast<T>(L.wu), cast<T>(L.wd)};
}

template <class T>
struct LayerRun {
  ops::MoeRouting<T> r;
  ops::MoeExpertActs<T> acts;
  std::vector<T> logits, y;
};

// Row pieces [cuts[i], cuts[i+1]), as threads would share them.
using Cuts = std::vector<int64_t>;

template <class T>
void route(LayerRun<T>& run, int64_t rows, int64_t E, int64_t k, bool norm, const Cuts& cuts) {
  ops::moe_routing_resize(run.r, rows, E, k);
  for (size_t i = 0; i + 1 < cuts.size(); ++i)
    ops::moe_route_rows(run.r, run.logits.data(), cuts[i], cuts[i + 1], norm);
  ops::moe_group(run.r);
}

// The grouped forward of the whole layer. `no_weights` marks an expert whose weight pointers
// are passed as null (it must have no token).
template <class T>
void forward(const Layer<T>& L, bool norm, LayerRun<T>& run, const Cuts& cuts, bool router = true,
             int64_t no_weights = -1) {
  if (router) {
    run.logits.assign(size_t(L.rows * L.E), T(0));
    ops::gemm<T>(false, true, L.rows, L.E, L.D, T(1), L.x.data(), L.D, L.wr.data(), L.D, T(0),
                 run.logits.data(), L.E);
  }
  route(run, L.rows, L.E, L.k, norm, cuts);
  ops::moe_acts_resize(run.acts, run.r.assignments(), L.D, L.Fm);
  for (int64_t e = 0; e < L.E; ++e) {
    const bool null = e == no_weights;
    ops::moe_expert_forward(e, run.r, L.x.data(), L.D, L.Fm, null ? nullptr : L.gate(e),
                            null ? nullptr : L.up(e), null ? nullptr : L.down(e), run.acts);
  }
  run.y.assign(size_t(L.rows * L.D), T(0));
  for (size_t i = 0; i + 1 < cuts.size(); ++i)
    ops::moe_combine_rows(run.r, run.acts, L.D, run.y.data(), cuts[i], cuts[i + 1]);
}

template <class T>
struct Grads {
  std::vector<T> dx, dwr, dwg, dwu, dwd, dlogits;
};

// The grouped backward of the whole layer for dy; dprobs (may be null) adds a gradient w.r.t.
// the router probabilities.
template <class T>
Grads<T> backward(const Layer<T>& L, bool norm, const LayerRun<T>& run, const T* dy,
                  const T* dprobs, const Cuts& cuts, int64_t no_weights = -1) {
  const int64_t A = run.r.assignments();
  Grads<T> g;
  g.dx.assign(size_t(L.rows * L.D), T(0));
  g.dwr.assign(L.wr.size(), T(0));
  g.dwg.assign(L.wg.size(), T(0));
  g.dwu.assign(L.wu.size(), T(0));
  g.dwd.assign(L.wd.size(), T(0));
  g.dlogits.assign(size_t(L.rows * L.E), T(0));
  std::vector<T> dweight(size_t(A), T(-99)), dxg(size_t(A * L.D), T(-99));
  std::vector<T> scratch(size_t(ops::moe_backward_scratch_size(run.r, L.Fm)), T(-99));
  for (int64_t e = 0; e < L.E; ++e) {
    EXPECT_LE(ops::moe_backward_scratch_size(run.r, e, L.Fm), int64_t(scratch.size()));
    const bool null = e == no_weights;
    ops::moe_expert_backward(
        e, run.r, run.acts, dy, L.D, L.Fm, null ? nullptr : L.gate(e), null ? nullptr : L.up(e),
        null ? nullptr : L.down(e), g.dwg.data() + e * L.Fm * L.D, g.dwu.data() + e * L.Fm * L.D,
        g.dwd.data() + e * L.D * L.Fm, dweight.data(), dxg.data(), scratch.data());
  }
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    ops::moe_scatter_dx_rows(run.r, dxg.data(), L.D, g.dx.data(), cuts[i], cuts[i + 1]);
    ops::moe_route_backward_rows(run.r, dweight.data(), dprobs, g.dlogits.data(), cuts[i],
                                 cuts[i + 1], norm);
  }
  // The router's linear layer: logits = x W_r^T.
  ops::gemm<T>(true, false, L.E, L.D, L.rows, T(1), g.dlogits.data(), L.E, L.x.data(), L.D, T(1),
               g.dwr.data(), L.D);
  ops::gemm<T>(false, false, L.rows, L.D, L.E, T(1), g.dlogits.data(), L.E, L.wr.data(), L.D, T(1),
               g.dx.data(), L.D);
  return g;
}

// The smallest gap, over rows, between the k-th and the (k+1)-th largest router probability:
// the selection holds under perturbations much smaller than it.
template <class T>
double selection_gap(const ops::MoeRouting<T>& r) {
  if (r.k == r.experts) return INFINITY;
  double gap = INFINITY;
  for (int64_t t = 0; t < r.rows; ++t) {
    const double kth = double(r.probs[size_t(t * r.experts + r.idx[size_t(t * r.k + r.k - 1)])]);
    double next = -INFINITY;
    for (int64_t e = 0; e < r.experts; ++e) {
      bool chosen = false;
      for (int64_t j = 0; j < r.k; ++j) chosen |= r.idx[size_t(t * r.k + j)] == e;
      if (!chosen) next = std::max(next, double(r.probs[size_t(t * r.experts + e)]));
    }
    gap = std::min(gap, kth - next);
  }
  return gap;
}

std::vector<double> log_of(const std::vector<double>& p) {
  std::vector<double> l(p.size());
  for (size_t i = 0; i < p.size(); ++i) l[i] = std::log(p[i]);
  return l;
}

}  // namespace

TEST(MoeRouting, TiesGoToTheLowerIndex) {
  const int64_t E = 5;
  const std::vector<double> logits = {1,  3, 3,  0, 3,   //
                                      0,  0, 0,  0, 0,   //
                                      -1, 2, -1, 2, -1,  //
                                      4,  1, 4,  4, 1};
  const std::vector<std::vector<int32_t>> want3 = {{1, 2, 4}, {0, 1, 2}, {1, 3, 0}, {0, 2, 3}};
  const std::vector<std::vector<int32_t>> want2 = {{1, 2}, {0, 1}, {1, 3}, {0, 2}};
  for (int64_t k : {2, 3}) {
    const auto& want = k == 3 ? want3 : want2;
    auto check = [&](auto zero) {
      using T = decltype(zero);
      ops::MoeRouting<T> r;
      ops::moe_routing_resize(r, 4, E, k);
      const auto l = cast<T>(logits);
      ops::moe_route_rows(r, l.data(), 0, 4, false);
      for (int64_t t = 0; t < 4; ++t)
        for (int64_t j = 0; j < k; ++j)
          EXPECT_EQ(r.idx[size_t(t * k + j)], want[size_t(t)][size_t(j)])
              << "k " << k << " row " << t << " slot " << j;
    };
    check(0.0);
    check(0.0f);
  }
}

TEST(MoeRouting, WeightsWithAndWithoutNormTopkProb) {
  // probs 0.1, 0.2, 0.3, 0.4: top-2 is experts 3, 2.
  const auto logits = log_of({0.1, 0.2, 0.3, 0.4, 0.25, 0.25, 0.25, 0.25});
  for (bool norm : {false, true}) {
    ops::MoeRouting<double> r;
    ops::moe_routing_resize(r, 2, 4, 2);
    ops::moe_route_rows(r, logits.data(), 0, 2, norm);
    for (int e = 0; e < 4; ++e) EXPECT_NEAR(r.probs[size_t(e)], 0.1 * (e + 1), 1e-15);
    EXPECT_EQ(r.idx[0], 3);
    EXPECT_EQ(r.idx[1], 2);
    EXPECT_EQ(r.idx[2], 0);
    EXPECT_EQ(r.idx[3], 1);
    EXPECT_NEAR(r.weight[0], norm ? 4.0 / 7 : 0.4, 1e-15);
    EXPECT_NEAR(r.weight[1], norm ? 3.0 / 7 : 0.3, 1e-15);
    EXPECT_NEAR(r.weight[2], norm ? 0.5 : 0.25, 1e-15);
    EXPECT_NEAR(r.weight[3], norm ? 0.5 : 0.25, 1e-15);
  }
}

TEST(MoeRouting, GroupSortsByExpertAndLoadCountsIt) {
  const int64_t rows = 13, E = 5, k = 2;
  LayerRun<double> run;
  run.logits = random_vec(size_t(rows * E), 7, 2.0);
  route(run, rows, E, k, false, {0, rows});
  const auto& r = run.r;
  ASSERT_EQ(r.begin.front(), 0);
  ASSERT_EQ(r.begin.back(), rows * k);
  std::vector<int64_t> count(E, 0);
  for (int32_t e : r.idx) ++count[size_t(e)];
  double most = 0, least = 1;
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(r.count(e), count[size_t(e)]);
    for (int64_t p = r.begin[size_t(e)]; p < r.begin[size_t(e + 1)]; ++p) {
      const int32_t a = r.order[size_t(p)];
      EXPECT_EQ(r.idx[size_t(a)], e);
      EXPECT_EQ(r.pos[size_t(a)], p);
      if (p > r.begin[size_t(e)]) {
        EXPECT_LT(r.order[size_t(p - 1)] / k, a / k);
      }
    }
    most = std::max(most, double(count[size_t(e)]) / double(rows * k));
    least = std::min(least, double(count[size_t(e)]) / double(rows * k));
  }
  const ops::MoeLoad load = ops::moe_load(r);
  EXPECT_DOUBLE_EQ(load.max_fraction, most);
  EXPECT_DOUBLE_EQ(load.min_fraction, least);
  EXPECT_LT(least, most);  // the random logits are not balanced: the test sees both
}

TEST(MoeRouting, BadShapesThrow) {
  ops::MoeRouting<float> r;
  EXPECT_THROW(ops::moe_routing_resize(r, 4, 3, 4), Error);
  EXPECT_THROW(ops::moe_routing_resize(r, 4, 3, 0), Error);
  ops::MoeRouting<float> a, b;
  ops::moe_routing_resize(a, 2, 3, 1);
  ops::moe_routing_resize(b, 2, 4, 1);
  EXPECT_THROW(ops::moe_aux_loss<float>({&a, &b}, 0.01), Error);
}

template <class T>
void check_grouped_matches_reference(double tol) {
  const int64_t E = 6;
  for (bool norm : {false, true})
    for (int64_t k : {1, 3}) {
      const Layer<T> L = cast_layer<T>(make_layer(9, 8, 6, E, k, 11 + uint64_t(k)));
      LayerRun<T> run;
      forward(L, norm, run, {0, L.rows});
      std::vector<const T*> g(E), u(E), d(E);
      for (int64_t e = 0; e < E; ++e)
        g[size_t(e)] = L.gate(e), u[size_t(e)] = L.up(e), d[size_t(e)] = L.down(e);
      std::vector<T> ref(run.y.size(), T(-1));
      ops::moe_mlp_reference_forward(ref.data(), L.x.data(), run.logits.data(), L.rows, L.D, L.Fm,
                                     E, k, norm, g.data(), u.data(), d.data());
      EXPECT_LT(rel_err(to_double(run.y), to_double(ref)), tol) << "norm " << norm << " k " << k;
    }
}

TEST(MoeExperts, GroupedForwardMatchesReferenceDouble) {
  check_grouped_matches_reference<double>(1e-13);
}
TEST(MoeExperts, GroupedForwardMatchesReferenceFloat) {
  check_grouped_matches_reference<float>(2e-6);
}

// L = sum proj * y + aux_coef * aux(layer), as a function of x and every weight.
class MoeLayerGrad : public ::testing::TestWithParam<bool> {};

TEST_P(MoeLayerGrad, BackwardMatchesFiniteDifferences) {
  const bool norm = GetParam();
  const int64_t rows = 7, D = 6, Fm = 5, E = 5, k = 2;
  const double coef = 0.3;
  // A seed whose selection is far from ties (the selection is piecewise constant).
  Layer<double> L;
  LayerRun<double> run;
  uint64_t seed = 100;
  for (;; ++seed) {
    L = make_layer(rows, D, Fm, E, k, seed);
    forward(L, norm, run, {0, rows});
    if (selection_gap(run.r) > 1e-3) break;
  }
  const auto proj = random_vec(size_t(rows * D), seed + 50);
  auto f = [&] {
    forward(L, norm, run, {0, rows});
    return dot(proj, run.y.data()) + ops::moe_aux_loss<double>({&run.r}, coef);
  };
  const double f0 = f();
  std::vector<double> dprobs(size_t(rows * E), 0.0);
  ops::moe_aux_loss_backward<double>({&run.r}, coef, 1.0, {dprobs.data()});
  const Grads<double> g = backward(L, norm, run, proj.data(), dprobs.data(), {0, rows});
  EXPECT_LT(rel_err(g.dx, numeric_grad(f, L.x)), 1e-6);
  EXPECT_LT(rel_err(g.dwr, numeric_grad(f, L.wr)), 1e-6);
  EXPECT_LT(rel_err(g.dwg, numeric_grad(f, L.wg)), 1e-6);
  EXPECT_LT(rel_err(g.dwu, numeric_grad(f, L.wu)), 1e-6);
  EXPECT_LT(rel_err(g.dwd, numeric_grad(f, L.wd)), 1e-6);
  EXPECT_EQ(f(), f0);  // the finite differences put every entry back
  // Every expert took part, so every expert's gradient was exercised.
  for (int64_t e = 0; e < E; ++e) EXPECT_GT(run.r.count(e), 0) << "seed " << seed;
}
INSTANTIATE_TEST_SUITE_P(NormTopkProb, MoeLayerGrad, ::testing::Bool());

TEST(MoeAuxLoss, ValueByHand) {
  // Layer A: rows p = (.5 .3 .2), (.1 .6 .3); layer B: (.6 .2 .2). T' = 3,
  // P = (1.2, 1.1, 0.7) / 3.
  const auto la = log_of({.5, .3, .2, .1, .6, .3}), lb = log_of({.6, .2, .2});
  const double coef = 0.01;
  for (int64_t k : {1, 2}) {
    ops::MoeRouting<double> a, b;
    ops::moe_routing_resize(a, 2, 3, k);
    ops::moe_routing_resize(b, 1, 3, k);
    ops::moe_route_rows(a, la.data(), 0, 2, false);
    ops::moe_route_rows(b, lb.data(), 0, 1, false);
    // k = 1: picks 0, 1 | 0, f = (2, 1, 0) / 3. k = 2: {0,1}, {1,2} | {0,1} (tie -> 1),
    // f = (2, 3, 1) / 3.
    const double sum_fp = k == 1 ? (2 * 1.2 + 1 * 1.1) / 9 : (2 * 1.2 + 3 * 1.1 + 1 * 0.7) / 9;
    EXPECT_NEAR(ops::moe_aux_loss<double>({&a, &b}, coef), coef * 3 * sum_fp, 1e-15) << k;
  }
  EXPECT_EQ(ops::moe_aux_loss<double>({}, coef), 0.0);
}

TEST(MoeAuxLoss, GradientPooledOverLayersMatchesFiniteDifferences) {
  const int64_t E = 4, k = 2;
  const double coef = 0.1, scale = 0.5;
  LayerRun<double> a, b;
  uint64_t seed = 1;
  auto f = [&] {
    route(a, 5, E, k, false, {0, 5});
    route(b, 3, E, k, false, {0, 3});
    return scale * ops::moe_aux_loss<double>({&a.r, &b.r}, coef);
  };
  for (;; seed += 2) {
    a.logits = random_vec(5 * E, seed, 1.5);
    b.logits = random_vec(3 * E, seed + 1, 1.5);
    f();
    if (selection_gap(a.r) > 1e-3 && selection_gap(b.r) > 1e-3) break;
  }
  std::vector<double> pa(5 * E, 0.0), pb(3 * E, 0.0), ga(5 * E), gb(3 * E);
  ops::moe_aux_loss_backward<double>({&a.r, &b.r}, coef, scale, {pa.data(), pb.data()});
  const std::vector<double> zero(5 * k, 0.0);
  ops::moe_route_backward_rows(a.r, zero.data(), pa.data(), ga.data(), 0, 5, false);
  ops::moe_route_backward_rows(b.r, zero.data(), pb.data(), gb.data(), 0, 3, false);
  EXPECT_LT(rel_err(ga, numeric_grad(f, a.logits)), 1e-6);
  EXPECT_LT(rel_err(gb, numeric_grad(f, b.logits)), 1e-6);
  // dprobs is accumulated (+=).
  std::vector<double> pa2(5 * E, 1.0);
  ops::moe_aux_loss_backward<double>({&a.r, &b.r}, coef, scale, {pa2.data(), pb.data()});
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_DOUBLE_EQ(pa2[i], pa[i] + 1.0);
}

TEST(MoeExperts, AnExpertWithoutTokensCostsNothing) {
  const int64_t rows = 6, D = 5, Fm = 4, E = 4, k = 2, empty = 2;
  const Layer<double> base = make_layer(rows, D, Fm, E, k, 77);
  Layer<double> L = base;
  LayerRun<double> run;
  auto set_logits = [&] {
    run.logits = random_vec(size_t(rows * E), 78);
    for (int64_t t = 0; t < rows; ++t) run.logits[size_t(t * E + empty)] = -30;
  };
  set_logits();
  forward(L, false, run, {0, rows}, /*router=*/false, empty);
  ASSERT_EQ(run.r.count(empty), 0);
  EXPECT_EQ(ops::moe_load(run.r).min_fraction, 0.0);
  std::vector<const double*> g(E), u(E), d(E);
  for (int64_t e = 0; e < E; ++e)
    g[size_t(e)] = L.gate(e), u[size_t(e)] = L.up(e), d[size_t(e)] = L.down(e);
  std::vector<double> ref(run.y.size());
  ops::moe_mlp_reference_forward(ref.data(), L.x.data(), run.logits.data(), rows, D, Fm, E, k,
                                 false, g.data(), u.data(), d.data());
  EXPECT_LT(rel_err(run.y, ref), 1e-13);

  // Backward with the router's logits held fixed: the empty expert's weights (null) are never
  // read and its gradients are never written; the others' match finite differences.
  const auto proj = random_vec(size_t(rows * D), 79);
  Grads<double> grads =
      backward(L, false, run, proj.data(), (const double*)nullptr, {0, rows}, empty);
  auto f = [&] {
    forward(L, false, run, {0, rows}, false, empty);
    return dot(proj, run.y.data());
  };
  auto expert_dx = grads.dx;  // minus the router part (dlogits W_r)
  ops::gemm<double>(false, false, rows, D, E, -1.0, grads.dlogits.data(), E, L.wr.data(), D, 1.0,
                    expert_dx.data(), D);
  EXPECT_LT(rel_err(expert_dx, numeric_grad(f, L.x)), 1e-6);
  EXPECT_LT(rel_err(grads.dwg, numeric_grad(f, L.wg)), 1e-6);
  EXPECT_LT(rel_err(grads.dwd, numeric_grad(f, L.wd)), 1e-6);
  for (int64_t i = 0; i < Fm * D; ++i) {
    EXPECT_EQ(grads.dwg[size_t(empty * Fm * D + i)], 0.0);
    EXPECT_EQ(grads.dwd[size_t(empty * Fm * D + i)], 0.0);
  }
}

TEST(MoeExperts, RowPiecesGiveIdenticalResults) {
  const Layer<float> L = cast_layer<float>(make_layer(9, 8, 6, 6, 2, 31));
  const auto dy = cast<float>(random_vec(size_t(9 * 8), 32));
  const auto dprobs = cast<float>(random_vec(size_t(9 * 6), 33, 0.1));
  for (bool norm : {false, true}) {
    LayerRun<float> one, many;
    forward(L, norm, one, {0, 9});
    forward(L, norm, many, {0, 1, 4, 4, 5, 9});
    EXPECT_EQ(one.r.probs, many.r.probs);
    EXPECT_EQ(one.r.idx, many.r.idx);
    EXPECT_EQ(one.r.weight, many.r.weight);
    EXPECT_EQ(one.r.order, many.r.order);
    EXPECT_EQ(one.y, many.y);
    const auto g1 = backward(L, norm, one, dy.data(), dprobs.data(), {0, 9});
    const auto g2 = backward(L, norm, many, dy.data(), dprobs.data(), {0, 2, 3, 9});
    EXPECT_EQ(g1.dx, g2.dx);
    EXPECT_EQ(g1.dlogits, g2.dlogits);
    EXPECT_EQ(g1.dwr, g2.dwr);
    EXPECT_EQ(g1.dwg, g2.dwg);
  }
}

TEST(MoeExperts, PackedWeightsGiveTheSameResult) {
  if (!ops::sgemm_native_available() || ops::gemm_backend() != ops::GemmBackend::Native)
    GTEST_SKIP() << "the native GEMM is not in use";
  const int64_t rows = 20, D = 40, Fm = 24, E = 3, k = 2;
  const Layer<float> L = cast_layer<float>(make_layer(rows, D, Fm, E, k, 41));
  LayerRun<float> plain;
  forward(L, false, plain, {0, rows});
  const auto dy = cast<float>(random_vec(size_t(rows * D), 42));
  const Grads<float> g = backward(L, false, plain, dy.data(), (const float*)nullptr, {0, rows});

  LayerRun<float> packed = plain;
  std::fill(packed.acts.out.begin(), packed.acts.out.end(), 0.0f);
  std::fill(packed.acts.hmid.begin(), packed.acts.hmid.end(), 0.0f);
  std::vector<float> dxg(size_t(rows * k * D)), dweight(size_t(rows * k), 0.0f);
  std::vector<float> dwg(L.wg.size(), 0.0f), dwu(L.wu.size(), 0.0f), dwd(L.wd.size(), 0.0f);
  std::vector<float> scratch(size_t(ops::moe_backward_scratch_size(plain.r, Fm)));
  std::vector<float> dx(size_t(rows * D), 0.0f), dlogits(size_t(rows * E));
  for (int64_t e = 0; e < E; ++e) {
    ops::PackedMatrix fg, fu, fd, bg, bu, bd;
    ops::sgemm_pack(true, D, Fm, L.gate(e), D, fg);
    ops::sgemm_pack(true, D, Fm, L.up(e), D, fu);
    ops::sgemm_pack(true, Fm, D, L.down(e), Fm, fd);
    ops::sgemm_pack(false, Fm, D, L.gate(e), D, bg);
    ops::sgemm_pack(false, Fm, D, L.up(e), D, bu);
    ops::sgemm_pack(false, D, Fm, L.down(e), Fm, bd);
    const ops::MoeExpertPacks fwd{&fg, &fu, &fd}, bwd{&bg, &bu, &bd};
    ops::moe_expert_forward(e, packed.r, L.x.data(), D, Fm, L.gate(e), L.up(e), L.down(e),
                            packed.acts, &fwd);
    ops::moe_expert_backward(e, packed.r, packed.acts, dy.data(), D, Fm, L.gate(e), L.up(e),
                             L.down(e), dwg.data() + e * Fm * D, dwu.data() + e * Fm * D,
                             dwd.data() + e * D * Fm, dweight.data(), dxg.data(), scratch.data(),
                             &bwd);
  }
  EXPECT_EQ(packed.acts.hmid, plain.acts.hmid);
  EXPECT_EQ(packed.acts.out, plain.acts.out);
  ops::moe_scatter_dx_rows(packed.r, dxg.data(), D, dx.data(), 0, rows);
  ops::moe_route_backward_rows(packed.r, dweight.data(), (const float*)nullptr, dlogits.data(), 0,
                               rows, false);
  ops::gemm<float>(false, false, rows, D, E, 1.0f, dlogits.data(), E, L.wr.data(), D, 1.0f,
                   dx.data(), D);
  EXPECT_EQ(dx, g.dx);
  EXPECT_EQ(dwg, g.dwg);
  EXPECT_EQ(dwd, g.dwd);
}

// The way a model calls the blocks: one parallel region, each thread owning a contiguous share
// of rows, experts shared out, barriers between the phases. Equal to one thread, bit for bit.
TEST(MoeExperts, OneParallelRegionMatchesOneThread) {
  const int64_t rows = 23, D = 16, Fm = 12, E = 6, k = 2;
  const Layer<float> L = cast_layer<float>(make_layer(rows, D, Fm, E, k, 61));
  const auto dy = cast<float>(random_vec(size_t(rows * D), 62));
  LayerRun<float> one;
  forward(L, true, one, {0, rows});
  const Grads<float> g1 = backward(L, true, one, dy.data(), (const float*)nullptr, {0, rows});

  LayerRun<float> run;
  run.logits = one.logits;
  ops::moe_routing_resize(run.r, rows, E, k);
  std::vector<float> y(size_t(rows * D), 0.0f), dx(size_t(rows * D), 0.0f);
  std::vector<float> dweight(size_t(rows * k)), dxg(size_t(rows * k * D));
  std::vector<float> dlogits(size_t(rows * E)), dwg(L.wg.size(), 0.0f), dwu(L.wu.size(), 0.0f),
      dwd(L.wd.size(), 0.0f);
  std::vector<std::vector<float>> scratch(4);
#pragma omp parallel num_threads(4)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t r0 = rows * t / n, r1 = rows * (t + 1) / n;
    ops::moe_route_rows(run.r, run.logits.data(), r0, r1, true);
#pragma omp barrier
#pragma omp single
    {
      ops::moe_group(run.r);
      ops::moe_acts_resize(run.acts, run.r.assignments(), D, Fm);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t e = 0; e < E; ++e)
      ops::moe_expert_forward(e, run.r, L.x.data(), D, Fm, L.gate(e), L.up(e), L.down(e), run.acts);
    ops::moe_combine_rows(run.r, run.acts, D, y.data(), r0, r1);
    scratch[size_t(t)].resize(size_t(ops::moe_backward_scratch_size(run.r, Fm)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t e = 0; e < E; ++e)
      ops::moe_expert_backward(e, run.r, run.acts, dy.data(), D, Fm, L.gate(e), L.up(e), L.down(e),
                               dwg.data() + e * Fm * D, dwu.data() + e * Fm * D,
                               dwd.data() + e * D * Fm, dweight.data(), dxg.data(),
                               scratch[size_t(t)].data());
    ops::moe_scatter_dx_rows(run.r, dxg.data(), D, dx.data(), r0, r1);
    ops::moe_route_backward_rows(run.r, dweight.data(), (const float*)nullptr, dlogits.data(), r0,
                                 r1, true);
  }
  EXPECT_EQ(y, one.y);
  EXPECT_EQ(dlogits, g1.dlogits);
  EXPECT_EQ(dwg, g1.dwg);
  EXPECT_EQ(dwu, g1.dwu);
  EXPECT_EQ(dwd, g1.dwd);
  // g1.dx also holds the router's dlogits W_r; dx here is the experts' part alone.
  ops::gemm<float>(false, false, rows, D, E, 1.0f, dlogits.data(), E, L.wr.data(), D, 1.0f,
                   dx.data(), D);
  EXPECT_EQ(dx, g1.dx);
}

// Under bf16 (SPEC §8) every product of an expert takes bf16-rounded inputs into fp32 sums:
// the forward against float64 sums of the rounded inputs; from the packed bf16 weights and
// from the plain ones (rounded on the fly) the same bits where the CPU has AVX512-BF16; the
// backward near the fp32 one, and different from it (the rounding is used).
TEST(MoeExperts, Bf16ProductsTakeRoundedInputs) {
  const int64_t rows = 20, D = 40, Fm = 24, E = 3, k = 2;
  const Layer<float> L = cast_layer<float>(make_layer(rows, D, Fm, E, k, 51));
  LayerRun<float> fp32;
  forward(L, false, fp32, {0, rows});
  const auto dy = cast<float>(random_vec(size_t(rows * D), 52));
  const Grads<float> g32 = backward(L, false, fp32, dy.data(), (const float*)nullptr, {0, rows});
  const bool native = ops::bf16_native_available();

  struct Result {
    std::vector<float> gate, out, dxg, dwg, dwu, dwd;
  };
  auto run = [&](bool packed) {
    LayerRun<float> r = fp32;
    std::vector<float> dxg(size_t(rows * k * D)), dweight(size_t(rows * k));
    Result res{{}, {}, {}, std::vector<float>(L.wg.size()), std::vector<float>(L.wu.size()),
               std::vector<float>(L.wd.size())};
    std::vector<float> scratch(size_t(ops::moe_backward_scratch_size(r.r, Fm)));
    for (int64_t e = 0; e < E; ++e) {
      ops::PackedBf16 fg, fu, fd, bg, bu, bd;
      ops::MoeExpertPacks fwd, bwd;
      fwd.bf16 = bwd.bf16 = true;
      if (packed) {
        ops::bf16_pack(true, D, Fm, L.gate(e), D, fg);
        ops::bf16_pack(true, D, Fm, L.up(e), D, fu);
        ops::bf16_pack(true, Fm, D, L.down(e), Fm, fd);
        ops::bf16_pack(false, Fm, D, L.gate(e), D, bg);
        ops::bf16_pack(false, Fm, D, L.up(e), D, bu);
        ops::bf16_pack(false, D, Fm, L.down(e), Fm, bd);
        fwd.gate_bf16 = &fg, fwd.up_bf16 = &fu, fwd.down_bf16 = &fd;
        bwd.gate_bf16 = &bg, bwd.up_bf16 = &bu, bwd.down_bf16 = &bd;
      }
      ops::moe_expert_forward(e, r.r, L.x.data(), D, Fm, L.gate(e), L.up(e), L.down(e), r.acts,
                              &fwd);
      ops::moe_expert_backward(e, r.r, r.acts, dy.data(), D, Fm, L.gate(e), L.up(e), L.down(e),
                               res.dwg.data() + e * Fm * D, res.dwu.data() + e * Fm * D,
                               res.dwd.data() + e * D * Fm, dweight.data(), dxg.data(),
                               scratch.data(), &bwd);
    }
    res.gate = r.acts.gate;
    res.out = r.acts.out;
    res.dxg = dxg;
    // The forward against float64 sums of bf16-rounded inputs, expert by expert.
    double worst = 0, scale = 0;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t p = r.r.begin[size_t(e)]; p < r.r.begin[size_t(e + 1)]; ++p) {
        const float* xg = r.acts.xg.data() + p * D;
        for (int64_t f = 0; f < Fm; ++f) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d)
            s += double(ops::round_bf16(xg[d])) * double(ops::round_bf16(L.gate(e)[f * D + d]));
          worst = std::max(worst, std::abs(s - double(r.acts.gate[size_t(p * Fm + f)])));
          scale = std::max(scale, std::abs(s));
        }
        for (int64_t d = 0; d < D; ++d) {
          double s = 0;
          for (int64_t f = 0; f < Fm; ++f)
            s += double(ops::round_bf16(r.acts.hmid[size_t(p * Fm + f)])) *
                 double(ops::round_bf16(L.down(e)[d * Fm + f]));
          worst = std::max(worst, std::abs(s - double(r.acts.out[size_t(p * D + d)])));
        }
      }
    EXPECT_LT(worst, 1e-5 * scale) << (packed ? "packed" : "plain");
    return res;
  };
  const Result plain = run(false);
  if (native) {
    const Result packed = run(true);
    EXPECT_EQ(packed.gate, plain.gate);
    EXPECT_EQ(packed.out, plain.out);
    EXPECT_EQ(packed.dxg, plain.dxg);
    EXPECT_EQ(packed.dwg, plain.dwg);
    EXPECT_EQ(packed.dwd, plain.dwd);
  }
  EXPECT_NE(plain.out, fp32.acts.out);
  for (auto [got, want] : {std::pair{&plain.dwg, &g32.dwg}, std::pair{&plain.dwu, &g32.dwu},
                           std::pair{&plain.dwd, &g32.dwd}}) {
    EXPECT_NE(*got, *want);
    ASSERT_EQ(got->size(), want->size());
    EXPECT_GT(cosine(got->data(), want->data(), got->size()), 0.999);
  }
}

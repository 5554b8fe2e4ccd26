// Shared by the bf16 tests (issue #27): a float model's loss and gradient under a precision
// policy, the cosine similarity its accuracy bar is stated in, and the forced emulation.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "model/bptt.hpp"
#include "util/bf16_emulation.hpp"

namespace infini::testing {

// cos(a, b) over n values, summed in double.
template <class A, class B>
double cosine(const A* a, const B* b, size_t n) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < n; ++i) {
    dot += double(a[i]) * double(b[i]);
    na += double(a[i]) * double(a[i]);
    nb += double(b[i]) * double(b[i]);
  }
  return dot / std::sqrt(na * nb);
}

// EXPECT every parameter tensor of `layout` to have cos(got, want) >= bar; tensors whose `want`
// is all zeros (an expert no token chose) are skipped.
inline void expect_tensor_cosines(const model::ParamLayout& layout, const std::vector<double>& got,
                                  const std::vector<double>& want, double bar) {
  for (const model::ParamInfo& p : layout.params) {
    const double* w = want.data() + p.offset;
    bool zero = true;
    for (int64_t i = 0; i < p.numel && zero; ++i) zero = w[i] == 0;
    if (zero) continue;
    EXPECT_GE(cosine(got.data() + p.offset, w, size_t(p.numel)), bar) << p.name;
  }
}

struct LossAndGrad {
  double loss = 0;
  std::vector<double> grad;  // in the parameter layout
  bool packed = false;       // whether sequence_loss packed the weights
};

// sequence_loss of `tokens` [batch, T] with its gradient, under `precision`, on the plain layer
// code (`reference`) or the fused path with 2 threads, packing weights up to max_packed bytes.
inline LossAndGrad float_loss_and_grad(const model::Model<float>& m, const int32_t* tokens,
                                       int64_t batch, int64_t T, model::Precision precision,
                                       bool reference, int64_t max_packed) {
  model::ForwardContext<float> ctx(m.config);
  ctx.precision = precision;
  ctx.reference = reference;
  ctx.threads = reference ? 0 : 2;
  model::SequenceOptions o;
  o.max_packed_weight_bytes = max_packed;
  model::SequenceWorkspace<float> ws;
  std::vector<float> g(size_t(m.layout.total), 0.0f);
  LossAndGrad r;
  r.loss = model::sequence_loss<float>(m, ctx, tokens, batch, T, g.data(), o, ws).mean();
  r.grad.assign(g.begin(), g.end());
  r.packed = !ws.packed.empty();
  return r;
}

}  // namespace infini::testing

#include "model/packed_weights.hpp"

#include <vector>

#include "ops/gemm.hpp"

namespace infini::model {

const ops::PackedMatrix* PackedWeights::forward(int64_t offset) const {
  if (precision != Precision::FP32) return nullptr;
  const auto it = by_offset.find(offset);
  return it == by_offset.end() ? nullptr : &it->second.forward;
}

const ops::PackedMatrix* PackedWeights::backward(int64_t offset) const {
  if (precision != Precision::FP32) return nullptr;
  const auto it = by_offset.find(offset);
  return it == by_offset.end() || !it->second.has_backward ? nullptr : &it->second.backward;
}

const ops::PackedBf16* PackedWeights::forward_bf16(int64_t offset) const {
  if (precision != Precision::BF16) return nullptr;
  const auto it = by_offset.find(offset);
  return it == by_offset.end() ? nullptr : &it->second.forward_bf16;
}

const ops::PackedBf16* PackedWeights::backward_bf16(int64_t offset) const {
  if (precision != Precision::BF16) return nullptr;
  const auto it = by_offset.find(offset);
  return it == by_offset.end() || !it->second.has_backward ? nullptr : &it->second.backward_bf16;
}

void pack_weights(const Model<float>& m, bool backward, int64_t max_bytes, PackedWeights& out,
                  Precision precision) {
  const bool bf16 = precision == Precision::BF16;
  struct Weight {
    int64_t offset, out, in;
  };
  const ModelConfig& c = m.config;
  const int64_t D = c.hidden_size, F = c.intermediate_size, qw = c.q_width(), kw = c.kv_width();
  std::vector<Weight> list;
  const int64_t Fm = c.moe_intermediate_size, Fs = c.shared_expert_intermediate_size;
  for (const LayerOffsets& o : m.layout.layers) {
    list.push_back({o.wq, qw, D});
    list.push_back({o.wk, kw, D});
    list.push_back({o.wv, kw, D});
    list.push_back({o.wo, D, qw});
    // A sparse layer's experts and shared expert (the router and the shared gate are small
    // and multiplied unpacked).
    auto mlp = [&](const LayerOffsets::ExpertOffsets& e, int64_t width) {
      list.push_back({e.w_gate, width, D});
      list.push_back({e.w_up, width, D});
      list.push_back({e.w_down, D, width});
    };
    if (o.sparse) {
      mlp(o.shared, Fs);
      for (const auto& e : o.experts) mlp(e, Fm);
    } else {
      mlp({o.w_gate, o.w_up, o.w_down}, F);
    }
  }
  list.push_back({m.layout.lm_head, c.vocab_size, D});

  int64_t bytes = 0;  // about the weights' own size per orientation (padding aside)
  const int64_t value_bytes = bf16 ? 2 : int64_t(sizeof(float));
  for (const Weight& w : list) bytes += w.out * w.in * value_bytes * (backward ? 2 : 1);
  const bool native = bf16 ? ops::bf16_native_available()
                           : ops::gemm_backend() == ops::GemmBackend::Native;
  if (!native || bytes > max_bytes) {
    out.by_offset.clear();
    return;
  }
  // Create every entry first: the map must not change while threads fill it. Entries of
  // another model (other offsets) or precision are dropped.
  if (out.by_offset.size() != list.size() || out.precision != precision) out.by_offset.clear();
  out.precision = precision;
  for (const Weight& w : list) out.by_offset[w.offset].has_backward = backward;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < list.size(); ++i) {
    const Weight& w = list[i];
    PackedWeights::Entry& e = out.by_offset.at(w.offset);
    const float* W = m.at(w.offset);
    if (bf16) {
      ops::bf16_pack(true, w.in, w.out, W, w.in, e.forward_bf16);
      if (backward) ops::bf16_pack(false, w.out, w.in, W, w.in, e.backward_bf16);
    } else {
      ops::sgemm_pack(true, w.in, w.out, W, w.in, e.forward);
      if (backward) ops::sgemm_pack(false, w.out, w.in, W, w.in, e.backward);
    }
  }
}

}  // namespace infini::model

#include "model/packed_weights.hpp"

#include <algorithm>
#include <functional>
#include <memory>
#include <vector>

#include "core/error.hpp"
#include "io/safetensors.hpp"
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

std::vector<LinearWeight> linear_weights(const ModelConfig& c, const ParamLayout& layout) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, qw = c.q_width(), kw = c.kv_width();
  const int64_t Fm = c.moe_intermediate_size, Fs = c.shared_expert_intermediate_size;
  std::vector<LinearWeight> list;
  for (const LayerOffsets& o : layout.layers) {
    list.push_back({o.wq, qw, D});
    list.push_back({o.wk, kw, D});
    list.push_back({o.wv, kw, D});
    list.push_back({o.wo, D, qw});
    // A sparse layer's shared expert and experts (the router and the shared gate are small
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
  list.push_back({layout.lm_head, c.vocab_size, D});
  return list;
}

void pack_weights(const Model<float>& m, bool backward, int64_t max_bytes, PackedWeights& out,
                  Precision precision) {
  const bool bf16 = precision == Precision::BF16;
  if (!m.floats_complete()) {
    out.by_offset.clear();
    return;
  }
  const std::vector<LinearWeight> list = linear_weights(m.config, m.layout);

  int64_t bytes = 0;  // about the weights' own size per orientation (padding aside)
  const int64_t value_bytes = bf16 ? 2 : int64_t(sizeof(float));
  for (const LinearWeight& w : list) bytes += w.out * w.in * value_bytes * (backward ? 2 : 1);
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
  for (const LinearWeight& w : list) out.by_offset[w.offset].has_backward = backward;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < list.size(); ++i) {
    const LinearWeight& w = list[i];
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

bool bf16_resident_available() { return ops::bf16_native_available(); }

namespace {

// The bf16-resident model of config `c`: every linear weight is read by
// `read` (a parameter of the plain layout and where to put its float32 values), packed in
// bf16 and dropped; the embedding is read first and kept as bf16 rows when that loses nothing;
// the others are read into the model's weights.
Model<float> build_bf16_resident(
    const ModelConfig& c, const std::function<void(const ParamInfo&, float*)>& read) {
  if (!bf16_resident_available())
    throw Error("bf16-resident weights need the AVX512-BF16 kernel, which this CPU or build "
                "lacks (" + ops::bf16_backend_name() + ")");
  const ParamLayout plain = ParamLayout::build(c);
  const std::vector<LinearWeight> linear = linear_weights(c, plain);
  auto packs = std::make_shared<PackedWeights>();
  packs->precision = Precision::BF16;
  const auto embed_param =
      std::find_if(plain.params.begin(), plain.params.end(),
                   [&](const ParamInfo& p) { return p.offset == plain.embed; });
  if (embed_param == plain.params.end()) throw Error("build_bf16_resident: no embedding");
  std::vector<float> embedding(size_t(embed_param->numel));
  read(*embed_param, embedding.data());
  const bool embed_bf16 = std::all_of(embedding.begin(), embedding.end(),
                                      [](float x) { return ops::round_bf16(x) == x; });
  if (embed_bf16) {
    packs->embedding.resize(embedding.size());
    std::transform(embedding.begin(), embedding.end(), packs->embedding.begin(), ops::to_bf16);
  }
  // The tied LM head is the embedding: packed from the values read above; the embedding
  // itself stays in the float weights only when its bf16 rows would not be exact.
  std::vector<int64_t> apart;
  for (const LinearWeight& w : linear)
    if (w.offset != plain.embed) apart.push_back(w.offset);
  if (embed_bf16) apart.push_back(plain.embed);
  Model<float> m;
  m.config = c;
  int64_t kept = 0;
  m.layout = plain.with_last(apart, kept);
  m.weights.assign(size_t(kept), 0.0f);
  if (c.tie_word_embeddings)
    ops::bf16_pack(true, c.hidden_size, c.vocab_size, embedding.data(), c.hidden_size,
                   packs->by_offset[m.layout.lm_head].forward_bf16);
  if (!embed_bf16) std::copy(embedding.begin(), embedding.end(), m.at(m.layout.embed));
  std::vector<float>().swap(embedding);
  std::unordered_map<int64_t, const LinearWeight*> shape_of;  // plain offset -> its weight
  for (const LinearWeight& w : linear) shape_of[w.offset] = &w;
  std::vector<float> one;  // the float32 values of one linear weight
  for (size_t i = 0; i < plain.params.size(); ++i) {
    const ParamInfo& p = plain.params[i];
    const int64_t at = m.layout.params[i].offset;
    if (p.offset == plain.embed) continue;  // done above
    if (at < kept) {
      read(p, m.weights.data() + at);
      continue;
    }
    one.resize(size_t(p.numel));
    read(p, one.data());
    const LinearWeight& w = *shape_of.at(p.offset);
    ops::bf16_pack(true, w.in, w.out, one.data(), w.in, packs->by_offset[at].forward_bf16);
  }
  std::vector<float>().swap(one);
  m.bf16_weights = std::move(packs);
  return m;
}

}  // namespace

Model<float> make_bf16_resident(Model<float> m) {
  require_float_weights(m, "make_bf16_resident");
  // A model with all its floats has the plain layout, the one `read` is given offsets of.
  return build_bf16_resident(m.config, [&](const ParamInfo& p, float* dst) {
    std::copy_n(m.weights.data() + p.offset, p.numel, dst);
  });
}

Model<float> load_model_bf16_resident(const std::string& dir, const LoadOptions& opts) {
  const ModelConfig c = load_model_config(dir);
  const io::WeightStore store = io::WeightStore::open_dir(dir);
  check_weights(ParamLayout::build(c), store, dir, opts);
  return build_bf16_resident(
      c, [&](const ParamInfo& p, float* dst) { read_param(store, p, dir, opts, dst); });
}

namespace {
bool resident_for(Precision precision) {
  return precision == Precision::BF16 && bf16_resident_available();
}
}  // namespace

Model<float> load_inference_model(const std::string& dir, Precision precision,
                                  const LoadOptions& opts) {
  return resident_for(precision) ? load_model_bf16_resident(dir, opts) : load_model(dir, opts);
}

Model<float> to_inference_model(Model<float> m, Precision precision) {
  return resident_for(precision) ? make_bf16_resident(std::move(m)) : std::move(m);
}

}  // namespace infini::model

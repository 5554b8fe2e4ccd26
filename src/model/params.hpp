// The one registry of parameters: names, shapes and offsets into a single flat buffer.
// Load, save, zero-grad, the optimizer, gradient checks and all-reduce walk it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace infini::model {

// Router: the mixture-of-experts routing projections of a sparse layer (SPEC §7), mlp.gate
// [E, D] and mlp.shared_expert_gate [1, D]. Initialised like a Matrix, trained in their own
// optimizer group ("routers"); the experts' own projections are Matrix.
enum class ParamKind { Embedding, Matrix, Norm, Bias, Gate, Router };

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
  ParamKind kind = ParamKind::Matrix;
};

// Offsets of one layer's tensors in the flat buffer; -1 marks an absent tensor.
struct LayerOffsets {
  int64_t in_norm = -1, wq = -1, bq = -1, wk = -1, bk = -1, wv = -1, bv = -1, wo = -1;
  int64_t beta = -1, post_norm = -1;
  // Dense MLP (SPEC §2): gate/up [F, D], down [D, F]. All -1 in a sparse layer.
  int64_t w_gate = -1, w_up = -1, w_down = -1;
  // Sparse (mixture-of-experts) MLP, SPEC §7; only when `sparse`:
  //   router       mlp.gate.weight                 [E, D]   (ParamKind::Router)
  //   experts[e]   mlp.experts.{e}.{gate,up,down}_proj.weight   [Fm, D], [Fm, D], [D, Fm]
  //   shared       mlp.shared_expert.{gate,up,down}_proj.weight [Fs, D], [Fs, D], [D, Fs]
  //   shared_gate  mlp.shared_expert_gate.weight   [1, D]   (ParamKind::Router)
  bool sparse = false;
  int64_t router = -1, shared_gate = -1;
  struct ExpertOffsets {
    int64_t w_gate = -1, w_up = -1, w_down = -1;
  };
  ExpertOffsets shared;
  std::vector<ExpertOffsets> experts;  // num_experts entries in a sparse layer, else empty
};

struct ParamLayout {
  std::vector<ParamInfo> params;  // in the order they are stored and written
  int64_t total = 0;
  int64_t embed = -1, final_norm = -1, lm_head = -1;  // lm_head == embed when tied
  std::vector<LayerOffsets> layers;

  static ParamLayout build(const ModelConfig& c);
  const ParamInfo* find(const std::string& name) const;

  // The same parameters, names and order, with those at `apart` (offsets of this layout)
  // stored after all the others: [0, kept) holds the rest, each where it was relative to
  // the others, and [kept, total) the `apart` ones. Bf16 inference holds only [0, kept) in
  // float (model/packed_weights.hpp's make_bf16_resident).
  ParamLayout with_last(const std::vector<int64_t>& apart, int64_t& kept) const;
};

}  // namespace infini::model

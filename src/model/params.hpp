// The one registry of parameters: names, shapes and offsets into a single flat buffer.
// Load, save, zero-grad, the optimizer, gradient checks and all-reduce walk it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace infini::model {

enum class ParamKind { Embedding, Matrix, Norm, Bias, Gate };

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
  int64_t beta = -1, post_norm = -1, w_gate = -1, w_up = -1, w_down = -1;
};

struct ParamLayout {
  std::vector<ParamInfo> params;  // in the order they are stored and written
  int64_t total = 0;
  int64_t embed = -1, final_norm = -1, lm_head = -1;  // lm_head == embed when tied
  std::vector<LayerOffsets> layers;

  static ParamLayout build(const ModelConfig& c);
  const ParamInfo* find(const std::string& name) const;
};

}  // namespace infini::model

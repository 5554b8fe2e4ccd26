// The linear weights of a model packed for ops::gemm_packed (infini's AVX-512 GEMM), so that
// a training step packs each weight once instead of once per thread, segment and pass.
//
// Weights change at every optimizer step: a PackedWeights is valid only for the weights it
// was packed from. sequence_loss packs at the start of each call and passes the result down;
// nothing keeps it across calls.
#pragma once
#include <cstdint>
#include <unordered_map>

#include "model/model.hpp"
#include "model/precision.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/sgemm.hpp"

namespace infini::model {

struct PackedWeights {
  struct Entry {
    ops::PackedMatrix forward;   // W^T [in, out], for y = x W^T
    ops::PackedMatrix backward;  // W [out, in], for dx = dy W (only when packed for training)
    ops::PackedBf16 forward_bf16, backward_bf16;  // the same in bf16 (Precision::BF16)
    bool has_backward = false;
  };
  std::unordered_map<int64_t, Entry> by_offset;  // key: the weight's offset in the layout
  Precision precision = Precision::FP32;         // which of the copies are filled

  // The packed W^T / W of the weight at `offset`, or null when it was not packed (an empty
  // PackedWeights therefore acts as no packing at all).
  const ops::PackedMatrix* forward(int64_t offset) const;
  const ops::PackedMatrix* backward(int64_t offset) const;
  const ops::PackedBf16* forward_bf16(int64_t offset) const;
  const ops::PackedBf16* backward_bf16(int64_t offset) const;
  bool empty() const { return by_offset.empty(); }
};

// The default limit on the packed copies (SequenceOptions, SessionOptions and the evaluators).
constexpr int64_t kDefaultMaxPackedWeightBytes = int64_t(1) << 30;  // 1 GiB

// Packs every linear weight of `m` (q, k, v, o, gate, up, down of each layer and the LM head),
// W^T always and W too when `backward`, in fp32 or bf16 as `precision` says. Reuses the
// buffers of `out`. When the native kernel for that precision is not in use, or the packed
// copies would exceed max_bytes, `out` is left empty and the forward packs per call as before.
void pack_weights(const Model<float>& m, bool backward, int64_t max_bytes, PackedWeights& out,
                  Precision precision = Precision::FP32);

}  // namespace infini::model

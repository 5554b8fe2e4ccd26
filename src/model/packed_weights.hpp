// The linear weights of a model packed for ops::gemm_packed (infini's AVX-512 GEMM), so that
// a training step packs each weight once instead of once per thread, segment and pass.
//
// Weights change at every optimizer step: a PackedWeights is valid only for the weights it
// was packed from. sequence_loss packs at the start of each call and passes the result down;
// nothing keeps it across calls.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

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
  // A bf16-resident model's embedding [vocab, hidden] as rows of bf16, kept when every value of
  // it is a bf16 value (a BF16 checkpoint's always are), so that the lookup widens them to the
  // same floats; empty when the embedding stays in the model's float weights.
  std::vector<uint16_t> embedding;

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

// One linear weight pack_weights packs: its offset and shape [out, in].
struct LinearWeight {
  int64_t offset, out, in;
};
// Every linear weight of the layout a model of `c` has: q, k, v, o, the dense MLP or the
// shared expert and the experts, the LM head (not the routers: small, and kept fp32).
std::vector<LinearWeight> linear_weights(const ModelConfig& c, const ParamLayout& layout);

// Packs every linear weight of `m` (q, k, v, o, gate, up, down of each layer and the LM head),
// W^T always and W too when `backward`, in fp32 or bf16 as `precision` says. Reuses the
// buffers of `out`. When the native kernel for that precision is not in use, or the packed
// copies would exceed max_bytes, `out` is left empty and the forward packs per call as before.
// A bf16-resident model (make_bf16_resident) leaves `out` empty: it carries its own.
void pack_weights(const Model<float>& m, bool backward, int64_t max_bytes, PackedWeights& out,
                  Precision precision = Precision::FP32);

// Inference in bf16 that keeps the weights in bf16 (issue #27): the model's linear weights
// (experts included) become bf16 packed copies (Model::bf16_weights) and their float values
// are dropped, so those weights take half their float32 memory. The embedding (also the LM
// head's source when tied) is held in bf16 too when all its values are bf16 values (as a BF16
// checkpoint's are: then nothing changes but its size), else in float32; norms, gates, biases
// and routers stay float32.
// bf16_resident_available(): false where the bf16 kernel is emulated (no AVX512-BF16), where
// there are no packed copies to hold the weights; callers then keep the float32 model.
bool bf16_resident_available();
Model<float> make_bf16_resident(Model<float> m);
// As load_model followed by make_bf16_resident, without the float32 copy: tensor by tensor,
// each linear weight read (and its file pages dropped) and packed, so that the peak resident
// memory is about the bf16 model plus one tensor. Same checks and errors as load_model.
Model<float> load_model_bf16_resident(const std::string& dir, const LoadOptions& opts = {});
// The model of `dir` for inference (eval, generation, passkey eval) in `precision`:
// load_model_bf16_resident under BF16 where bf16_resident_available(), else load_model.
Model<float> load_inference_model(const std::string& dir, Precision precision,
                                  const LoadOptions& opts = {});
// The same for a model already in memory (a LoRA merge, say).
Model<float> to_inference_model(Model<float> m, Precision precision);

}  // namespace infini::model

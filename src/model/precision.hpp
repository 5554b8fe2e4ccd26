// The precision policy of the one forward and backward (SPEC §8, issue #27).
//
// fp32: every product in float32 (the reference).
// bf16: the products with weights (q, k, v, o, the MLP and the LM head, forward, input
// gradient and weight gradient) take bf16 inputs rounded to nearest even and accumulate in
// fp32, as PyTorch's CPU autocast does. Master weights, gradients, optimizer moments, norms,
// softmax, the loss, local attention and the memory M, z (and its products) stay float32:
// docs/precision.md gives the measurements behind that split. Double-precision models (the
// gradient checks) ignore the policy.
#pragma once
#include <string>

#include "core/error.hpp"

namespace infini::model {

enum class Precision { FP32, BF16 };

inline const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

// "fp32" or "bf16"; anything else throws Error naming `what` (a flag or a file).
inline Precision parse_precision(const std::string& s, const std::string& what) {
  if (s == "fp32") return Precision::FP32;
  if (s == "bf16") return Precision::BF16;
  throw Error(what + ": precision must be fp32 or bf16, got '" + s + "'");
}

}  // namespace infini::model

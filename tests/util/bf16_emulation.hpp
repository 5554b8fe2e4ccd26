// Tests of the bf16 products run the emulated path (a CPU without AVX512-BF16) on machines that
// have the instruction too.
#pragma once
#include "ops/bf16_gemm.hpp"

namespace infini::testing {

// While alive, every bf16 product takes the emulated path (when `on`); detection after.
struct ForcedBf16Emulation {
  explicit ForcedBf16Emulation(bool on = true) { ops::bf16_force_emulation(on); }
  ~ForcedBf16Emulation() { ops::bf16_force_emulation(false); }
  ForcedBf16Emulation(const ForcedBf16Emulation&) = delete;
  ForcedBf16Emulation& operator=(const ForcedBf16Emulation&) = delete;
};

}  // namespace infini::testing

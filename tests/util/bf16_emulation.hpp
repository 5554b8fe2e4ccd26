// Tests of the bf16 products run the emulated path (a CPU without AVX512-BF16) on machines that
// have the instruction too, and the AVX512-BF16 kernel on machines with AMX.
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

// While alive, the native products take the AVX512-BF16 kernel even on a CPU with AMX.
struct ForcedBf16Avx512 {
  explicit ForcedBf16Avx512(bool on = true) { ops::bf16_force_avx512(on); }
  ~ForcedBf16Avx512() { ops::bf16_force_avx512(false); }
  ForcedBf16Avx512(const ForcedBf16Avx512&) = delete;
  ForcedBf16Avx512& operator=(const ForcedBf16Avx512&) = delete;
};

// Calls fn(name) once per native bf16 kernel this CPU runs: AMX where present, then
// AVX512-BF16 (nothing without AVX512-BF16).
template <class F>
void for_each_native_bf16_kernel(F fn) {
  if (!ops::bf16_native_available()) return;
  if (ops::bf16_amx_active()) fn("amx");
  const ForcedBf16Avx512 avx512;
  fn("avx512");
}

}  // namespace infini::testing

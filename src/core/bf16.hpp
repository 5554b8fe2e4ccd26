// bfloat16 <-> float32, the one definition the file formats (io/) and the kernels (ops/) share.
#pragma once
#include <bit>
#include <cstdint>

namespace infini {

// The upper 16 bits of the float32 with the same value: exact.
inline float bf16_to_f32(uint16_t v) { return std::bit_cast<float>(uint32_t(v) << 16); }

// Round to nearest even; overflow goes to inf, and a NaN stays a NaN (truncation could clear
// every mantissa bit and make inf, so the quiet bit is forced).
inline uint16_t f32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x0040u);
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace infini

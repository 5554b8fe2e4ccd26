// AVX-512 helpers shared by the kernels (ops/sgemm.cpp, ops/bf16_gemm.cpp, ops/bf16_amx.cpp).
// Include only from files compiled with AVX-512F.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace infini::ops {

// The mask of the first `count` of 16 lanes (none for count <= 0, all from 16 up).
inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// z[r] lane c becomes z[c] lane r (32-bit lanes).
inline void transpose_16x16_epi32(__m512i z[16]) {
  __m512i t[16];
  for (int r = 0; r < 16; r += 2) {  // pairs of rows: lanes interleaved by one
    t[r] = _mm512_unpacklo_epi32(z[r], z[r + 1]);
    t[r + 1] = _mm512_unpackhi_epi32(z[r], z[r + 1]);
  }
  for (int r = 0; r < 16; r += 4) {  // by two
    z[r] = _mm512_unpacklo_epi64(t[r], t[r + 2]);
    z[r + 1] = _mm512_unpackhi_epi64(t[r], t[r + 2]);
    z[r + 2] = _mm512_unpacklo_epi64(t[r + 1], t[r + 3]);
    z[r + 3] = _mm512_unpackhi_epi64(t[r + 1], t[r + 3]);
  }
  // Now z[4q + j] lane (4b + x) holds row 4q + x, column 4b + j: 128-bit blocks move next.
  for (int j = 0; j < 4; ++j) {
    const __m512i a0 = z[j], a1 = z[4 + j], a2 = z[8 + j], a3 = z[12 + j];
    const __m512i b0 = _mm512_shuffle_i32x4(a0, a1, 0x88), b1 = _mm512_shuffle_i32x4(a0, a1, 0xDD);
    const __m512i b2 = _mm512_shuffle_i32x4(a2, a3, 0x88), b3 = _mm512_shuffle_i32x4(a2, a3, 0xDD);
    t[j] = _mm512_shuffle_i32x4(b0, b2, 0x88);       // column block 0
    t[8 + j] = _mm512_shuffle_i32x4(b0, b2, 0xDD);   // column block 2
    t[4 + j] = _mm512_shuffle_i32x4(b1, b3, 0x88);   // column block 1
    t[12 + j] = _mm512_shuffle_i32x4(b1, b3, 0xDD);  // column block 3
  }
  for (int r = 0; r < 16; ++r) z[r] = t[r];
}

}  // namespace infini::ops

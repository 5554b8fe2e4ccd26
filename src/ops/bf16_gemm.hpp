// Matrix products with bf16 inputs and fp32 accumulation (SPEC §8, issue #27): the AVX512-BF16
// instruction VDPBF16PS multiplies pairs of bf16 and adds both products into an fp32 lane,
// twice the multiply-adds of an fp32 FMA per instruction.
//
// C[m, n] = alpha * bf16(op(A)) bf16(op(B)) + beta * C, row-major, where bf16(x) rounds to the
// nearest even bf16 and every product of two bf16 is exact in fp32; the sums are fp32. A is
// read in fp32 and rounded on the fly (activations); B is packed once in bf16 (weights).
// Single-threaded: callers split rows or columns, as for sgemm_native.
//
// Where the CPU has Intel AMX (AMX-BF16), the same entry points run the AMX kernel instead
// (ops/bf16_amx.hpp: TDPBF16PS on 16 x 16 tiles, the same packing), see bf16_amx_active().
// Where the CPU (or the build) lacks AVX512-BF16 the same products run emulated: the inputs
// rounded to bf16 values held in fp32, multiplied by the fp32 GEMM. Both are bf16-rounded
// results; they differ only in the order of the fp32 additions.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/bf16.hpp"

namespace infini::ops {

// Round to nearest even bf16, as the upper 16 bits of an fp32 (NaN stays NaN); and back.
inline uint16_t to_bf16(float x) { return f32_to_bf16(x); }
inline float bf16_value(uint16_t v) { return bf16_to_f32(v); }
inline float round_bf16(float x) { return bf16_value(to_bf16(x)); }

// op(B) [k, n] in bf16, in the layout the kernel reads: panels of 32 columns; within one, for
// each pair of rows (2p, 2p+1) the 32 columns' two values side by side (k padded to even with
// zeros, n to a multiple of 32).
struct PackedBf16 {
  int64_t k = 0, n = 0;
  size_t capacity = 0;  // uint16 values allocated
  struct Free {
    void operator()(uint16_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint16_t, Free> data;
  size_t bytes() const { return capacity * sizeof(uint16_t); }
};

// True when this build carries the AVX512-BF16 kernel and this CPU has the instruction (and
// the emulation is not forced).
bool bf16_native_available();
// From now on (true) every bf16 product takes the emulated path, as on a CPU without
// AVX512-BF16, so that one machine tests both; false restores detection. Switch before packing:
// bf16 packings made natively stay in the native layout.
void bf16_force_emulation(bool on);
// True when the native products run on Intel AMX tiles (ops/bf16_amx.hpp: CPUs with AMX-BF16,
// e.g. Sapphire Rapids) instead of the AVX512-BF16 kernel; same inputs, same packings, fp32
// sums in another order.
bool bf16_amx_active();
// From now on (true) the native products use the AVX512-BF16 kernel even where AMX is present,
// so that one machine tests both; false restores detection.
void bf16_force_avx512(bool on);
// "native-amx-bf16", "native-avx512bf16" or "emulated (no AVX512-BF16 on this CPU or build)".
std::string bf16_backend_name();

// Packs op(B) [k, n] (vector code where the CPU has AVX512-BF16; bf16_pack_scalar is the plain
// loop it is tested against). Reuses out's buffer when large enough.
void bf16_pack(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, PackedBf16& out);
void bf16_pack_scalar(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb,
                      PackedBf16& out);

// A transposed operand A = Y^T without a transposition: rows r0 .. r1 of Y [*, cols] (fp32,
// row stride lda) in bf16, rows 2p and 2p + 1 interleaved value by value, so that each 32-bit
// word is the pair (Y[2p][i], Y[2p + 1][i]) that the kernel broadcasts for row i of A:
// out[(t / 2) * ldo + 2 i + t % 2] = bf16(Y[t][i]), ldo (in uint16) even and at least 2 cols.
// Threads that own disjoint row ranges fill one such matrix together (two threads may write
// the two halves of one word). It is the A of bf16_gemm_converted_pairs, e.g. dY^T for the
// weight gradient dW = dY^T X (one conversion serves every column block of dW). With `rows`,
// the same values also go there row by row, row t at rows + (t - r0) * ldr (ldr even and at
// least cols, the pad past an odd cols zero): the A of bf16_gemm_converted, e.g. dY for the
// input gradient dX = dY W, so that dY is rounded once for both products.
void bf16_convert_pairs(const float* y, int64_t lda, int64_t r0, int64_t r1, int64_t cols,
                        uint16_t* out, int64_t ldo, uint16_t* rows = nullptr, int64_t ldr = 0);
// For an odd number of rows, zeroes the missing partner of the last row in that layout, so
// that the pad adds nothing to a product (nothing to do for an even number).
void bf16_zero_pair_pad(uint16_t* out, int64_t ldo, int64_t rows, int64_t cols);

// C = alpha * bf16(A) * B[0 .. k, 0 .. n] + beta * C, A [m, k] row-major (beta == 0 never reads
// C). A transposed A goes through bf16_convert_pairs and bf16_gemm_converted_pairs instead.
// Native only: throws infini::Error when bf16_native_available() is false.
void bf16_gemm_packed(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                      const PackedBf16& b, float beta, float* c, int64_t ldc);

// One A [m, k] (fp32, rounded once) times several packed B: C_i = A B_i[0 .. k, 0 .. n_i] +
// beta_i C_i. The products of one input (q, k and v of a layer; gate and up) share the
// rounding of A, which bf16_gemm_packed would redo for each. Native only.
struct Bf16Output {
  const PackedBf16* b;
  int64_t n;
  float beta;
  float* c;
  int64_t ldc;
};
void bf16_gemm_packed_shared_a(int64_t m, int64_t k, const float* a, int64_t lda,
                               const Bf16Output* outs, int count);

// C = alpha * A B[0 .. k, 0 .. n] + beta * C with A [m, k] already bf16 (row i at a + i * lda;
// lda even, the pad past an odd k zero). Native only, as bf16_gemm_packed.
void bf16_gemm_converted(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a,
                         int64_t lda, const PackedBf16& b, float beta, float* c, int64_t ldc);

// The same with A [m, k] given by bf16_convert_pairs (A = Y^T, k = Y's rows, m its columns):
// pair p of row i at word p * (lda / 2) + i. The pad past an odd k zero.
void bf16_gemm_converted_pairs(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a,
                               int64_t lda, const PackedBf16& b, float beta, float* c, int64_t ldc);

// The same product without packing in advance: native when available, else emulated.
void bf16_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc);

// The emulation bf16_gemm falls back to: the inputs rounded to bf16 values held in fp32,
// multiplied by gemm<float>. Public so that tests check it on every CPU.
void bf16_gemm_emulated(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                        float* c, int64_t ldc);

}  // namespace infini::ops

// The AMX-BF16 kernel behind ops/bf16_gemm's native products on CPUs with Intel AMX (Sapphire
// Rapids and later): TDPBF16PS multiplies a 16 x 32 bf16 tile of A by a 32 x 16 tile of B into
// a 16 x 16 fp32 tile, 16 times the multiply-adds of a VDPBF16PS per instruction. It reads
// the same PackedBf16 panels as the AVX-512 kernel (a panel's pair rows are two B tiles side
// by side), so packings, callers and results' meaning are shared; only the order of the fp32
// additions differs. Internal to ops: callers go through ops/bf16_gemm.hpp.
#pragma once
#include <cstdint>

#include "ops/bf16_gemm.hpp"

namespace infini::ops::amx {

// True when this build carries the kernel, the CPU has AMX-BF16 and AVX512-BF16, and the
// kernel (Linux) granted this process the tile registers; INFINI_BF16_AMX=0 in the
// environment turns it off (the AVX-512 kernel then runs, for comparisons).
bool supported();

// How A [m, k] is given: fp32 rows (rounded here), bf16 rows (pairs adjacent, lda even, the
// pad past an odd k zero), or bf16 pairs of rows of Y = A^T (ops::bf16_convert_pairs).
enum class AKind { F32Rows, Bf16Rows, Bf16Pairs };
struct AOperand {
  AKind kind;
  const void* data;
  int64_t lda;  // in values (fp32 or bf16)
};

// C_o = alpha * A B_o[0 .. k, 0 .. n_o] + beta_o C_o for each output (beta_o == 0 never reads
// C_o). Single-threaded, as the AVX-512 kernel. Requires supported().
void gemm(int64_t m, int64_t k, float alpha, const AOperand& a, const Bf16Output* outs, int count);

// The AMX ceiling (ops::bf16_peak_gflops where AMX runs the products): `steps` steps of four
// independent TDPBF16PS accumulations on tiles already loaded (2^-10 in every bf16 slot, so
// each adds 32 * 2^-20 to every fp32 element, exactly). Returns the FLOPs done; `*sink` the
// sum of one element of each of the four accumulators. 0 FLOPs without AMX.
double tile_chains(int64_t steps, float* sink);

}  // namespace infini::ops::amx

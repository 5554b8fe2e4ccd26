// The CPU's float32 arithmetic ceiling: fused multiply-adds on registers only, no loads or
// stores. No float32 matrix multiply, infini's or a library's, can run faster than this, so it
// tells what a speed target asks of the hardware (docs/benchmarks.md, "On a Zen 4 machine":
// two AVX-512 CPUs whose ceilings differ twofold).
#pragma once
#include <cstdint>

namespace infini::ops {

// Runs `steps` steps of 24 independent chains of vector FMAs on the calling thread, with the
// widest vectors this CPU has (512 bits with AVX-512F, else 256 with AVX2 and FMA, else
// scalar). Returns the FLOPs done (2 per lane per FMA); `*sink` receives a sum of the
// results, so that the compiler keeps the work.
double fma_chains(int64_t steps, float* sink);

// GFLOP/s of fma_chains on `threads` threads at once (an OpenMP region), the best of `reps`
// runs of `steps` steps per thread.
double fma_peak_gflops(int threads, int64_t steps = int64_t(1) << 21, int reps = 3);

// The bf16 ceiling (issue #27): the same with VDPBF16PS, which does two bf16 products per fp32
// lane (4 FLOPs per lane per instruction). Each chain adds 2 * 2^-20 per lane per step from
// 2^-10 i, exactly. Returns 0 FLOPs (and bf16_peak_gflops 0) on CPUs without AVX512-BF16.
double bf16_dot_chains(int64_t steps, float* sink);
// The ceiling of the kernel that runs the bf16 products: AMX's TDPBF16PS on tiles
// (ops::amx::tile_chains, steps / 4 steps of four tiles) where ops::bf16_amx_active(), else
// bf16_dot_chains.
double bf16_peak_gflops(int threads, int64_t steps = int64_t(1) << 21, int reps = 3);

}  // namespace infini::ops

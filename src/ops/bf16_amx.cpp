
#include "ops/bf16_amx.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/error.hpp"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512BW__) && defined(__linux__)
#define INFINI_AMX_KERNEL 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ops/avx512_util.hpp"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593, as in sgemm.cpp
#endif
#endif

namespace infini::ops::amx {

#if defined(INFINI_AMX_KERNEL)

namespace {

// Tiles: 0-3 hold C (two row tiles by two column tiles), 4-5 A, 6-7 B; every tile 16 rows of
// 64 bytes (16 fp32, or 16 pairs of bf16).
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileK = 32;      // bf16 values of k in one tile of A (16 pairs)
constexpr int64_t kBlockRows = 32;  // rows of A per block: two tiles
constexpr int64_t kPanel = 32;      // columns of a PackedBf16 panel: two tiles of B
constexpr int64_t kPanelKBlock = kTileK / 2 * 2 * kPanel;  // uint16 per 16 pairs of a panel
// Packed B a thread multiplies by each block of A before it moves on: half of a 2 MiB L2
// (Sapphire Rapids), the rest for A's block, C's lines and the other operands.
constexpr int64_t kL2Bytes = int64_t(1) << 20;

bool granted() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
  if (!amx_bf16 || !amx_tile || !__builtin_cpu_supports("avx512bf16") ||
      !__builtin_cpu_supports("avx512bw"))
    return false;
  if (const char* env = std::getenv("INFINI_BF16_AMX"); env && std::strcmp(env, "0") == 0)
    return false;
  // Linux hands out the 8 KiB of tile state per process on request (arch_prctl
  // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it the first tile load faults.
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

// The tile shapes, loaded once per thread (the OS keeps them with the thread's state).
void configure_tiles() {
  thread_local bool configured = false;
  if (configured) return;
  struct alignas(64) Config {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTileRows;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  configured = true;
}

inline __mmask32 first_lanes32(int64_t count) {
  return count >= 32  ? __mmask32(0xFFFFFFFFu)
         : count <= 0 ? __mmask32(0)
                      : __mmask32((1u << count) - 1);
}

// A thread's growing 64-byte-aligned scratch of uint16.
struct Scratch {
  struct Free {
    void operator()(uint16_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint16_t, Free> data;
  size_t capacity = 0;
  uint16_t* get(size_t n) {
    if (n > capacity) {
      data.reset(static_cast<uint16_t*>(std::aligned_alloc(64, (n * 2 + 63) / 64 * 64)));
      if (!data) throw Error("bf16 AMX kernel: out of memory");
      capacity = n;
    }
    return data.get();
  }
};

// The A block: rows 0 .. 31 of k block kb at out + (kb * 32 + r) * 32, so that row tile t of
// block kb starts at out + (kb * 32 + 16 t) * 32, rows 64 bytes apart. Values past k are zero;
// rows past the block's last are left as they are (their C rows are never stored).
inline uint16_t* block_row(uint16_t* out, int64_t kb, int64_t r) {
  return out + (kb * kBlockRows + r) * kTileK;
}

void fill_f32_rows(const float* a, int64_t lda, int64_t rows, int64_t k, int64_t kblocks,
                   uint16_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a + r * lda;
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      const int64_t p = kb * kTileK, left = k - p;
      __m512 lo, hi;
      if (left >= kTileK) {
        lo = _mm512_loadu_ps(src + p);
        hi = _mm512_loadu_ps(src + p + 16);
      } else {
        lo = _mm512_maskz_loadu_ps(first_lanes(left), src + p);
        hi = _mm512_maskz_loadu_ps(first_lanes(left - 16), src + p + 16);
      }
      _mm512_store_si512(block_row(out, kb, r), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// kp: the values of a row that take part (k rounded up to even; the caller's pad is zero).
void fill_bf16_rows(const uint16_t* a, int64_t lda, int64_t rows, int64_t kp, int64_t kblocks,
                    uint16_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* src = a + r * lda;
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      const int64_t p = kb * kTileK;
      _mm512_store_si512(block_row(out, kb, r),
                         _mm512_maskz_loadu_epi16(first_lanes32(kp - p), src + p));
    }
  }
}

// Pair p of row i is the word a32[p * stride + i]: 16 pairs of 16 rows are transposed in
// registers into 16 tile rows.
void fill_pairs(const uint32_t* a32, int64_t stride, int64_t rows, int64_t pairs, int64_t kblocks,
                uint16_t* out) {
  for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
    const __mmask16 m = first_lanes(rows - r0);
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      __m512i z[16];
      for (int q = 0; q < 16; ++q) {
        const int64_t p = kb * (kTileK / 2) + q;
        z[q] =
            p < pairs ? _mm512_maskz_loadu_epi32(m, a32 + p * stride + r0) : _mm512_setzero_si512();
      }
      transpose_16x16_epi32(z);
      for (int r = 0; r < 16; ++r) _mm512_store_si512(block_row(out, kb, r0 + r), z[r]);
    }
  }
}

// Lines of C to ask for while the tiles multiply: rows [0, rows) of c, one or two lines each.
struct CLines {
  const float* c;
  int64_t ldc, rows;
  bool wide;
  void ask(int64_t r0, int64_t r1) const {
    for (int64_t r = r0; r < std::min(r1, rows); ++r) {
      __builtin_prefetch(c + r * ldc, 1, 3);
      if (wide) __builtin_prefetch(c + r * ldc + 16, 1, 3);
    }
  }
};

// The C tiles of one A block times one panel, written to dst [32][32] (rows ld floats apart),
// after what dst held (add) or not. The last k block reads `tail` (the panel's remaining pairs,
// zero-padded to 16) when not null. The lines of `next` are asked for along the way.
template <bool TwoRowTiles, bool TwoColTiles>
void panel_product(const uint16_t* ablk, int64_t kblocks, const uint16_t* panel,
                   const uint16_t* tail, float* dst, int64_t ld, bool add, const CLines& next) {
  const int64_t ldb = ld * int64_t(sizeof(float));
  if (add) {
    _tile_loadd(0, dst, ldb);
    if constexpr (TwoColTiles) _tile_loadd(1, dst + 16, ldb);
    if constexpr (TwoRowTiles) _tile_loadd(2, dst + 16 * ld, ldb);
    if constexpr (TwoRowTiles && TwoColTiles) _tile_loadd(3, dst + 16 * ld + 16, ldb);
  } else {
    _tile_zero(0);
    if constexpr (TwoColTiles) _tile_zero(1);
    if constexpr (TwoRowTiles) _tile_zero(2);
    if constexpr (TwoRowTiles && TwoColTiles) _tile_zero(3);
  }
  const int64_t ask_rows = kblocks > 0 ? (next.rows + kblocks - 1) / kblocks : 0;  // k may be 0
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    next.ask(kb * ask_rows, (kb + 1) * ask_rows);
    const uint16_t* bk = tail && kb == kblocks - 1 ? tail : panel + kb * kPanelKBlock;
    const uint16_t* ak = ablk + kb * kBlockRows * kTileK;
    _tile_loadd(4, ak, 64);
    _tile_loadd(6, bk, 128);
    if constexpr (TwoColTiles) _tile_loadd(7, bk + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (TwoColTiles) _tile_dpbf16ps(1, 4, 7);
    if constexpr (TwoRowTiles) {
      _tile_loadd(5, ak + kTileRows * kTileK, 64);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (TwoColTiles) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, dst, ldb);
  if constexpr (TwoColTiles) _tile_stored(1, dst + 16, ldb);
  if constexpr (TwoRowTiles) _tile_stored(2, dst + 16 * ld, ldb);
  if constexpr (TwoRowTiles && TwoColTiles) _tile_stored(3, dst + 16 * ld + 16, ldb);
}

using PanelProduct = void (*)(const uint16_t*, int64_t, const uint16_t*, const uint16_t*, float*,
                              int64_t, bool, const CLines&);
constexpr PanelProduct kPanelProducts[2][2] = {
    {&panel_product<false, false>, &panel_product<false, true>},
    {&panel_product<true, false>, &panel_product<true, true>}};

// C[0 .. rows, 0 .. nv] = alpha * cbuf + beta * C.
void store_block(const float* cbuf, int64_t rows, int64_t nv, float alpha, float beta, float* c,
                 int64_t ldc) {
  const __mmask16 m0 = first_lanes(nv), m1 = first_lanes(nv - 16);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int64_t r = 0; r < rows; ++r) {
    float* cr = c + r * ldc;
    __m512 x0 = _mm512_mul_ps(_mm512_load_ps(cbuf + r * 32), va);
    __m512 x1 = _mm512_mul_ps(_mm512_load_ps(cbuf + r * 32 + 16), va);
    if (beta != 0.0f) {
      x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), x0);
      x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), x1);
    }
    _mm512_mask_storeu_ps(cr, m0, x0);
    _mm512_mask_storeu_ps(cr + 16, m1, x1);
  }
}

}  // namespace

bool supported() {
  static const bool ok = granted();
  return ok;
}

void gemm(int64_t m, int64_t k, float alpha, const AOperand& a, const Bf16Output* outs, int count) {
  if (!supported()) throw Error("bf16 AMX kernel: no AMX-BF16 on this CPU");
  if (m <= 0) return;
  configure_tiles();
  const int64_t pairs = (k + 1) / 2, kblocks = (pairs + kTileK / 2 - 1) / (kTileK / 2);
  const int64_t rem = pairs % (kTileK / 2);
  // Each output's panels' last partial k block, zero-padded to a whole tile of B.
  thread_local std::vector<Scratch> tails;
  if (tails.size() < size_t(count)) tails.resize(size_t(count));
  if (rem != 0)
    for (int o = 0; o < count; ++o) {
      const PackedBf16& b = *outs[o].b;
      const int64_t panels = (outs[o].n + kPanel - 1) / kPanel, bpairs = (b.k + 1) / 2;
      uint16_t* t = tails[size_t(o)].get(size_t(std::max<int64_t>(panels, 1) * kPanelKBlock));
      for (int64_t j = 0; j < panels; ++j) {
        const uint16_t* src = b.data.get() + j * bpairs * 2 * kPanel + (kblocks - 1) * kPanelKBlock;
        std::memcpy(t + j * kPanelKBlock, src, size_t(rem * 2 * kPanel) * sizeof(uint16_t));
        std::memset(t + j * kPanelKBlock + rem * 2 * kPanel, 0,
                    size_t(kPanelKBlock - rem * 2 * kPanel) * sizeof(uint16_t));
      }
    }
  thread_local Scratch ablk_buf;
  uint16_t* ablk = ablk_buf.get(size_t(kblocks * kBlockRows * kTileK));
  alignas(64) float cbuf[kBlockRows * kPanel];
  // The outputs' panels in pieces whose packing stays in L2 while every block of A passes over
  // it, consecutive pieces grouped up to that size: A is converted once per group (once in
  // all when the whole B fits). Without it, a B of 2 MiB or more (1024 x 1024, or n = 4096)
  // came from L3 for every block and ran at 540-610 GFLOP/s per core against 1000-1400.
  struct Piece {
    int o;
    int64_t j0, j1;
  };
  thread_local std::vector<Piece> pieces;
  pieces.clear();
  const int64_t panel_bytes = std::max<int64_t>(1, kblocks * kPanelKBlock * 2);
  const int64_t piece_cols = std::max<int64_t>(1, kL2Bytes / panel_bytes) * kPanel;
  for (int o = 0; o < count; ++o)
    for (int64_t j0 = 0; j0 < outs[o].n; j0 += piece_cols)
      pieces.push_back({o, j0, std::min(outs[o].n, j0 + piece_cols)});
  auto bytes_of = [&](const Piece& p) { return (p.j1 - p.j0 + kPanel - 1) / kPanel * panel_bytes; };
  for (size_t g0 = 0, g1 = 0; g0 < pieces.size(); g0 = g1) {
    int64_t group_bytes = 0;
    for (g1 = g0;
         g1 < pieces.size() && (g1 == g0 || group_bytes + bytes_of(pieces[g1]) <= kL2Bytes); ++g1)
      group_bytes += bytes_of(pieces[g1]);
    for (int64_t i0 = 0; i0 < m; i0 += kBlockRows) {
      const int64_t rows = std::min(kBlockRows, m - i0);
      switch (a.kind) {
        case AKind::F32Rows:
          fill_f32_rows(static_cast<const float*>(a.data) + i0 * a.lda, a.lda, rows, k, kblocks,
                        ablk);
          break;
        case AKind::Bf16Rows:
          fill_bf16_rows(static_cast<const uint16_t*>(a.data) + i0 * a.lda, a.lda, rows, 2 * pairs,
                         kblocks, ablk);
          break;
        case AKind::Bf16Pairs:
          fill_pairs(static_cast<const uint32_t*>(a.data) + i0, a.lda / 2, rows, pairs, kblocks,
                     ablk);
          break;
      }
      for (size_t g = g0; g < g1; ++g) {
        const Piece& piece = pieces[g];
        const Bf16Output& out = outs[piece.o];
        const PackedBf16& b = *out.b;
        const int64_t bpairs = (b.k + 1) / 2;
        for (int64_t j0 = piece.j0; j0 < piece.j1; j0 += kPanel) {
          const int64_t nv = std::min(kPanel, piece.j1 - j0);
          const uint16_t* panel = b.data.get() + (j0 / kPanel) * bpairs * 2 * kPanel;
          const uint16_t* tail =
              rem != 0 ? tails[size_t(piece.o)].data.get() + (j0 / kPanel) * kPanelKBlock : nullptr;
          float* c = out.c + i0 * out.ldc + j0;
          // The C lines are written (read too, beta != 0) only after the products: asked for
          // ahead, their misses hide behind the tiles' work, where they took half of this
          // function's time. The first panel's lines now, each next panel's during this one's
          // products (a few rows per k block: all at once stalled on the fill buffers).
          if (j0 == piece.j0) CLines{c, out.ldc, rows, nv > 16}.ask(0, rows);
          const int64_t next = j0 + kPanel;
          const CLines ahead{c + kPanel, out.ldc, next < piece.j1 ? rows : 0, piece.j1 - next > 16};
          const PanelProduct product = kPanelProducts[rows > kTileRows][nv > 16];
          // Whole tiles of C with alpha 1 and beta 0 or 1 go straight to C (the tiles start
          // from C when beta is 1); the rest through cbuf.
          if (alpha == 1.0f && (out.beta == 0.0f || out.beta == 1.0f) &&
              (rows == kTileRows || rows == kBlockRows) && (nv == 16 || nv == kPanel)) {
            product(ablk, kblocks, panel, tail, c, out.ldc, out.beta == 1.0f, ahead);
          } else {
            product(ablk, kblocks, panel, tail, cbuf, kPanel, false, ahead);
            store_block(cbuf, rows, nv, alpha, out.beta, c, out.ldc);
          }
        }
      }
    }
  }
}

double tile_chains(int64_t steps, float* sink) {
  *sink = 0;
  if (!supported()) return 0;
  configure_tiles();
  alignas(64) uint16_t operand[kTileRows * kTileK];
  std::fill_n(operand, kTileRows * kTileK, uint16_t(0x3A80));  // 2^-10
  _tile_loadd(4, operand, 64);
  _tile_loadd(5, operand, 64);
  _tile_loadd(6, operand, 64);
  _tile_loadd(7, operand, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < steps; ++s) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float c[4][kTileRows * 16];
  _tile_stored(0, c[0], 64);
  _tile_stored(1, c[1], 64);
  _tile_stored(2, c[2], 64);
  _tile_stored(3, c[3], 64);
  *sink = c[0][0] + c[1][0] + c[2][0] + c[3][0];
  return 4.0 * double(steps) * 2 * kTileRows * 16 * kTileK;
}

#else  // no AMX kernel in this build

bool supported() { return false; }

double tile_chains(int64_t, float* sink) {
  *sink = 0;
  return 0;
}

void gemm(int64_t, int64_t, float, const AOperand&, const Bf16Output*, int) {
  throw Error("bf16 AMX kernel: not in this build");
}

#endif

}  // namespace infini::ops::amx

// The cache blocking of swin_ext's float32 CPU GEMMs, shared by the block
// Linears (linear_cpu.cpp) and the fused inference MLP (mlp_cpu.cpp).
//
// The blocking (GotoBLAS-style, for C(M x J) = sum_p A(M, p) B(p, J)):
//   * B is packed into column panels of kColTile columns, each panel's rows
//     contiguous (Bp[panel][p][kColTile]), so a panel's kDepth rows stream
//     from L1;
//   * A is read in place, by broadcast, from RB rows at a time (the forward
//     and the input gradient: rows of x / dy, contiguous in p; the weight
//     gradient, A = dy^T: RB neighbouring floats of each dy row);
//   * each tile prefetches its output lines for writing before its depth
//     loop (C is walked down columns of lines, which no hardware prefetcher
//     follows);
//   * the depth is summed in blocks of kDepth: each block's sum is formed in
//     registers and added to C, so every element of C is the same sum in the
//     same order whatever the number of threads (rows and columns of C are
//     split over threads, never the depth): bitwise reproducible.
//
// Each user compiles the templates into its own ISA clones
// (isa_dispatch.h); the packing is cloned here, once for all of them.  The
// AVX-512 clones (gemm_b<RB, true>) run two neighbouring panels at once as
// one 16-float vector each (tile_rows_pair): the same 12 accumulators and the
// same sums in the same order as the 8-float tile, so the same bits, at
// twice the columns per FMA.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "cpu_microkernels.h"

namespace swin_ext {
namespace cpu_gemm {

// Columns of C per register block: two 8-float vectors.
constexpr int64_t kColTile = 16;
// Depth (summed dimension) per block: a packed panel of kDepth x kColTile
// floats is 16 KiB, half of L1.
constexpr int64_t kDepth = 256;
// Rows of C per cache chunk (a multiple of both row tiles, 4 and 6): the
// chunk's A block (kRowChunk x kDepth floats) stays in L2.
constexpr int64_t kRowChunk = 96;
// A C of at most this many rows is one row chunk (for_blocks).
constexpr int64_t kShortRows = 256;
// Columns of C per block of the thread split (for_blocks): with the row
// chunks, enough blocks for the threads at every Swin shape.
constexpr int64_t kColChunk = 512;

typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));

// The register tile: C[RB x 2L] (+)= sum_{p < depth} a(r, p) * (b(p), b(p) + off),
// L the lanes of V, with a(r, p) = A[r * ars + p * aps] and b(p) = B + p * ldb: two
// L-float vectors of B per depth step, one broadcast of A per row.  The 8-float
// tile (AVX2, baseline) is one panel, the second vector its columns 8..15 (off
// 8); the 16-float one (AVX-512) two neighbouring panels (off: the panel stride).
// Each element is the same FMA chain either way: the same bits.  `add` adds the
// block's sum to C (a later depth block), else C = sum (+ bias, when given).
template <int RB, typename V>
SWIN_ALWAYS_INLINE void tile(int64_t depth, const float* A, int64_t ars, int64_t aps, const float* B, int64_t off,
                             int64_t ldb, float* C, int64_t ldc, bool add, const float* bias) {
  constexpr int L = static_cast<int>(sizeof(V) / sizeof(float));
  V c[RB][2];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {  // zero the accumulators; fetch C's lines for writing, a depth loop ahead
    c[r][0] = c[r][1] = V{};
    for (int o = 0; o < 2 * L; o += 16) __builtin_prefetch(C + r * ldc + o, 1, 3);
    __builtin_prefetch(C + r * ldc + 2 * L - 1, 1, 3);
  }
  for (int64_t p = 0; p < depth; ++p) {
    const V b0 = cpu::load_vec<V>(B + p * ldb);
    const V b1 = cpu::load_vec<V>(B + off + p * ldb);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const float a = A[r * ars + p * aps];
      c[r][0] += a * b0;
      c[r][1] += a * b1;
    }
  }
  V b0{}, b1{};
  if (bias != nullptr) {
    b0 = cpu::load_vec<V>(bias);
    b1 = cpu::load_vec<V>(bias + L);
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
    float* cr = C + r * ldc;
    if (add) {
      c[r][0] += cpu::load_vec<V>(cr);
      c[r][1] += cpu::load_vec<V>(cr + L);
    } else if (bias != nullptr) {
      c[r][0] += b0;
      c[r][1] += b1;
    }
    cpu::store_vec(cr, c[r][0]);
    cpu::store_vec(cr + L, c[r][1]);
  }
}

// Rows [i0, i1) of C: full RB-row tiles, then the last (< RB) rows as one tile
// of that height (a single-row tile has 2 FMA chains, a fifth of the pipes'
// throughput; stage 4's 49 rows an image end in such tails).  Each row's sum is
// the same whatever the tile's height.
template <int RB, typename V>
SWIN_ALWAYS_INLINE void tile_rows_v(int64_t i0, int64_t i1, int64_t depth, const float* A, int64_t ars, int64_t aps,
                                    const float* B, int64_t off, int64_t ldb, float* C, int64_t ldc, bool add,
                                    const float* bias) {
  int64_t i = i0;
  for (; i + RB <= i1; i += RB) tile<RB, V>(depth, A + i * ars, ars, aps, B, off, ldb, C + i * ldc, ldc, add, bias);
  const float* a = A + i * ars;
  float* c = C + i * ldc;
  switch (i1 - i) {
    case 5:
      if constexpr (RB > 5) tile<5, V>(depth, a, ars, aps, B, off, ldb, c, ldc, add, bias);
      break;
    case 4:
      if constexpr (RB > 4) tile<4, V>(depth, a, ars, aps, B, off, ldb, c, ldc, add, bias);
      break;
    case 3:
      tile<3, V>(depth, a, ars, aps, B, off, ldb, c, ldc, add, bias);
      break;
    case 2:
      tile<2, V>(depth, a, ars, aps, B, off, ldb, c, ldc, add, bias);
      break;
    case 1:
      tile<1, V>(depth, a, ars, aps, B, off, ldb, c, ldc, add, bias);
      break;
    default:
      break;
  }
}

// Rows [i0, i1) of C over one kColTile-column panel at B (8-float vectors).
template <int RB>
SWIN_ALWAYS_INLINE void tile_rows(int64_t i0, int64_t i1, int64_t depth, const float* A, int64_t ars, int64_t aps,
                                  const float* B, int64_t ldb, float* C, int64_t ldc, bool add, const float* bias) {
  tile_rows_v<RB, v8>(i0, i1, depth, A, ars, aps, B, 8, ldb, C, ldc, add, bias);
}

// Rows [i0, i1) of C over the panel at B and the next, bps floats on (16-float
// vectors, the AVX-512 clones): 2 kColTile columns.
template <int RB>
SWIN_ALWAYS_INLINE void tile_rows_pair(int64_t i0, int64_t i1, int64_t depth, const float* A, int64_t ars,
                                       int64_t aps, const float* B, int64_t bps, int64_t ldb, float* C, int64_t ldc,
                                       bool add, const float* bias) {
  tile_rows_v<RB, v16>(i0, i1, depth, A, ars, aps, B, bps, ldb, C, ldc, add, bias);
}

// Columns [j, je) of C, panel by panel (tile_rows) or, kWide (the AVX-512
// clones), two panels at a time (tile_rows_pair) and a last odd panel alone.
// B: the panel of column j, the next bps floats on; the rest as tile_rows.
template <int RB, bool kWide>
SWIN_ALWAYS_INLINE void panel_cols(int64_t j, int64_t je, int64_t i0, int64_t i1, int64_t depth, const float* A,
                                   int64_t ars, int64_t aps, const float* B, int64_t bps, int64_t ldb, float* C,
                                   int64_t ldc, bool add, const float* bias) {
  while (j < je) {
    const float* bj = bias != nullptr ? bias + j : nullptr;
    if (kWide && j + 2 * kColTile <= je) {
      tile_rows_pair<RB>(i0, i1, depth, A, ars, aps, B, bps, ldb, C + j, ldc, add, bj);
      B += 2 * bps;
      j += 2 * kColTile;
    } else {
      tile_rows<RB>(i0, i1, depth, A, ars, aps, B, ldb, C + j, ldc, add, bj);
      B += bps;
      j += kColTile;
    }
  }
}

// Bp[panel][p][c] = src(p, panel * kColTile + c) for p < P, panels [pb, pe);
// src(p, j) = S[j * lds + p] (trans) or S[p * lds + j].
SWIN_ALWAYS_INLINE void pack_panels_body(int64_t P, const float* S, int64_t lds, bool trans, float* Bp, int64_t pb,
                                         int64_t pe) {
  for (int64_t jp = pb; jp < pe; ++jp) {
    float* d = Bp + jp * P * kColTile;
    if (trans) {  // P is a multiple of 16 here (the weight's in-features): 8 x 8 transposes
      for (int64_t p = 0; p < P; p += 8)
        for (int64_t c = 0; c < kColTile; c += 8)
          cpu::transpose8(S + (jp * kColTile + c) * lds + p, lds, d + p * kColTile + c, kColTile);
    } else {
      for (int64_t p = 0; p < P; ++p) std::memcpy(d + p * kColTile, S + p * lds + jp * kColTile, kColTile * 4);
    }
  }
}

// Rows [r0, r1) and columns [c0, c1) of C(M x J) = A(M x P) * B(P x J) (+ bias), A read in
// place: a(r, p) = A[r * ars + p * aps]; B's kColTile-column panel q starting at B + q * bps,
// row p of it ldb floats further on (packed by pack_panels: bps = P * kColTile, ldb = kColTile;
// in place, row-major: bps = kColTile, ldb = J; the input gradient could read W so, but its
// rows are K floats apart and a 256-deep panel then spans 256 pages at K = 3072: measured
// 118 against 176 GFLOP/s packed at stage 4's shape).
// kWide: two panels per tile (the AVX-512 clones; panel_cols).
template <int RB, bool kWide = false>
SWIN_ALWAYS_INLINE void gemm_b(int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t P, const float* A, int64_t ars,
                               int64_t aps, const float* B, int64_t bps, int64_t ldb, const float* bias, float* C,
                               int64_t ldc) {
  for (int64_t jc = c0; jc < c1; jc += kColChunk) {
    const int64_t je = std::min(jc + kColChunk, c1);
    for (int64_t pc = 0; pc < P; pc += kDepth) {
      const int64_t depth = std::min(kDepth, P - pc);
      panel_cols<RB, kWide>(jc, je, r0, r1, depth, A + pc * aps, ars, aps, B + (jc / kColTile) * bps + pc * ldb, bps,
                            ldb, C, ldc, pc > 0, bias);
    }
  }
}

// The packing's ISA clones.
SWIN_CPU_CLONES((inline), pack_panels,
                (int64_t P, const float* S, int64_t lds, bool trans, float* Bp, int64_t pb, int64_t pe),
                pack_panels_body(P, S, lds, trans, Bp, pb, pe));

// Bp: src (P x J, or J x P when trans) in column panels, packed in parallel.
inline at::Tensor pack_b(int64_t P, int64_t J, const float* S, int64_t lds, bool trans, const at::TensorOptions& opts) {
  at::Tensor bp = at::empty({J / kColTile, P, kColTile}, opts);
  float* d = bp.mutable_data_ptr<float>();
  at::parallel_for(0, J / kColTile, 1,
                   [&](int64_t b, int64_t e) { SWIN_CPU_DISPATCH(pack_panels, (P, S, lds, trans, d, b, e)); });
  return bp;
}

// The start of part i of n of [0, total), on a multiple of `unit` (the last
// part ends at total): the parts are within a unit of each other.  Rows split
// on multiples of 12 (whole 4- and 6-row tiles, so only the last part can end
// in a partial tile), columns on whole kColTile panels.
// floor(total * i / n) without forming total * i: (total % n) * i < n^2, and n
// is at most total / 12 rows or total / 16 panels of a tensor in memory.
inline int64_t split_point(int64_t i, int64_t n, int64_t total, int64_t unit) {
  if (i == n) return total;
  return ((total / n) * i + (total % n) * i / n) / unit * unit;
}

// Splits C (M x J) over threads in blocks of at most ~kRowChunk rows and
// ~kColChunk columns, row-major: f(r0, r1, c0, c1) per block.  Every element
// of C is computed by one block, so the split never changes a result bit.
// - A short C (M <= kShortRows: stage 4's 196 rows at batch 4) is cut into
//   column chunks only, at least one per thread: each row chunk would stream
//   the packed B again (stage 4's fc weights are 9.4 MB), while all of A's
//   rows (kShortRows x kDepth floats) fit in L2.
// - A few blocks (stage 1's qkv weight gradient: 3 row chunks) are made a
//   multiple of the threads, columns first.
template <typename F>
void for_blocks(int64_t M, int64_t J, F&& f) {
  const int64_t panels = J / kColTile;
  const int64_t threads = at::get_num_threads();
  int64_t cols = ceil_div(J, kColChunk), rows = ceil_div(M, kRowChunk);
  if (M <= kShortRows) {
    rows = 1;
    cols = std::min(panels, ceil_div(std::max(cols, threads), threads) * threads);
  } else if (rows * cols < 8 * threads && (rows * cols) % threads != 0) {
    if (ceil_div(cols, threads) * threads <= panels)
      cols = ceil_div(cols, threads) * threads;
    else
      rows = std::min(ceil_div(M, int64_t(12)), ceil_div(rows, threads) * threads);
  }
  at::parallel_for(0, rows * cols, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t r = t / cols, c = t % cols;
      f(split_point(r, rows, M, 12), split_point(r + 1, rows, M, 12), split_point(c, cols, panels, 1) * kColTile,
        split_point(c + 1, cols, panels, 1) * kColTile);
    }
  });
}

// The operands' checks, with the op's name (`op`) in every message.
inline void check_gemm_operand(const char* op, const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
}

// (out, in) of a weight, checked: both positive multiples of kColTile.
inline std::pair<int64_t, int64_t> check_gemm_weight(const char* op, const at::Tensor& w, const char* name) {
  check_gemm_operand(op, w, name, 2);
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(N > 0 && K > 0 && N % kColTile == 0 && K % kColTile == 0, op, ": the ", name,
              "'s dimensions must be positive multiples of ", kColTile, ", got ", w.sizes());
  return {N, K};
}

}  // namespace cpu_gemm
}  // namespace swin_ext

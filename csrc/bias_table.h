// The relative-position bias table form of the attention's `bias` argument
// (CPU and CUDA, host and device; no ATen).
//
// Every Swin model keeps its relative-position bias as a table of one row per
// relative offset, ((2wt-1)(2wh-1)(2ww-1), heads) -- ((2ws-1)^2, heads) in
// 2-D -- and looks entry (i, j) of the (heads, N, N) bias up through the
// standard relative_position_index (swin_ext.layers.pos_bias): the offset of
// token i from token j per axis, d_a + w_a - 1, mixed-radix with radices
// 2 w_a - 1.  The attention ops take that table directly (bias.dim() == 2):
// the kernels gather the bias from it, and the backward returns the table's
// gradient, each row ("bin") the sum of dS over its token pairs, so that
// neither the (heads, N, N) bias nor its gradient is materialised per call.
//
// The index is implied by the window, not passed: it is the one every
// official, timm, torchvision, transformers and OpenMMLab checkpoint uses
// (load_pretrained refuses any other), so the kernels compute it from the
// token coordinates, the op needs no per-call check of an index tensor (a
// device sync on CUDA), and a bin's token pairs are enumerated by three
// loops instead of an inverse table.  A caller with another lookup passes the
// gathered (heads, N, N) bias instead.
//
// Summation order of a bin: its token pairs (i, j) in increasing i * N + j
// (increasing j, and i = j + offset), starting from zero -- the order of a
// scatter_add over the flattened (N, N) gradient.
#pragma once

#include <cstdint>

#include "swin_geometry.h"

namespace swin_ext {

// Rows of the table of a (wt, wh, ww) window ((2ws-1)^2 for a square 2-D one).
SWIN_HOST_DEVICE constexpr int64_t bias_table_rows(int64_t wt, int64_t wh, int64_t ww) {
  return (2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1);
}

// A window's token decode and the table's radices, for the two functions below.
struct BiasTableShape {
  int wt, wh, ww;  // window per axis (wt = 1: 2-D)
  int N;           // wt * wh * ww
  int rows;        // bias_table_rows(wt, wh, ww)

  SWIN_HOST_DEVICE static BiasTableShape make(int64_t wt, int64_t wh, int64_t ww) {
    BiasTableShape s;
    s.wt = static_cast<int>(wt);
    s.wh = static_cast<int>(wh);
    s.ww = static_cast<int>(ww);
    s.N = s.wt * s.wh * s.ww;
    s.rows = static_cast<int>(bias_table_rows(wt, wh, ww));
    return s;
  }
};

// The table row of token pair (i, j) from their coordinates in the window:
// relative_position_index(window)[i, j].
SWIN_HOST_DEVICE int bias_table_row(const BiasTableShape& s, int ti, int yi, int xi, int tj, int yj, int xj) {
  return ((ti - tj + s.wt - 1) * (2 * s.wh - 1) + (yi - yj + s.wh - 1)) * (2 * s.ww - 1) + (xi - xj + s.ww - 1);
}

// The same from the tokens' row-major indices (host code; kernels decode with
// their precomputed divisors and call the form above).
SWIN_HOST_DEVICE int bias_table_row(const BiasTableShape& s, int i, int j) {
  const int hw = s.wh * s.ww;
  const int ti = i / hw, yi = (i - ti * hw) / s.ww, xi = i - ti * hw - yi * s.ww;
  const int tj = j / hw, yj = (j - tj * hw) / s.ww, xj = j - tj * hw - yj * s.ww;
  return bias_table_row(s, ti, yi, xi, tj, yj, xj);
}

// Sum of load(i, j) (the gradient of the gathered bias at (i, j), as the
// accumulation type A) over the token pairs of the table row of offset
// (dt, dy, dx) (each in [-(w - 1), w - 1]), in the fixed order of the header
// comment.
template <typename A, typename Load>
SWIN_HOST_DEVICE A bias_bin_sum(const BiasTableShape& s, int dt, int dy, int dx, Load load) {
  const int offset = (dt * s.wh + dy) * s.ww + dx;  // i = j + offset
  A acc = A(0);
  const int t0 = dt < 0 ? -dt : 0, t1 = dt > 0 ? s.wt - dt : s.wt;
  const int y0 = dy < 0 ? -dy : 0, y1 = dy > 0 ? s.wh - dy : s.wh;
  const int x0 = dx < 0 ? -dx : 0, x1 = dx > 0 ? s.ww - dx : s.ww;
  // One pair per trip (`unroll 1`: a bin holds at most ww pairs per
  // window row, and the CUDA kernels' instruction counter reads these
  // loops' trips from benchmarks/sass_report.py's markers).
#pragma unroll 1
  for (int t = t0; t < t1; ++t) {
#pragma unroll 1
    for (int y = y0; y < y1; ++y) {
      const int jrow = (t * s.wh + y) * s.ww;
#pragma unroll 1
      for (int x = x0; x < x1; ++x) {
        const int j = jrow + x;
        acc += load(j + offset, j);
      }
    }
  }
  return acc;
}

// bias_bin_sum for windows at most 8 tokens wide (s.ww <= 8: Swin's 7 x 7):
// a window row's pairs (at most 8) are added under a predicate each, not one
// loop trip each -- the same pairs in the same order, so the same bits, at
// ~3 instructions a pair in place of ~7.  The tensor-core tile backward bins
// each block's sums with it.  `load` is called for the bin's pairs only.
template <typename A, typename Load>
SWIN_HOST_DEVICE A bias_bin_sum_narrow(const BiasTableShape& s, int dt, int dy, int dx, Load load) {
  const int offset = (dt * s.wh + dy) * s.ww + dx;  // i = j + offset
  A acc = A(0);
  const int t0 = dt < 0 ? -dt : 0, t1 = dt > 0 ? s.wt - dt : s.wt;
  const int y0 = dy < 0 ? -dy : 0, y1 = dy > 0 ? s.wh - dy : s.wh;
  const int x0 = dx < 0 ? -dx : 0, n = (dx > 0 ? s.ww - dx : s.ww) - x0;  // pairs per window row
#pragma unroll 1
  for (int t = t0; t < t1; ++t) {
#pragma unroll 1
    for (int y = y0; y < y1; ++y) {
      const int j0 = (t * s.wh + y) * s.ww + x0;
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (u < n) acc += load(j0 + u + offset, j0 + u);
      }
    }
  }
  return acc;
}

// The same for table row `row` (host code; kernels decode the row with their
// precomputed divisors).
template <typename A, typename Load>
SWIN_HOST_DEVICE A bias_bin_sum(const BiasTableShape& s, int row, Load load) {
  const int rw = 2 * s.ww - 1, rh = 2 * s.wh - 1;
  return bias_bin_sum<A>(s, row / (rw * rh) - (s.wt - 1), (row / rw) % rh - (s.wh - 1), row % rw - (s.ww - 1),
                         load);
}

}  // namespace swin_ext

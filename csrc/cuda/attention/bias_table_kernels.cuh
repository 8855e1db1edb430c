// The relative-position table form of the attention bias on the GPU
// (csrc/bias_table.h): the token-coordinate decode the tensor-core tile
// backward uses to read the table and to bin its bias gradient, and the two
// small kernels the glue runs around every other attention kernel -- the
// expansion of the table to the (heads, N, N) bias those kernels read, and
// the binning of their (heads, N, N) bias gradient into the table's rows.
//
// No run-time division: token and row decodes use the geometry's FastDiv
// multipliers (Geom::set_divisors).  The binning is one thread per (row,
// head) summing its token pairs in bias_bin_sum's fixed order: bitwise
// deterministic, no atomics.
//
// ATen-free (see cuda_compat.h); instantiated per accumulation type in
// attention_fp32.cu (float) and attention_fp64.cu (double).
#pragma once

#include <cstdint>

#include "../../bias_table.h"
#include "../cuda_compat.h"
#include "params.h"

namespace swin_ext {
namespace cuda {
namespace attn {

constexpr int kBiasTableThreads = 128;  // threads per block of the two kernels below

// Token i of a window (row-major (frame, row, column)) -> its coordinates.
__host__ __device__ __forceinline__ void window_coords(const Geom& g, int i, int& t, int& y, int& x) {
  int rem;
  g.div_area.divmod(i, t, rem);
  g.div_ww.divmod(rem, y, x);
}

// Token i's coordinates as one mixed-radix number with the table's radices,
// (t (2wh - 1) + y)(2ww - 1) + x: the table row of a pair is linear in it,
// bias_table_row(i, j) = code(i) - code(j) + bias_table_row(offset 0).
__host__ __device__ __forceinline__ int bias_table_code(const Geom& g, int i) {
  int t, y, x;
  window_coords(g, i, t, y, x);
  return (t * (2 * g.wh - 1) + y) * (2 * g.ww - 1) + x;
}

// A head's bias as the tile backward reads it, either form through one
// expression: entry (i, j) (i, j < N) is base[row_term_of(i) + col_term_of(j)]
// -- i * N + j in the head's (N, N) bias, or (code(i) - code(j) + row of
// offset 0) * heads in its column of the table, code = bias_table_code (the
// caller decodes each token's once), so an entry costs an add and a load in
// both forms.
struct HeadBias {
  const float* base;
  bool table;
  int N, heads, center;  // center: the table row of offset (0, 0, 0)

  __host__ __device__ __forceinline__ static HeadBias make(const AttnParams& p, int h) {
    HeadBias b;
    const uint32_t Nu = static_cast<uint32_t>(p.g.N);
    b.table = p.bias_table;
    b.base = static_cast<const float*>(p.bias) + (b.table ? static_cast<uint64_t>(h) : h * (static_cast<uint64_t>(Nu) * Nu));
    b.N = p.g.N;
    b.heads = p.heads;
    b.center = bias_table_row(BiasTableShape::make(p.g.wt, p.g.wh, p.g.ww), 0, 0, 0, 0, 0, 0);
    return b;
  }
  // The terms of token i (row) and j (key) from their codes (ignored for the gathered bias).
  __host__ __device__ __forceinline__ int row_term_of(int code, int i) const {
    return table ? (code + center) * heads : i * N;
  }
  __host__ __device__ __forceinline__ int col_term_of(int code, int j) const { return table ? -code * heads : j; }
  // (The sum is >= 0 for i, j < N: an unsigned offset, one wide multiply-add.)
  __host__ __device__ __forceinline__ float at(int row_t, int col_t) const {
    return base[static_cast<uint32_t>(row_t + col_t)];
  }
};

// Table row -> its relative offsets (dt, dy, dx), each in [-(w - 1), w - 1].
__host__ __device__ __forceinline__ void bias_table_offsets(const Geom& g, int row, int& dt, int& dy, int& dx) {
  int rem, ry, rx;
  g.div_rel_hw.divmod(row, dt, rem);
  g.div_rel_w.divmod(rem, ry, rx);
  dt -= g.wt - 1;
  dy = ry - (g.wh - 1);
  dx = rx - (g.ww - 1);
}

// full[h, i, j] = table[row(i, j), h].  Block blockIdx.x = h * N + i (row
// decode by div_n = N), its threads over the keys j.
template <typename A>
__global__ void __launch_bounds__(kBiasTableThreads) bias_table_expand_kernel(const A* table, A* full, Geom g,
                                                                              int heads, FastDiv div_n) {
  int h, i;
  div_n.divmod(blockIdx.x, h, i);
  const BiasTableShape s = BiasTableShape::make(g.wt, g.wh, g.ww);
  int ti, yi, xi;
  window_coords(g, i, ti, yi, xi);
  A* dst = full + static_cast<int64_t>(blockIdx.x) * g.N;
  for (int j = threadIdx.x; j < g.N; j += kBiasTableThreads) {
    int tj, yj, xj;
    window_coords(g, j, tj, yj, xj);
    dst[j] = table[static_cast<int64_t>(bias_table_row(s, ti, yi, xi, tj, yj, xj)) * heads + h];
  }
}

// dtable[row, h] = the sum of dfull[h, i, j] over the token pairs of the row,
// in bias_bin_sum's order.  One thread per element e = row * heads + h.
template <typename A>
__global__ void __launch_bounds__(kBiasTableThreads) bias_table_bin_kernel(const A* dfull, A* dtable, Geom g,
                                                                           int heads, int rows, FastDiv div_heads) {
  const int e = blockIdx.x * kBiasTableThreads + threadIdx.x;
  if (e >= rows * heads) return;
  int row, h, dt, dy, dx;
  div_heads.divmod(e, row, h);
  bias_table_offsets(g, row, dt, dy, dx);
  const BiasTableShape s = BiasTableShape::make(g.wt, g.wh, g.ww);
  const uint32_t Nu = static_cast<uint32_t>(g.N);
  const A* src = dfull + static_cast<int64_t>(h) * (static_cast<uint64_t>(Nu) * Nu);
  dtable[e] = bias_bin_sum<A>(s, dt, dy, dx, [&](int i, int j) { return src[static_cast<int64_t>(i) * Nu + j]; });
}

// p: geometry and heads filled (set_divisors done), bias_rows the table's
// rows; the glue checks heads * N and rows * heads below 2^31.
template <typename A>
cudaError_t bias_table_expand(const AttnParams& p, const void* table, void* full, cudaStream_t stream) {
  const int64_t blocks = static_cast<int64_t>(p.heads) * p.g.N;
  if (blocks == 0) return cudaSuccess;
  SWIN_LAUNCH_KERNEL((bias_table_expand_kernel<A>), dim3(static_cast<unsigned>(blocks)), kBiasTableThreads, 0,
                     stream, static_cast<const A*>(table), static_cast<A*>(full), p.g, p.heads,
                     FastDiv::make(p.g.N));
  return cudaSuccess;
}

template <typename A>
cudaError_t bias_table_bin(const AttnParams& p, const void* dfull, void* dtable, cudaStream_t stream) {
  const int64_t elems = static_cast<int64_t>(p.bias_rows) * p.heads;
  if (elems == 0) return cudaSuccess;
  const int64_t blocks = (elems + kBiasTableThreads - 1) / kBiasTableThreads;
  SWIN_LAUNCH_KERNEL((bias_table_bin_kernel<A>), dim3(static_cast<unsigned>(blocks)), kBiasTableThreads, 0, stream,
                     static_cast<const A*>(dfull), static_cast<A*>(dtable), p.g, p.heads, p.bias_rows,
                     FastDiv::make(p.heads));
  return cudaSuccess;
}

#define SWIN_BIAS_TABLE_INSTANTIATE(A)                                                        \
  template cudaError_t bias_table_expand<A>(const AttnParams&, const void*, void*, cudaStream_t); \
  template cudaError_t bias_table_bin<A>(const AttnParams&, const void*, void*, cudaStream_t);

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext

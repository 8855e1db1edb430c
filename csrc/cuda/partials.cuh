// The fixed-order reduction of the backward kernels' per-block partial rows:
// for a (2, rows, n) workspace, out_a[c] = sum_r part[0][r][c] and out_b[c] =
// sum_r part[1][r][c], in one launch (the dweight / dbias partials of add+LN
// and patch merging).  ATen-free: the CPU harness compiles it too.
//
// Why a kernel of its own: the glue summed each partial matrix with ATen's
// `sum(0)`, two launches per backward call where one does (add+LN runs twice
// per transformer block: 27 launches of a Swin-T training step).
//
// The order depends on `rows` alone: warp w of a block sums rows w, w + 8,
// w + 16, ... of its lane's column in increasing order, then the block adds
// the 8 warp sums in warp order.  So the result is bitwise reproducible, run
// to run and whatever the scheduling (the harness shuffles its threads).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace swin_ext {
namespace cuda {

// Row phases per block (one warp each) and columns per block (one per lane).
constexpr int kPartialWarps = 8;
constexpr int kPartialCols = 32;

// part: (2, rows, n), the two matrices one after the other; the block's
// columns [0, n) of [0, 2n) are the first's (to out_a), [n, 2n) the second's.
template <typename A>
__global__ void __launch_bounds__(kPartialWarps * 32)
    sum_partials_kernel(const A* __restrict__ part, A* __restrict__ out_a, A* __restrict__ out_b, int rows, int n) {
  __shared__ A s_sum[kPartialWarps * kPartialCols];  // [warp][lane]
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int col = static_cast<int>(blockIdx.x) * kPartialCols + lane;
  const bool second = col >= n;
  const int c = second ? col - n : col;
  A s = A(0);
  if (col < 2 * n) {
    const A* p = part + (second ? static_cast<int64_t>(rows) * n : 0) + c;
#pragma unroll 4
    for (int r = warp; r < rows; r += kPartialWarps) s += p[static_cast<int64_t>(r) * n];
  }
  s_sum[warp * kPartialCols + lane] = s;
  __syncthreads();
  if (warp == 0 && col < 2 * n) {
    A t = s_sum[lane];
#pragma unroll
    for (int w = 1; w < kPartialWarps; ++w) t += s_sum[w * kPartialCols + lane];
    (second ? out_b : out_a)[c] = t;
  }
}

// part: (2, rows, n) row-major; out_a, out_b: (n,).  rows = 0 writes zeros.
// 2n fits an int (the callers' C is checked far below that).
template <typename A>
void launch_sum_partials(const A* part, A* out_a, A* out_b, int64_t rows, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(2 * n, kPartialCols)));
  SWIN_LAUNCH_KERNEL((sum_partials_kernel<A>), grid, dim3(kPartialWarps * 32), 0, stream, part, out_a, out_b,
                     static_cast<int>(rows), static_cast<int>(n));
}

// Instantiated in partials_kernels.cu (compiled by the harness too); extern here for the glue.
#define SWIN_PARTIALS_LAUNCHER(PREFIX, A) \
  PREFIX template void launch_sum_partials<A>(const A*, A*, A*, int64_t, int64_t, cudaStream_t);
#ifndef SWIN_PARTIALS_INSTANTIATING
SWIN_PARTIALS_LAUNCHER(extern, float)
SWIN_PARTIALS_LAUNCHER(extern, double)
#endif

}  // namespace cuda
}  // namespace swin_ext

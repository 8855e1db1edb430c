// Small real kernels that exercise the harness the way the project's kernels
// do (templates over the dtype, fp32/fp64 accumulation, dynamic and static
// shared memory, block and warp reductions).  Exposed on CPU tensors by the
// test-only swin_ext_harness extension and checked against PyTorch.  Plain
// CUDA: they compile with nvcc as well.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace swin_demo {

// The project's device helpers (csrc/cuda/common.cuh), under the names the
// demo kernels use.
template <typename T>
using Acc = swin_ext::cuda::AccType<T>;
using swin_ext::cuda::acc_exp;
using swin_ext::cuda::acc_rsqrt;
using swin_ext::cuda::from_acc;
using swin_ext::cuda::neg_inf;
using swin_ext::cuda::to_acc;
template <typename T>
__device__ __forceinline__ T warp_allreduce_sum(T v) {
  return swin_ext::cuda::warp_sum(v);
}
template <typename T>
__device__ __forceinline__ T warp_allreduce_max(T v) {
  return swin_ext::cuda::warp_max(v);
}

// Block-wide all-reduce through a static __shared__ array (one slot per warp).
template <typename T, int BLOCK, bool IS_MAX>
__device__ __forceinline__ T block_allreduce(T v) {
  __shared__ T red[BLOCK / 32];
  v = IS_MAX ? warp_allreduce_max(v) : warp_allreduce_sum(v);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  T r = red[0];
  for (int w = 1; w < BLOCK / 32; ++w) r = IS_MAX ? max(r, red[w]) : r + red[w];
  __syncthreads();  // red is reused by the next reduction
  return r;
}

// ---------------------------------------------------------------------------
// Row softmax: one block per row, the row cached in dynamic shared memory.
template <typename scalar_t, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    row_softmax_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t cols) {
  using acc_t = typename Acc<scalar_t>::type;
  SWIN_DYNAMIC_SHARED(acc_t, row);
  const scalar_t* xr = x + static_cast<int64_t>(blockIdx.x) * cols;
  scalar_t* yr = y + static_cast<int64_t>(blockIdx.x) * cols;
  acc_t mx = neg_inf<acc_t>();
  for (int64_t c = threadIdx.x; c < cols; c += BLOCK) {
    const acc_t v = to_acc(xr[c]);
    row[c] = v;
    mx = max(mx, v);
  }
  mx = block_allreduce<acc_t, BLOCK, true>(mx);
  acc_t sum = 0;
  for (int64_t c = threadIdx.x; c < cols; c += BLOCK) {
    const acc_t e = acc_exp(row[c] - mx);
    row[c] = e;
    sum += e;
  }
  sum = block_allreduce<acc_t, BLOCK, false>(sum);
  const acc_t inv = acc_t(1) / sum;
  for (int64_t c = threadIdx.x; c < cols; c += BLOCK) yr[c] = from_acc<scalar_t>(row[c] * inv);
}

template <typename scalar_t>
void launch_row_softmax(const scalar_t* x, scalar_t* y, int64_t rows, int64_t cols,
                        cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  constexpr int kBlock = 128;
  if (rows == 0 || cols == 0) return;
  const size_t smem = static_cast<size_t>(cols) * sizeof(acc_t);
  SWIN_LAUNCH_KERNEL((row_softmax_kernel<scalar_t, kBlock>), static_cast<unsigned>(rows), kBlock,
                     smem, stream, x, y, cols);
}

// ---------------------------------------------------------------------------
// LayerNorm forward: one warp per row, ROWS rows per block; returns mean and
// rstd as the project's patch-merging kernel does.
template <typename scalar_t, int ROWS>
__global__ void __launch_bounds__(ROWS * 32)
    layer_norm_fwd_kernel(const scalar_t* __restrict__ x,
                          const typename Acc<scalar_t>::type* __restrict__ weight,
                          const typename Acc<scalar_t>::type* __restrict__ bias,
                          scalar_t* __restrict__ y, typename Acc<scalar_t>::type* __restrict__ mean,
                          typename Acc<scalar_t>::type* __restrict__ rstd, int64_t rows,
                          int64_t cols, typename Acc<scalar_t>::type eps) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * ROWS + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp leaves together
  const scalar_t* xr = x + r * cols;
  acc_t s = 0;
  for (int64_t c = lane; c < cols; c += 32) s += to_acc(xr[c]);
  const acc_t mu = warp_allreduce_sum(s) / static_cast<acc_t>(cols);
  acc_t q = 0;
  for (int64_t c = lane; c < cols; c += 32) {
    const acc_t d = to_acc(xr[c]) - mu;
    q += d * d;
  }
  const acc_t rs = acc_rsqrt(warp_allreduce_sum(q) / static_cast<acc_t>(cols) + eps);
  for (int64_t c = lane; c < cols; c += 32)
    y[r * cols + c] = from_acc<scalar_t>((to_acc(xr[c]) - mu) * rs * weight[c] + bias[c]);
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

template <typename scalar_t>
void launch_layer_norm_fwd(const scalar_t* x, const typename Acc<scalar_t>::type* weight,
                           const typename Acc<scalar_t>::type* bias, scalar_t* y,
                           typename Acc<scalar_t>::type* mean, typename Acc<scalar_t>::type* rstd,
                           int64_t rows, int64_t cols, double eps, cudaStream_t stream) {
  constexpr int kRows = 4;
  if (rows == 0) return;
  const unsigned blocks = static_cast<unsigned>((rows + kRows - 1) / kRows);
  SWIN_LAUNCH_KERNEL((layer_norm_fwd_kernel<scalar_t, kRows>), blocks, kRows * 32, 0, stream, x,
                     weight, bias, y, mean, rstd, rows, cols,
                     static_cast<typename Acc<scalar_t>::type>(eps));
}

}  // namespace swin_demo

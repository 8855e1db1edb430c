// CUDA kernels of patch merging: 2x2 gather (zero padding of odd H/W, the
// official quadrant order) fused with LayerNorm over the 4C channels.
//
//   forward   merge_fwd_kernel     one warp per output pixel, 16-byte packed
//             loads/stores where aligned; mean and variance in two passes
//             over the (cached) gathered row.
//   backward  merge_bwd_dx_kernel  one warp per output pixel: LayerNorm
//             backward + scatter into dx.
//             merge_bwd_dwdb_kernel  one thread per (channel, pixel chunk):
//             weight/bias gradient partials over a fixed chunk of pixels,
//             summed by the caller (deterministic, no atomics).
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>

#include "../swin_geometry.h"
#include "common.cuh"

namespace swin_ext {
namespace cuda {

constexpr int kMergeWarps = 4;
constexpr int kMergePixelsPerPartial = 256;

// Value of gathered channel k (0 <= k < 4C) of output pixel (b, oy, ox).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t merged_value(const scalar_t* x, int64_t H, int64_t W, int64_t C,
                                              int64_t b, int64_t oy, int64_t ox, int64_t k) {
  const int q = static_cast<int>(k / C);
  const int64_t c = k - q * C;
  int64_t y, xx;
  if (!merge_source(H, W, oy, ox, q, &y, &xx)) return acc_t(0);
  return to_acc(x[((b * H + y) * W + xx) * C + c]);
}

// VEC consecutive channels of one source pixel as one 16-byte (or smaller)
// load: the quadrant's C channels are contiguous in memory.
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// Gathered channels [k, k + VEC) of output pixel (b, oy, ox) in acc_t; k is a
// multiple of VEC and C % VEC == 0, so they come from one quadrant.
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void merged_pack(const scalar_t* x, int64_t H, int64_t W, int64_t C,
                                            int64_t b, int64_t oy, int64_t ox, int64_t k,
                                            acc_t* out) {
  const int q = static_cast<int>(k / C);
  const int64_t c = k - q * C;
  int64_t y, xx;
  if (!merge_source(H, W, oy, ox, q, &y, &xx)) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = acc_t(0);
    return;
  }
  const Pack<scalar_t, VEC> p =
      *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + ((b * H + y) * W + xx) * C + c);
#pragma unroll
  for (int e = 0; e < VEC; ++e) out[e] = to_acc(p.v[e]);
}

// Forward: one warp per output pixel; lanes read VEC channels at a time
// (vectorised loads and stores), mean and variance in two passes over the
// cached gathered row.
template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kMergeWarps * 32)
    merge_fwd_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ weight,
                     const acc_t* __restrict__ bias, scalar_t* __restrict__ y,
                     acc_t* __restrict__ mean, acc_t* __restrict__ rstd, int64_t B, int64_t H,
                     int64_t W, int64_t C, acc_t eps) {
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2, C4 = 4 * C;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (pix >= B * H2 * W2) return;  // the whole warp leaves together
  const int64_t ox = pix % W2, oy = (pix / W2) % H2, b = pix / (W2 * H2);
  acc_t v[VEC];
  acc_t s = 0;
  for (int64_t k = lane * VEC; k < C4; k += 32 * VEC) {
    merged_pack<scalar_t, acc_t, VEC>(x, H, W, C, b, oy, ox, k, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) s += v[e];
  }
  const acc_t mu = warp_sum(s) / static_cast<acc_t>(C4);
  acc_t var = 0;
  for (int64_t k = lane * VEC; k < C4; k += 32 * VEC) {
    merged_pack<scalar_t, acc_t, VEC>(x, H, W, C, b, oy, ox, k, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) var += (v[e] - mu) * (v[e] - mu);
  }
  const acc_t rs = acc_rsqrt(warp_sum(var) / static_cast<acc_t>(C4) + eps);
  scalar_t* dst = y + pix * C4;
  for (int64_t k = lane * VEC; k < C4; k += 32 * VEC) {
    merged_pack<scalar_t, acc_t, VEC>(x, H, W, C, b, oy, ox, k, v);
    Pack<scalar_t, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = from_acc<scalar_t>((v[e] - mu) * rs * weight[k + e] + bias[k + e]);
    *reinterpret_cast<Pack<scalar_t, VEC>*>(dst + k) = o;
  }
  if (lane == 0) {
    mean[pix] = mu;
    rstd[pix] = rs;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMergeWarps * 32)
    merge_bwd_dx_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                        const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                        const acc_t* __restrict__ rstd, scalar_t* __restrict__ dx, int64_t B,
                        int64_t H, int64_t W, int64_t C) {
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2, C4 = 4 * C;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (pix >= B * H2 * W2) return;
  const int64_t ox = pix % W2, oy = (pix / W2) % H2, b = pix / (W2 * H2);
  const acc_t mu = mean[pix], rs = rstd[pix];
  const scalar_t* go = grad_out + pix * C4;
  acc_t sg = 0, sgx = 0;
  for (int64_t k = lane; k < C4; k += 32) {
    const acc_t g = to_acc(go[k]) * weight[k];
    const acc_t xh = (merged_value<scalar_t, acc_t>(x, H, W, C, b, oy, ox, k) - mu) * rs;
    sg += g;
    sgx += g * xh;
  }
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C4);
  const acc_t mg = warp_sum(sg) * inv_n, mgx = warp_sum(sgx) * inv_n;
  for (int64_t k = lane; k < C4; k += 32) {
    const int q = static_cast<int>(k / C);
    const int64_t c = k - q * C;
    int64_t yy, xx;
    if (!merge_source(H, W, oy, ox, q, &yy, &xx)) continue;  // padding: no gradient
    const int64_t src = ((b * H + yy) * W + xx) * C + c;
    const acc_t xh = (to_acc(x[src]) - mu) * rs;
    const acc_t g = to_acc(go[k]) * weight[k];
    dx[src] = from_acc<scalar_t>(rs * (g - mg - xh * mgx));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(128)
    merge_bwd_dwdb_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                          const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                          acc_t* __restrict__ dw_part, acc_t* __restrict__ db_part, int64_t B,
                          int64_t H, int64_t W, int64_t C) {
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2, C4 = 4 * C, P = B * H2 * W2;
  const int64_t k = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.x;
  if (k >= C4) return;
  const int64_t p0 = chunk * kMergePixelsPerPartial;
  const int64_t p1 = p0 + kMergePixelsPerPartial < P ? p0 + kMergePixelsPerPartial : P;
  acc_t dw = 0, db = 0;
  for (int64_t pix = p0; pix < p1; ++pix) {
    const int64_t ox = pix % W2, oy = (pix / W2) % H2, b = pix / (W2 * H2);
    const acc_t g = to_acc(grad_out[pix * C4 + k]);
    const acc_t xh = (merged_value<scalar_t, acc_t>(x, H, W, C, b, oy, ox, k) - mean[pix]) * rstd[pix];
    dw += g * xh;
    db += g;
  }
  dw_part[chunk * C4 + k] = dw;
  db_part[chunk * C4 + k] = db;
}

inline int64_t merge_num_partials(int64_t B, int64_t H, int64_t W) {
  return ceil_div64(B * ((H + 1) / 2) * ((W + 1) / 2), kMergePixelsPerPartial);
}

// y (B, ceil(H/2), ceil(W/2), 4C), mean/rstd (B, H2, W2).
template <typename scalar_t, typename acc_t>
void launch_patch_merging_fwd(const scalar_t* x, const acc_t* weight, const acc_t* bias,
                              scalar_t* y, acc_t* mean, acc_t* rstd, int64_t B, int64_t H,
                              int64_t W, int64_t C, double eps, cudaStream_t stream) {
  const int64_t P = B * ((H + 1) / 2) * ((W + 1) / 2);
  if (P == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div64(P, kMergeWarps));
  // 16-byte packs when every source row and output row stays aligned.
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(y) % 16 == 0;
  if (aligned && C % kVec == 0) {
    SWIN_LAUNCH_KERNEL((merge_fwd_kernel<scalar_t, acc_t, kVec>), blocks, kMergeWarps * 32, 0,
                       stream, x, weight, bias, y, mean, rstd, B, H, W, C, static_cast<acc_t>(eps));
  } else {
    SWIN_LAUNCH_KERNEL((merge_fwd_kernel<scalar_t, acc_t, 1>), blocks, kMergeWarps * 32, 0, stream,
                       x, weight, bias, y, mean, rstd, B, H, W, C, static_cast<acc_t>(eps));
  }
}

// dx (B, H, W, C); dw_part/db_part (merge_num_partials(B, H, W), 4C), summed
// over dim 0 by the caller.
template <typename scalar_t, typename acc_t>
void launch_patch_merging_bwd(const scalar_t* grad_out, const scalar_t* x, const acc_t* weight,
                              const acc_t* mean, const acc_t* rstd, scalar_t* dx, acc_t* dw_part,
                              acc_t* db_part, int64_t B, int64_t H, int64_t W, int64_t C,
                              cudaStream_t stream) {
  const int64_t P = B * ((H + 1) / 2) * ((W + 1) / 2);
  if (P == 0 || C == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div64(P, kMergeWarps));
  SWIN_LAUNCH_KERNEL((merge_bwd_dx_kernel<scalar_t, acc_t>), blocks, kMergeWarps * 32, 0, stream,
                     grad_out, x, weight, mean, rstd, dx, B, H, W, C);
  const dim3 grid(static_cast<unsigned>(merge_num_partials(B, H, W)),
                  static_cast<unsigned>(ceil_div64(4 * C, 128)));
  SWIN_LAUNCH_KERNEL((merge_bwd_dwdb_kernel<scalar_t, acc_t>), grid, 128, 0, stream, grad_out, x,
                     mean, rstd, dw_part, db_part, B, H, W, C);
}

}  // namespace cuda
}  // namespace swin_ext

// CUDA kernels of patch merging: 2x2 gather (zero padding of odd H/W, the
// official quadrant order) fused with LayerNorm over the 4C channels.
//
//   forward   merge_fwd_kernel   one warp per output pixel; lanes walk the
//             gathered row quadrant by quadrant in VEC-element (16-byte)
//             packs; the statistics in passes over the row (L1-hot,
//             layernorm_stats.cuh), then the normalised row.
//   backward  merge_bwd_kernel   one warp per output pixel, the same walk:
//             pass 1 forms the row sums of g = dy * weight and g * xhat, pass
//             2 writes dx as 16-byte packs and adds dy * xhat, dy to the
//             warp's dweight / dbias accumulators in shared memory (each
//             channel owned by one lane, pixels in a fixed order).  A block
//             covers a fixed range of pixels and writes one partial row per
//             block, its warps summed in order; the caller sums the partials
//             (deterministic, no atomics).
// The pixel index is split into (b, oy, ox) once per pixel in 32-bit
// arithmetic; the channel loops carry no division.
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>

#include "../swin_geometry.h"
#include "common.cuh"
#include "layernorm_stats.cuh"

namespace swin_ext {
namespace cuda {

constexpr int kMergeWarps = 4;
constexpr int kMergePixelsPerWarp = 16;              // backward: pixels per warp per block
constexpr int kMergeBwdMaxSmem = 48 * 1024;          // dweight / dbias accumulators per block

// Where the four quadrants of an output pixel come from: element offsets of
// the source pixels' channel rows, or -1 for zero padding (odd H / W).
struct MergeSrc {
  int64_t off[4];
};

__device__ __forceinline__ MergeSrc merge_sources(int pix, int H, int W, int H2, int W2, int C) {
  const int ox = pix % W2;
  const int t = pix / W2;
  const int oy = t % H2, b = t / H2;
  MergeSrc s;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int y = 2 * oy + (q & 1), x = 2 * ox + (q >> 1);  // x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1)
    s.off[q] = (y < H && x < W) ? ((static_cast<int64_t>(b) * H + y) * W + x) * C : int64_t(-1);
  }
  return s;
}

// Offset of quadrant q by selects, not an indexed load: a quadrant loop the
// compiler does not unroll would otherwise put MergeSrc in local memory.
__device__ __forceinline__ int64_t merge_off(const MergeSrc& s, int q) {
  return q == 0 ? s.off[0] : q == 1 ? s.off[1] : q == 2 ? s.off[2] : s.off[3];
}

// VEC consecutive elements as one 16-byte (or smaller) access.
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void load_pack(const scalar_t* p, acc_t* out) {
  const Pack<scalar_t, VEC> pk = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
  for (int e = 0; e < VEC; ++e) out[e] = to_acc(pk.v[e]);
}

template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void store_pack(scalar_t* p, const acc_t* v) {
  Pack<scalar_t, VEC> pk;
#pragma unroll
  for (int e = 0; e < VEC; ++e) pk.v[e] = from_acc<scalar_t>(v[e]);
  *reinterpret_cast<Pack<scalar_t, VEC>*>(p) = pk;
}

// Gathered channels [q*C + c, + VEC) of a pixel (zeros for padding).
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void load_quadrant(const scalar_t* x, const MergeSrc& s, int q, int c, acc_t* v) {
  const int64_t off = merge_off(s, q);
  if (off < 0) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = acc_t(0);
  } else {
    load_pack<scalar_t, acc_t, VEC>(x + off + c, v);
  }
}

// Forward: one warp per output pixel; the statistics as the CPU kernel
// computes them (layernorm_stats.cuh: right for every finite input).
template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kMergeWarps * 32, 1)
    merge_fwd_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ weight,
                     const acc_t* __restrict__ bias, scalar_t* __restrict__ y,
                     acc_t* __restrict__ mean, acc_t* __restrict__ rstd, int B, int H, int W, int C,
                     acc_t eps, acc_t inv_n) {
  const int H2 = (H + 1) / 2, W2 = (W + 1) / 2, C4 = 4 * C;
  const int pix = blockIdx.x * kMergeWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (pix >= B * H2 * W2) return;  // the whole warp leaves together
  const MergeSrc src = merge_sources(pix, H, W, H2, W2, C);
  auto for_each = [&](auto&& fn) {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      for (int c = lane * VEC; c < C; c += 32 * VEC) {
        acc_t v[VEC];
        load_quadrant<scalar_t, acc_t, VEC>(x, src, q, c, v);
        fn(v);
      }
  };
  const RowStats<acc_t> st = warp_row_stats<acc_t, VEC>(for_each, inv_n, eps);
  scalar_t* dst = y + static_cast<int64_t>(pix) * C4;
#pragma unroll
  for (int q = 0; q < 4; ++q)
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      acc_t v[VEC];
      load_quadrant<scalar_t, acc_t, VEC>(x, src, q, c, v);
      const int kk = q * C + c;
      acc_t o[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[e] = (v[e] * st.scale - st.mean) * st.rstd * weight[kk + e] + bias[kk + e];
      store_pack<scalar_t, acc_t, VEC>(dst + kk, o);
    }
  if (lane == 0) {
    mean[pix] = st.stored_mean();
    rstd[pix] = st.stored_rstd();
  }
}

// Shared memory of the backward: per warp, dweight and dbias accumulators.
inline size_t merge_bwd_smem(int nwarps, int64_t C4, size_t acc_size) {
  return static_cast<size_t>(nwarps) * 2 * C4 * acc_size;
}

// Warps per backward block: as many as kMergeWarps whose accumulators fit
// kMergeBwdMaxSmem (0: not even one).
inline int merge_bwd_warps(int64_t C4, size_t acc_size) {
  for (int w = kMergeWarps; w >= 1; --w)
    if (merge_bwd_smem(w, C4, acc_size) <= kMergeBwdMaxSmem) return w;
  return 0;
}

inline int64_t merge_bwd_pixels_per_block(int nwarps) { return static_cast<int64_t>(nwarps) * kMergePixelsPerWarp; }

// Backward: block = a fixed range of pixels, one warp per pixel at a time.
template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kMergeWarps * 32, 1)
    merge_bwd_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                     const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                     const acc_t* __restrict__ rstd, scalar_t* __restrict__ dx,
                     acc_t* __restrict__ dw_part, acc_t* __restrict__ db_part, int B, int H, int W,
                     int C, acc_t inv_n) {
  SWIN_DYNAMIC_SHARED(acc_t, smem);
  const int H2 = (H + 1) / 2, W2 = (W + 1) / 2, C4 = 4 * C;
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int P = B * H2 * W2;
  acc_t* dw_acc = smem + static_cast<int64_t>(warp) * 2 * C4;
  acc_t* db_acc = dw_acc + C4;
  for (int k = lane; k < 2 * C4; k += 32) dw_acc[k] = acc_t(0);  // the warp's own accumulators
  __syncwarp();

  const int p0 = blockIdx.x * nwarps * kMergePixelsPerWarp;
  const int p1 = p0 + nwarps * kMergePixelsPerWarp < P ? p0 + nwarps * kMergePixelsPerWarp : P;
  for (int pix = p0 + warp; pix < p1; pix += nwarps) {
    const MergeSrc src = merge_sources(pix, H, W, H2, W2, C);
    const acc_t mu = mean[pix], rs = rstd[pix];
    const scalar_t* go = grad_out + static_cast<int64_t>(pix) * C4;
    acc_t xv[VEC], gv[VEC];
    acc_t sg = 0, sgx = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q)
      for (int c = lane * VEC; c < C; c += 32 * VEC) {
        const int k = q * C + c;
        load_quadrant<scalar_t, acc_t, VEC>(x, src, q, c, xv);
        load_pack<scalar_t, acc_t, VEC>(go + k, gv);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const acc_t g = gv[e] * weight[k + e];
          sg += g;
          sgx += g * (xv[e] - mu) * rs;
        }
      }
    const acc_t mg = warp_sum(sg) * inv_n, mgx = warp_sum(sgx) * inv_n;
#pragma unroll
    for (int q = 0; q < 4; ++q)
      for (int c = lane * VEC; c < C; c += 32 * VEC) {
        const int k = q * C + c;
        load_quadrant<scalar_t, acc_t, VEC>(x, src, q, c, xv);  // L1-hot: read in pass 1
        load_pack<scalar_t, acc_t, VEC>(go + k, gv);
        acc_t d[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const acc_t xh = (xv[e] - mu) * rs;
          d[e] = rs * (gv[e] * weight[k + e] - mg - xh * mgx);
          dw_acc[k + e] += gv[e] * xh;
          db_acc[k + e] += gv[e];
        }
        const int64_t off = merge_off(src, q);
        if (off >= 0) store_pack<scalar_t, acc_t, VEC>(dx + off + c, d);  // padding: no gradient
      }
  }
  __syncthreads();
  // One partial row per block: the warps' accumulators summed in warp order.
  for (int k = threadIdx.x; k < C4; k += blockDim.x) {
    acc_t w = 0, b = 0;
    for (int j = 0; j < nwarps; ++j) {
      w += smem[static_cast<int64_t>(j) * 2 * C4 + k];
      b += smem[static_cast<int64_t>(j) * 2 * C4 + C4 + k];
    }
    dw_part[static_cast<int64_t>(blockIdx.x) * C4 + k] = w;
    db_part[static_cast<int64_t>(blockIdx.x) * C4 + k] = b;
  }
}

inline int64_t merge_num_partials(int64_t B, int64_t H, int64_t W, int nwarps) {
  return ceil_div64(B * ((H + 1) / 2) * ((W + 1) / 2), merge_bwd_pixels_per_block(nwarps));
}

template <typename scalar_t>
inline bool merge_vec_ok(int64_t C, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if (C % kVec != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// y (B, ceil(H/2), ceil(W/2), 4C), mean/rstd (B, H2, W2).  Sizes are
// checked by the caller to fit 32-bit pixel indices.
template <typename scalar_t, typename acc_t>
void launch_patch_merging_fwd(const scalar_t* x, const acc_t* weight, const acc_t* bias,
                              scalar_t* y, acc_t* mean, acc_t* rstd, int64_t B, int64_t H,
                              int64_t W, int64_t C, double eps, cudaStream_t stream) {
  const int64_t P = B * ((H + 1) / 2) * ((W + 1) / 2);
  if (P == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div64(P, kMergeWarps));
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int b = static_cast<int>(B), h = static_cast<int>(H), w = static_cast<int>(W), c = static_cast<int>(C);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(4 * C);  // on the host: no division in the kernel
  if (merge_vec_ok<scalar_t>(C, {x, y})) {
    SWIN_LAUNCH_KERNEL((merge_fwd_kernel<scalar_t, acc_t, kVec>), blocks, kMergeWarps * 32, 0,
                       stream, x, weight, bias, y, mean, rstd, b, h, w, c, static_cast<acc_t>(eps), inv_n);
  } else {
    SWIN_LAUNCH_KERNEL((merge_fwd_kernel<scalar_t, acc_t, 1>), blocks, kMergeWarps * 32, 0, stream,
                       x, weight, bias, y, mean, rstd, b, h, w, c, static_cast<acc_t>(eps), inv_n);
  }
}

// dx (B, H, W, C); dw_part/db_part (merge_num_partials(B, H, W, nwarps), 4C),
// summed over dim 0 by the caller; nwarps = merge_bwd_warps(4C, sizeof(acc_t)).
template <typename scalar_t, typename acc_t>
void launch_patch_merging_bwd(const scalar_t* grad_out, const scalar_t* x, const acc_t* weight,
                              const acc_t* mean, const acc_t* rstd, scalar_t* dx, acc_t* dw_part,
                              acc_t* db_part, int64_t B, int64_t H, int64_t W, int64_t C, int nwarps,
                              cudaStream_t stream) {
  const int64_t P = B * ((H + 1) / 2) * ((W + 1) / 2);
  if (P == 0 || C == 0) return;
  const unsigned blocks = static_cast<unsigned>(merge_num_partials(B, H, W, nwarps));
  const size_t smem = merge_bwd_smem(nwarps, 4 * C, sizeof(acc_t));
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int b = static_cast<int>(B), h = static_cast<int>(H), w = static_cast<int>(W), c = static_cast<int>(C);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(4 * C);
  if (merge_vec_ok<scalar_t>(C, {grad_out, x, dx})) {
    SWIN_LAUNCH_KERNEL((merge_bwd_kernel<scalar_t, acc_t, kVec>), blocks, nwarps * 32, smem, stream,
                       grad_out, x, weight, mean, rstd, dx, dw_part, db_part, b, h, w, c, inv_n);
  } else {
    SWIN_LAUNCH_KERNEL((merge_bwd_kernel<scalar_t, acc_t, 1>), blocks, nwarps * 32, smem, stream,
                       grad_out, x, weight, mean, rstd, dx, dw_part, db_part, b, h, w, c, inv_n);
  }
}

// Instantiated in patch_merging_kernels.cu (a translation unit of its own,
// compiled in parallel and by the harness), extern for everyone else.
#define SWIN_MERGE_LAUNCHERS(PREFIX, T)                                                               \
  PREFIX template void launch_patch_merging_fwd<T, AccType<T>::type>(                               \
      const T*, const AccType<T>::type*, const AccType<T>::type*, T*, AccType<T>::type*,             \
      AccType<T>::type*, int64_t, int64_t, int64_t, int64_t, double, cudaStream_t);                  \
  PREFIX template void launch_patch_merging_bwd<T, AccType<T>::type>(                               \
      const T*, const T*, const AccType<T>::type*, const AccType<T>::type*, const AccType<T>::type*, \
      T*, AccType<T>::type*, AccType<T>::type*, int64_t, int64_t, int64_t, int64_t, int, cudaStream_t);
#define SWIN_MERGE_TYPES(X) X(float) X(double) X(__half) X(__nv_bfloat16)
#define SWIN_MERGE_EXTERN(T) SWIN_MERGE_LAUNCHERS(extern, T)
#ifndef SWIN_MERGE_INSTANTIATING
SWIN_MERGE_TYPES(SWIN_MERGE_EXTERN)
#endif

}  // namespace cuda
}  // namespace swin_ext

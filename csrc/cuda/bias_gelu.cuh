// CUDA kernels of fc1's epilogue: y = GELU(z + bias), the exact (erf) GELU
// of nn.GELU(), over the (rows, K) output z of fc1's bias-free GEMM, and its
// backward dz = dy * GELU'(z + bias) with dbias = the column sums of dz.
//
// Against torch's addmm (bias in the GEMM epilogue) + GELU the forward moves
// the same bytes (z read, y written); the backward writes dz and the bias
// gradient in one pass, where torch's GELU backward writes dz and the bias
// gradient reads it again (a (tokens, 4C) pass saved per block).
//
//   bias_gelu_fwd_kernel   block = kBgWarps warps x 32 lanes; lane l of a
//             block owns the 16-byte column vector blockIdx.x * 32 + l (bias
//             read once into registers), warp w the rows w, w + kBgWarps, ...
//             of the block's chunk of kBgRows rows (blockIdx.y): coalesced
//             16-byte loads and stores, no division in the loops.
//   bias_gelu_bwd_kernel   the same geometry; each thread sums dz of its
//             columns over its rows in registers, the warps' sums are added
//             in warp order in shared memory: one partial row per row chunk
//             (db_part, (row_chunks, K)); the caller sums the partials over
//             dim 0 (a fixed shape: bitwise reproducible, no atomics).
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common.cuh"
#include "patch_merging.cuh"  // Pack, load_pack / store_pack

namespace swin_ext {
namespace cuda {

constexpr int kBgWarps = 8;   // warps per block (rows in parallel)
constexpr int kBgRows = 128;  // rows per block (kBgRows / kBgWarps per warp)

template <typename T>
constexpr int bias_gelu_vec() {
  return static_cast<int>(16 / sizeof(T));
}

inline int64_t bias_gelu_row_chunks(int64_t rows) { return ceil_div64(rows, kBgRows); }

// GELU(u) = u Phi(u) and GELU'(u) = Phi(u) + u phi(u), Phi the standard
// normal CDF, phi its density.
template <typename A>
__device__ __forceinline__ A gelu_erf(A u) {
  return A(0.5) * u * (A(1) + acc_erf(u * static_cast<A>(0.70710678118654752440)));
}
template <typename A>
__device__ __forceinline__ A gelu_erf_grad(A u) {
  const A cdf = A(0.5) * (A(1) + acc_erf(u * static_cast<A>(0.70710678118654752440)));
  const A pdf = acc_exp(A(-0.5) * u * u) * static_cast<A>(0.39894228040143267794);
  return cdf + u * pdf;
}

template <typename T, typename A, int VEC>
__global__ void __launch_bounds__(kBgWarps * 32, 1)
    bias_gelu_fwd_kernel(const T* __restrict__ z, const A* __restrict__ bias, T* __restrict__ y, int rows, int K) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = (blockIdx.x * 32 + lane) * VEC;
  if (c >= K) return;
  A b[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) b[e] = bias[c + e];
  const int r0 = blockIdx.y * kBgRows;
  const int r1 = r0 + kBgRows < rows ? r0 + kBgRows : rows;
  for (int r = r0 + warp; r < r1; r += kBgWarps) {
    const int64_t off = static_cast<int64_t>(r) * K + c;
    A v[VEC];
    load_pack<T, A, VEC>(z + off, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = gelu_erf(v[e] + b[e]);
    store_pack<T, A, VEC>(y + off, v);
  }
}

template <typename T, typename A, int VEC>
__global__ void __launch_bounds__(kBgWarps * 32, 1)
    bias_gelu_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ z, const A* __restrict__ bias,
                         T* __restrict__ dz, A* __restrict__ db_part, int rows, int K) {
  __shared__ A s_sum[kBgWarps][32 * VEC];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = (blockIdx.x * 32 + lane) * VEC;
  A acc[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] = A(0);
  if (c < K) {
    A b[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) b[e] = bias[c + e];
    const int r0 = blockIdx.y * kBgRows;
    const int r1 = r0 + kBgRows < rows ? r0 + kBgRows : rows;
    for (int r = r0 + warp; r < r1; r += kBgWarps) {
      const int64_t off = static_cast<int64_t>(r) * K + c;
      A g[VEC], u[VEC];
      load_pack<T, A, VEC>(dy + off, g);
      load_pack<T, A, VEC>(z + off, u);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        g[e] *= gelu_erf_grad(u[e] + b[e]);
        acc[e] += g[e];  // the bias gradient from the unrounded dz
      }
      store_pack<T, A, VEC>(dz + off, g);
    }
  }
#pragma unroll
  for (int e = 0; e < VEC; ++e) s_sum[warp][lane * VEC + e] = acc[e];
  __syncthreads();
  // Thread t < 32 * VEC sums column t of the block's slab over the warps, in warp order.
  for (int t = threadIdx.x; t < 32 * VEC; t += kBgWarps * 32) {
    const int col = blockIdx.x * 32 * VEC + t;
    if (col >= K) continue;
    A s = 0;
#pragma unroll
    for (int w = 0; w < kBgWarps; ++w) s += s_sum[w][t];
    db_part[static_cast<int64_t>(blockIdx.y) * K + col] = s;
  }
}

inline bool bias_gelu_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Row chunks per launch: the grid's y dimension is at most 65535; larger
// maps are launched in slices of rows.
constexpr int64_t kBgMaxChunksPerLaunch = 65535;

// Calls launch(grid, first_row, rows_in_slice) for each slice of at most
// kBgMaxChunksPerLaunch row chunks; the grid's x covers the K / vec column
// vectors, 32 per block.
template <typename F>
void for_each_row_slice(int64_t rows, int64_t K, int vec, F&& launch) {
  const unsigned gx = static_cast<unsigned>(ceil_div64(K / vec, 32));
  constexpr int64_t kSlice = kBgMaxChunksPerLaunch * kBgRows;
  for (int64_t r0 = 0; r0 < rows; r0 += kSlice) {
    const int64_t n = rows - r0 < kSlice ? rows - r0 : kSlice;
    launch(dim3(gx, static_cast<unsigned>(bias_gelu_row_chunks(n))), r0, static_cast<int>(n));
  }
}

// z, y: (rows, K) in T; bias (K,) in acc_t.  K fits 31 bits (checked by the caller).
template <typename T, typename A>
void launch_bias_gelu_fwd(const T* z, const A* bias, T* y, int64_t rows, int64_t K, cudaStream_t stream) {
  if (rows == 0 || K == 0) return;
  constexpr int kVec = bias_gelu_vec<T>();
  const bool vec = K % kVec == 0 && bias_gelu_aligned({z, y});
  const int k = static_cast<int>(K);
  for_each_row_slice(rows, K, vec ? kVec : 1, [&](dim3 grid, int64_t r0, int n) {
    const int64_t off = r0 * K;
    if (vec) {
      SWIN_LAUNCH_KERNEL((bias_gelu_fwd_kernel<T, A, kVec>), grid, kBgWarps * 32, 0, stream, z + off, bias, y + off,
                         n, k);
    } else {
      SWIN_LAUNCH_KERNEL((bias_gelu_fwd_kernel<T, A, 1>), grid, kBgWarps * 32, 0, stream, z + off, bias, y + off, n,
                         k);
    }
  });
}

// db_part: (bias_gelu_row_chunks(rows), K) in acc_t, summed over dim 0 by the caller.
template <typename T, typename A>
void launch_bias_gelu_bwd(const T* dy, const T* z, const A* bias, T* dz, A* db_part, int64_t rows, int64_t K,
                          cudaStream_t stream) {
  if (rows == 0 || K == 0) return;
  constexpr int kVec = bias_gelu_vec<T>();
  const bool vec = K % kVec == 0 && bias_gelu_aligned({dy, z, dz});
  const int k = static_cast<int>(K);
  for_each_row_slice(rows, K, vec ? kVec : 1, [&](dim3 grid, int64_t r0, int n) {
    const int64_t off = r0 * K;
    A* part = db_part + (r0 / kBgRows) * K;  // r0 is a multiple of kBgRows
    if (vec) {
      SWIN_LAUNCH_KERNEL((bias_gelu_bwd_kernel<T, A, kVec>), grid, kBgWarps * 32, 0, stream, dy + off, z + off, bias,
                         dz + off, part, n, k);
    } else {
      SWIN_LAUNCH_KERNEL((bias_gelu_bwd_kernel<T, A, 1>), grid, kBgWarps * 32, 0, stream, dy + off, z + off, bias,
                         dz + off, part, n, k);
    }
  });
}

// Instantiated in bias_gelu_kernels.cu (its own translation unit, compiled
// in parallel and by the harness); extern here for the glue.
#define SWIN_BIAS_GELU_TYPES(X) X(float) X(double) X(__half) X(__nv_bfloat16)

#define SWIN_BIAS_GELU_LAUNCHERS(PREFIX, T)                                                                   \
  PREFIX template void launch_bias_gelu_fwd<T, AccType<T>::type>(const T*, const AccType<T>::type*, T*, int64_t, \
                                                                 int64_t, cudaStream_t);                      \
  PREFIX template void launch_bias_gelu_bwd<T, AccType<T>::type>(const T*, const T*, const AccType<T>::type*,   \
                                                                 T*, AccType<T>::type*, int64_t, int64_t,       \
                                                                 cudaStream_t);

#ifndef SWIN_BIAS_GELU_INSTANTIATING
#define SWIN_BIAS_GELU_EXTERN(T) SWIN_BIAS_GELU_LAUNCHERS(extern, T)
SWIN_BIAS_GELU_TYPES(SWIN_BIAS_GELU_EXTERN)
#undef SWIN_BIAS_GELU_EXTERN
#endif

}  // namespace cuda
}  // namespace swin_ext

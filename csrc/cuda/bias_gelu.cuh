// CUDA kernels of fc1's epilogue: y = GELU(z + bias), the exact (erf) GELU
// of nn.GELU(), over the (rows, K) output z of fc1's bias-free GEMM, and its
// backward dz = dy * GELU'(z + bias) with dbias = the column sums of dz.
//
// Against torch's addmm (bias in the GEMM epilogue) + GELU the forward moves
// the same bytes (z read, y written); the backward writes dz and the bias
// gradient in one pass, where torch's GELU backward writes dz and the bias
// gradient reads it again (a (tokens, 4C) pass saved per block).
//
// The float32 GELU and GELU' are gelu_math.h's (one degree-10 polynomial and
// one exp2 instead of erff: ~2x fewer instructions, more accurate for
// negative inputs); float64 uses erf.
//
//   geometry  a block covers nvec_blk 16-byte column vectors (all of a row's
//             K / VEC when they fit in kBgThreads) times rows_par rows:
//             thread t owns the column vector t % nvec_blk (bias read once
//             into registers) and the rows t / nvec_blk + i * rows_par of the
//             block's chunk of rows (blockIdx.y; 128, fewer where the grid
//             would have under 384 blocks), two rows in flight per iteration.  Consecutive threads read consecutive 16 bytes of
//             a row, then of the next row: whole rows per warp, no idle lanes
//             at Swin's K = 384 (48 vectors x 4 rows) where a 32-lane column
//             slab left a quarter of them idle.  Host-computed (bias_gelu_geom).
//   bias_gelu_fwd_kernel   y = GELU(z + bias).
//   bias_gelu_bwd_kernel   dz; each thread sums dz of its columns over its
//             rows in registers, the rows_par sums of a column are added in
//             row-slot order through shared memory ([e][thread]: consecutive
//             threads, consecutive words): one partial row per row chunk
//             (db_part, (row_chunks, K)); the caller sums the partials over
//             dim 0 (a fixed shape: bitwise reproducible, no atomics).
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common.cuh"
#include "gelu_math.h"
#include "patch_merging.cuh"  // Pack

namespace swin_ext {
namespace cuda {

constexpr int kBgThreads = 192;  // threads per block, at most (6 warps: 48 / 96 / 192 vectors x 4 / 2 / 1 rows)
constexpr int kBgMaxRows = 128;  // rows per block (blockIdx.y), at most ...
constexpr int kBgMinRows = 16;   // ... and at least: fewer while the grid has under
constexpr int64_t kBgTargetBlocks = 384;  // blocks (3 per SM on 132 SMs: Swin-T's stages 3 and 4)
// The backward's resident blocks per SM with a float accumulator: its
// __launch_bounds__ minimum, which is also what it gets (63 registers at 16-byte
// vectors on sm_90: 5 blocks of 6 warps fill the register file).
constexpr int kBgBwdBlocksPerSm = 5;

template <typename T>
constexpr int bias_gelu_vec() {
  return static_cast<int>(16 / sizeof(T));
}

// Block geometry: nvec_blk column vectors x rows_par rows, gx column blocks.
struct BgGeom {
  int nvec_blk;
  int rows_par;
  unsigned gx;
  int threads() const { return nvec_blk * rows_par; }
};

// K / vec column vectors (vec divides K) over ceil(nvec / kBgThreads) column
// blocks; as many rows in parallel as fit kBgThreads, or down to half of that
// when fewer rows fill whole warps (48 vectors: 4 rows = 6 warps, not 5 = 7.5).
inline BgGeom bias_gelu_geom(int64_t K, int vec) {
  const int64_t nvec = K / vec;
  const int64_t gx = ceil_div<int64_t>(nvec, kBgThreads);
  const int nb = static_cast<int>(ceil_div<int64_t>(nvec, gx));
  const int most = kBgThreads / nb > 0 ? kBgThreads / nb : 1;
  auto used = [&](int r) { return static_cast<double>(nb * r) / (32.0 * ceil_div<int64_t>(int64_t(nb) * r, 32)); };
  int rp = most;
  for (int r = most - 1; r >= (most + 1) / 2; --r)
    if (used(r) > used(rp) + 1e-9) rp = r;
  return {nb, rp, static_cast<unsigned>(gx)};
}

// How a launch runs: the block geometry, 16-byte vectors or not, rows per
// block (128, halved down to 16 while the grid has fewer than
// kBgTargetBlocks blocks), and the row chunks (= the backward's partial rows).
//
// With `resident` (the blocks the device holds at once; the backward passes
// kBgBwdBlocksPerSm x SMs), rows per block are also halved while the grid is
// one to four waves of blocks and its last wave is less than half full: those
// few blocks would run their whole row loop, one latency-bound load pair per
// iteration, with the rest of the GPU idle.  Swin-T's stage 2 at batch 128
// (100352 rows of 768, 784 blocks of 128 rows on 660 slots: the last wave 124
// blocks) ran its backward at 1.59x its byte floor against 1.08x at stage 1
// (4.75 waves; H200, stop 30's gpu_check: fwd+bwd less fwd GPU time); at 32 rows
// it is 3136 blocks, 4.75 waves.  The partial rows grow with the chunks (there:
// 4% of the op's bytes, from 1%); the kernel and its per-element code are as before.
struct BgPlan {
  BgGeom g;
  bool vec;
  int rows_per_block;
  int64_t chunks;
};
template <typename T>
BgPlan bias_gelu_plan(int64_t rows, int64_t K, bool aligned, int64_t resident = 0) {
  BgPlan p;
  p.vec = K % bias_gelu_vec<T>() == 0 && aligned;
  p.g = bias_gelu_geom(K, p.vec ? bias_gelu_vec<T>() : 1);
  p.rows_per_block = kBgMaxRows;
  auto blocks = [&] { return int64_t(p.g.gx) * ceil_div<int64_t>(rows, p.rows_per_block); };
  while (p.rows_per_block > kBgMinRows && blocks() < kBgTargetBlocks) p.rows_per_block /= 2;
  while (resident > 0 && p.rows_per_block > kBgMinRows && blocks() > resident && blocks() < 4 * resident &&
         blocks() % resident != 0 && blocks() % resident < resident / 2)
    p.rows_per_block /= 2;
  p.chunks = ceil_div<int64_t>(rows, p.rows_per_block);
  return p;
}

// GELU and GELU' in the accumulation type (gelu_math.h in float32).
__device__ __forceinline__ float gelu_act(float u) { return gelu::gelu(u); }
__device__ __forceinline__ float gelu_act_grad(float u) { return gelu::gelu_grad(u); }
__device__ __forceinline__ double gelu_act(double u) { return 0.5 * u * (1.0 + erf(u * 0.70710678118654752440)); }
__device__ __forceinline__ double gelu_act_grad(double u) {
  return 0.5 * (1.0 + erf(u * 0.70710678118654752440)) + u * exp(-0.5 * u * u) * 0.39894228040143267794;
}

// VEC values of T as loaded, converted to the accumulation type one at a
// time.  Two-byte types are kept as 32-bit words (two values per register):
// a Pack of 16-bit members would be held one value per register.
template <typename T, int VEC, bool kWords = sizeof(T) == 2 && VEC % 2 == 0>
struct RawVec {
  Pack<T, VEC> p;
  __device__ __forceinline__ void load(const T* src) { p = *reinterpret_cast<const Pack<T, VEC>*>(src); }
  __device__ __forceinline__ typename AccType<T>::type get(int e) const { return to_acc(p.v[e]); }
};
template <typename T, int VEC>
struct RawVec<T, VEC, true> {
  uint32_t w[VEC / 2];
  __device__ __forceinline__ void load(const T* src) {
    const Pack<uint32_t, VEC / 2> pk = *reinterpret_cast<const Pack<uint32_t, VEC / 2>*>(src);
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) w[i] = pk.v[i];
  }
  __device__ __forceinline__ float get(int e) const {
    const uint32_t x = w[e / 2];
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      return __uint_as_float(e % 2 ? x & 0xffff0000u : x << 16);  // bf16 -> fp32 is exact: the high half
    } else {
      return __half2float(__ushort_as_half(static_cast<unsigned short>(e % 2 ? x >> 16 : x & 0xffffu)));
    }
  }
};

template <typename T, typename A, int VEC>
__device__ __forceinline__ void gelu_store(T* p, const RawVec<T, VEC>& z, const A (&b)[VEC]) {
  Pack<T, VEC> o;
#pragma unroll
  for (int e = 0; e < VEC; ++e) o.v[e] = from_acc<T>(gelu_act(z.get(e) + b[e]));
  *reinterpret_cast<Pack<T, VEC>*>(p) = o;
}

template <typename T, typename A, int VEC>
__global__ void __launch_bounds__(kBgThreads, sizeof(A) == 4 ? 6 : 1)
    bias_gelu_fwd_kernel(const T* __restrict__ z, const A* __restrict__ bias, T* __restrict__ y, int rows, int K,
                         int nvec_blk, int rows_par, int rows_per_block) {
  const int rp = threadIdx.x / nvec_blk, col = threadIdx.x - rp * nvec_blk;
  const int c = (blockIdx.x * nvec_blk + col) * VEC;
  if (c >= K) return;
  A b[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) b[e] = bias[c + e];
  const int r0 = blockIdx.y * rows_per_block;
  const int r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  const int64_t step = static_cast<int64_t>(rows_par) * K;
  for (int r = r0 + rp; r < r1; r += 2 * rows_par) {
    const int64_t off = static_cast<int64_t>(r) * K + c;
    const bool two = r + rows_par < r1;
    RawVec<T, VEC> z0, z1;
    z0.load(z + off);
    if (two) z1.load(z + off + step);
    gelu_store<T, A, VEC>(y + off, z0, b);
    if (two) gelu_store<T, A, VEC>(y + off + step, z1, b);
  }
}

// dz = dy * GELU'(z + b) stored; acc += dz (the bias gradient from the unrounded dz).
template <typename T, typename A, int VEC>
__device__ __forceinline__ void gelu_grad_store(T* p, const RawVec<T, VEC>& dy, const RawVec<T, VEC>& z,
                                                const A (&b)[VEC], A (&acc)[VEC]) {
  Pack<T, VEC> o;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const A g = dy.get(e) * gelu_act_grad(z.get(e) + b[e]);
    acc[e] += g;
    o.v[e] = from_acc<T>(g);
  }
  *reinterpret_cast<Pack<T, VEC>*>(p) = o;
}

template <typename T, typename A, int VEC>
__global__ void __launch_bounds__(kBgThreads, sizeof(A) == 4 ? kBgBwdBlocksPerSm : 1)
    bias_gelu_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ z, const A* __restrict__ bias,
                         T* __restrict__ dz, A* __restrict__ db_part, int rows, int K, int nvec_blk, int rows_par,
                         int rows_per_block) {
  __shared__ A s_sum[VEC * kBgThreads];  // [e][thread]
  const int threads = nvec_blk * rows_par;
  const int rp = threadIdx.x / nvec_blk, col = threadIdx.x - rp * nvec_blk;
  const int c = (blockIdx.x * nvec_blk + col) * VEC;
  A acc[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] = A(0);
  if (c < K) {
    A b[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) b[e] = bias[c + e];
    const int r0 = blockIdx.y * rows_per_block;
    const int r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    const int64_t step = static_cast<int64_t>(rows_par) * K;
    for (int r = r0 + rp; r < r1; r += 2 * rows_par) {
      const int64_t off = static_cast<int64_t>(r) * K + c;
      const bool two = r + rows_par < r1;
      RawVec<T, VEC> g0, z0, g1, z1;
      g0.load(dy + off);
      z0.load(z + off);
      if (two) {
        g1.load(dy + off + step);
        z1.load(z + off + step);
      }
      gelu_grad_store<T, A, VEC>(dz + off, g0, z0, b, acc);
      if (two) gelu_grad_store<T, A, VEC>(dz + off + step, g1, z1, b, acc);
    }
  }
#pragma unroll
  for (int e = 0; e < VEC; ++e) s_sum[e * threads + threadIdx.x] = acc[e];
  __syncthreads();
  // Thread (rp, col) sums the components e = rp, rp + rows_par, ... of its
  // column over the row slots, in slot order.
  if (c < K) {
    for (int e = rp; e < VEC; e += rows_par) {
      A s = 0;
      for (int j = 0; j < rows_par; ++j) s += s_sum[e * threads + j * nvec_blk + col];
      db_part[static_cast<int64_t>(blockIdx.y) * K + c + e] = s;
    }
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
// kBgMaxChunksPerLaunch row chunks; the grid's x covers the column blocks.
template <typename F>
void for_each_row_slice(int64_t rows, const BgPlan& p, F&& launch) {
  const int64_t slice = kBgMaxChunksPerLaunch * p.rows_per_block;
  for (int64_t r0 = 0; r0 < rows; r0 += slice) {
    const int64_t n = rows - r0 < slice ? rows - r0 : slice;
    launch(dim3(p.g.gx, static_cast<unsigned>(ceil_div<int64_t>(n, p.rows_per_block))), r0, static_cast<int>(n));
  }
}

// z, y: (rows, K) in T; bias (K,) in acc_t; plan from bias_gelu_plan<T>(rows,
// K, z and y 16-byte aligned).  K fits 31 bits (checked by the caller).
template <typename T, typename A>
void launch_bias_gelu_fwd(const T* z, const A* bias, T* y, int64_t rows, int64_t K, const BgPlan& p,
                          cudaStream_t stream) {
  if (rows == 0 || K == 0) return;
  constexpr int kVec = bias_gelu_vec<T>();
  const int k = static_cast<int>(K);
  for_each_row_slice(rows, p, [&](dim3 grid, int64_t r0, int n) {
    const int64_t off = r0 * K;
    if (p.vec) {
      SWIN_LAUNCH_KERNEL((bias_gelu_fwd_kernel<T, A, kVec>), grid, p.g.threads(), 0, stream, z + off, bias, y + off,
                         n, k, p.g.nvec_blk, p.g.rows_par, p.rows_per_block);
    } else {
      SWIN_LAUNCH_KERNEL((bias_gelu_fwd_kernel<T, A, 1>), grid, p.g.threads(), 0, stream, z + off, bias, y + off, n,
                         k, p.g.nvec_blk, p.g.rows_par, p.rows_per_block);
    }
  });
}

// db_part: (p.chunks, K) in acc_t, summed over dim 0 by the caller; plan from
// bias_gelu_plan<T>(rows, K, dy, z and dz 16-byte aligned).
template <typename T, typename A>
void launch_bias_gelu_bwd(const T* dy, const T* z, const A* bias, T* dz, A* db_part, int64_t rows, int64_t K,
                          const BgPlan& p, cudaStream_t stream) {
  if (rows == 0 || K == 0) return;
  constexpr int kVec = bias_gelu_vec<T>();
  const int k = static_cast<int>(K);
  for_each_row_slice(rows, p, [&](dim3 grid, int64_t r0, int n) {
    const int64_t off = r0 * K;
    A* part = db_part + (r0 / p.rows_per_block) * K;  // r0 is a multiple of rows_per_block
    if (p.vec) {
      SWIN_LAUNCH_KERNEL((bias_gelu_bwd_kernel<T, A, kVec>), grid, p.g.threads(), 0, stream, dy + off, z + off, bias,
                         dz + off, part, n, k, p.g.nvec_blk, p.g.rows_par, p.rows_per_block);
    } else {
      SWIN_LAUNCH_KERNEL((bias_gelu_bwd_kernel<T, A, 1>), grid, p.g.threads(), 0, stream, dy + off, z + off, bias,
                         dz + off, part, n, k, p.g.nvec_blk, p.g.rows_par, p.rows_per_block);
    }
  });
}

// Instantiated in bias_gelu_kernels.cu (its own translation unit, compiled
// in parallel and by the harness); extern here for the glue.
#define SWIN_BIAS_GELU_TYPES(X) X(float) X(double) X(__half) X(__nv_bfloat16)

#define SWIN_BIAS_GELU_LAUNCHERS(PREFIX, T)                                                                   \
  PREFIX template void launch_bias_gelu_fwd<T, AccType<T>::type>(const T*, const AccType<T>::type*, T*, int64_t, \
                                                                 int64_t, const BgPlan&, cudaStream_t);       \
  PREFIX template void launch_bias_gelu_bwd<T, AccType<T>::type>(const T*, const T*, const AccType<T>::type*,   \
                                                                 T*, AccType<T>::type*, int64_t, int64_t,       \
                                                                 const BgPlan&, cudaStream_t);

#ifndef SWIN_BIAS_GELU_INSTANTIATING
#define SWIN_BIAS_GELU_EXTERN(T) SWIN_BIAS_GELU_LAUNCHERS(extern, T)
SWIN_BIAS_GELU_TYPES(SWIN_BIAS_GELU_EXTERN)
#undef SWIN_BIAS_GELU_EXTERN
#endif

}  // namespace cuda
}  // namespace swin_ext

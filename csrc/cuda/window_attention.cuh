// CUDA kernels of the fused shifted-window attention (SIMT).
//
// Geometry (pad, roll, partition, shift mask) is index math from
// swin_geometry.h; nothing is padded, rolled or partitioned in memory and no
// (nW, N, N) mask exists.  Softmax runs in the accumulation type (fp32, or
// fp64 for double) and the forward saves only the per-row log-sum-exp.
//
//   forward   attn_fwd_kernel      grid (B*nW, heads, ceil(N/16)), 4 warps;
//             each warp owns 4 query rows, keys stream through shared memory
//             in chunks of 32 (one key per lane) with an online softmax.
//   backward  attn_bwd_dq_kernel   grid (nW, heads, ceil(N/16)), 4 warps,
//             loops over the batch so that the bias gradient of a (window,
//             head) is summed in a fixed order: writes dq, the row terms
//             D_i = sum_j P_ij dP_ij, and dbias partials per window position.
//             attn_bwd_dkv_kernel  grid (B*nW, heads, ceil(N/32)), 1 warp,
//             one key per lane: writes dk and dv.
// No float atomics anywhere: every output element has one writer, and
// partials are reduced by the caller over a fixed shape (deterministic).
//
// Kernels and launchers are ATen-free so that the CPU harness can run them.
#pragma once

#include <cstdint>

#include "../swin_geometry.h"
#include "common.cuh"

namespace swin_ext {
namespace cuda {

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kAttnWarps * kRowsPerWarp;  // query rows per block
constexpr int kKeyChunk = 32;                             // keys per chunk: one per lane
constexpr int kMaxHeadDim = 128;

// Shared-memory carve-up helpers: 16-byte aligned sub-buffers.
__host__ __device__ inline size_t align16(size_t v) { return (v + 15) & ~size_t(15); }

// Token table of one window: spatial index y * W + x in the unpadded map, or
// -1 for a padding token, and the shift region of each token.
__device__ __forceinline__ void load_token_table(const WindowGeometry& g, int64_t win,
                                                 int64_t* sp, int* region) {
  for (int64_t t = threadIdx.x; t < g.N; t += blockDim.x) {
    const TokenLoc loc = locate_token(g, win, t);
    sp[t] = loc.valid ? loc.y * g.W + loc.x : -1;
    region[t] = loc.region;
  }
}

// Pointer to the 3C-vector of a token of image b (the padding vector, or
// null for zero padding).
template <typename scalar_t>
__device__ __forceinline__ const scalar_t* token_src(const scalar_t* qkv, const scalar_t* pad,
                                                     int64_t sp, int64_t b, int64_t HW,
                                                     int64_t C3) {
  return sp >= 0 ? qkv + (b * HW + sp) * C3 : pad;
}

// rows x d tile of q (scaled), k or v (part 0, 1, 2) of image b into smem with
// row stride ld; rows past N and padding without a pad vector are zero.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_rows(acc_t* dst, int ld, const scalar_t* qkv,
                                          const scalar_t* pad, const int64_t* sp, int64_t row0,
                                          int rows, int part, int64_t b, int64_t h, int64_t d,
                                          int64_t C, const WindowGeometry& g, acc_t mul) {
  const int64_t HW = g.H * g.W;
  for (int64_t idx = threadIdx.x; idx < rows * d; idx += blockDim.x) {
    const int64_t r = idx / d, c = idx - r * d;
    const int64_t i = row0 + r;
    acc_t v = 0;
    if (i < g.N) {
      const scalar_t* src = token_src(qkv, pad, sp[i], b, HW, 3 * C);
      if (src != nullptr) v = to_acc(src[part * C + h * d + c]) * mul;
    }
    dst[r * ld + c] = v;
  }
}

// Same for rows of grad_out (B, H, W, C); padding rows are zero.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_grad_rows(acc_t* dst, int ld, const scalar_t* grad_out,
                                               const int64_t* sp, int64_t row0, int rows,
                                               int64_t b, int64_t h, int64_t d, int64_t C,
                                               const WindowGeometry& g) {
  const int64_t HW = g.H * g.W;
  for (int64_t idx = threadIdx.x; idx < rows * d; idx += blockDim.x) {
    const int64_t r = idx / d, c = idx - r * d;
    const int64_t i = row0 + r;
    acc_t v = 0;
    if (i < g.N && sp[i] >= 0) v = to_acc(grad_out[(b * HW + sp[i]) * C + h * d + c]);
    dst[r * ld + c] = v;
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t dot(const acc_t* a, const acc_t* b, int64_t d) {
  acc_t s = 0;
  for (int64_t c = 0; c < d; ++c) s += a[c] * b[c];
  return s;
}

// Bias + shift mask of logit (i, key); key < N.
template <typename acc_t>
__device__ __forceinline__ acc_t bias_mask(const acc_t* bias_h, int64_t N, int64_t i, int64_t key,
                                           bool masked, const int* region) {
  acc_t v = bias_h[i * N + key];
  if (masked && region[i] != region[key]) v += static_cast<acc_t>(kShiftMaskValue);
  return v;
}

// ------------------------------------------------------------------ forward

inline size_t attn_fwd_smem(int64_t N, int64_t d, size_t acc_size) {
  return align16(N * 8) + align16(N * 4) +
         align16((kRowsPerBlock * d + kKeyChunk * (d + 1) + kKeyChunk * d) * acc_size);
}

template <typename scalar_t, typename acc_t, int DPL>
__global__ void __launch_bounds__(kAttnThreads)
    attn_fwd_kernel(const scalar_t* __restrict__ qkv, const acc_t* __restrict__ bias,
                    const scalar_t* __restrict__ pad, scalar_t* __restrict__ out,
                    acc_t* __restrict__ lse, WindowGeometry g, int64_t heads, int64_t d,
                    acc_t scale) {
  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t N = g.N, C = heads * d, HW = g.H * g.W;
  int64_t* sp = reinterpret_cast<int64_t*>(smem);
  int* region = reinterpret_cast<int*>(smem + align16(N * 8));
  acc_t* sQ = reinterpret_cast<acc_t*>(smem + align16(N * 8) + align16(N * 4));
  acc_t* sK = sQ + kRowsPerBlock * d;  // kKeyChunk x (d + 1): conflict-free per-lane rows
  acc_t* sV = sK + kKeyChunk * (d + 1);

  const int64_t bw = blockIdx.x;  // b * nW + win (x: the only dimension past 65535)
  const int64_t h = blockIdx.y;
  const int64_t win = bw % g.nW, b = bw / g.nW;
  const int64_t row0 = static_cast<int64_t>(blockIdx.z) * kRowsPerBlock;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool masked = g.sh > 0 || g.sw > 0;
  const acc_t* bias_h = bias + h * N * N;

  load_token_table(g, win, sp, region);
  __syncthreads();
  load_rows(sQ, static_cast<int>(d), qkv, pad, sp, row0, kRowsPerBlock, 0, b, h, d, C, g, scale);

  acc_t m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][DPL];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = neg_inf<acc_t>();
    l[rr] = 0;
#pragma unroll
    for (int t = 0; t < DPL; ++t) o[rr][t] = 0;
  }

  for (int64_t k0 = 0; k0 < N; k0 += kKeyChunk) {
    __syncthreads();  // the previous chunk is consumed (and sQ is loaded)
    load_rows(sK, static_cast<int>(d + 1), qkv, pad, sp, k0, kKeyChunk, 1, b, h, d, C, g, acc_t(1));
    load_rows(sV, static_cast<int>(d), qkv, pad, sp, k0, kKeyChunk, 2, b, h, d, C, g, acc_t(1));
    __syncthreads();
    const int64_t key = k0 + lane;
    const bool key_ok = key < N;
    const int nk = static_cast<int>(N - k0 < kKeyChunk ? N - k0 : kKeyChunk);
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t i = row0 + r;
      if (i >= N) continue;  // warp-uniform
      acc_t s = dot(sQ + r * d, sK + lane * (d + 1), d);
      s = key_ok ? s + bias_mask(bias_h, N, i, key, masked, region) : neg_inf<acc_t>();
      const acc_t cmax = warp_max(s);
      const acc_t m_new = cmax > m[rr] ? cmax : m[rr];
      const acc_t alpha = acc_exp(m[rr] - m_new);
      const acc_t p = key_ok ? acc_exp(s - m_new) : acc_t(0);
      l[rr] = l[rr] * alpha + warp_sum(p);
      m[rr] = m_new;
#pragma unroll
      for (int t = 0; t < DPL; ++t) o[rr][t] *= alpha;
      for (int j = 0; j < nk; ++j) {
        const acc_t pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
        for (int t = 0; t < DPL; ++t) {
          const int64_t c = lane + 32 * t;
          if (c < d) o[rr][t] += pj * sV[j * d + c];
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = row0 + warp * kRowsPerWarp + rr;
    if (i >= N) continue;
    if (lane == 0) lse[(bw * heads + h) * N + i] = m[rr] + acc_log(l[rr]);
    if (sp[i] < 0) continue;  // padding token: its output is cropped away
    const acc_t inv = acc_t(1) / l[rr];
    scalar_t* dst = out + (b * HW + sp[i]) * C + h * d;
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
      const int64_t c = lane + 32 * t;
      if (c < d) dst[c] = from_acc<scalar_t>(o[rr][t] * inv);
    }
  }
}

// ------------------------------------------------------------------ backward: dq, D, dbias

inline size_t attn_bwd_dq_smem(int64_t N, int64_t d, size_t acc_size) {
  return align16(N * 8) + align16(N * 4) +
         align16((2 * kRowsPerBlock * d + 2 * kKeyChunk * (d + 1)) * acc_size);
}

template <typename scalar_t, typename acc_t, int DPL>
__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_dq_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ qkv,
                       const acc_t* __restrict__ bias, const scalar_t* __restrict__ pad,
                       const acc_t* __restrict__ lse, scalar_t* __restrict__ dqkv,
                       acc_t* __restrict__ Dbuf, acc_t* __restrict__ dbias_part,
                       WindowGeometry g, int64_t heads, int64_t d, acc_t scale) {
  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t N = g.N, C = heads * d, HW = g.H * g.W;
  int64_t* sp = reinterpret_cast<int64_t*>(smem);
  int* region = reinterpret_cast<int*>(smem + align16(N * 8));
  acc_t* sQ = reinterpret_cast<acc_t*>(smem + align16(N * 8) + align16(N * 4));
  acc_t* sdO = sQ + kRowsPerBlock * d;
  acc_t* sK = sdO + kRowsPerBlock * d;
  acc_t* sV = sK + kKeyChunk * (d + 1);

  const int64_t win = blockIdx.x;
  const int64_t h = blockIdx.y;
  const int64_t qb = blockIdx.z;
  const int64_t row0 = qb * kRowsPerBlock;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool masked = g.sh > 0 || g.sw > 0;
  const acc_t* bias_h = bias + h * N * N;
  acc_t* dbias_w = dbias_part + (win * heads + h) * N * N;  // zero-initialised by the caller

  load_token_table(g, win, sp, region);

  // The batch loop is inside the block: dbias_w rows owned by this block are
  // accumulated in batch order, whatever the launch configuration.
  for (int64_t b = 0; b < g.B; ++b) {
    const int64_t bw = b * g.nW + win;
    __syncthreads();
    load_rows(sQ, static_cast<int>(d), qkv, pad, sp, row0, kRowsPerBlock, 0, b, h, d, C, g, scale);
    load_grad_rows(sdO, static_cast<int>(d), grad_out, sp, row0, kRowsPerBlock, b, h, d, C, g);

    acc_t lrow[kRowsPerWarp], Dpart[kRowsPerWarp], Drow[kRowsPerWarp], dq[kRowsPerWarp][DPL];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int64_t i = row0 + warp * kRowsPerWarp + rr;
      lrow[rr] = i < N ? lse[(bw * heads + h) * N + i] : acc_t(0);
      Dpart[rr] = 0;
#pragma unroll
      for (int t = 0; t < DPL; ++t) dq[rr][t] = 0;
    }
    // pass 0: D_i = sum_j P_ij dP_ij; pass 1: dS, dbias, dq
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t k0 = 0; k0 < N; k0 += kKeyChunk) {
        __syncthreads();
        load_rows(sK, static_cast<int>(d + 1), qkv, pad, sp, k0, kKeyChunk, 1, b, h, d, C, g, acc_t(1));
        load_rows(sV, static_cast<int>(d + 1), qkv, pad, sp, k0, kKeyChunk, 2, b, h, d, C, g, acc_t(1));
        __syncthreads();
        const int64_t key = k0 + lane;
        const bool key_ok = key < N;
        const int nk = static_cast<int>(N - k0 < kKeyChunk ? N - k0 : kKeyChunk);
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
          const int r = warp * kRowsPerWarp + rr;
          const int64_t i = row0 + r;
          if (i >= N) continue;  // warp-uniform
          acc_t p = 0, dp = 0;
          if (key_ok) {
            const acc_t s = dot(sQ + r * d, sK + lane * (d + 1), d) +
                            bias_mask(bias_h, N, i, key, masked, region);
            p = acc_exp(s - lrow[rr]);
            dp = dot(sdO + r * d, sV + lane * (d + 1), d);
          }
          if (pass == 0) {
            Dpart[rr] += p * dp;
            continue;
          }
          const acc_t ds = p * (dp - Drow[rr]);
          if (key_ok) dbias_w[i * N + key] += ds;
          for (int j = 0; j < nk; ++j) {
            const acc_t dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
            for (int t = 0; t < DPL; ++t) {
              const int64_t c = lane + 32 * t;
              if (c < d) dq[rr][t] += dsj * sK[j * (d + 1) + c];
            }
          }
        }
      }
      if (pass == 0) {
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
          Drow[rr] = warp_sum(Dpart[rr]);
          const int64_t i = row0 + warp * kRowsPerWarp + rr;
          if (i < N && lane == 0) Dbuf[(bw * heads + h) * N + i] = Drow[rr];
        }
      }
    }
    // Padding query rows have dO = 0 (their output is cropped away), hence
    // dS = 0 and dq = 0: only real tokens get a dq.
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int64_t i = row0 + warp * kRowsPerWarp + rr;
      if (i >= N || sp[i] < 0) continue;
      scalar_t* dst = dqkv + (b * HW + sp[i]) * 3 * C + h * d;
#pragma unroll
      for (int t = 0; t < DPL; ++t) {
        const int64_t c = lane + 32 * t;
        if (c < d) dst[c] = from_acc<scalar_t>(dq[rr][t] * scale);
      }
    }
  }
}

// ------------------------------------------------------------------ backward: dk, dv

inline size_t attn_bwd_dkv_smem(int64_t N, int64_t d, size_t acc_size) {
  return align16(N * 8) + align16(N * 4) +
         align16((4 * kKeyChunk * (d + 1) + 2 * kKeyChunk * d + 2 * kKeyChunk) * acc_size);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(32)
    attn_bwd_dkv_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ qkv,
                        const acc_t* __restrict__ bias, const scalar_t* __restrict__ pad,
                        const acc_t* __restrict__ lse, const acc_t* __restrict__ Dbuf,
                        scalar_t* __restrict__ dqkv, acc_t* __restrict__ dpad_kv_part,
                        WindowGeometry g, int64_t heads, int64_t d, acc_t scale) {
  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t N = g.N, C = heads * d, HW = g.H * g.W;
  const int ld = static_cast<int>(d + 1);
  int64_t* sp = reinterpret_cast<int64_t*>(smem);
  int* region = reinterpret_cast<int*>(smem + align16(N * 8));
  acc_t* sK = reinterpret_cast<acc_t*>(smem + align16(N * 8) + align16(N * 4));
  acc_t* sV = sK + kKeyChunk * ld;
  acc_t* sdK = sV + kKeyChunk * ld;
  acc_t* sdV = sdK + kKeyChunk * ld;
  acc_t* sQ = sdV + kKeyChunk * ld;  // query chunk: kKeyChunk x d
  acc_t* sdO = sQ + kKeyChunk * d;
  acc_t* sL = sdO + kKeyChunk * d;   // lse of the query chunk
  acc_t* sD = sL + kKeyChunk;        // D of the query chunk

  const int64_t bw = blockIdx.x;
  const int64_t h = blockIdx.y;
  const int64_t win = bw % g.nW, b = bw / g.nW;
  const int64_t kb = blockIdx.z;
  const int64_t k0 = kb * kKeyChunk;
  const int lane = threadIdx.x;
  const int64_t key = k0 + lane;
  const bool key_ok = key < N;
  const bool masked = g.sh > 0 || g.sw > 0;
  const acc_t* bias_h = bias + h * N * N;

  load_token_table(g, win, sp, region);
  __syncwarp();
  load_rows(sK, ld, qkv, pad, sp, k0, kKeyChunk, 1, b, h, d, C, g, acc_t(1));
  load_rows(sV, ld, qkv, pad, sp, k0, kKeyChunk, 2, b, h, d, C, g, acc_t(1));
  for (int64_t idx = lane; idx < kKeyChunk * ld; idx += 32) {
    sdK[idx] = 0;
    sdV[idx] = 0;
  }
  acc_t* myK = sK + lane * ld;
  acc_t* myV = sV + lane * ld;
  acc_t* mydK = sdK + lane * ld;
  acc_t* mydV = sdV + lane * ld;

  for (int64_t i0 = 0; i0 < N; i0 += kKeyChunk) {
    __syncwarp();
    load_rows(sQ, static_cast<int>(d), qkv, pad, sp, i0, kKeyChunk, 0, b, h, d, C, g, scale);
    load_grad_rows(sdO, static_cast<int>(d), grad_out, sp, i0, kKeyChunk, b, h, d, C, g);
    {
      const int64_t i = i0 + lane;
      sL[lane] = i < N ? lse[(bw * heads + h) * N + i] : acc_t(0);
      sD[lane] = i < N ? Dbuf[(bw * heads + h) * N + i] : acc_t(0);
    }
    __syncwarp();
    if (!key_ok) continue;  // lanes past N only helped with the loads
    const int nq = static_cast<int>(N - i0 < kKeyChunk ? N - i0 : kKeyChunk);
    for (int r = 0; r < nq; ++r) {
      const int64_t i = i0 + r;
      const acc_t* q = sQ + r * d;
      const acc_t* go = sdO + r * d;
      const acc_t s = dot(q, myK, d) + bias_mask(bias_h, N, i, key, masked, region);
      const acc_t p = acc_exp(s - sL[r]);
      const acc_t ds = p * (dot(go, myV, d) - sD[r]);
      for (int64_t c = 0; c < d; ++c) {
        mydV[c] += p * go[c];
        mydK[c] += ds * q[c];
      }
    }
  }
  __syncwarp();
  if (key_ok && sp[key] >= 0) {
    scalar_t* dst = dqkv + (b * HW + sp[key]) * 3 * C + h * d;
    for (int64_t c = 0; c < d; ++c) {
      dst[C + c] = from_acc<scalar_t>(mydK[c]);
      dst[2 * C + c] = from_acc<scalar_t>(mydV[c]);
    }
  }
  // dk, dv of this chunk's padding keys, summed over keys in order.
  acc_t* part = dpad_kv_part + (bw * gridDim.z + kb) * 2 * C;
  for (int64_t c = lane; c < d; c += 32) {
    acc_t vk = 0, vv = 0;
    for (int j = 0; j < kKeyChunk; ++j) {
      const int64_t kj = k0 + j;
      if (kj < N && sp[kj] < 0) {
        vk += sdK[j * ld + c];
        vv += sdV[j * ld + c];
      }
    }
    part[h * d + c] = vk;
    part[C + h * d + c] = vv;
  }
}

// ------------------------------------------------------------------ launchers

inline void set_smem_limit(const void* kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(bytes));
  }
}

// Number of query-row blocks and key blocks of the backward partial buffers.
inline int64_t attn_num_row_blocks(int64_t N) { return ceil_div64(N, kRowsPerBlock); }
inline int64_t attn_num_key_blocks(int64_t N) { return ceil_div64(N, kKeyChunk); }

template <typename scalar_t, typename acc_t, int DPL>
void launch_attention_fwd_dpl(const scalar_t* qkv, const acc_t* bias, const scalar_t* pad,
                              scalar_t* out, acc_t* lse, const WindowGeometry& g, int64_t heads,
                              int64_t d, double scale, cudaStream_t stream) {
  const size_t smem = attn_fwd_smem(g.N, d, sizeof(acc_t));
  auto kernel = attn_fwd_kernel<scalar_t, acc_t, DPL>;
  set_smem_limit(reinterpret_cast<const void*>(kernel), smem);
  const dim3 grid(static_cast<unsigned>(g.B * g.nW), static_cast<unsigned>(heads),
                  static_cast<unsigned>(attn_num_row_blocks(g.N)));
  SWIN_LAUNCH_KERNEL((attn_fwd_kernel<scalar_t, acc_t, DPL>), grid, kAttnThreads, smem, stream, qkv,
                     bias, pad, out, lse, g, heads, d, static_cast<acc_t>(scale));
}

// out (B, H, W, C) and lse (B, nW, heads, N).  Requires d <= 128.
template <typename scalar_t, typename acc_t>
void launch_attention_fwd(const scalar_t* qkv, const acc_t* bias, const scalar_t* pad,
                          scalar_t* out, acc_t* lse, const WindowGeometry& g, int64_t heads,
                          int64_t d, double scale, cudaStream_t stream) {
  if (g.B * g.nW == 0 || heads == 0) return;
  if (d <= 32) {
    launch_attention_fwd_dpl<scalar_t, acc_t, 1>(qkv, bias, pad, out, lse, g, heads, d, scale, stream);
  } else if (d <= 64) {
    launch_attention_fwd_dpl<scalar_t, acc_t, 2>(qkv, bias, pad, out, lse, g, heads, d, scale, stream);
  } else if (d <= 96) {
    launch_attention_fwd_dpl<scalar_t, acc_t, 3>(qkv, bias, pad, out, lse, g, heads, d, scale, stream);
  } else {
    launch_attention_fwd_dpl<scalar_t, acc_t, 4>(qkv, bias, pad, out, lse, g, heads, d, scale, stream);
  }
}

template <typename scalar_t, typename acc_t, int DPL>
void launch_attention_bwd_dq_dpl(const scalar_t* grad_out, const scalar_t* qkv, const acc_t* bias,
                                 const scalar_t* pad, const acc_t* lse, scalar_t* dqkv,
                                 acc_t* Dbuf, acc_t* dbias_part, const WindowGeometry& g, int64_t heads, int64_t d, double scale,
                                 cudaStream_t stream) {
  const size_t smem = attn_bwd_dq_smem(g.N, d, sizeof(acc_t));
  auto kernel = attn_bwd_dq_kernel<scalar_t, acc_t, DPL>;
  set_smem_limit(reinterpret_cast<const void*>(kernel), smem);
  const dim3 grid(static_cast<unsigned>(g.nW), static_cast<unsigned>(heads),
                  static_cast<unsigned>(attn_num_row_blocks(g.N)));
  SWIN_LAUNCH_KERNEL((attn_bwd_dq_kernel<scalar_t, acc_t, DPL>), grid, kAttnThreads, smem, stream,
                     grad_out, qkv, bias, pad, lse, dqkv, Dbuf, dbias_part, g, heads,
                     d, static_cast<acc_t>(scale));
}

// Backward.  Workspace (all in acc_t):
//   Dbuf         (B, nW, heads, N)                         written
//   dbias_part   (nW, heads, N, N)                         must be zero on entry
//   dpad_kv_part (B * nW, attn_num_key_blocks(N), 2C)      written
// The caller sums dbias_part over dim 0 and dpad_kv_part over all but the
// last dim; the q part of the pad gradient is zero (padding queries have
// dO = 0).  Requires d <= 128.
template <typename scalar_t, typename acc_t>
void launch_attention_bwd(const scalar_t* grad_out, const scalar_t* qkv, const acc_t* bias,
                          const scalar_t* pad, const acc_t* lse, scalar_t* dqkv, acc_t* Dbuf,
                          acc_t* dbias_part, acc_t* dpad_kv_part,
                          const WindowGeometry& g, int64_t heads, int64_t d, double scale,
                          cudaStream_t stream) {
  if (g.B * g.nW == 0 || heads == 0) return;
  if (d <= 32) {
    launch_attention_bwd_dq_dpl<scalar_t, acc_t, 1>(grad_out, qkv, bias, pad, lse, dqkv, Dbuf,
                                                    dbias_part, g, heads, d, scale, stream);
  } else if (d <= 64) {
    launch_attention_bwd_dq_dpl<scalar_t, acc_t, 2>(grad_out, qkv, bias, pad, lse, dqkv, Dbuf,
                                                    dbias_part, g, heads, d, scale, stream);
  } else if (d <= 96) {
    launch_attention_bwd_dq_dpl<scalar_t, acc_t, 3>(grad_out, qkv, bias, pad, lse, dqkv, Dbuf,
                                                    dbias_part, g, heads, d, scale, stream);
  } else {
    launch_attention_bwd_dq_dpl<scalar_t, acc_t, 4>(grad_out, qkv, bias, pad, lse, dqkv, Dbuf,
                                                    dbias_part, g, heads, d, scale, stream);
  }
  const size_t smem = attn_bwd_dkv_smem(g.N, d, sizeof(acc_t));
  auto kernel = attn_bwd_dkv_kernel<scalar_t, acc_t>;
  set_smem_limit(reinterpret_cast<const void*>(kernel), smem);
  const dim3 grid(static_cast<unsigned>(g.B * g.nW), static_cast<unsigned>(heads),
                  static_cast<unsigned>(attn_num_key_blocks(g.N)));
  SWIN_LAUNCH_KERNEL((attn_bwd_dkv_kernel<scalar_t, acc_t>), grid, 32, smem, stream, grad_out, qkv,
                     bias, pad, lse, Dbuf, dqkv, dpad_kv_part, g, heads, d,
                     static_cast<acc_t>(scale));
}

}  // namespace cuda
}  // namespace swin_ext

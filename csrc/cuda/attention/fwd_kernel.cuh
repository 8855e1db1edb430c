// Forward of the fused shifted-window attention: the SIMT kernel of fp32 /
// fp64 (bf16 / fp16 run fwd_mma_kernel.cuh).
//
// One block per (image, window, head, block of 16 * nwarps query rows);
// consecutive blocks are the heads (and row blocks) of one window, so a
// window's q/k/v rows are fetched from DRAM once and shared through L2.  A
// window of N <= 16 * nwarps tokens (every 224-px Swin: N = 49) is one block
// and, with N <= the key tile, one tile: the softmax is exact in one pass.
// Larger windows stream key tiles with the online softmax (running max with
// -inf guards, rescaled sums and outputs).
//
// Per key tile, each warp: S = Q K^T (tensor cores or SIMT, fp32/fp64
// accumulation), bias + shift mask + softmax statistics in registers, P over
// the scores in shared memory, O += P V.  The output is normalised and stored
// as 16-byte rows of (B, [T,] H, W, C); only the per-row log-sum-exp is saved.
// A clip's windows (wt, wh, ww) are the same code: the token tables
// (tile_io.cuh) do the 3-D pad, roll and partition.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include "../../swin_geometry.h"
#include "kernel_traits.h"
#include "params.h"
#include "tile_io.cuh"
#include "warp_gemm.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

// Softmax statistics of one key tile for the 16 rows of a warp, in log2
// units: x = (S * scale + bias + mask) * log2(e); the running max m, sum l
// and the factor alpha that rescales what was accumulated before.  P
// (unnormalised, exp2(x - m)) is written over S.  Rows past N behave as rows
// of zeros (never stored); keys past N are -inf.
template <class Tr, int Kt>
__device__ __forceinline__ void online_softmax_tile(typename Tr::acc_t* S, int ldS, int kt0,
                                                    int row0, const AttnParams& p, int h,
                                                    const int* reg_r, const int* reg_k,
                                                    typename Tr::acc_t* st) {
  using A = typename Tr::acc_t;
  using T = typename Tr::T;
  const int N = p.g.N;
  const int lane = threadIdx.x & 31;
  constexpr int lpr = Kt < 32 ? Kt : 32;  // lanes per row
  constexpr int rpp = 32 / lpr;           // rows per pass
  const int sub = lane / lpr, cl = lane - sub * lpr;
  const A scale = static_cast<A>(p.scale), log2e = static_cast<A>(kLog2e);
  const A* bias = static_cast<const A*>(p.bias);
  T* P = reinterpret_cast<T*>(S);
  const int ldP = Tr::ld_p(Kt);
  A* sm = st;
  A* sl = st + kRowTile;
  A* salpha = st + 2 * kRowTile;
#pragma unroll 1
  for (int r0 = 0; r0 < kRowTile; r0 += rpp) {
    const int r = r0 + sub, i = row0 + r;
    const A* brow = bias + (static_cast<int64_t>(h) * N + (i < N ? i : 0)) * N;
    A x[2];
    A mx = neg_inf<A>();
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = cl + e * lpr;
      A v = neg_inf<A>();
      if (c < Kt) {
        const int j = kt0 + c;
        if (j < N) {
          v = S[r * ldS + c] * scale;
          if (i < N) {
            v += brow[j];
            if (p.masked && reg_r[r] != reg_k[c]) v += static_cast<A>(kShiftMaskValue);
          }
          v *= log2e;
        }
        mx = acc_max(mx, v);
      }
      x[e] = v;
    }
    mx = group_max(mx, lpr);
    const A m_old = sm[r];
    const A m_new = acc_max(m_old, mx);
    const A m_use = m_new == neg_inf<A>() ? A(0) : m_new;  // a row with no finite logit yet
    A sum = 0;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      x[e] = acc_exp2(x[e] - m_use);  // exp2(-inf) = 0
      if (cl + e * lpr < Kt) sum += x[e];
    }
    sum = group_sum(sum, lpr);
    const A alpha = acc_exp2(m_old - m_use);
    const A l_old = sl[r];
    __syncwarp();  // every lane has read its scores (and the stats) of this pass
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = cl + e * lpr;
      if (c < Kt) {
        if constexpr (Tr::kTC) {
          P[r * ldP + c] = from_acc<T>(x[e]);
        } else {
          S[r * ldS + c] = x[e];
        }
      }
    }
    if (cl == 0) {
      sm[r] = m_new;
      sl[r] = l_old * alpha + sum;
      salpha[r] = alpha;
    }
  }
  __syncwarp();
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kFwdWarps * 32, 1) attn_fwd_kernel(const AttnParams p) {
  using T = typename Tr::T;
  using A = typename Tr::acc_t;
  constexpr int Kt = Tr::kFwdKeyTile;
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d = Tr::kD ? Tr::kD : p.d;
  const int dp = Tr::dpad(d), ld = Tr::ld_op(d), ldS = Tr::ld_acc(Kt), ldO = Tr::ld_acc(dp);
  const Geom& g = p.g;
  const int N = g.N;

  // blockIdx.x = ((b * nW + win) * heads + h) * n_row_blocks + rb
  int bwh, rb, bw, h, b, win;
  p.div_rb.divmod(blockIdx.x, bwh, rb);
  p.div_heads.divmod(bwh, bw, h);
  p.div_nW.divmod(bw, b, win);
  const int rows = kRowTile * nwarps;
  const int row0 = rb * rows;

  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const FwdLayout L = fwd_layout<Tr>(d, nwarps);
  int* tok_r = reinterpret_cast<int*>(smem + L.tok_r);
  int* reg_r = reinterpret_cast<int*>(smem + L.reg_r);
  int* tok_k = reinterpret_cast<int*>(smem + L.tok_k);
  int* reg_k = reinterpret_cast<int*>(smem + L.reg_k);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  A* sS = reinterpret_cast<A*>(smem + L.s) + warp * kRowTile * ldS;
  A* sO = reinterpret_cast<A*>(smem + L.o) + warp * kRowTile * ldO;
  A* st = reinterpret_cast<A*>(smem + L.stats) + warp * 3 * kRowTile;

  const T* qkv = static_cast<const T*>(p.qkv);
  const T* pad = static_cast<const T*>(p.pad);
  const int C = p.C;
  const int64_t stride = 3 * static_cast<int64_t>(C);
  const T* img = qkv + static_cast<int64_t>(b) * p.img_qkv + h * d;

  build_token_table(g, win, row0, rows, tok_r, reg_r);
  if (lane < kRowTile) {
    st[lane] = neg_inf<A>();
    st[kRowTile + lane] = A(0);
  }
  __syncthreads();
  gather_rows<T, Tr::kD, Tr::kTC, 1>(GatherSrc<T>{sQ, img, stride, pad ? pad + h * d : nullptr}, GatherSrc<T>{}, ld, tok_r, rows, N - row0, d, p.vec);
  A* inv_q = reinterpret_cast<A*>(smem + L.inv);  // Swin V2 only
  A* inv_k = inv_q + rows;
  const A s_h = p.qk_norm ? static_cast<const A*>(p.head_scale)[h] : A(1);
  if (p.qk_norm) {  // Swin V2: 1 / ||q|| (the loop's barrier orders it before the first product)
    __syncthreads();
    row_inv_norms<T, A, Tr::kD>(sQ, ld, rows, d, inv_q);
  }

  const int wrow0 = row0 + warp * kRowTile;  // first query row of this warp
  const bool active = wrow0 < N;             // warp-uniform
  for (int kt0 = 0; kt0 < N; kt0 += Kt) {
    __syncthreads();  // the previous tile's K, V and key table are consumed
    build_token_table(g, win, kt0, Kt, tok_k, reg_k);
    __syncthreads();
    gather_rows<T, Tr::kD, Tr::kTC, 2>(GatherSrc<T>{sK, img + C, stride, pad ? pad + C + h * d : nullptr}, GatherSrc<T>{sV, img + 2 * C, stride, pad ? pad + 2 * C + h * d : nullptr}, ld, tok_k, Kt, N - kt0, d, p.vec);
    __syncthreads();
    if (p.qk_norm) {  // Swin V2: 1 / ||k|| of the tile
      row_inv_norms<T, A, Tr::kD>(sK, ld, Kt, d, inv_k);
      __syncthreads();
    }
    if (!active) continue;
    // S = Q_w K^T (Swin V2: then s_h q^ . k^, in float32)
    warp_gemm<Tr, true, false>(sS, ldS, sQ + warp * kRowTile * ld, ld, 16, sK, ld, 16, Kt, dp, false);
    __syncwarp();
    if (p.qk_norm) {
      scale_scores(sS, ldS, Kt, inv_q + warp * kRowTile, inv_k, s_h);
      __syncwarp();
    }
    online_softmax_tile<Tr, Kt>(sS, ldS, kt0, wrow0, p, h, reg_r + warp * kRowTile, reg_k, st);
    if (kt0 > 0) {  // rescale what the previous tiles accumulated
      for (int r = 0; r < kRowTile; ++r) {
        const A alpha = st[2 * kRowTile + r];
        for (int c = lane; c < dp; c += 32) sO[r * ldO + c] *= alpha;
      }
      __syncwarp();
    }
    // O += P V
    warp_gemm<Tr, true, true>(sO, ldO, reinterpret_cast<const T*>(sS), Tr::ld_p(Kt), 16, sV, ld, 16 * ld, dp, Kt, kt0 > 0);
    __syncwarp();
  }
  if (!active) return;

  // Epilogue: log-sum-exp (natural log) of every row < N, padding rows
  // included; the normalised output of real tokens.
  A* inv_l = st + 2 * kRowTile;  // the rescale factors are no longer needed
  if (lane < kRowTile) {
    const int i = wrow0 + lane;
    const A m = st[lane], l = st[kRowTile + lane];
    const A m_use = m == neg_inf<A>() ? A(0) : m;
    if (i < N) {
      A* lse = static_cast<A*>(p.lse_out) + ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * N;
      lse[i] = (m_use + acc_log2(l)) * static_cast<A>(kLn2);
    }
    inv_l[lane] = A(1) / l;
  }
  __syncwarp();
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(b) * p.img_out + h * d;
  warp_store_rows<T, A, Tr::kD>(out, C, tok_r + warp * kRowTile, kRowTile, sO, ldO, inv_l, A(1), d, p.vec);
}

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext

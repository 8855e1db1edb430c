// Backward of the fused shifted-window attention.
//
// attn_bwd_fused_kernel (N <= kFusedMaxN, every 224-px Swin): one block per
//   (window, head, chunk of images), one warp per 16-row tile of the window,
//   the images of the chunk one after another.  Per image, once each:
//   S = Q K^T and dP = dO V^T; P = exp(S - lse); D = rowsum(P o dP) inside
//   the tile; dS = P o (dP - D); dV = P^T dO, dK = dS^T Q, dQ = dS K, written
//   through shared memory as 16-byte rows.  The bias gradient is accumulated
//   in registers with a fixed owner per (i, j) over the chunk and written
//   once per chunk: no float atomics, a fixed summation order.
// attn_bwd_dq_kernel + attn_bwd_dkv_kernel (any N, bounded shared memory):
//   the streaming form.  The dq kernel (block = window, head, chunk, block of
//   query rows) streams key tiles twice: D per row, then dS, the bias-gradient
//   partials (read-modify-write by the block that owns those rows) and dQ.
//   The dk/dv kernel (block = image, window, head, block of keys) streams
//   query tiles with D from the first kernel.
// Padding-token gradients (the k and v of qkv_pad) are summed per warp into
// fixed slots, only when the map has padding tokens.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include "fwd_kernel.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {

// Logit of (query i, key j) in log2 units, or -inf outside the window.
template <typename A>
__device__ __forceinline__ A logit2(A s, A scale, const A* brow, int i, int j, int N, bool masked,
                                    int reg_i, int reg_j) {
  if (i >= N || j >= N) return neg_inf<A>();
  A v = s * scale + brow[j];
  if (masked && reg_i != reg_j) v += static_cast<A>(kShiftMaskValue);
  return v * static_cast<A>(kLog2e);
}

// P from a log2 logit and the row's log-sum-exp (natural log).
template <typename A>
__device__ __forceinline__ A prob(A x2, A lse) {
  return lse == neg_inf<A>() ? A(0) : acc_exp2(x2 - lse * static_cast<A>(kLog2e));
}

// Row pass over the 16 x ncols score tiles S, dP of a warp (rows = queries):
// P, D (row sums of P o dP, if kWithD) and dS = P o (dP - D); P is written
// over S (if kWriteP) and dS over dP.  kLpr lanes per row, kCpl columns per
// lane (ncols <= kLpr * kCpl).  Row stats: lse[r] read, D[r] read (!kWithD)
// or written (kWithD, if D_r).  fn(pass, e, i, j, ds, s) is called per element
// with dS and the raw score s = S (the bias gradient; Swin V2's scale gradient); with kUnroll the passes are unrolled, so that fn may
// index register arrays by (pass, e).  Rows are read whole before they are
// overwritten.
template <class Tr, int kLpr, int kCpl, bool kWithD, bool kWriteP, bool kUnroll, typename F>
__device__ __forceinline__ void grad_rows(typename Tr::acc_t* S, typename Tr::acc_t* dP, int ldS,
                                          int ncols, int col0, int row0, const AttnParams& p,
                                          int h, const int* reg_r, const int* reg_c,
                                          const typename Tr::acc_t* lse_r,
                                          typename Tr::acc_t* D_r, F&& fn) {
  using A = typename Tr::acc_t;
  using T = typename Tr::T;
  constexpr int kRpp = 32 / kLpr;
  constexpr int kPasses = kRowTile / kRpp;
  [[maybe_unused]] constexpr int kUnrollPasses = kUnroll ? kPasses : 1;  // (the host compiler ignores the pragma)
  const int N = p.g.N;
  const int lane = threadIdx.x & 31;
  const int sub = lane / kLpr, cl = lane - sub * kLpr;
  const A scale = static_cast<A>(p.scale);
  const A* bias = static_cast<const A*>(p.bias);
  const int ldP = ldS * static_cast<int>(sizeof(A) / sizeof(T));  // P row r over score row r
#pragma unroll kUnrollPasses
  for (int pi = 0; pi < kPasses; ++pi) {
    const int r = pi * kRpp + sub, i = row0 + r;
    const A* brow = bias + (static_cast<int64_t>(h) * N + (i < N ? i : 0)) * N;
    const A lse = i < N ? lse_r[r] : neg_inf<A>();
    A pv[kCpl], dpv[kCpl], sv[kCpl];
    A dsum = 0;
#pragma unroll
    for (int e = 0; e < kCpl; ++e) {
      const int c = cl + e * kLpr;
      pv[e] = A(0);
      dpv[e] = A(0);
      sv[e] = A(0);
      if (c < ncols) {
        const int j = col0 + c;
        sv[e] = S[r * ldS + c];
        pv[e] = prob(logit2(sv[e], scale, brow, i, j, N, p.masked, reg_r[r], reg_c[c]), lse);
        dpv[e] = dP[r * ldS + c];
        dsum += pv[e] * dpv[e];
      }
    }
    A Dv;
    if constexpr (kWithD) {
      Dv = group_sum(dsum, kLpr);
    } else {
      Dv = D_r[r];
    }
    __syncwarp();  // the row is read whole before P / dS overwrite it
#pragma unroll
    for (int e = 0; e < kCpl; ++e) {
      const int c = cl + e * kLpr;
      if (c < ncols) {
        const A ds = pv[e] * (dpv[e] - Dv);
        fn(pi, e, i, col0 + c, ds, sv[e]);
        if constexpr (Tr::kTC) {
          if (kWriteP) reinterpret_cast<T*>(S)[r * ldP + c] = from_acc<T>(pv[e]);
          reinterpret_cast<T*>(dP)[r * ldP + c] = from_acc<T>(ds);
        } else {
          if (kWriteP) S[r * ldS + c] = pv[e];
          dP[r * ldS + c] = ds;
        }
      }
    }
    if (kWithD && cl == 0 && D_r != nullptr) D_r[r] = Dv;
  }
  __syncwarp();
}

// Adds the padding keys' rows of a warp's 16 x dp tile (times mul) into
// lane-owned accumulators acc[e] (channel lane + 32 e).
template <typename A>
__device__ __forceinline__ void add_padding_rows(A (&acc)[4], const A* tile, int ldt, const int* tok,
                                                 int key0, int N, int dp, A mul) {
  const int lane = threadIdx.x & 31;
  for (int r = 0; r < kRowTile; ++r) {
    if (tok[r] >= 0 || key0 + r >= N) continue;  // a real token, or past the window
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = lane + 32 * e;
      if (c < dp) acc[e] += tile[r * ldt + c] * mul;
    }
  }
}

template <typename A>
__device__ __forceinline__ void write_dpad_slot(A* slot, const A (&ak)[4], const A (&av)[4], int heads,
                                                int h, int d) {
  // slot: (2, heads, d) -- the k then the v part of the padding vector's gradient
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int c = lane + 32 * e;
    if (c < d) {
      slot[static_cast<int64_t>(h) * d + c] = ak[e];
      slot[(static_cast<int64_t>(heads) + h) * d + c] = av[e];
    }
  }
}

// ------------------------------------------------------------------ fused

template <class Tr>
__global__ void __launch_bounds__(Tr::kFusedWarps * 32, 1) attn_bwd_fused_kernel(const AttnParams p) {
  using T = typename Tr::T;
  using A = typename Tr::acc_t;
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d = Tr::kD ? Tr::kD : p.d;
  const int dp = Tr::dpad(d), ld = Tr::ld_op(d);
  const int rows = kRowTile * nwarps;  // >= N
  const int ldS = Tr::ld_acc(rows), ldP = Tr::ld_p(rows), ldO = Tr::ld_acc(dp);
  const Geom& g = p.g;
  const int N = g.N;

  // blockIdx.x = (chunk * nW + win) * heads + h
  int bid = blockIdx.x;
  const int h = bid % p.heads;
  bid /= p.heads;
  const int win = bid % g.nW;
  const int chunk = bid / g.nW;

  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const FusedLayout L = fused_layout<Tr>(d, nwarps);
  int* tok = reinterpret_cast<int*>(smem + L.tok);
  int* reg = reinterpret_cast<int*>(smem + L.reg);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  T* sdO = reinterpret_cast<T*>(smem + L.dout);
  A* sS_all = reinterpret_cast<A*>(smem + L.s);
  A* sdP_all = reinterpret_cast<A*>(smem + L.dp);
  A* sS = sS_all + warp * kRowTile * ldS;
  A* sdP = sdP_all + warp * kRowTile * ldS;
  A* stage = reinterpret_cast<A*>(smem + L.stage) + warp * kRowTile * ldO;
  // P and dS of the whole window as row-major (rows x ldP) matrices of T
  // (of acc_t for SIMT), over the per-warp score tiles.
  const T* P_all = reinterpret_cast<const T*>(sS_all);
  const T* dS_all = reinterpret_cast<const T*>(sdP_all);
  A* inv_q = reinterpret_cast<A*>(smem + L.inv);  // Swin V2 only
  A* inv_k = inv_q + rows;
  A* ds_w = reinterpret_cast<A*>(smem + L.dscale);

  const T* qkv = static_cast<const T*>(p.qkv);
  const T* pad = static_cast<const T*>(p.pad);
  const T* gout = static_cast<const T*>(p.grad_out);
  T* dqkv = static_cast<T*>(p.dqkv);
  const int C = p.C;
  const int64_t stride = 3 * static_cast<int64_t>(C);
  const A scale = static_cast<A>(p.scale);
  const int wrow0 = warp * kRowTile;
  const bool active = wrow0 < N;  // warp-uniform

  build_token_table(g, win, 0, rows, tok, reg);

  A dbacc[kRowTile][2];
#pragma unroll
  for (int a = 0; a < kRowTile; ++a) dbacc[a][0] = dbacc[a][1] = A(0);
  A padk[4] = {0, 0, 0, 0}, padv[4] = {0, 0, 0, 0};
  const A s_h = p.qk_norm ? static_cast<const A*>(p.head_scale)[h] : A(1);
  A ds_acc = 0;  // Swin V2: this lane's share of d head_scale over the chunk

  const int b0 = chunk * p.chunk;
  const int b1 = b0 + p.chunk < p.B ? b0 + p.chunk : p.B;
  for (int b = b0; b < b1; ++b) {
    __syncthreads();  // the previous image is consumed (and the token table is built)
    const T* img = qkv + static_cast<int64_t>(b) * p.img_qkv + h * d;
    gather_rows<T, Tr::kD, Tr::kTC, 2>(GatherSrc<T>{sQ, img, stride, pad ? pad + h * d : nullptr},
                                       GatherSrc<T>{sK, img + C, stride, pad ? pad + C + h * d : nullptr}, ld, tok,
                                       rows, N, d, p.vec);
    gather_rows<T, Tr::kD, Tr::kTC, 2>(GatherSrc<T>{sV, img + 2 * C, stride, pad ? pad + 2 * C + h * d : nullptr},
                                       GatherSrc<T>{sdO, gout + static_cast<int64_t>(b) * p.img_out + h * d, C, nullptr},
                                       ld, tok, rows, N, d, p.vec);
    __syncthreads();
    if (p.qk_norm) {  // Swin V2: the inverse norms (the scores come from the raw rows)
      row_inv_norms<T, A, Tr::kD>(sQ, ld, rows, d, inv_q);
      row_inv_norms<T, A, Tr::kD>(sK, ld, rows, d, inv_k);
      __syncthreads();
    }
    if (active) {
      warp_gemm<Tr, true, false>(sS, ldS, sQ + wrow0 * ld, ld, 16, sK, ld, 16, rows, dp, false);
      warp_gemm<Tr, true, false>(sdP, ldS, sdO + wrow0 * ld, ld, 16, sV, ld, 16, rows, dp, false);
      __syncwarp();
      if (p.qk_norm) {  // s_h q^ . k^ in float32
        scale_scores(sS, ldS, rows, inv_q + wrow0, inv_k, s_h);
        __syncwarp();
      }
      const A* lse = static_cast<const A*>(p.lse) + ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * N + wrow0;
      grad_rows<Tr, 32, 2, true, true, true>(sS, sdP, ldS, rows, 0, wrow0, p, h, reg + wrow0, reg, lse, nullptr,
                                             [&](int pi, int e, int i, int j, A ds, A s) {
                                               dbacc[pi][e] += ds;
                                               // Swin V2: d head_scale = sum dS o (q^ . k^), from the
                                               // float32 dS and logits (before dS is rounded for the GEMMs)
                                               if (p.qk_norm && i < N && j < N) ds_acc += ds * s;
                                             });
    }
    __syncthreads();  // P and dS of every warp are in shared memory
    if (p.qk_norm) {  // the gradient products' operands: q' = s_h q^ and k^
      scale_rows<T, A, Tr::kD>(sQ, ld, rows, d, inv_q, s_h);
      scale_rows<T, A, Tr::kD>(sK, ld, rows, d, inv_k, A(1));
      __syncthreads();
    }
    if (!active) continue;
    const int64_t ob = static_cast<int64_t>(b) * p.img_qkv + h * d;
    // dV (keys of this warp) = P^T dO
    warp_gemm<Tr, false, true>(stage, ldO, P_all + wrow0, ldP, 16 * ldP, sdO, ld, 16 * ld, dp, rows, false);
    __syncwarp();
    warp_store_rows<T, A, Tr::kD>(dqkv + ob + 2 * C, stride, tok + wrow0, kRowTile, stage, ldO, nullptr, A(1), d, p.vec);
    if (p.padded) add_padding_rows(padv, stage, ldO, tok + wrow0, wrow0, N, dp, A(1));
    __syncwarp();
    // dK = scale dS^T Q (Swin V2: the gradient of k^, then through the normalisation)
    warp_gemm<Tr, false, true>(stage, ldO, dS_all + wrow0, ldP, 16 * ldP, sQ, ld, 16 * ld, dp, rows, false);
    __syncwarp();
    if (p.qk_norm) {
      normalize_rows_backward<T, A, Tr::kD>(stage, ldO, sK + wrow0 * ld, ld, inv_k + wrow0, d, A(1));
      __syncwarp();
    }
    warp_store_rows<T, A, Tr::kD>(dqkv + ob + C, stride, tok + wrow0, kRowTile, stage, ldO, nullptr, scale, d, p.vec);
    if (p.padded) add_padding_rows(padk, stage, ldO, tok + wrow0, wrow0, N, dp, scale);
    __syncwarp();
    // dQ (queries of this warp) = scale dS K (Swin V2: of q' = s_h q^, then through the normalisation)
    warp_gemm<Tr, true, true>(stage, ldO, dS_all + wrow0 * ldP, ldP, 16, sK, ld, 16 * ld, dp, rows, false);
    __syncwarp();
    if (p.qk_norm) {
      normalize_rows_backward<T, A, Tr::kD>(stage, ldO, sQ + wrow0 * ld, ld, inv_q + wrow0, d, s_h);
      __syncwarp();
    }
    warp_store_rows<T, A, Tr::kD>(dqkv + ob, stride, tok + wrow0, kRowTile, stage, ldO, nullptr, scale * s_h, d, p.vec);
    __syncwarp();
  }
  if (p.qk_norm) {  // d head_scale of this (chunk, window, head): the warps' sums in warp order
    // The scores are s_h cos (q' = s_h q^ in shared memory): d s_h = sum dS cos.
    const A w = warp_sum(ds_acc) / s_h;
    if (lane == 0) ds_w[warp] = w;
    __syncthreads();
    if (threadIdx.x == 0) {
      A t = 0;
      for (int w = 0; w < nwarps; ++w) t += ds_w[w];
      static_cast<A*>(p.dscale_part)[(static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h] = t;
    }
  }
  if (!active) return;

  // Bias-gradient partial of this (chunk, window, head): every (i, j) from
  // its owner lane, in the order the row pass visits them.
  {
    A* dst = static_cast<A*>(p.dbias_part) +
             ((static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h) * N * N;
#pragma unroll
    for (int r = 0; r < kRowTile; ++r) {  // row r, columns lane and lane + 32, as grad_rows<32, 2> visits them
      const int i = wrow0 + r;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = lane + 32 * e;
        if (i < N && j < N) dst[static_cast<int64_t>(i) * N + j] = dbacc[r][e];
      }
    }
  }
  if (p.padded) {
    A* slot = static_cast<A*>(p.dpad_part) +
              ((static_cast<int64_t>(chunk) * g.nW + win) * nwarps + warp) * 2 * p.heads * d;
    write_dpad_slot(slot, padk, padv, p.heads, h, d);
  }
}

// ------------------------------------------------------------------ streaming: dq, D, dbias

template <class Tr>
__global__ void __launch_bounds__(Tr::kDqWarps * 32, Tr::kDqMinBlocks) attn_bwd_dq_kernel(const AttnParams p) {
  using T = typename Tr::T;
  using A = typename Tr::acc_t;
  constexpr int Kt = Tr::kDqKeyTile;
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d = Tr::kD ? Tr::kD : p.d;
  const int dp = Tr::dpad(d), ld = Tr::ld_op(d);
  const int ldS = Tr::ld_acc(Kt), ldP = Tr::ld_p(Kt), ldO = Tr::ld_acc(dp);
  const Geom& g = p.g;
  const int N = g.N;

  // blockIdx.x = ((chunk * nW + win) * heads + h) * n_row_blocks + rb
  int bid = blockIdx.x;
  const int rb = bid % p.n_row_blocks;
  bid /= p.n_row_blocks;
  const int h = bid % p.heads;
  bid /= p.heads;
  const int win = bid % g.nW;
  const int chunk = bid / g.nW;
  const int rows = kRowTile * nwarps;
  const int row0 = rb * rows;

  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const DqLayout L = dq_layout<Tr>(d, nwarps);
  int* tok_r = reinterpret_cast<int*>(smem + L.tok_r);
  int* reg_r = reinterpret_cast<int*>(smem + L.reg_r);
  int* tok_k = reinterpret_cast<int*>(smem + L.tok_k);
  int* reg_k = reinterpret_cast<int*>(smem + L.reg_k);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sdO = reinterpret_cast<T*>(smem + L.dout);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  A* sS = reinterpret_cast<A*>(smem + L.s) + warp * kRowTile * ldS;
  A* sdP = reinterpret_cast<A*>(smem + L.dp) + warp * kRowTile * ldS;
  A* acc = reinterpret_cast<A*>(smem + L.acc) + warp * kRowTile * ldO;
  A* st = reinterpret_cast<A*>(smem + L.stats) + warp * 2 * kRowTile;  // lse, D
  A* inv_q = reinterpret_cast<A*>(smem + L.inv);                          // Swin V2 only
  A* inv_kt = inv_q + rows;
  A* ds_w = reinterpret_cast<A*>(smem + L.dscale);

  const T* qkv = static_cast<const T*>(p.qkv);
  const T* pad = static_cast<const T*>(p.pad);
  const int C = p.C;
  const int64_t stride = 3 * static_cast<int64_t>(C);
  const A scale = static_cast<A>(p.scale);
  const int wrow0 = row0 + warp * kRowTile;
  const bool active = wrow0 < N;
  A* dbias = static_cast<A*>(p.dbias_part) +
             ((static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h) * N * N;

  build_token_table(g, win, row0, rows, tok_r, reg_r);
  const A s_h = p.qk_norm ? static_cast<const A*>(p.head_scale)[h] : A(1);
  A ds_acc = 0;
  const int b0 = chunk * p.chunk;
  const int b1 = b0 + p.chunk < p.B ? b0 + p.chunk : p.B;
  for (int b = b0; b < b1; ++b) {
    const bool first = b == b0;
    __syncthreads();
    const T* img = qkv + static_cast<int64_t>(b) * p.img_qkv + h * d;
    gather_rows<T, Tr::kD, Tr::kTC, 2>(GatherSrc<T>{sQ, img, stride, pad ? pad + h * d : nullptr}, GatherSrc<T>{sdO, static_cast<const T*>(p.grad_out) + static_cast<int64_t>(b) * p.img_out + h * d, C,
                                   nullptr}, ld, tok_r, rows, N - row0, d, p.vec);
    if (p.qk_norm) {  // 1 / ||q|| (the loop's first barrier orders it before the products)
      __syncthreads();
      row_inv_norms<T, A, Tr::kD>(sQ, ld, rows, d, inv_q);
    }
    const int64_t rowstat = ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * N;
    if (active && lane < kRowTile) {
      const int i = wrow0 + lane;
      st[lane] = i < N ? static_cast<const A*>(p.lse)[rowstat + i] : neg_inf<A>();
      st[kRowTile + lane] = A(0);
    }
    for (int pass = 0; pass < 2; ++pass) {
      for (int kt0 = 0; kt0 < N; kt0 += Kt) {
        __syncthreads();
        build_token_table(g, win, kt0, Kt, tok_k, reg_k);
        __syncthreads();
        gather_rows<T, Tr::kD, Tr::kTC, 2>(GatherSrc<T>{sK, img + C, stride, pad ? pad + C + h * d : nullptr}, GatherSrc<T>{sV, img + 2 * C, stride, pad ? pad + 2 * C + h * d : nullptr}, ld, tok_k, Kt, N - kt0, d, p.vec);
        __syncthreads();
        if (p.qk_norm) {  // 1 / ||k|| of the tile
          row_inv_norms<T, A, Tr::kD>(sK, ld, Kt, d, inv_kt);
          __syncthreads();
        }
        if (active) {
          warp_gemm<Tr, true, false>(sS, ldS, sQ + warp * kRowTile * ld, ld, 16, sK, ld, 16, Kt, dp, false);
          warp_gemm<Tr, true, false>(sdP, ldS, sdO + warp * kRowTile * ld, ld, 16, sV, ld, 16, Kt, dp, false);
          __syncwarp();
          if (p.qk_norm) {  // s_h q^ . k^ in float32
            scale_scores(sS, ldS, Kt, inv_q + warp * kRowTile, inv_kt, s_h);
            __syncwarp();
          }
        }
        if (p.qk_norm && pass == 1) {  // k^ for dQ += dS K^, once every warp has its scores
          __syncthreads();
          scale_rows<T, A, Tr::kD>(sK, ld, Kt, d, inv_kt, A(1));
          __syncthreads();
        }
        if (!active) continue;
        if (pass == 0) {
          // Partial row sums of P o dP over this key tile, added to D.
          constexpr int lpr = Kt < 32 ? Kt : 32;
          constexpr int rpp = 32 / lpr;
          const int sub = lane / lpr, cl = lane - sub * lpr;
          const A* bias = static_cast<const A*>(p.bias);
          for (int r0 = 0; r0 < kRowTile; r0 += rpp) {
            const int r = r0 + sub, i = wrow0 + r;
            const A* brow = bias + (static_cast<int64_t>(h) * N + (i < N ? i : 0)) * N;
            A s = 0;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int c = cl + e * lpr;
              if (c < Kt) {
                const A pr = prob(logit2(sS[r * ldS + c], scale, brow, i, kt0 + c, N, p.masked,
                                         reg_r[warp * kRowTile + r], reg_k[c]), st[r]);
                s += pr * sdP[r * ldS + c];
              }
            }
            s = group_sum(s, lpr);
            if (cl == 0) st[kRowTile + r] += s;
          }
          __syncwarp();
        } else {
          grad_rows<Tr, (Kt < 32 ? Kt : 32), (Kt < 32 ? 1 : Kt / 32), false, false, false>(
              sS, sdP, ldS, Kt, kt0, wrow0, p, h, reg_r + warp * kRowTile, reg_k, st,
                                      st + kRowTile, [&](int, int, int i, int j, A ds, A s) {
                                        if (i < N && j < N) {
                                          A* e = dbias + static_cast<int64_t>(i) * N + j;
                                          *e = first ? ds : *e + ds;
                                          if (p.qk_norm) ds_acc += ds * s;  // Swin V2, as the fused kernel
                                        }
                                      });
          // dQ += dS K_tile
          warp_gemm<Tr, true, true>(acc, ldO, reinterpret_cast<const T*>(sdP), ldP, 16, sK, ld, 16 * ld, dp, Kt, kt0 > 0);
          __syncwarp();
        }
      }
    }
    if (active) {
      if (p.qk_norm) {  // acc = dS K^: times s_h it is the gradient of q^; through the normalisation
        project_out_rows<T, A, Tr::kD>(acc, ldO, sQ + warp * kRowTile * ld, ld, inv_q + warp * kRowTile, d, s_h);
        __syncwarp();
      }
      warp_store_rows<T, A, Tr::kD>(static_cast<T*>(p.dqkv) + static_cast<int64_t>(b) * p.img_qkv + h * d, stride,
                                    tok_r + warp * kRowTile, kRowTile, acc, ldO, nullptr, scale, d, p.vec);
      if (lane < kRowTile && wrow0 + lane < N) static_cast<A*>(p.Dbuf)[rowstat + wrow0 + lane] = st[kRowTile + lane];
      __syncwarp();
    }
  }
  if (p.qk_norm) {  // d head_scale of this (chunk, window, row block, head): warps summed in order
    const A w = warp_sum(ds_acc) / s_h;  // as the fused kernel
    if (lane == 0) ds_w[warp] = w;
    __syncthreads();
    if (threadIdx.x == 0) {
      A t = 0;
      for (int w = 0; w < nwarps; ++w) t += ds_w[w];
      static_cast<A*>(p.dscale_part)[((static_cast<int64_t>(chunk) * g.nW + win) * p.n_row_blocks + rb) * p.heads + h] = t;
    }
  }
}

// ------------------------------------------------------------------ streaming: dk, dv

template <class Tr>
__global__ void __launch_bounds__(Tr::kDkvWarps * 32, 1) attn_bwd_dkv_kernel(const AttnParams p) {
  using T = typename Tr::T;
  using A = typename Tr::acc_t;
  constexpr int Qt = Tr::kDkvQTile;
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d = Tr::kD ? Tr::kD : p.d;
  const int dp = Tr::dpad(d), ld = Tr::ld_op(d);
  const int ldS = Tr::ld_acc(Qt), ldP = Tr::ld_p(Qt), ldO = Tr::ld_acc(dp);
  const Geom& g = p.g;
  const int N = g.N;

  // blockIdx.x = ((b * nW + win) * heads + h) * n_row_blocks + kb
  int bid = blockIdx.x;
  const int kb = bid % p.n_row_blocks;
  bid /= p.n_row_blocks;
  const int h = bid % p.heads;
  bid /= p.heads;
  const int win = bid % g.nW;
  const int b = bid / g.nW;
  const int keys = kRowTile * nwarps;
  const int key0 = kb * keys;

  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const DkvLayout L = dkv_layout<Tr>(d, nwarps);
  int* tok_k = reinterpret_cast<int*>(smem + L.tok_k);
  int* reg_k = reinterpret_cast<int*>(smem + L.reg_k);
  int* tok_q = reinterpret_cast<int*>(smem + L.tok_q);
  int* reg_q = reinterpret_cast<int*>(smem + L.reg_q);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sdO = reinterpret_cast<T*>(smem + L.dout);
  A* s_lse = reinterpret_cast<A*>(smem + L.stats);
  A* s_D = s_lse + Qt;
  A* sS = reinterpret_cast<A*>(smem + L.s) + warp * kRowTile * ldS;
  A* sdP = reinterpret_cast<A*>(smem + L.dp) + warp * kRowTile * ldS;
  A* dK = reinterpret_cast<A*>(smem + L.dk) + warp * kRowTile * ldO;
  A* dV = reinterpret_cast<A*>(smem + L.dv) + warp * kRowTile * ldO;
  A* inv_k = reinterpret_cast<A*>(smem + L.inv);  // Swin V2 only
  A* inv_qt = inv_k + keys;
  const A s_h = p.qk_norm ? static_cast<const A*>(p.head_scale)[h] : A(1);

  const T* qkv = static_cast<const T*>(p.qkv);
  const T* pad = static_cast<const T*>(p.pad);
  const int C = p.C;
  const int64_t stride = 3 * static_cast<int64_t>(C);
  const A scale = static_cast<A>(p.scale);
  const A* bias = static_cast<const A*>(p.bias) + static_cast<int64_t>(h) * N * N;
  const int wkey0 = key0 + warp * kRowTile;
  const bool active = wkey0 < N;
  const T* img = qkv + static_cast<int64_t>(b) * p.img_qkv + h * d;
  const int64_t rowstat = ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * N;

  build_token_table(g, win, key0, keys, tok_k, reg_k);
  __syncthreads();
  gather_rows<T, Tr::kD, Tr::kTC, 2>(GatherSrc<T>{sK, img + C, stride, pad ? pad + C + h * d : nullptr}, GatherSrc<T>{sV, img + 2 * C, stride, pad ? pad + 2 * C + h * d : nullptr}, ld, tok_k, keys, N - key0, d, p.vec);
  if (p.qk_norm) {  // 1 / ||k|| (the loop's first barrier orders it before the products)
    __syncthreads();
    row_inv_norms<T, A, Tr::kD>(sK, ld, keys, d, inv_k);
  }
  for (int qt0 = 0; qt0 < N; qt0 += Qt) {
    __syncthreads();
    build_token_table(g, win, qt0, Qt, tok_q, reg_q);
    for (int e = threadIdx.x; e < Qt; e += blockDim.x) {
      const int i = qt0 + e;
      s_lse[e] = i < N ? static_cast<const A*>(p.lse)[rowstat + i] : neg_inf<A>();
      s_D[e] = i < N ? static_cast<const A*>(p.Dbuf)[rowstat + i] : A(0);
    }
    __syncthreads();
    gather_rows<T, Tr::kD, Tr::kTC, 2>(GatherSrc<T>{sQ, img, stride, pad ? pad + h * d : nullptr}, GatherSrc<T>{sdO, static_cast<const T*>(p.grad_out) + static_cast<int64_t>(b) * p.img_out + h * d, C,
                                   nullptr}, ld, tok_q, Qt, N - qt0, d, p.vec);
    __syncthreads();
    if (p.qk_norm) {  // 1 / ||q|| of the tile
      row_inv_norms<T, A, Tr::kD>(sQ, ld, Qt, d, inv_qt);
      __syncthreads();
    }
    if (active) {
      // S^T = K_w Q^T, dP^T = V_w dO^T (rows: this warp's keys, columns: queries)
      warp_gemm<Tr, true, false>(sS, ldS, sK + warp * kRowTile * ld, ld, 16, sQ, ld, 16, Qt, dp, false);
      warp_gemm<Tr, true, false>(sdP, ldS, sV + warp * kRowTile * ld, ld, 16, sdO, ld, 16, Qt, dp, false);
      __syncwarp();
      if (p.qk_norm) {  // s_h k^ . q^ in float32
        scale_scores(sS, ldS, Qt, inv_k + warp * kRowTile, inv_qt, s_h);
        __syncwarp();
      }
    }
    if (p.qk_norm) {  // q' = s_h q^ for dK += dS^T Q', once every warp has its scores
      __syncthreads();
      scale_rows<T, A, Tr::kD>(sQ, ld, Qt, d, inv_qt, s_h);
      __syncthreads();
    }
    if (!active) continue;
    // P^T and dS^T, in 16-column steps (each step's P / dS land over scores
    // already read), lane = (key r, query parity).
    {
      const int r = lane & 15, cpar = lane >> 4;
      const int j = wkey0 + r;
      for (int c0 = 0; c0 < Qt; c0 += 16) {
        A pv[8], dsv[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const int c = c0 + cpar + 2 * t;
          pv[t] = dsv[t] = A(0);
          if (c < Qt) {  // SIMT query tiles may be 8 wide
            const int i = qt0 + c;
            const A* brow = bias + static_cast<int64_t>(i < N ? i : 0) * N;
            const A x = logit2(sS[r * ldS + c], scale, brow, i, j, N, p.masked, reg_q[c], reg_k[warp * kRowTile + r]);
            pv[t] = prob(x, s_lse[c]);
            dsv[t] = pv[t] * (sdP[r * ldS + c] - s_D[c]);
          }
        }
        __syncwarp();
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const int c = c0 + cpar + 2 * t;
          if (c >= Qt) continue;
          if constexpr (Tr::kTC) {
            reinterpret_cast<T*>(sS)[r * ldP + c] = from_acc<T>(pv[t]);
            reinterpret_cast<T*>(sdP)[r * ldP + c] = from_acc<T>(dsv[t]);
          } else {
            sS[r * ldS + c] = pv[t];
            sdP[r * ldS + c] = dsv[t];
          }
        }
        __syncwarp();
      }
    }
    // dV += P^T dO, dK += dS^T Q
    warp_gemm<Tr, true, true>(dV, ldO, reinterpret_cast<const T*>(sS), ldP, 16, sdO, ld, 16 * ld, dp, Qt, qt0 > 0);
    warp_gemm<Tr, true, true>(dK, ldO, reinterpret_cast<const T*>(sdP), ldP, 16, sQ, ld, 16 * ld, dp, Qt, qt0 > 0);
    __syncwarp();
  }
  if (p.qk_norm && active) {  // Swin V2: dK is the gradient of k^; through the normalisation (raw K rows)
    project_out_rows<T, A, Tr::kD>(dK, ldO, sK + warp * kRowTile * ld, ld, inv_k + warp * kRowTile, d, A(1));
    __syncwarp();
  }
  if (p.padded) {  // every warp writes its slot, zeros when it has no padding key
    A padk[4] = {0, 0, 0, 0}, padv[4] = {0, 0, 0, 0};
    if (active) {
      add_padding_rows(padk, dK, ldO, tok_k + warp * kRowTile, wkey0, N, dp, scale);
      add_padding_rows(padv, dV, ldO, tok_k + warp * kRowTile, wkey0, N, dp, A(1));
    }
    A* slot = static_cast<A*>(p.dpad_part) +
              ((((static_cast<int64_t>(b) * g.nW + win) * p.n_row_blocks + kb) * nwarps + warp) * 2 * p.heads) * d;
    write_dpad_slot(slot, padk, padv, p.heads, h, d);
  }
  if (!active) return;
  T* dst = static_cast<T*>(p.dqkv) + static_cast<int64_t>(b) * p.img_qkv + h * d;
  warp_store_rows<T, A, Tr::kD>(dst + C, stride, tok_k + warp * kRowTile, kRowTile, dK, ldO, nullptr, scale, d, p.vec);
  warp_store_rows<T, A, Tr::kD>(dst + 2 * C, stride, tok_k + warp * kRowTile, kRowTile, dV, ldO, nullptr, A(1), d, p.vec);
}

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext

// CUDA kernels of the fused residual add + LayerNorm:
//   h = x + branch (the new residual stream, in x's dtype), y = LayerNorm(h)
// (in y's dtype: under autocast the stream stays fp32 and y comes out in the
// autocast dtype, so the next GEMM reads it without a cast kernel).
//
// Two paths, chosen on the host by add_ln_plan():
//
//   rows in registers (C <= 32 x 48 float / 24 double values, 16-byte rows):
//     add_ln_fwd_reg_kernel   a row is held by an aligned group of G = 2^lg
//             lanes (several rows per warp at small C: G = 4 at Swin-T's C =
//             96, 8 at 192, 16 at 384, 32 above), NCH chunks of VEC values
//             per lane; x and branch are read once, h written, the
//             statistics two-pass from the registers (group_row_stats), y
//             written; weight and bias staged once per block in shared memory.
//     add_ln_bwd_reg_kernel   the same layout; h and grad_y read once, the row
//             sums of g = dy * weight and g * xhat over the group, dh =
//             grad_h + rstd * (g - mean(g) - xhat * mean(g * xhat)) written
//             in h's dtype (and in branch's dtype when it differs); every lane
//             keeps dweight / dbias of its fixed columns in registers for all
//             the rows of its block, summed once per block: over the groups
//             of a warp by xor butterflies, over the warps in warp order in
//             shared memory (one owner lane per word: no bank conflicts), one
//             partial row per block.
//   wide rows (larger C, or C not a multiple of VEC, or unaligned storage):
//     add_ln_fwd_kernel       one warp per row; lanes walk VEC-element chunks
//             (16-byte accesses of the narrowest dtype); h written in the
//             first pass, the statistics (warp_row_stats), then y.
//     add_ln_bwd_kernel       one warp per row, two passes; dweight / dbias
//             per warp in shared memory, element e of a lane's chunk k at
//             word (k * VEC + e) * 32 + lane (bank = lane: conflict-free),
//             warps summed in order, one partial row per block.
// The caller sums the partial rows over a fixed shape (deterministic, no atomics).
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common.cuh"
#include "layernorm_stats.cuh"
#include "patch_merging.cuh"  // Pack, load_pack / store_pack

namespace swin_ext {
namespace cuda {

constexpr int kAddLnWarps = 4;
// Register backward: warps per block.  Twice the forward's at the same
// resident warps per SM (2 blocks of 8 at the small capacity against 4 of 4),
// so that each block's dweight / dbias partial row covers twice the rows:
// Swin-T's stages 3 and 4 (384 and 768 channels, 2 and 1 rows a
// warp-iteration) wrote one partial row pair per 48 and 12 rows, 0.33 and
// 1.33 B per element beside the op's 16.
constexpr int kAddLnBwdWarps = 8;
constexpr int kAddLnRowsPerWarp = 16;        // wide backward: rows per warp per block
constexpr int kAddLnBwdMaxSmem = 48 * 1024;  // wide backward: dweight / dbias accumulators per block
// Register path: 32-bit registers of a row a lane holds (24 / 48 floats, 12 / 24 doubles).
constexpr int kAddLnLaneRegsSmall = 24;
constexpr int kAddLnLaneRegsLarge = 48;
// Register path: about this many blocks per launch (one wave of ~4 per SM on
// 132 SMs; rows per block follow: fewer, fuller blocks keep the backward's
// dweight / dbias partial rows at ~1% of its bytes at Swin-T's shapes), and
// at most kAddLnMaxRowIters row groups per warp.
constexpr int64_t kAddLnTargetBlocks = 512;
constexpr int kAddLnMaxRowIters = 16;

// Elements per chunk: 16 bytes of the narrowest of the three dtypes.
template <typename A, typename B, typename C>
constexpr int add_ln_vec() {
  constexpr size_t m = sizeof(A) < sizeof(B) ? (sizeof(A) < sizeof(C) ? sizeof(A) : sizeof(C))
                                             : (sizeof(B) < sizeof(C) ? sizeof(B) : sizeof(C));
  return static_cast<int>(16 / m);
}

// Chunks of VEC values per lane in the register path.
template <typename acc_t, int VEC, bool kLarge>
constexpr int add_ln_nch() {
  return (kLarge ? kAddLnLaneRegsLarge : kAddLnLaneRegsSmall) * 4 / static_cast<int>(sizeof(acc_t)) / VEC;
}

// How a launch runs (add_ln_plan).  reg: the register path with 2^lg lanes
// per row, NCH of the large capacity or not, rows_per_block rows per block;
// else the wide path with vec (kVec, or 1: scalar) and nwarps (backward).
struct AddLnPlan {
  bool reg = false;
  bool large = false;
  int lg = 0;
  int rows_per_block = 0;
  int vec = 1;
  int nwarps = kAddLnWarps;
  int64_t blocks = 0;
  size_t smem = 0;
  int64_t partials() const { return blocks; }  // backward: one dweight / dbias row per block
};

inline size_t add_ln_bwd_smem(int nwarps, int64_t C_pad, size_t acc_size) {
  return static_cast<size_t>(nwarps) * 2 * C_pad * acc_size;
}
// Columns of a wide backward's per-warp accumulators: C rounded up to whole 32-lane chunk rows.
inline int64_t add_ln_wide_cols(int64_t C, int vec) { return ceil_div<int64_t>(C, 32 * vec) * 32 * vec; }
// Warps per wide backward block whose accumulators fit kAddLnBwdMaxSmem (0: none).
inline int add_ln_bwd_warps(int64_t C_pad, size_t acc_size) {
  for (int w = kAddLnWarps; w >= 1; --w)
    if (add_ln_bwd_smem(w, C_pad, acc_size) <= kAddLnBwdMaxSmem) return w;
  return 0;
}

// Every (non-null) pointer 16-byte aligned: with C % VEC == 0 every row is.
inline bool add_ln_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Resident blocks per SM of the register backward: its __launch_bounds__
// minimum, which its registers make exact (128 at the small capacity in
// float, 2 x 8 warps; 1 otherwise).
template <typename acc_t>
constexpr int add_ln_bwd_blocks_per_sm(int nch_vec) {
  return sizeof(acc_t) == 4 && nch_vec <= kAddLnLaneRegsSmall ? 2 : 1;
}

// Row groups per warp of the register backward: fewest_wave_steps from the
// target's `iters` down to half of it (each warp walks its groups one after
// another: loads, a row reduction, stores).  Swin-T's stage 1 at batch 128 on
// an H200 (401408 rows of 96, 64 a group of 8 warps; 264 slots) goes from 392
// blocks of 16 groups (two waves, 32 deep) to 523 of 12 (24): the H200
// measured that backward at 1.7x its byte floor (stop 30's gpu_check, 4-warp
// blocks).  Stages 2-4 go from 13 / 7 / 4 groups in one wave to 12 / 6 / 3.
inline int64_t add_ln_bwd_iters(int64_t rows, int64_t rows_per_iter, int64_t iters, int64_t resident) {
  return fewest_wave_steps(rows, rows_per_iter, iters, (iters + 1) / 2, resident);
}

// The launch of rows x C with the given dtypes; aligned: every row pointer
// 16-byte aligned; target_blocks: about this many blocks on the register
// path (fewer: more row groups per warp, at most kAddLnMaxRowIters); sms:
// the device's SM count, for the register backward's groups per warp
// (add_ln_bwd_iters; 0: the target's).  Backward: nwarps = 0 when the wide
// backward's accumulators cannot fit (C too large; the caller reports it).
template <typename tx, typename tb, typename ty, typename acc_t>
AddLnPlan add_ln_plan(int64_t rows, int64_t C, bool aligned, bool backward,
                      int64_t target_blocks = kAddLnTargetBlocks, int64_t sms = 0) {
  constexpr int kVec = add_ln_vec<tx, tb, ty>();
  AddLnPlan p;
  if (rows == 0) return p;
  if (C % kVec == 0 && aligned) {
    const int64_t chunks = C / kVec;
    const int nch_small = add_ln_nch<acc_t, kVec, false>(), nch_large = add_ln_nch<acc_t, kVec, true>();
    if (chunks <= 32 * nch_large) {
      p.reg = true;
      p.large = chunks > 32 * nch_small;
      const int nch = p.large ? nch_large : nch_small;
      while ((int64_t(nch) << p.lg) < chunks) ++p.lg;
      // Groups per warp from the target at the forward's 4 warps (the backward's
      // 8-warp blocks: half as many blocks, the same groups per warp).
      int64_t iters = ceil_div<int64_t>(rows, (target_blocks > 0 ? target_blocks : 1) * kAddLnWarps * (32 >> p.lg));
      if (iters > kAddLnMaxRowIters) iters = kAddLnMaxRowIters;
      const int64_t rows_per_iter = int64_t(backward ? kAddLnBwdWarps : kAddLnWarps) * (32 >> p.lg);
      if (backward && sms > 0)
        iters = add_ln_bwd_iters(rows, rows_per_iter, iters, sms * add_ln_bwd_blocks_per_sm<acc_t>(nch * kVec));
      p.rows_per_block = static_cast<int>(rows_per_iter * iters);
      p.blocks = ceil_div<int64_t>(rows, p.rows_per_block);
      p.vec = kVec;
      // forward: weight and bias; backward: weight and the dweight / dbias reduction rows
      const int64_t lane_cols = (int64_t(nch) * kVec) << p.lg;
      p.smem = static_cast<size_t>(backward ? C + 2 * lane_cols : 2 * C) * sizeof(acc_t);
      return p;
    }
    p.vec = kVec;
  }
  if (backward) {
    const int64_t cols = add_ln_wide_cols(C, p.vec);
    p.nwarps = add_ln_bwd_warps(cols, sizeof(acc_t));
    if (p.nwarps == 0) return p;
    p.blocks = ceil_div<int64_t>(rows, static_cast<int64_t>(p.nwarps) * kAddLnRowsPerWarp);
    p.smem = add_ln_bwd_smem(p.nwarps, cols, sizeof(acc_t));
  } else {
    p.blocks = ceil_div<int64_t>(rows, kAddLnWarps);
  }
  return p;
}

// The incoming gradient of h (the residual stream's other uses) at grad_h[i .. i + VEC), or zeros without one.
template <typename th, typename acc_t, int VEC>
__device__ __forceinline__ void load_grad_h(const th* grad_h, int64_t i, acc_t* d) {
  if (grad_h != nullptr) {
    load_pack<th, acc_t, VEC>(grad_h + i, d);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) d[e] = acc_t(0);
  }
}

// ------------------------------------------------------------------ register path

// Shared-memory copy of a (C,) vector in the acc type, read back in VEC-value
// chunks.  For 32-byte chunks (8 floats) the two 16-byte halves of chunk j
// swap places when bit 2 of j is set, so that the 16-byte reads of 8
// consecutive lanes (chunks j .. j + 7) cover all 32 banks.
template <typename acc_t, int VEC>
__device__ __forceinline__ int stage_index(int i) {
  if constexpr (VEC * sizeof(acc_t) == 32) {
    constexpr int kHalf = VEC / 2;
    const int j = i / VEC;
    return i ^ (((j >> 2) & 1) * kHalf);
  } else {
    return i;
  }
}
template <typename acc_t, int VEC>
__device__ __forceinline__ void stage_vector(acc_t* dst, const acc_t* __restrict__ src, int C) {
  for (int i = threadIdx.x; i < C; i += blockDim.x) dst[stage_index<acc_t, VEC>(i)] = src[i];
}
template <typename acc_t, int VEC>
__device__ __forceinline__ void read_staged(const acc_t* s, int c, acc_t (&o)[VEC]) {
  constexpr int kHalf = VEC * sizeof(acc_t) == 32 ? VEC / 2 : VEC;
  const int sw = stage_index<acc_t, VEC>(c) - c;  // 0 or +-kHalf: which half sits first
#pragma unroll
  for (int h = 0; h < VEC / kHalf; ++h) {
    const Pack<acc_t, kHalf> pk = *reinterpret_cast<const Pack<acc_t, kHalf>*>(s + c + ((h * kHalf) ^ (sw != 0 ? kHalf : 0)));
#pragma unroll
    for (int e = 0; e < kHalf; ++e) o[h * kHalf + e] = pk.v[e];
  }
}

// The lane's chunks: chunk k of lane gl of a group covers columns
// (gl + k * 2^lg) * VEC ... + VEC - 1; bit k of the mask: the chunk is in the row.
template <int NCH>
__device__ __forceinline__ unsigned lane_chunks(int gl, int lg, int chunks) {
  unsigned m = 0;
#pragma unroll
  for (int k = 0; k < NCH; ++k)
    if (gl + (k << lg) < chunks) m |= 1u << k;
  return m;
}

// The rows a warp of the register kernels walks: 32 >> lg rows at a time
// (rpw), one per group of 2^lg lanes (gl: the lane in its group), from the
// warp's first row to the end of the block's rows; cols: the lane's chunks.
template <int NCH, int VEC>
struct RegRows {
  int warp, lane, gl, rpw, first, end;
  unsigned cols;
  __device__ __forceinline__ RegRows(int rows, int C, int lg, int rows_per_block) {
    warp = threadIdx.x >> 5;
    lane = threadIdx.x & 31;
    gl = lane & ((1 << lg) - 1);
    rpw = 32 >> lg;
    cols = lane_chunks<NCH>(gl, lg, C / VEC);
    const int r0 = blockIdx.x * rows_per_block;
    end = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    first = r0 + warp * rpw;
  }
};

template <typename tx, typename tb, typename ty, typename acc_t, int VEC, int NCH>
__global__ void __launch_bounds__(kAddLnWarps * 32)
    add_ln_fwd_reg_kernel(const tx* __restrict__ x, const tb* __restrict__ branch, const acc_t* __restrict__ weight,
                          const acc_t* __restrict__ bias, tx* __restrict__ h, ty* __restrict__ y,
                          acc_t* __restrict__ mean, acc_t* __restrict__ rstd, int rows, int C, acc_t eps,
                          acc_t inv_n, int lg, int rows_per_block) {
  SWIN_DYNAMIC_SHARED(acc_t, s_w);  // weight [C], then bias [C] (stage_index layout)
  acc_t* s_b = s_w + C;
  stage_vector<acc_t, VEC>(s_w, weight, C);
  stage_vector<acc_t, VEC>(s_b, bias, C);
  __syncthreads();
  const RegRows<NCH, VEC> rr(rows, C, lg, rows_per_block);
  const int gl = rr.gl;
  for (int base = rr.first; base < rr.end; base += kAddLnWarps * rr.rpw) {  // warp-uniform
    const int row = base + (rr.lane >> lg);
    const unsigned valid = row < rr.end ? rr.cols : 0u;
    const int64_t off = static_cast<int64_t>(row) * C;
    acc_t v[NCH][VEC];
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
      const int c = (gl + (k << lg)) * VEC;
      if (valid >> k & 1u) {
        acc_t a[VEC], b[VEC];
        load_pack<tx, acc_t, VEC>(x + off + c, a);
        load_pack<tb, acc_t, VEC>(branch + off + c, b);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[k][e] = to_acc(from_acc<tx>(a[e] + b[e]));  // h as stored
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[k][e] = acc_t(0);
      }
    }
#pragma unroll
    for (int k = 0; k < NCH; ++k)
      if (valid >> k & 1u) store_pack<tx, acc_t, VEC>(h + off + (gl + (k << lg)) * VEC, v[k]);
    const RowStats<acc_t> st = group_row_stats<acc_t, NCH, VEC>(v, valid, lg, inv_n, eps);
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
      const int c = (gl + (k << lg)) * VEC;
      if (valid >> k & 1u) {
        acc_t w[VEC], b[VEC], o[VEC];
        read_staged<acc_t, VEC>(s_w, c, w);
        read_staged<acc_t, VEC>(s_b, c, b);
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[e] = (v[k][e] * st.scale - st.mean) * st.rstd * w[e] + b[e];
        store_pack<ty, acc_t, VEC>(y + off + c, o);
      }
    }
    if (valid != 0u && gl == 0) {
      mean[row] = st.stored_mean();
      rstd[row] = st.stored_rstd();
    }
  }
}

// grad_h may be null (no other use of h); dbranch may be null (branch has h's dtype).
template <typename th, typename tb, typename ty, typename acc_t, int VEC, int NCH>
__global__ void __launch_bounds__(kAddLnBwdWarps * 32, add_ln_bwd_blocks_per_sm<acc_t>(NCH * VEC))
    add_ln_bwd_reg_kernel(const th* __restrict__ grad_h, const ty* __restrict__ grad_y, const th* __restrict__ h,
                          const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                          const acc_t* __restrict__ rstd, th* __restrict__ dh, tb* __restrict__ dbranch,
                          acc_t* __restrict__ dw_part, acc_t* __restrict__ db_part, int rows, int C, acc_t inv_n,
                          int lg, int rows_per_block) {
  SWIN_DYNAMIC_SHARED(acc_t, s_w);  // weight [C] (stage_index layout), then the dweight / dbias reduction rows
  const int lane_cols = (NCH * VEC) << lg;
  acc_t* s_dw = s_w + C;
  acc_t* s_db = s_dw + lane_cols;
  stage_vector<acc_t, VEC>(s_w, weight, C);
  __syncthreads();
  const RegRows<NCH, VEC> rr(rows, C, lg, rows_per_block);
  const int gl = rr.gl;
  acc_t dw[NCH][VEC], db[NCH][VEC];
#pragma unroll
  for (int k = 0; k < NCH; ++k)
#pragma unroll
    for (int e = 0; e < VEC; ++e) dw[k][e] = db[k][e] = acc_t(0);
  for (int base = rr.first; base < rr.end; base += kAddLnBwdWarps * rr.rpw) {  // warp-uniform
    const int row = base + (rr.lane >> lg);
    const unsigned valid = row < rr.end ? rr.cols : 0u;
    const int64_t off = static_cast<int64_t>(row) * C;
    acc_t mu = 0, rs = 0;
    if (valid != 0u) {
      mu = mean[row];
      rs = rstd[row];
    }
    acc_t xh[NCH][VEC], g[NCH][VEC];  // h, then xhat; grad_y, then g = grad_y * weight
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
      const int c = (gl + (k << lg)) * VEC;
      if (valid >> k & 1u) {
        load_pack<th, acc_t, VEC>(h + off + c, xh[k]);
        load_pack<ty, acc_t, VEC>(grad_y + off + c, g[k]);
      }
    }
    acc_t sg = 0, sgx = 0;
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
      const int c = (gl + (k << lg)) * VEC;
      if (valid >> k & 1u) {
        acc_t w[VEC];
        read_staged<acc_t, VEC>(s_w, c, w);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const acc_t xv = (xh[k][e] - mu) * rs;
          const acc_t gy = g[k][e];
          dw[k][e] += gy * xv;
          db[k][e] += gy;
          xh[k][e] = xv;
          g[k][e] = gy * w[e];
          sg += g[k][e];
          sgx += g[k][e] * xv;
        }
      }
    }
    group_sum2(sg, sgx, lg);
    const acc_t mg = sg * inv_n, mgx = sgx * inv_n;
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
      const int c = (gl + (k << lg)) * VEC;
      if (valid >> k & 1u) {
        acc_t d[VEC];
        load_grad_h<th, acc_t, VEC>(grad_h, off + c, d);
#pragma unroll
        for (int e = 0; e < VEC; ++e) d[e] += rs * (g[k][e] - mg - xh[k][e] * mgx);
        store_pack<th, acc_t, VEC>(dh + off + c, d);
        if (dbranch != nullptr) store_pack<tb, acc_t, VEC>(dbranch + off + c, d);
      }
    }
  }
  // The groups of a warp share columns: sum them (xor butterfly over the lane bits above lg).
  for (int m = 1 << lg; m < 32; m <<= 1) {
#pragma unroll
    for (int k = 0; k < NCH; ++k)
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        dw[k][e] += __shfl_xor_sync(0xffffffffu, dw[k][e], m);
        db[k][e] += __shfl_xor_sync(0xffffffffu, db[k][e], m);
      }
  }
  // Then the warps, in warp order: group 0 of warp j adds its row to the block's
  // at word (k * VEC + e) * 2^lg + gl (consecutive lanes, consecutive words).
  for (int j = 0; j < kAddLnBwdWarps; ++j) {
    if (rr.warp == j && rr.lane < (1 << lg)) {
#pragma unroll
      for (int k = 0; k < NCH; ++k)
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int i = ((k * VEC + e) << lg) + gl;
          s_dw[i] = j == 0 ? dw[k][e] : s_dw[i] + dw[k][e];
          s_db[i] = j == 0 ? db[k][e] : s_db[i] + db[k][e];
        }
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < lane_cols; i += blockDim.x) {
    const int l = i & ((1 << lg) - 1), ke = i >> lg, k = ke / VEC, e = ke % VEC;
    const int c = (l + (k << lg)) * VEC + e;
    if (c < C) {
      dw_part[static_cast<int64_t>(blockIdx.x) * C + c] = s_dw[i];
      db_part[static_cast<int64_t>(blockIdx.x) * C + c] = s_db[i];
    }
  }
}

// ------------------------------------------------------------------ wide path

template <typename tx, typename tb, typename ty, typename acc_t, int VEC>
__global__ void __launch_bounds__(kAddLnWarps * 32, 1)
    add_ln_fwd_kernel(const tx* __restrict__ x, const tb* __restrict__ branch, const acc_t* __restrict__ weight,
                      const acc_t* __restrict__ bias, tx* __restrict__ h, ty* __restrict__ y,
                      acc_t* __restrict__ mean, acc_t* __restrict__ rstd, int rows, int C, acc_t eps,
                      acc_t inv_n) {
  const int row = blockIdx.x * kAddLnWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // the whole warp leaves together
  const int64_t base = static_cast<int64_t>(row) * C;
  // h, rounded to its dtype as stored (the LayerNorm of the tensor h).
  auto load_h = [&](int c, acc_t (&v)[VEC]) {
    acc_t a[VEC], b[VEC];
    load_pack<tx, acc_t, VEC>(x + base + c, a);
    load_pack<tb, acc_t, VEC>(branch + base + c, b);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = to_acc(from_acc<tx>(a[e] + b[e]));
  };
  for (int c = lane * VEC; c < C; c += 32 * VEC) {  // h
    acc_t v[VEC];
    load_h(c, v);
    store_pack<tx, acc_t, VEC>(h + base + c, v);
  }
  auto for_each = [&](auto&& fn) {
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      acc_t v[VEC];
      load_h(c, v);  // x and branch again: L1-hot
      fn(v);
    }
  };
  const RowStats<acc_t> st = warp_row_stats<acc_t, VEC>(for_each, inv_n, eps);
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    acc_t v[VEC], o[VEC];
    load_h(c, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] = (v[e] * st.scale - st.mean) * st.rstd * weight[c + e] + bias[c + e];
    store_pack<ty, acc_t, VEC>(y + base + c, o);
  }
  if (lane == 0) {
    mean[row] = st.stored_mean();
    rstd[row] = st.stored_rstd();
  }
}

// grad_h may be null (no other use of h); dbranch may be null (branch has h's dtype).
template <typename th, typename tb, typename ty, typename acc_t, int VEC>
__global__ void __launch_bounds__(kAddLnWarps * 32, 1)
    add_ln_bwd_kernel(const th* __restrict__ grad_h, const ty* __restrict__ grad_y, const th* __restrict__ h,
                      const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                      const acc_t* __restrict__ rstd, th* __restrict__ dh, tb* __restrict__ dbranch,
                      acc_t* __restrict__ dw_part, acc_t* __restrict__ db_part, int rows, int C, int C_pad,
                      acc_t inv_n) {
  SWIN_DYNAMIC_SHARED(acc_t, smem);
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // The warp's accumulators: element e of the lane's chunk k (columns
  // (k * 32 + lane) * VEC + e) at word (k * VEC + e) * 32 + lane.
  acc_t* dw_acc = smem + static_cast<int64_t>(warp) * 2 * C_pad;
  acc_t* db_acc = dw_acc + C_pad;
  for (int k = lane; k < 2 * C_pad; k += 32) dw_acc[k] = acc_t(0);
  __syncwarp();
  const int r0 = blockIdx.x * nwarps * kAddLnRowsPerWarp;
  const int r1 = r0 + nwarps * kAddLnRowsPerWarp < rows ? r0 + nwarps * kAddLnRowsPerWarp : rows;
  for (int row = r0 + warp; row < r1; row += nwarps) {
    const int64_t base = static_cast<int64_t>(row) * C;
    const acc_t mu = mean[row], rs = rstd[row];
    acc_t sg = 0, sgx = 0;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      acc_t hv[VEC], gv[VEC];
      load_pack<th, acc_t, VEC>(h + base + c, hv);
      load_pack<ty, acc_t, VEC>(grad_y + base + c, gv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc_t g = gv[e] * weight[c + e];
        sg += g;
        sgx += g * (hv[e] - mu) * rs;
      }
    }
    const acc_t mg = warp_sum(sg) * inv_n, mgx = warp_sum(sgx) * inv_n;
    for (int c = lane * VEC, k = 0; c < C; c += 32 * VEC, ++k) {
      acc_t hv[VEC], gv[VEC], d[VEC];
      load_pack<th, acc_t, VEC>(h + base + c, hv);  // L1-hot: read in pass 1
      load_pack<ty, acc_t, VEC>(grad_y + base + c, gv);
      load_grad_h<th, acc_t, VEC>(grad_h, base + c, d);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc_t xh = (hv[e] - mu) * rs;
        d[e] += rs * (gv[e] * weight[c + e] - mg - xh * mgx);
        const int i = (k * VEC + e) * 32 + lane;
        dw_acc[i] += gv[e] * xh;
        db_acc[i] += gv[e];
      }
      store_pack<th, acc_t, VEC>(dh + base + c, d);
      if (dbranch != nullptr) store_pack<tb, acc_t, VEC>(dbranch + base + c, d);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < C_pad; i += blockDim.x) {  // one partial row per block, warps in order
    const int l = i & 31, ke = i >> 5, k = ke / VEC, e = ke % VEC;
    const int c = (k * 32 + l) * VEC + e;
    if (c >= C) continue;
    acc_t w = 0, b = 0;
    for (int j = 0; j < nwarps; ++j) {
      w += smem[static_cast<int64_t>(j) * 2 * C_pad + i];
      b += smem[static_cast<int64_t>(j) * 2 * C_pad + C_pad + i];
    }
    dw_part[static_cast<int64_t>(blockIdx.x) * C + c] = w;
    db_part[static_cast<int64_t>(blockIdx.x) * C + c] = b;
  }
}

// ------------------------------------------------------------------ launchers

// rows x C; h in tx, y in ty, mean/rstd (rows) in acc_t; plan from
// add_ln_plan<tx, tb, ty, acc_t>(rows, C, aligned, false) with `aligned`
// true only if x, branch, h and y are 16-byte aligned.  Sizes checked by the
// caller to fit 32-bit row and channel indices.
template <typename tx, typename tb, typename ty, typename acc_t>
void launch_add_layernorm_fwd(const tx* x, const tb* branch, const acc_t* weight, const acc_t* bias, tx* h,
                              ty* y, acc_t* mean, acc_t* rstd, int64_t rows, int64_t C, double eps,
                              const AddLnPlan& p, cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int kVec = add_ln_vec<tx, tb, ty>();
  const unsigned blocks = static_cast<unsigned>(p.blocks);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C);  // on the host: no division in the kernel
  const int r = static_cast<int>(rows), c = static_cast<int>(C);
  const acc_t e = static_cast<acc_t>(eps);
  if (p.reg && p.large) {
    SWIN_LAUNCH_KERNEL((add_ln_fwd_reg_kernel<tx, tb, ty, acc_t, kVec, add_ln_nch<acc_t, kVec, true>()>), blocks,
                       kAddLnWarps * 32, p.smem, stream, x, branch, weight, bias, h, y, mean, rstd, r, c, e, inv_n,
                       p.lg, p.rows_per_block);
  } else if (p.reg) {
    SWIN_LAUNCH_KERNEL((add_ln_fwd_reg_kernel<tx, tb, ty, acc_t, kVec, add_ln_nch<acc_t, kVec, false>()>), blocks,
                       kAddLnWarps * 32, p.smem, stream, x, branch, weight, bias, h, y, mean, rstd, r, c, e, inv_n,
                       p.lg, p.rows_per_block);
  } else if (p.vec == kVec) {
    SWIN_LAUNCH_KERNEL((add_ln_fwd_kernel<tx, tb, ty, acc_t, kVec>), blocks, kAddLnWarps * 32, 0, stream, x,
                       branch, weight, bias, h, y, mean, rstd, r, c, e, inv_n);
  } else {
    SWIN_LAUNCH_KERNEL((add_ln_fwd_kernel<tx, tb, ty, acc_t, 1>), blocks, kAddLnWarps * 32, 0, stream, x,
                       branch, weight, bias, h, y, mean, rstd, r, c, e, inv_n);
  }
}

// dw_part / db_part: (p.partials(), C), summed over dim 0 by the caller; plan
// from add_ln_plan<th, tb, ty, acc_t>(rows, C, aligned, true) with `aligned`
// true only if grad_h, grad_y, h, dh and dbranch are 16-byte aligned (and
// p.nwarps > 0).
template <typename th, typename tb, typename ty, typename acc_t>
void launch_add_layernorm_bwd(const th* grad_h, const ty* grad_y, const th* h, const acc_t* weight,
                              const acc_t* mean, const acc_t* rstd, th* dh, tb* dbranch, acc_t* dw_part,
                              acc_t* db_part, int64_t rows, int64_t C, const AddLnPlan& p, cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int kVec = add_ln_vec<th, tb, ty>();
  const unsigned blocks = static_cast<unsigned>(p.blocks);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C);
  const int r = static_cast<int>(rows), c = static_cast<int>(C);
  if (p.reg && p.large) {
    SWIN_LAUNCH_KERNEL((add_ln_bwd_reg_kernel<th, tb, ty, acc_t, kVec, add_ln_nch<acc_t, kVec, true>()>), blocks,
                       kAddLnBwdWarps * 32, p.smem, stream, grad_h, grad_y, h, weight, mean, rstd, dh, dbranch,
                       dw_part, db_part, r, c, inv_n, p.lg, p.rows_per_block);
  } else if (p.reg) {
    SWIN_LAUNCH_KERNEL((add_ln_bwd_reg_kernel<th, tb, ty, acc_t, kVec, add_ln_nch<acc_t, kVec, false>()>), blocks,
                       kAddLnBwdWarps * 32, p.smem, stream, grad_h, grad_y, h, weight, mean, rstd, dh, dbranch,
                       dw_part, db_part, r, c, inv_n, p.lg, p.rows_per_block);
  } else {
    const int c_pad = static_cast<int>(add_ln_wide_cols(C, p.vec));
    if (p.vec == kVec) {
      SWIN_LAUNCH_KERNEL((add_ln_bwd_kernel<th, tb, ty, acc_t, kVec>), blocks, p.nwarps * 32, p.smem, stream,
                         grad_h, grad_y, h, weight, mean, rstd, dh, dbranch, dw_part, db_part, r, c, c_pad, inv_n);
    } else {
      SWIN_LAUNCH_KERNEL((add_ln_bwd_kernel<th, tb, ty, acc_t, 1>), blocks, p.nwarps * 32, p.smem, stream, grad_h,
                         grad_y, h, weight, mean, rstd, dh, dbranch, dw_part, db_part, r, c, c_pad, inv_n);
    }
  }
}

// The dtype combinations the glue dispatches to (x / h, branch, y):
// SWIN_LN_DTYPE_MIXES (layernorm_stats.cuh).  Instantiated in
// add_layernorm_kernels.cu (a translation unit of its own, compiled in
// parallel and by the harness); declared extern here so that the glue does
// not instantiate them again.
#define SWIN_ADD_LN_LAUNCHERS(PREFIX, TX, TB, TY)                                                     \
  PREFIX template void launch_add_layernorm_fwd<TX, TB, TY, AccType<TX>::type>(                     \
      const TX*, const TB*, const AccType<TX>::type*, const AccType<TX>::type*, TX*, TY*,             \
      AccType<TX>::type*, AccType<TX>::type*, int64_t, int64_t, double, const AddLnPlan&,            \
      cudaStream_t);                                                                                  \
  PREFIX template void launch_add_layernorm_bwd<TX, TB, TY, AccType<TX>::type>(                     \
      const TX*, const TY*, const TX*, const AccType<TX>::type*, const AccType<TX>::type*,            \
      const AccType<TX>::type*, TX*, TB*, AccType<TX>::type*, AccType<TX>::type*, int64_t, int64_t,   \
      const AddLnPlan&, cudaStream_t);
#define SWIN_ADD_LN_EXTERN(TX, TB, TY) SWIN_ADD_LN_LAUNCHERS(extern, TX, TB, TY)
#ifndef SWIN_ADD_LN_INSTANTIATING
SWIN_LN_DTYPE_MIXES(SWIN_ADD_LN_EXTERN)
#endif

}  // namespace cuda
}  // namespace swin_ext

// Token tables, gathers and stores of the window-attention kernels.
//
// A block builds, once per tile, a table of 32-bit token indices (y * W + x
// in the unpadded map, or -1 for a padding token) and shift regions for the
// rows it touches: pad, roll and partition are index math here, no tensor is
// copied.  Rows are then moved between global and shared memory as 16-byte
// vectors when every row slice is aligned (AttnParams::vec), element by
// element otherwise.  Index math inside the element loops is 32-bit; the
// row address is one 64-bit multiply-add per row chunk.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>

#include "../common.cuh"
#include "params.h"

namespace swin_ext {
namespace cuda {
namespace attn {

// Shift region (0, 1 or 2) of a rolled, padded coordinate along one axis.
__device__ __forceinline__ int region_of(int pos, int padded, int ws, int shift) {
  if (shift == 0) return 0;
  return pos < padded - ws ? 0 : (pos < padded - shift ? 1 : 2);
}

// Table of rows [t0, t0 + n) of window `win`: token index or -1 (padding
// token), region id; rows past the window (t >= N) get tok = -1 as well and
// are zero-filled by the gathers (n_valid).
__device__ __forceinline__ void build_token_table(const Geom& g, int win, int t0, int n, int* tok,
                                                  int* reg) {
  const int wy = win / g.nWw, wx = win - wy * g.nWw;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int t = t0 + e;
    int tk = -1, rg = 0;
    if (t < g.N) {
      const int r = t / g.ws, c = t - r * g.ws;
      const int ry = wy * g.ws + r, rx = wx * g.ws + c;  // rolled, padded coordinates
      int y = ry + g.sh, x = rx + g.sw;                  // roll(x, -s)[i] == x[(i + s) mod P]
      if (y >= g.Hp) y -= g.Hp;
      if (x >= g.Wp) x -= g.Wp;
      tk = (y < g.H && x < g.W) ? y * g.W + x : -1;
      rg = region_of(ry, g.Hp, g.ws, g.sh) * 3 + region_of(rx, g.Wp, g.ws, g.sw);
    }
    tok[e] = tk;
    reg[e] = rg;
  }
}

template <typename T>
struct alignas(16) Vec16 {
  T v[16 / sizeof(T)];
};

// Gathers rows [0, n) of an operand tile (n x d, row stride ld in smem).
//   base     image base of the part/head slice: row t is base + tok[t] * stride
//   pad_src  the padding vector's slice, or null (zero padding)
//   n_valid  rows at or past it are beyond the window: zero
// Columns [d, dp) are zero (the tensor-core k padding).
template <typename T, int kD, int kTC>
__device__ __forceinline__ void gather_rows(T* dst, int ld, const int* tok, int n, int n_valid,
                                            const T* base, int64_t stride, const T* pad_src,
                                            int d_rt, bool vec) {
  constexpr int kVec = 16 / sizeof(T);
  const int d = kD ? kD : d_rt;
  const int dp = kTC ? (d + 15) & ~15 : d;
  const T zero = zero_value<T>();
  if (vec) {  // d % kVec == 0 and every row slice 16-byte aligned
    const int per_row = dp / kVec;
    const int dv = d / kVec;
    for (int idx = threadIdx.x; idx < n * per_row; idx += blockDim.x) {
      const int r = idx / per_row, cv = idx - r * per_row;
      Vec16<T> x;
      const T* src = nullptr;
      if (cv < dv && r < n_valid) src = tok[r] >= 0 ? base + static_cast<int64_t>(tok[r]) * stride : pad_src;
      if (src != nullptr) {
        x = *reinterpret_cast<const Vec16<T>*>(src + cv * kVec);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) x.v[e] = zero;
      }
      T* out = dst + r * ld + cv * kVec;
      if (kTC) {
        *reinterpret_cast<Vec16<T>*>(out) = x;  // 16-byte smem rows
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) out[e] = x.v[e];
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < n * dp; idx += blockDim.x) {
      const int r = idx / dp, c = idx - r * dp;
      T x = zero;
      if (c < d && r < n_valid) {
        const T* src = tok[r] >= 0 ? base + static_cast<int64_t>(tok[r]) * stride : pad_src;
        if (src != nullptr) x = src[c];
      }
      dst[r * ld + c] = x;
    }
  }
}

// Writes rows [0, n) of a warp's accumulator tile (row stride lds) to their
// tokens, each row multiplied by row_mul[r] (or 1) and by mul; rows whose
// token is -1 (padding, or past the window) are skipped.  Called by one warp.
template <typename T, typename A, int kD>
__device__ __forceinline__ void warp_store_rows(T* base, int64_t stride, const int* tok, int n,
                                                const A* src, int lds, const A* row_mul, A mul,
                                                int d_rt, bool vec) {
  constexpr int kVec = 16 / sizeof(T);
  const int d = kD ? kD : d_rt;
  const int lane = threadIdx.x & 31;
  if (vec) {
    const int per_row = d / kVec;
    for (int idx = lane; idx < n * per_row; idx += 32) {
      const int r = idx / per_row, cv = idx - r * per_row;
      if (tok[r] < 0) continue;
      const A m = row_mul ? row_mul[r] * mul : mul;
      const A* s = src + r * lds + cv * kVec;
      Vec16<T> x;
#pragma unroll
      for (int e = 0; e < kVec; ++e) x.v[e] = from_acc<T>(s[e] * m);
      *reinterpret_cast<Vec16<T>*>(base + static_cast<int64_t>(tok[r]) * stride + cv * kVec) = x;
    }
  } else {
    for (int idx = lane; idx < n * d; idx += 32) {
      const int r = idx / d, c = idx - r * d;
      if (tok[r] < 0) continue;
      const A m = row_mul ? row_mul[r] * mul : mul;
      base[static_cast<int64_t>(tok[r]) * stride + c] = from_acc<T>(src[r * lds + c] * m);
    }
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext

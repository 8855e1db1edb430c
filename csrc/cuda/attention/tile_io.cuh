// Token tables, gathers and stores of the window-attention kernels.
//
// A block builds, once per tile, a table of 32-bit token indices ((z * H +
// y) * W + x in the unpadded map or clip, or -1 for a padding token) and
// shift regions (up to 27 on a clip) for the rows it touches: pad, roll and
// partition are index math here, no tensor is copied.  Rows are then moved between global and shared memory as 16-byte
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

// Rolled, padded coordinates of the first token of a window.
struct WinOrigin {
  int z, y, x;
};

// Window `win` (row-major over (nWt, nWh, nWw)): where it starts.
__device__ __forceinline__ WinOrigin window_origin(const Geom& g, int win) {
  int wzy, wx, wz, wy;
  g.div_nWw.divmod(win, wzy, wx);
  g.div_nWh.divmod(wzy, wz, wy);
  return {wz * g.wt, wy * g.wh, wx * g.ww};
}

// Whether the window's tokens can lie in different shift regions: only the
// last window along a shifted axis holds more than one region of it.
__device__ __forceinline__ bool window_mixed(const Geom& g, const WinOrigin& o) {
  return (g.st > 0 && o.z + g.wt == g.Tp) || (g.sh > 0 && o.y + g.wh == g.Hp) || (g.sw > 0 && o.x + g.ww == g.Wp);
}

// Token t (< N, row-major (frame, row, column) inside the window) of the
// window starting at o: its index (z * H + y) * W + x in the unpadded map,
// or -1 for a padding token, and its shift region rz * 9 + ry * 3 + rx
// (0..26; 0..8 on a 2-D map).
__device__ __forceinline__ void window_token(const Geom& g, const WinOrigin& o, int t, int& tok, int& reg) {
  int f, rem, r, c;
  g.div_area.divmod(t, f, rem);
  g.div_ww.divmod(rem, r, c);
  const int rz = o.z + f, ry = o.y + r, rx = o.x + c;  // rolled, padded coordinates
  int z = rz + g.st, y = ry + g.sh, x = rx + g.sw;     // roll(x, -s)[i] == x[(i + s) mod P]
  if (z >= g.Tp) z -= g.Tp;
  if (y >= g.Hp) y -= g.Hp;
  if (x >= g.Wp) x -= g.Wp;
  tok = (z < g.T && y < g.H && x < g.W) ? (z * g.H + y) * g.W + x : -1;
  reg = region_of(rz, g.Tp, g.wt, g.st) * 9 + region_of(ry, g.Hp, g.wh, g.sh) * 3 + region_of(rx, g.Wp, g.ww, g.sw);
}

// Table of rows [t0, t0 + n) of window `win`: token index or -1 (padding
// token), region id; rows past the window (t >= N) get tok = -1 as well and
// are zero-filled by the gathers (n_valid).
__device__ __forceinline__ void build_token_table(const Geom& g, int win, int t0, int n, int* tok,
                                                  int* reg) {
  const WinOrigin o = window_origin(g, win);
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int t = t0 + e;
    int tk = -1, rg = 0;
    if (t < g.N) window_token(g, o, t, tk, rg);
    tok[e] = tk;
    reg[e] = rg;
  }
}

// One operand of a gather: row t of the tile is base + tok[t] * stride, a
// padding token reads pad (null: zeros); rows are written to dst (stride ld).
template <typename T>
struct GatherSrc {
  T* dst;
  const T* base;
  int64_t stride;
  const T* pad;
};

// Source row of token `tok` in operand s0 or s1: the fields are selected one
// by one (a select between the two structs would put them in local memory).
template <typename T>
__device__ __forceinline__ const T* gather_row_src(const GatherSrc<T>& s0, const GatherSrc<T>& s1, bool second,
                                                   int tok) {
  const T* base = second ? s1.base : s0.base;
  const int64_t stride = second ? s1.stride : s0.stride;
  const T* pad = second ? s1.pad : s0.pad;
  return tok >= 0 ? base + static_cast<int64_t>(tok) * stride : pad;
}

// Gathers rows [0, n) of one or two operand tiles (n x d each, same token
// table) into shared memory.  Rows at or past n_valid are beyond the window
// and zero; columns [d, dp) are zero (the tensor-core k padding).  The
// vector path issues kBatch 16-byte loads per thread before their stores
// (and interleaves the two operands), so several loads are in flight.
template <typename T, int kD, int kTC, int kParts>
__device__ __forceinline__ void gather_rows(const GatherSrc<T> s0, const GatherSrc<T> s1, int ld, const int* tok,
                                            int n, int n_valid, int d_rt, bool vec) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kBatch = 4;
  const int d = kD ? kD : d_rt;
  const int dp = kTC ? (d + 15) & ~15 : d;
  if (vec) {  // d % kVec == 0 and every row slice 16-byte aligned
    const int per_row = dp / kVec, dv = d / kVec;
    const int per_part = n * per_row, total = kParts * per_part;
    for (int base = threadIdx.x; base < total; base += kBatch * blockDim.x) {
      uint4 x[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        x[u] = make_uint4(0u, 0u, 0u, 0u);
        const int idx = base + u * blockDim.x;
        if (idx < total) {
          const bool second = kParts == 2 && idx >= per_part;
          const int rem = second ? idx - per_part : idx;
          const int r = rem / per_row, cv = rem - r * per_row;
          if (cv < dv && r < n_valid) {
            const T* s = gather_row_src(s0, s1, second, tok[r]);
            if (s != nullptr) x[u] = swin_ldg16(s + cv * kVec);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int idx = base + u * blockDim.x;
        if (idx >= total) continue;
        const bool second = kParts == 2 && idx >= per_part;
        const int rem = second ? idx - per_part : idx;
        const int r = rem / per_row, cv = rem - r * per_row;
        T* out = (second ? s1.dst : s0.dst) + r * ld + cv * kVec;
        if constexpr (kTC) {
          *reinterpret_cast<uint4*>(out) = x[u];  // 16-byte smem rows
        } else {  // odd SIMT row stride: element stores
          const uint32_t w[4] = {x[u].x, x[u].y, x[u].z, x[u].w};
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            T v;
            if constexpr (sizeof(T) == 4) {
              memcpy(&v, &w[e], 4);
            } else {
              const uint64_t q = static_cast<uint64_t>(w[2 * e]) | (static_cast<uint64_t>(w[2 * e + 1]) << 32);
              memcpy(&v, &q, 8);
            }
            out[e] = v;
          }
        }
      }
    }
  } else {
    const T zero = zero_value<T>();
    const int per_part = n * dp, total = kParts * per_part;
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
      const bool second = kParts == 2 && idx >= per_part;
      const int rem = second ? idx - per_part : idx;
      const int r = rem / dp, c = rem - r * dp;
      T x = zero;
      if (c < d && r < n_valid) {
        const T* s = gather_row_src(s0, s1, second, tok[r]);
        if (s != nullptr) x = s[c];
      }
      (second ? s1.dst : s0.dst)[r * ld + c] = x;
    }
  }
}

// Swin V2's cosine attention.  The scores are formed from the raw (rounded
// once, as loaded) q and k rows and scaled in float32 by the inverse norms
// (scale_scores), so the logits s_h q^ . k^ carry no rounding of normalised
// rows, which s_h (up to 100) would amplify; the rows are normalised in
// shared memory (scale_rows) only as operands of the backward's gradient
// products, whose error is not amplified.

// inv_out[r] = 1 / max(||row r||, 1e-12) (F.normalize's rule) for rows
// [0, n) of a tile (stride ld, d valid columns).  Block-collective: a warp
// per row, the caller synchronises before and after.
template <typename T, typename A, int kD>
__device__ __forceinline__ void row_inv_norms(const T* rows, int ld, int n, int d_rt, A* inv_out) {
  const int d = kD ? kD : d_rt;
  const int nwarps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int r = warp; r < n; r += nwarps) {
    const T* row = rows + r * ld;
    A ss = 0;
    for (int c = lane; c < d; c += 32) {
      const A v = to_acc(row[c]);
      ss += v * v;
    }
    ss = warp_sum(ss);
    const A norm = acc_sqrt(ss);
    if (lane == 0) inv_out[r] = A(1) / (norm > A(1e-12) ? norm : A(1e-12));
  }
}

// Rows [0, n) of a tile become row * inv[r] * mul (normalised, rows of zeros
// stay zeros).  Block-collective, the caller synchronises before and after.
template <typename T, typename A, int kD>
__device__ __forceinline__ void scale_rows(T* rows, int ld, int n, int d_rt, const A* inv, A mul) {
  const int d = kD ? kD : d_rt;
  const int nwarps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int r = warp; r < n; r += nwarps) {
    T* row = rows + r * ld;
    const A m = inv[r] * mul;
    for (int c = lane; c < d; c += 32) row[c] = from_acc<T>(to_acc(row[c]) * m);
  }
}

// A warp's 16 x ncols float32 score tile (stride ldS) of raw products
// q . k becomes mul * inv_r[r] * inv_c[c] * S, i.e. mul * q^ . k^.
// Called by one warp; the caller synchronises the warp after.
template <typename A>
__device__ __forceinline__ void scale_scores(A* S, int ldS, int ncols, const A* inv_r, const A* inv_c, A mul) {
  const int lane = threadIdx.x & 31;
  for (int idx = lane; idx < 16 * ncols; idx += 32) {
    const int r = idx / ncols, c = idx - r * ncols;
    S[r * ldS + c] *= mul * inv_r[r] * inv_c[c];
  }
}

// The backward of x^ = x / ||x|| against the raw rows x: a warp's 16 x d
// gradient tile g (stride ldg) w.r.t. x^ becomes the gradient w.r.t. x,
// times mul: g <- (g - x (x . g) inv^2) * inv * mul, with inv[r] =
// 1 / max(||x||, 1e-12).  Called by one warp.
template <typename T, typename A, int kD>
__device__ __forceinline__ void project_out_rows(A* g, int ldg, const T* x_rows, int ldx, const A* inv, int d_rt,
                                                 A mul) {
  const int d = kD ? kD : d_rt;
  const int lane = threadIdx.x & 31;
  for (int r = 0; r < 16; ++r) {
    A dot = 0;
    for (int c = lane; c < d; c += 32) dot += to_acc(x_rows[r * ldx + c]) * g[r * ldg + c];
    dot = warp_sum(dot);
    const A inv2 = inv[r] * inv[r], m = inv[r] * mul;
    for (int c = lane; c < d; c += 32) g[r * ldg + c] = (g[r * ldg + c] - to_acc(x_rows[r * ldx + c]) * dot * inv2) * m;
  }
}

// The backward of a row normalisation, in place on a warp's 16 x d gradient
// tile g (stride ldg, the gradient w.r.t. the normalised row xh, which is
// stored in `xh_rows` as row * xh_mul): g <- (g - xh (xh . g)) * inv[r],
// i.e. d/dx of x / ||x||.  Called by one warp.
template <typename T, typename A, int kD>
__device__ __forceinline__ void normalize_rows_backward(A* g, int ldg, const T* xh_rows, int ldx, const A* inv,
                                                        int d_rt, A xh_mul) {
  const int d = kD ? kD : d_rt;
  const int lane = threadIdx.x & 31;
  const A rmul = A(1) / xh_mul;
  for (int r = 0; r < 16; ++r) {
    A dot = 0;
    for (int c = lane; c < d; c += 32) dot += to_acc(xh_rows[r * ldx + c]) * rmul * g[r * ldg + c];
    dot = warp_sum(dot);
    for (int c = lane; c < d; c += 32) g[r * ldg + c] = (g[r * ldg + c] - to_acc(xh_rows[r * ldx + c]) * rmul * dot) * inv[r];
  }
}

// Packs kVec values (times m) into the 16 bytes of one vector store.
template <typename T, typename A>
__device__ __forceinline__ uint4 pack16(const A* s, A m) {
  constexpr int kVec = 16 / sizeof(T);
  T v[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) v[e] = from_acc<T>(s[e] * m);
  uint4 u;
  memcpy(&u, v, 16);
  return u;
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
      swin_stg16(base + static_cast<int64_t>(tok[r]) * stride + cv * kVec, pack16<T, A>(src + r * lds + cv * kVec, m));
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

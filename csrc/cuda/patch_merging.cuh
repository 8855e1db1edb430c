// CUDA kernels of patch merging: the stage's pending residual add, the 2x2
// gather (zero padding of odd H/W, the official quadrant order) and
// LayerNorm over the 4C gathered channels, written in y's dtype.
//
//   h = x + branch   (optional branch; summed in the accumulation type and
//                     rounded to x's dtype, as add_layernorm does; never
//                     stored: the backward recomputes it)
//   y = LayerNorm(gather(h))   in y's dtype (under autocast the autocast
//                     dtype: the reduction Linear reads it without a cast)
//
// Two designs, picked per launch by the host (merge_plan):
//
//   register kernels (float accumulation, C a multiple of VEC, 16-byte
//   aligned pointers, 4C <= kMergeMaxGroup * elements per lane):
//     merge_fwd_reg_kernel   a group of G lanes (a power of two, up to the
//             whole 128-thread block) per output pixel; lane l of a group
//             owns the VEC-column chunks l, l + G, ... of the 4C row, the
//             same for every pixel.  x and the branch are read once with
//             16-byte loads into registers, the statistics computed from
//             the registers (sum and max|h|, then the centred sums: the
//             corrected two-pass variance of layernorm_stats.cuh; rows above
//             its threshold rescaled by 2^-k), y written once with 16-byte
//             stores: 8 bytes per input element for the autocast mix
//             (float32 stream + bf16 branch in, bf16 out).
//     merge_bwd_reg_kernel   the same geometry over a fixed range of pixels
//             per block: h recomputed in registers, dy read once, dx (and
//             the branch's gradient in its dtype) written once; each lane
//             keeps dweight / dbias of its columns in registers over all
//             its pixels, and the block adds its groups' registers once, in
//             group order, through shared memory (one partial row per block;
//             the caller sums the partials over a fixed shape: bitwise
//             reproducible, no atomics, no shared-memory read-modify-write).
//
//   streaming kernels (any C, float64, unaligned pointers, huge C):
//     merge_fwd_kernel / merge_bwd_kernel   one warp per output pixel;
//             lanes walk the gathered row quadrant by quadrant in VEC-element
//             packs; statistics in passes over the row (L1-hot); the
//             backward's dweight / dbias per warp in shared memory, each
//             owner lane updating its own VEC-element pack with vector
//             accesses (conflict-free), warps summed in order per block.
//
// Group reductions are xor-butterflies inside a warp and, for a group wider
// than a warp, the warps' values added in warp order through shared memory:
// every lane of a group ends with the bitwise same value.  The pixel index is
// split into (b, oy, ox) once per pixel by the output map's host-computed
// divisors (MergeGeom, fast_div.h): no division in any kernel.
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>

#include "../swin_geometry.h"
#include "common.cuh"
#include "fast_div.h"
#include "layernorm_stats.cuh"

namespace swin_ext {
namespace cuda {

constexpr int kMergeWarps = 4;
constexpr int kMergeThreads = kMergeWarps * 32;
constexpr int kMergePixelsPerWarp = 16;        // streaming backward: pixels per warp per block
constexpr int kMergeBwdMaxSmem = 48 * 1024;    // streaming backward: dweight / dbias accumulators per block
constexpr int kMergeMaxGroup = kMergeThreads;  // register kernels: most lanes per pixel (one block)
constexpr int kMergeFwdElems = 24;             // register forward: row elements per lane
constexpr int kMergeBwdElems = 16;             // register backward: row elements per lane
constexpr int kMergeBwdIters = 16;             // register backward: pixel groups per block
constexpr int kMergeRegBlocks = 4;             // register kernels: resident blocks per SM (<= 128 registers)

// The kernels' geometry: the input map (B, H, W, C), its P = B * H2 * W2
// output pixels, and the output map's width and height as host-computed
// divisors.  Sizes fit 32-bit indices (the glue checks them).
struct MergeGeom {
  int H = 0, W = 0, C = 0, P = 0;
  FastDiv w2, h2;
  static MergeGeom make(int64_t B, int64_t H, int64_t W, int64_t C) {
    MergeGeom g;
    const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2;
    g.H = static_cast<int>(H);
    g.W = static_cast<int>(W);
    g.C = static_cast<int>(C);
    g.P = static_cast<int>(B * H2 * W2);
    g.w2 = FastDiv::make(static_cast<int>(W2));
    g.h2 = FastDiv::make(static_cast<int>(H2));
    return g;
  }
};

// Where output pixel pix's 2x2 sources are: the element offset of its
// (2 oy, 2 ox) source row, and whether the row below and the column to the
// right exist (odd H / W: zero padding).  A pixel past P is not active and
// has no sources.
struct MergePixel {
  int64_t base;
  bool below, right, active;
};

__device__ __forceinline__ MergePixel merge_pixel(const MergeGeom& g, int pix) {
  int t, ox, b, oy;
  g.w2.divmod(pix, t, ox);
  g.h2.divmod(t, b, oy);
  const int y = 2 * oy, x = 2 * ox;
  // The source pixel's index fits 31 bits (B H W < 2^31) for an active pixel;
  // unsigned, so that an inactive one's wraps without overflow.
  const uint32_t src = (static_cast<uint32_t>(b) * g.H + y) * g.W + x;
  MergePixel p;
  p.base = static_cast<int64_t>(src) * g.C;
  p.below = y + 1 < g.H;
  p.right = x + 1 < g.W;
  p.active = pix < g.P;
  return p;
}

// Quadrant q of a pixel (merge_quadrant_dy / _dx, swin_geometry.h: the
// official order): whether pixel p has it (else zero padding), and its source
// row's offset from MergePixel::base -- merge_source's pixel, from the base
// the pixel decoded once.
__device__ __forceinline__ bool has_quadrant(const MergePixel& p, int q) {
  return (merge_quadrant_dy(q) == 0 || p.below) && (merge_quadrant_dx(q) == 0 || p.right);
}

__device__ __forceinline__ int64_t quadrant_row(const MergeGeom& g, int q) {
  return merge_quadrant_dy(q) * static_cast<int64_t>(g.W) * g.C + merge_quadrant_dx(q) * g.C;
}

// Offset of quadrant q's source row, or -1 for zero padding.
__device__ __forceinline__ int64_t quadrant_off(const MergeGeom& g, const MergePixel& p, int q) {
  return has_quadrant(p, q) ? p.base + quadrant_row(g, q) : int64_t(-1);
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

// Elements per access: 16 bytes of the narrowest of the three dtypes.
template <typename A, typename B, typename C>
constexpr int merge_vec() {
  constexpr size_t ab = sizeof(A) < sizeof(B) ? sizeof(A) : sizeof(B);
  return static_cast<int>(16 / (ab < sizeof(C) ? ab : sizeof(C)));
}

// h = x + branch (branch may be null) of VEC elements at element offset off,
// rounded to x's dtype; zeros for off < 0 (padding).
template <typename tx, typename tb, typename acc_t, int VEC>
__device__ __forceinline__ void load_h(const tx* x, const tb* branch, int64_t off, acc_t (&v)[VEC]) {
  if (off < 0) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = acc_t(0);
    return;
  }
  load_pack<tx, acc_t, VEC>(x + off, v);
  if (branch != nullptr) {
    acc_t b[VEC];
    load_pack<tb, acc_t, VEC>(branch + off, b);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = to_acc(from_acc<tx>(v[e] + b[e]));
  }
}

// The block's partial row blockIdx.x of dweight / dbias: column c of the
// `parts` (dweight, dbias) row pairs red[j][2][C4] summed in order j = 0, 1, ...
template <typename acc_t>
__device__ __forceinline__ void store_partial_row(const acc_t* red, int parts, int C4, acc_t* dw_part,
                                                  acc_t* db_part) {
  for (int c = threadIdx.x; c < C4; c += blockDim.x) {  // sass-dyn: trips=c4_threads
    acc_t w = 0, b = 0;
    for (int j = 0; j < parts; ++j) {  // sass-dyn: trips=groups
      w += red[static_cast<int64_t>(j) * 2 * C4 + c];
      b += red[static_cast<int64_t>(j) * 2 * C4 + C4 + c];
    }
    dw_part[static_cast<int64_t>(blockIdx.x) * C4 + c] = w;
    db_part[static_cast<int64_t>(blockIdx.x) * C4 + c] = b;
  }
}

// ------------------------------------------------------------------ register kernels

// VEC elements of T at p (16-byte aligned) as 16-byte loads / stores.
template <typename T, int VEC>
__device__ __forceinline__ void ld16(const T* p, float (&v)[VEC]) {
  constexpr int kPer = 16 / sizeof(T);
  static_assert(VEC % kPer == 0, "VEC is a whole number of 16-byte accesses");
#pragma unroll
  for (int s = 0; s < VEC / kPer; ++s) {
    const uint4 u = swin_ldg16(p + s * kPer);
    T t[kPer];
    memcpy(t, &u, 16);  // not a pointer cast: the host compiler of the harness enforces strict aliasing
#pragma unroll
    for (int e = 0; e < kPer; ++e) v[s * kPer + e] = to_acc(t[e]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void st16(T* p, const float (&v)[VEC]) {
  constexpr int kPer = 16 / sizeof(T);
  static_assert(VEC % kPer == 0, "VEC is a whole number of 16-byte accesses");
#pragma unroll
  for (int s = 0; s < VEC / kPer; ++s) {
    T t[kPer];
#pragma unroll
    for (int e = 0; e < kPer; ++e) t[e] = from_acc<T>(v[s * kPer + e]);
    uint4 u;
    memcpy(&u, t, 16);
    swin_stg16(p + s * kPer, u);
  }
}

// One 16-byte store of 4 floats at p (16-byte aligned, shared memory).
__device__ __forceinline__ void st_float4(float* p, const float4& v) {
#if defined(__CUDACC__)
  *reinterpret_cast<float4*>(p) = v;
#else
  memcpy(p, &v, 16);  // the harness's host compiler enforces strict aliasing
#endif
}

// h of one chunk (ld16 loads; zeros for off < 0).
template <typename tx, typename tb, int VEC>
__device__ __forceinline__ void ld16_h(const tx* x, const tb* branch, int64_t off, float (&v)[VEC]) {
  if (off < 0) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = 0.0f;
    return;
  }
  ld16<tx, VEC>(x + off, v);
  if (branch != nullptr) {
    float b[VEC];
    ld16<tb, VEC>(branch + off, b);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = to_acc(from_acc<tx>(v[e] + b[e]));
  }
}

// a[i] reduced over the 2^log2G lanes of this thread's group (the sum, or
// the max for the indices set in max_mask).  Inside a warp an xor butterfly
// (every warp lane takes part); a group wider than a warp adds its warps'
// values in warp order through xchg (kMergeWarps * N floats of shared
// memory), and then every thread of the block must call it.
template <int N>
__device__ __forceinline__ void group_allreduce(float (&a)[N], int log2G, unsigned max_mask, float* xchg) {
  const int width = log2G < 5 ? (1 << log2G) : 32;
  for (int m = width >> 1; m > 0; m >>= 1) {  // sass-dyn: trips=bfly
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float o = __shfl_xor_sync(0xffffffffu, a[i], m);
      a[i] = ((max_mask >> i) & 1u) ? acc_max(a[i], o) : a[i] + o;
    }
  }
  if (log2G > 5) {  // block-uniform  // sass-dyn: when=wpg > 1
    const int warp = threadIdx.x >> 5, wpg = 1 << (log2G - 5), w0 = warp & ~(wpg - 1);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) xchg[warp * N + i] = a[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float r = xchg[w0 * N + i];
#pragma unroll
      for (int w = 1; w < kMergeWarps; ++w) {  // a group is at most the block: wpg <= kMergeWarps
        if (w < wpg) {
          const float o = xchg[(w0 + w) * N + i];
          r = ((max_mask >> i) & 1u) ? acc_max(r, o) : r + o;
        }
      }
      a[i] = r;
    }
    __syncthreads();  // xchg is reused by the next reduction
  }
}

// Whether any group of the block (or of the warp, for groups within a warp)
// has pred set: a block-uniform (warp-uniform) branch condition.
__device__ __forceinline__ bool group_any(bool pred, int log2G) {
  if (log2G > 5) return __syncthreads_or(pred) != 0;
  return __any_sync(0xffffffffu, pred) != 0;
}

// The chunks a lane owns, the same for every pixel: output column k (a
// multiple of VEC), its quadrant q (-1: no chunk) and its element offset
// from the pixel's source row (MergePixel::base): the quadrant's row plus the
// column within it.  The quadrant by comparisons, not a division.  src fits
// 32 bits: merge_plan's register path requires (W + 2) C < 2^31.
template <int NCH>
struct MergeChunks {
  int k[NCH];
  int q[NCH];
  int src[NCH];
};

template <int VEC, int NCH>
__device__ __forceinline__ MergeChunks<NCH> merge_chunks(int lig, int log2G, int nch, const MergeGeom& g) {
  const int C = g.C;
  MergeChunks<NCH> ch;
#pragma unroll
  for (int i = 0; i < NCH; ++i) {
    const int k = (lig + (i << log2G)) * VEC;
    const int q = (i < nch && k < 4 * C) ? (k >= C) + (k >= 2 * C) + (k >= 3 * C) : -1;
    ch.k[i] = k;
    ch.q[i] = q;
    ch.src[i] = q < 0 ? 0 : static_cast<int>(quadrant_row(g, q) + (k - q * C));
  }
  return ch;
}

// Source offset of chunk i of pixel p (-1: no chunk, inactive pixel or padding).
template <int NCH>
__device__ __forceinline__ int64_t chunk_off(const MergeChunks<NCH>& ch, int i, const MergePixel& p) {
  const int q = ch.q[i];
  const bool ok = p.active && q >= 0 && has_quadrant(p, q);
  return ok ? p.base + ch.src[i] : int64_t(-1);
}

template <typename tx, typename tb, typename ty, int VEC, int NCH>
__global__ void __launch_bounds__(kMergeThreads, kMergeRegBlocks)
    merge_fwd_reg_kernel(const tx* __restrict__ x, const tb* __restrict__ branch, const float* __restrict__ weight,
                         const float* __restrict__ bias, ty* __restrict__ y, float* __restrict__ mean,
                         float* __restrict__ rstd, MergeGeom g, int log2G, int nch, float eps, float inv_n) {
  __shared__ float xchg[kMergeWarps * 2];
  const int C4 = 4 * g.C;
  const int grp = threadIdx.x >> log2G, lig = threadIdx.x & ((1 << log2G) - 1);
  const int pix = blockIdx.x * (kMergeThreads >> log2G) + grp;
  const MergePixel px = merge_pixel(g, pix);
  const bool active = px.active;  // an idle group still joins the reductions
  const MergeChunks<NCH> ch = merge_chunks<VEC, NCH>(lig, log2G, nch, g);

  float v[NCH][VEC];
  float r[2] = {0.0f, 0.0f};  // sum, max|h|
#pragma unroll
  for (int i = 0; i < NCH; ++i) {
    ld16_h<tx, tb, VEC>(x, branch, chunk_off(ch, i, px), v[i]);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      r[0] += v[i][e];
      r[1] = acc_max(r[1], acc_abs(v[i][e]));  // fmax: a NaN never wins (it reaches y through the sum)
    }
  }
  group_allreduce(r, log2G, 2u, xchg);
  // A row whose squares could overflow is normalised as x * 2^-k (exact).
  const bool huge = r[1] > layernorm_scale_above<float>() && r[1] <= std::numeric_limits<float>::max();
  int k = 0;
  float f = 1.0f;
  if (huge) {
    k = acc_ilogb(r[1]);
    f = acc_ldexp(1.0f, -k);
    if (eps > 0) eps = acc_max(acc_ldexp(eps, -2 * k), std::numeric_limits<float>::min());
  }
  const bool any_huge = group_any(huge, log2G);  // (the vote is on the costed path, its block is not)
  if (any_huge) {  // sass: skip(cold): rows above 2^40
    float s[1] = {0.0f};
#pragma unroll
    for (int i = 0; i < NCH; ++i)
#pragma unroll
      for (int e = 0; e < VEC; ++e) s[0] += v[i][e] * f;
    group_allreduce(s, log2G, 0u, xchg);
    r[0] = s[0];
  }
  float mu = r[0] * inv_n;
  float d2[2] = {0.0f, 0.0f};  // centred sum and sum of squares
#pragma unroll
  for (int i = 0; i < NCH; ++i)
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if (ch.q[i] < 0) continue;  // not a column of the row
      const float d = v[i][e] * f - mu;
      d2[0] += d;
      d2[1] += d * d;
    }
  group_allreduce(d2, log2G, 0u, xchg);
  const float dm = d2[0] * inv_n;
  mu += dm;
  const float rs = acc_inv_sqrt(acc_max(d2[1] * inv_n - dm * dm, 0.0f) + eps);
  if (!active) return;
  ty* dst = y + static_cast<int64_t>(pix) * C4;
#pragma unroll
  for (int i = 0; i < NCH; ++i) {
    if (ch.q[i] < 0) continue;
    float wv[VEC], bv[VEC], o[VEC];
    ld16<float, VEC>(weight + ch.k[i], wv);
    ld16<float, VEC>(bias + ch.k[i], bv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] = (v[i][e] * f - mu) * rs * wv[e] + bv[e];
    st16<ty, VEC>(dst + ch.k[i], o);
  }
  if (lig == 0) {
    mean[pix] = k ? acc_ldexp(mu, k) : mu;
    rstd[pix] = k ? acc_ldexp(rs, -k) : rs;
  }
}

// Shared memory of the register backward: the groups' dweight / dbias rows.
inline size_t merge_bwd_reg_smem(int log2G, int64_t C4) {
  return static_cast<size_t>(kMergeThreads >> log2G) * 2 * C4 * sizeof(float);
}

// grad_out in y's dtype; branch and dbranch may be null (dbranch: in the
// branch's dtype tb).  Block b covers pixels [b * iters * groups, + iters *
// groups), groups = kMergeThreads >> log2G, and writes partial row b.
template <typename tx, typename tb, typename ty, int VEC, int NCH>
__global__ void __launch_bounds__(kMergeThreads, kMergeRegBlocks)
    merge_bwd_reg_kernel(const ty* __restrict__ grad_out, const tx* __restrict__ x, const tb* __restrict__ branch,
                         const float* __restrict__ weight, const float* __restrict__ mean,
                         const float* __restrict__ rstd, tx* __restrict__ dx, tb* __restrict__ dbranch,
                         float* __restrict__ dw_part, float* __restrict__ db_part, MergeGeom g, int log2G,
                         int nch, int iters, float inv_n) {
  static_assert(VEC % 4 == 0, "the partial rows are written as float4");
  __shared__ float xchg[kMergeWarps * 2];
  SWIN_DYNAMIC_SHARED(float, red);  // [groups][2][4C]
  const int C4 = 4 * g.C;
  const int groups = kMergeThreads >> log2G;
  const int grp = threadIdx.x >> log2G, lig = threadIdx.x & ((1 << log2G) - 1);
  const MergeChunks<NCH> ch = merge_chunks<VEC, NCH>(lig, log2G, nch, g);
  float dw[NCH][VEC], db[NCH][VEC];
#pragma unroll
  for (int i = 0; i < NCH; ++i)
#pragma unroll
    for (int e = 0; e < VEC; ++e) dw[i][e] = db[i][e] = 0.0f;

  const int p0 = blockIdx.x * iters * groups;
  for (int it = 0; it < iters; ++it) {  // block-uniform  // sass-dyn: trips=iters
    const int pix = p0 + it * groups + grp;
    const MergePixel px = merge_pixel(g, pix);
    const bool active = px.active;
    const float mu = active ? mean[pix] : 0.0f, rs = active ? rstd[pix] : 0.0f;
    const ty* go = grad_out + static_cast<int64_t>(pix) * C4;
    float xh[NCH][VEC], gw[NCH][VEC];  // xhat, dy * weight (not g: the geometry)
    float s[2] = {0.0f, 0.0f};  // sum of dy * w and of dy * w * xhat
#pragma unroll
    for (int i = 0; i < NCH; ++i) {
      float h[VEC], dy[VEC], wv[VEC];
      ld16_h<tx, tb, VEC>(x, branch, chunk_off(ch, i, px), h);
      if (active && ch.q[i] >= 0) {
        ld16<ty, VEC>(go + ch.k[i], dy);
        ld16<float, VEC>(weight + ch.k[i], wv);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) dy[e] = wv[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        xh[i][e] = (h[e] - mu) * rs;
        gw[i][e] = dy[e] * wv[e];
        s[0] += gw[i][e];
        s[1] += gw[i][e] * xh[i][e];
        dw[i][e] += dy[e] * xh[i][e];
        db[i][e] += dy[e];
      }
    }
    group_allreduce(s, log2G, 0u, xchg);
    const float mg = s[0] * inv_n, mgx = s[1] * inv_n;
#pragma unroll
    for (int i = 0; i < NCH; ++i) {
      const int64_t off = chunk_off(ch, i, px);
      if (off < 0) continue;  // no chunk, idle group, or padding (no gradient)
      float d[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) d[e] = rs * (gw[i][e] - mg - xh[i][e] * mgx);
      st16<tx, VEC>(dx + off, d);
      if (dbranch != nullptr) st16<tb, VEC>(dbranch + off, d);
    }
  }
  // One partial row per block: the groups' registers added in group order.
  float* rw = red + static_cast<int64_t>(grp) * 2 * C4;
#pragma unroll
  for (int i = 0; i < NCH; ++i) {
    if (ch.q[i] < 0) continue;
#pragma unroll
    for (int e = 0; e < VEC; e += 4) {  // 16-byte stores
      const float4 w4 = make_float4(dw[i][e], dw[i][e + 1], dw[i][e + 2], dw[i][e + 3]);
      const float4 b4 = make_float4(db[i][e], db[i][e + 1], db[i][e + 2], db[i][e + 3]);
      st_float4(rw + ch.k[i] + e, w4);
      st_float4(rw + C4 + ch.k[i] + e, b4);
    }
  }
  __syncthreads();
  store_partial_row(red, groups, C4, dw_part, db_part);
}

// ------------------------------------------------------------------ streaming kernels

// Forward: one warp per output pixel; the statistics as the CPU kernel
// computes them (layernorm_stats.cuh: right for every finite input).
template <typename tx, typename tb, typename ty, typename acc_t, int VEC>
__global__ void __launch_bounds__(kMergeThreads, 1)
    merge_fwd_kernel(const tx* __restrict__ x, const tb* __restrict__ branch, const acc_t* __restrict__ weight,
                     const acc_t* __restrict__ bias, ty* __restrict__ y, acc_t* __restrict__ mean,
                     acc_t* __restrict__ rstd, MergeGeom g, acc_t eps, acc_t inv_n) {
  const int C = g.C, C4 = 4 * C;
  const int pix = blockIdx.x * kMergeWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (pix >= g.P) return;  // the whole warp leaves together
  const MergePixel px = merge_pixel(g, pix);
  auto for_each = [&](auto&& fn) {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      for (int c = lane * VEC; c < C; c += 32 * VEC) {
        const int64_t off = quadrant_off(g, px, q);
        acc_t v[VEC];
        load_h<tx, tb, acc_t, VEC>(x, branch, off < 0 ? off : off + c, v);  // L1-hot after the first pass
        fn(v);
      }
  };
  const RowStats<acc_t> st = warp_row_stats<acc_t, VEC>(for_each, inv_n, eps);
  ty* dst = y + static_cast<int64_t>(pix) * C4;
#pragma unroll
  for (int q = 0; q < 4; ++q)
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      const int64_t off = quadrant_off(g, px, q);
      acc_t v[VEC];
      load_h<tx, tb, acc_t, VEC>(x, branch, off < 0 ? off : off + c, v);
      const int kk = q * C + c;
      acc_t o[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[e] = (v[e] * st.scale - st.mean) * st.rstd * weight[kk + e] + bias[kk + e];
      store_pack<ty, acc_t, VEC>(dst + kk, o);
    }
  if (lane == 0) {
    mean[pix] = st.stored_mean();
    rstd[pix] = st.stored_rstd();
  }
}

// Shared memory of the streaming backward: per warp, dweight and dbias accumulators.
inline size_t merge_bwd_smem(int nwarps, int64_t C4, size_t acc_size) {
  return static_cast<size_t>(nwarps) * 2 * C4 * acc_size;
}

// Warps per streaming backward block: as many as kMergeWarps whose
// accumulators fit kMergeBwdMaxSmem (0: not even one).
inline int merge_bwd_warps(int64_t C4, size_t acc_size) {
  for (int w = kMergeWarps; w >= 1; --w)
    if (merge_bwd_smem(w, C4, acc_size) <= kMergeBwdMaxSmem) return w;
  return 0;
}

inline int64_t merge_bwd_pixels_per_block(int nwarps) { return static_cast<int64_t>(nwarps) * kMergePixelsPerWarp; }

// Backward: block = a fixed range of pixels, one warp per pixel at a time.
template <typename tx, typename tb, typename ty, typename acc_t, int VEC>
__global__ void __launch_bounds__(kMergeThreads, 1)
    merge_bwd_kernel(const ty* __restrict__ grad_out, const tx* __restrict__ x, const tb* __restrict__ branch,
                     const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                     const acc_t* __restrict__ rstd, tx* __restrict__ dx, tb* __restrict__ dbranch,
                     acc_t* __restrict__ dw_part, acc_t* __restrict__ db_part, MergeGeom g, acc_t inv_n) {
  SWIN_DYNAMIC_SHARED(acc_t, smem);
  const int C = g.C, C4 = 4 * C, P = g.P;
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  acc_t* dw_acc = smem + static_cast<int64_t>(warp) * 2 * C4;
  acc_t* db_acc = dw_acc + C4;
  for (int k = lane; k < 2 * C4; k += 32) dw_acc[k] = acc_t(0);  // the warp's own accumulators
  __syncwarp();

  const int p0 = blockIdx.x * nwarps * kMergePixelsPerWarp;
  const int p1 = p0 + nwarps * kMergePixelsPerWarp < P ? p0 + nwarps * kMergePixelsPerWarp : P;
  for (int pix = p0 + warp; pix < p1; pix += nwarps) {
    const MergePixel px = merge_pixel(g, pix);
    const acc_t mu = mean[pix], rs = rstd[pix];
    const ty* go = grad_out + static_cast<int64_t>(pix) * C4;
    acc_t xv[VEC], gv[VEC];
    acc_t sg = 0, sgx = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q)
      for (int c = lane * VEC; c < C; c += 32 * VEC) {
        const int k = q * C + c;
        const int64_t off = quadrant_off(g, px, q);
        load_h<tx, tb, acc_t, VEC>(x, branch, off < 0 ? off : off + c, xv);
        load_pack<ty, acc_t, VEC>(go + k, gv);
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
        const int64_t off = quadrant_off(g, px, q);
        load_h<tx, tb, acc_t, VEC>(x, branch, off < 0 ? off : off + c, xv);  // L1-hot: read in pass 1
        load_pack<ty, acc_t, VEC>(go + k, gv);
        acc_t d[VEC], aw[VEC], ab[VEC];
        load_pack<acc_t, acc_t, VEC>(dw_acc + k, aw);  // this lane's own pack: one vector access
        load_pack<acc_t, acc_t, VEC>(db_acc + k, ab);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const acc_t xh = (xv[e] - mu) * rs;
          d[e] = rs * (gv[e] * weight[k + e] - mg - xh * mgx);
          aw[e] += gv[e] * xh;
          ab[e] += gv[e];
        }
        store_pack<acc_t, acc_t, VEC>(dw_acc + k, aw);
        store_pack<acc_t, acc_t, VEC>(db_acc + k, ab);
        if (off >= 0) {  // padding: no gradient
          store_pack<tx, acc_t, VEC>(dx + off + c, d);
          if (dbranch != nullptr) store_pack<tb, acc_t, VEC>(dbranch + off + c, d);
        }
      }
  }
  __syncthreads();
  store_partial_row(smem, nwarps, C4, dw_part, db_part);  // the warps' accumulators in warp order
}

inline int64_t merge_num_partials(int64_t B, int64_t H, int64_t W, int nwarps) {
  return ceil_div<int64_t>(B * ((H + 1) / 2) * ((W + 1) / 2), merge_bwd_pixels_per_block(nwarps));
}

// ------------------------------------------------------------------ launch plans

inline bool merge_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// How a launch runs: the register kernels with groups of 2^log2G lanes and
// nch chunks per lane, or (reg == false) the streaming kernels (VEC-wide
// when vec, else element by element) with nwarps warps per backward block.
struct MergePlan {
  bool reg = false;
  bool vec = false;
  int log2G = 0;
  int nch = 0;
  int iters = kMergeBwdIters;  // register backward: pixel groups per block
  int nwarps = 0;              // streaming backward
  int64_t blocks = 0;          // grid size (backward: the number of partial rows)
  size_t smem = 0;             // dynamic shared memory (backward)
};

// Pixel groups per register-backward block: fewest_wave_steps from
// kMergeBwdIters down to half of it (each block walks its groups one after
// another: loads, a group reduction, stores).  At Swin-T's batch 128 on an
// H200 (4 blocks per SM, 528 slots), the second merging (25088 pixels, 2 per
// group) goes from 784 blocks of 16 (two waves, 32 groups deep) to 1046 of 12
// (two waves, 24 deep) and the third (6272 pixels, 1 per group) from 392
// blocks of 16 to 523 of 12 (one wave each); the first (1568 blocks, 2.97
// waves) keeps 16.  The H200 measured these two backwards at 2.5x and 2.3x
// their byte floor (stop 30's gpu_check).  resident 0: 16.
inline int merge_bwd_iters(int64_t P, int64_t groups, int64_t resident) {
  return static_cast<int>(fewest_wave_steps(P, groups, kMergeBwdIters, kMergeBwdIters / 2, resident));
}

// acc_size: 4 (float accumulation) or 8 (float64); aligned: every tensor
// pointer 16-byte aligned.
inline MergePlan merge_plan(int64_t B, int64_t H, int64_t W, int64_t C, int vec, size_t acc_size, bool aligned,
                            bool backward, int64_t resident = 0) {
  MergePlan p;
  const int64_t P = B * ((H + 1) / 2) * ((W + 1) / 2), C4 = 4 * C;
  p.vec = aligned && C % vec == 0;
  const int nch_max = (backward ? kMergeBwdElems : kMergeFwdElems) / vec;
  // (W + 2) C < 2^31: the chunks' source offsets in 32 bits (MergeChunks).
  if (p.vec && acc_size == sizeof(float) && C4 <= int64_t(kMergeMaxGroup) * nch_max * vec &&
      (W + 2) * C <= int64_t(std::numeric_limits<int>::max())) {
    const int64_t chunks = C4 / vec;
    int log2G = 0;
    while ((int64_t(1) << log2G) * nch_max < chunks) ++log2G;
    p.reg = true;
    p.log2G = log2G;
    p.nch = static_cast<int>(ceil_div<int64_t>(chunks, int64_t(1) << log2G));
    const int64_t groups = kMergeThreads >> log2G;
    if (backward) p.iters = merge_bwd_iters(P, groups, resident);
    p.blocks = ceil_div<int64_t>(P, backward ? groups * p.iters : groups);
    if (backward) p.smem = merge_bwd_reg_smem(log2G, C4);
    return p;
  }
  if (backward) {
    p.nwarps = merge_bwd_warps(C4, acc_size);
    p.blocks = p.nwarps ? merge_num_partials(B, H, W, p.nwarps) : 0;
    p.smem = merge_bwd_smem(p.nwarps, C4, acc_size);
  } else {
    p.blocks = ceil_div<int64_t>(P, kMergeWarps);
  }
  return p;
}

// y (B, ceil(H/2), ceil(W/2), 4C) in ty, mean/rstd (B, H2, W2); branch may
// be null.  plan = merge_plan(..., backward = false).  Sizes are checked by
// the caller to fit 32-bit pixel indices.
template <typename tx, typename tb, typename ty, typename acc_t>
void launch_patch_merging_fwd(const tx* x, const tb* branch, const acc_t* weight, const acc_t* bias, ty* y,
                              acc_t* mean, acc_t* rstd, int64_t B, int64_t H, int64_t W, int64_t C, double eps,
                              const MergePlan& plan, cudaStream_t stream) {
  if (plan.blocks == 0) return;
  constexpr int kVec = merge_vec<tx, tb, ty>();
  const unsigned blocks = static_cast<unsigned>(plan.blocks);
  const MergeGeom g = MergeGeom::make(B, H, W, C);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(4 * C);  // on the host: no division in the kernel
  if constexpr (sizeof(acc_t) == sizeof(float)) {
    if (plan.reg) {
      SWIN_LAUNCH_KERNEL((merge_fwd_reg_kernel<tx, tb, ty, kVec, kMergeFwdElems / kVec>), blocks, kMergeThreads, 0,
                         stream, x, branch, weight, bias, y, mean, rstd, g, plan.log2G, plan.nch,
                         static_cast<float>(eps), inv_n);
      return;
    }
  }
  if (plan.vec) {
    SWIN_LAUNCH_KERNEL((merge_fwd_kernel<tx, tb, ty, acc_t, kVec>), blocks, kMergeThreads, 0, stream, x, branch,
                       weight, bias, y, mean, rstd, g, static_cast<acc_t>(eps), inv_n);
  } else {
    SWIN_LAUNCH_KERNEL((merge_fwd_kernel<tx, tb, ty, acc_t, 1>), blocks, kMergeThreads, 0, stream, x, branch,
                       weight, bias, y, mean, rstd, g, static_cast<acc_t>(eps), inv_n);
  }
}

// dx (B, H, W, C) in tx, dbranch (may be null) in tb; dw_part / db_part
// (plan.blocks, 4C), summed over dim 0 by the caller.  plan =
// merge_plan(..., backward = true), with plan.blocks > 0.
template <typename tx, typename tb, typename ty, typename acc_t>
void launch_patch_merging_bwd(const ty* grad_out, const tx* x, const tb* branch, const acc_t* weight,
                              const acc_t* mean, const acc_t* rstd, tx* dx, tb* dbranch, acc_t* dw_part,
                              acc_t* db_part, int64_t B, int64_t H, int64_t W, int64_t C, const MergePlan& plan,
                              cudaStream_t stream) {
  if (plan.blocks == 0) return;
  constexpr int kVec = merge_vec<tx, tb, ty>();
  const unsigned blocks = static_cast<unsigned>(plan.blocks);
  const MergeGeom g = MergeGeom::make(B, H, W, C);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(4 * C);
  if constexpr (sizeof(acc_t) == sizeof(float)) {
    if (plan.reg) {
      SWIN_LAUNCH_KERNEL((merge_bwd_reg_kernel<tx, tb, ty, kVec, kMergeBwdElems / kVec>), blocks, kMergeThreads,
                         plan.smem, stream, grad_out, x, branch, weight, mean, rstd, dx, dbranch, dw_part, db_part, g,
                         plan.log2G, plan.nch, plan.iters, inv_n);
      return;
    }
  }
  const int threads = plan.nwarps * 32;
  if (plan.vec) {
    SWIN_LAUNCH_KERNEL((merge_bwd_kernel<tx, tb, ty, acc_t, kVec>), blocks, threads, plan.smem, stream, grad_out, x,
                       branch, weight, mean, rstd, dx, dbranch, dw_part, db_part, g, inv_n);
  } else {
    SWIN_LAUNCH_KERNEL((merge_bwd_kernel<tx, tb, ty, acc_t, 1>), blocks, threads, plan.smem, stream, grad_out, x,
                       branch, weight, mean, rstd, dx, dbranch, dw_part, db_part, g, inv_n);
  }
}

// The dtype combinations (x, branch, y) the glue dispatches to
// (SWIN_LN_DTYPE_MIXES, layernorm_stats.cuh).  Instantiated in
// patch_merging_kernels.cu (a translation unit of its own, compiled in
// parallel and by the harness), extern for everyone else.
#define SWIN_MERGE_TYPES(X) SWIN_LN_DTYPE_MIXES(X)

#define SWIN_MERGE_LAUNCHERS(PREFIX, TX, TB, TY)                                                      \
  PREFIX template void launch_patch_merging_fwd<TX, TB, TY, AccType<TX>::type>(                     \
      const TX*, const TB*, const AccType<TX>::type*, const AccType<TX>::type*, TY*, AccType<TX>::type*, \
      AccType<TX>::type*, int64_t, int64_t, int64_t, int64_t, double, const MergePlan&, cudaStream_t); \
  PREFIX template void launch_patch_merging_bwd<TX, TB, TY, AccType<TX>::type>(                     \
      const TY*, const TX*, const TB*, const AccType<TX>::type*, const AccType<TX>::type*,            \
      const AccType<TX>::type*, TX*, TB*, AccType<TX>::type*, AccType<TX>::type*, int64_t, int64_t,   \
      int64_t, int64_t, const MergePlan&, cudaStream_t);
#define SWIN_MERGE_EXTERN(TX, TB, TY) SWIN_MERGE_LAUNCHERS(extern, TX, TB, TY)
#ifndef SWIN_MERGE_INSTANTIATING
SWIN_MERGE_TYPES(SWIN_MERGE_EXTERN)
#endif

}  // namespace cuda
}  // namespace swin_ext

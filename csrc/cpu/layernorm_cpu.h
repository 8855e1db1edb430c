// LayerNorm row statistics shared by the CPU kernels that normalise (patch
// merging's LayerNorm over 4C, add_layernorm's over C), and the dtype
// conversions of their row buffers.
//
// The statistics are right for every finite input (torch's LayerNorm in
// float32 overflows to NaN from |x| ~ 1e19 on): the first pass also finds
// max|x|; a row above kScaleAbove is multiplied by 2^-k, k = ilogb(max|x|)
// (exact: a power of two), both passes run on it with eps * 2^-2k (floored
// at the smallest normal number when eps > 0, so a constant row gives 0, not
// 0 * inf), and mean * 2^k, rstd * 2^-k are the stored statistics.  Rows
// below the threshold take the plain path unchanged.  The variance is the
// corrected two-pass one (Chan, Golub & LeVeque): the residuals' own mean
// repairs the rounding of the first mean, so a constant row has var = 0
// exactly.  Reductions are `omp simd` (vectorised, a fixed order per build).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu_microkernels.h"

namespace swin_ext {
namespace cpu {

// Magnitude above which a row's statistics are computed on the row scaled by
// a power of two: below it, sum((x - mean)^2) over n <= 2^30 elements cannot
// overflow acc_t (4 * 2^30 * T^2 < max): T = 2^40 for float, 2^488 for double.
template <typename acc_t>
constexpr acc_t kScaleAbove =
    acc_t(std::numeric_limits<acc_t>::max_exponent == 128 ? 0x1p40 : 0x1p488);

template <typename acc_t>
struct RowStats {
  acc_t mean;        // of buf as it is after row_stats (scaled when k != 0)
  acc_t rstd;        // likewise
  acc_t mean_store;  // the row's own statistics: mean * 2^k, rstd * 2^-k
  acc_t rstd_store;
};

// Statistics of the n values in buf; rescales buf in place (by 2^-k) for a
// huge row, so that (buf[c] - mean) * rstd is the normalised row either way.
template <typename acc_t>
SWIN_ALWAYS_INLINE RowStats<acc_t> row_stats(acc_t* __restrict buf, int64_t n, acc_t eps) {
  acc_t m = 0, amax = 0;
#pragma omp simd reduction(+ : m) reduction(max : amax)
  for (int64_t c = 0; c < n; ++c) {
    m += buf[c];
    const acc_t v = std::abs(buf[c]);
    amax = v > amax ? v : amax;  // NaN never wins: it reaches the output through m
  }
  int k = 0;
  if (amax > kScaleAbove<acc_t> && amax <= std::numeric_limits<acc_t>::max()) {
    k = std::ilogb(amax);
    const acc_t sc = std::ldexp(acc_t(1), -k);
    m = 0;
#pragma omp simd reduction(+ : m)
    for (int64_t c = 0; c < n; ++c) {
      buf[c] *= sc;
      m += buf[c];
    }
    if (eps > 0) eps = std::max(std::ldexp(eps, -2 * k), std::numeric_limits<acc_t>::min());
  }
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(n);
  m *= inv_n;
  acc_t s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t c = 0; c < n; ++c) {
    const acc_t d = buf[c] - m;
    s1 += d;
    s2 += d * d;
  }
  const acc_t dm = s1 * inv_n;
  m += dm;
  const acc_t var = std::max(s2 * inv_n - dm * dm, acc_t(0));
  const acc_t rs = acc_t(1) / std::sqrt(var + eps);
  return {m, rs, k ? std::ldexp(m, k) : m, k ? std::ldexp(rs, -k) : rs};
}

// dst[c] = src[c] converted, for a row of n elements.
template <typename T, typename A>
SWIN_ALWAYS_INLINE void cvt_row(const T* __restrict src, A* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<A>(src[c]);
}

// Row r of a (rows, n) tensor of dtype t (one of the four floating dtypes),
// converted into dst.
template <typename A>
SWIN_ALWAYS_INLINE void load_row(at::ScalarType t, const void* base, int64_t r, int64_t n,
                                 A* __restrict dst) {
  switch (t) {
    case at::kFloat: return cvt_row(static_cast<const float*>(base) + r * n, dst, n);
    case at::kDouble: return cvt_row(static_cast<const double*>(base) + r * n, dst, n);
    case at::kHalf: return cvt_row(static_cast<const c10::Half*>(base) + r * n, dst, n);
    default: return cvt_row(static_cast<const c10::BFloat16*>(base) + r * n, dst, n);
  }
}

// src converted into row r of a (rows, n) tensor of dtype t.
template <typename A>
SWIN_ALWAYS_INLINE void store_row(at::ScalarType t, void* base, int64_t r, int64_t n,
                                  const A* __restrict src) {
  switch (t) {
    case at::kFloat: return cvt_row(src, static_cast<float*>(base) + r * n, n);
    case at::kDouble: return cvt_row(src, static_cast<double*>(base) + r * n, n);
    case at::kHalf: return cvt_row(src, static_cast<c10::Half*>(base) + r * n, n);
    default: return cvt_row(src, static_cast<c10::BFloat16*>(base) + r * n, n);
  }
}

// buf[c] rounded to dtype t (one of the four floating dtypes) and back: a
// sum computed wider than the tensor it stands for, as that tensor holds it.
template <typename A>
SWIN_ALWAYS_INLINE void round_row(at::ScalarType t, A* __restrict buf, int64_t n) {
  switch (t) {
    case at::kFloat:
      if constexpr (!std::is_same<A, float>::value) {
        for (int64_t c = 0; c < n; ++c) buf[c] = static_cast<A>(static_cast<float>(buf[c]));
      }
      return;
    case at::kDouble: return;
    case at::kHalf:
      for (int64_t c = 0; c < n; ++c) buf[c] = static_cast<A>(static_cast<c10::Half>(buf[c]));
      return;
    default:
      for (int64_t c = 0; c < n; ++c) buf[c] = static_cast<A>(static_cast<c10::BFloat16>(buf[c]));
  }
}

// ---------------------------------------------------------------- 8-wide float rows
//
// Loads and stores of 8 floats from float or bfloat16 memory (GCC vector
// extensions: one AVX2 register in the AVX2 clones), for the float32 fast
// paths of the row kernels.  bfloat16 is rounded to nearest even, NaN kept
// NaN, as c10::BFloat16 does.
// N-lane float rows (N = 8: one AVX2 register; 16: one AVX-512 register).
template <int N>
struct VecN {
  typedef float f __attribute__((vector_size(4 * N)));
  typedef int32_t i __attribute__((vector_size(4 * N)));
  typedef uint32_t u __attribute__((vector_size(4 * N)));
  typedef uint16_t h __attribute__((vector_size(2 * N)));
};
typedef VecN<8>::u v8u;
typedef VecN<8>::h v8h;
typedef VecN<16>::f v16f;

template <typename V>
constexpr int lanes_of = sizeof(V) / sizeof(float);

template <typename V>
SWIN_ALWAYS_INLINE V load_lanes(const float* p) {
  return load_vec<V>(p);
}

template <typename V>
SWIN_ALWAYS_INLINE V load_lanes(const c10::BFloat16* p) {
  typename VecN<lanes_of<V>>::h raw;
  std::memcpy(&raw, p, sizeof(raw));
  return (V)(__builtin_convertvector(raw, typename VecN<lanes_of<V>>::u) << 16);
}

template <typename V>
SWIN_ALWAYS_INLINE void store_lanes(float* p, V v) {
  store_vec(p, v);
}

template <typename V>
SWIN_ALWAYS_INLINE void store_lanes(c10::BFloat16* p, V v) {
  using U = typename VecN<lanes_of<V>>::u;
  const U bits = (U)v;
  const U rounded = (bits + (0x7FFFu + ((bits >> 16) & 1u))) >> 16;
  const U out = v == v ? rounded : U{} + 0x7FC0u;  // NaN -> the canonical quiet NaN
  const auto h = __builtin_convertvector(out, typename VecN<lanes_of<V>>::h);
  std::memcpy(p, &h, sizeof(h));
}

template <typename T>
SWIN_ALWAYS_INLINE v8f load8(const T* p) {
  return load_lanes<v8f>(p);
}
template <typename T>
SWIN_ALWAYS_INLINE void store8(T* p, v8f v) {
  store_lanes(p, v);
}

SWIN_ALWAYS_INLINE float hsum8(v8f v) {
  float s = 0;
  for (int l = 0; l < 8; ++l) s += v[l];
  return s;
}

SWIN_ALWAYS_INLINE float hmax8(v8f v) {
  float m = 0;
  for (int l = 0; l < 8; ++l) m = v[l] > m ? v[l] : m;
  return m;
}

SWIN_ALWAYS_INLINE v8f abs8(v8f v) { return (v8f)((v8u)v & 0x7FFFFFFFu); }

// ---------------------------------------------------------------- float32 row passes
//
// The passes of the float32 fast paths of the LayerNorm row kernels
// (add_layernorm_cpu.cpp, patch_merging_cpu.cpp) over a float row that is in
// memory (L1-hot): 8 lanes summed in order, then across lanes, then the
// scalar tail; a fixed order per build.  The caller sends a row with
// max|h| above kScaleAbove<float> (or a non-finite one) to row_stats instead.

// h[c] = x[c] + br[c] (br of type BT; BT = void: h = x) for n values, with
// the running sum and max|h| in 8 lanes (vs, vm) and for the tail (ts, tm).
template <typename BT>
SWIN_ALWAYS_INLINE void f32_add_row(const float* __restrict x, const BT* __restrict br, int64_t n,
                                    float* __restrict h, v8f& vs, v8f& vm, float& ts, float& tm) {
  const int64_t nv = n / 8 * 8;
  int64_t c = 0;
  for (; c < nv; c += 8) {
    v8f v = load8(x + c);
    if constexpr (!std::is_void<BT>::value) v += load8(br + c);
    store8(h + c, v);
    vs += v;
    const v8f av = abs8(v);
    vm = av > vm ? av : vm;
  }
  for (; c < n; ++c) {
    float v = x[c];
    if constexpr (!std::is_void<BT>::value) v += static_cast<float>(br[c]);
    h[c] = v;
    ts += v;
    const float av = std::abs(v);
    tm = av > tm ? av : tm;
  }
}

// Mean and rstd of the n floats of h whose sum is `sum` (max|h| <= kScaleAbove):
// the corrected two-pass variance of row_stats.
SWIN_ALWAYS_INLINE void f32_stats(const float* __restrict h, int64_t n, float sum, float eps, float& mean,
                                  float& rstd) {
  const int64_t nv = n / 8 * 8;
  const float inv_n = 1.0f / static_cast<float>(n);
  const float m0 = sum * inv_n;
  v8f v1 = {}, v2 = {};
  int64_t c = 0;
  for (; c < nv; c += 8) {
    const v8f d = load8(h + c) - m0;
    v1 += d;
    v2 += d * d;
  }
  float s1 = hsum8(v1), s2 = hsum8(v2);
  for (; c < n; ++c) {
    const float d = h[c] - m0;
    s1 += d;
    s2 += d * d;
  }
  const float dm = s1 * inv_n;
  mean = m0 + dm;
  const float var = std::max(s2 * inv_n - dm * dm, 0.0f);
  rstd = 1.0f / std::sqrt(var + eps);
}

// y = (h - mean) * rstd * w + b for n values, y of type YT (float or bfloat16).
template <typename YT>
SWIN_ALWAYS_INLINE void f32_normalize(const float* __restrict h, int64_t n, float mean, float rstd,
                                      const float* __restrict w, const float* __restrict b, YT* __restrict y) {
  const int64_t nv = n / 8 * 8;
  int64_t c = 0;
  for (; c < nv; c += 8) store8(y + c, (load8(h + c) - mean) * rstd * load8(w + c) + load8(b + c));
  for (; c < n; ++c) y[c] = static_cast<YT>((h[c] - mean) * rstd * w[c] + b[c]);
}

// LayerNorm backward, first pass over a row: xh = (h - mean) * rstd, gw =
// gy * w, dw += gy * xh, db += gy; returns the row sums of gw and gw * xh.
template <typename GT>
SWIN_ALWAYS_INLINE void f32_ln_bwd_row(const float* __restrict h, const GT* __restrict gy, int64_t n, float mean,
                                       float rstd, const float* __restrict w, float* __restrict dw,
                                       float* __restrict db, float* __restrict xh, float* __restrict gw,
                                       float& sum_g, float& sum_gx) {
  const int64_t nv = n / 8 * 8;
  v8f vg = {}, vgx = {};
  int64_t c = 0;
  for (; c < nv; c += 8) {
    const v8f x = (load8(h + c) - mean) * rstd;
    const v8f g = load8(gy + c);
    store8(dw + c, load8(dw + c) + g * x);
    store8(db + c, load8(db + c) + g);
    const v8f gwv = g * load8(w + c);
    store8(xh + c, x);
    store8(gw + c, gwv);
    vg += gwv;
    vgx += gwv * x;
  }
  sum_g = hsum8(vg);
  sum_gx = hsum8(vgx);
  for (; c < n; ++c) {
    const float x = (h[c] - mean) * rstd;
    const float g = static_cast<float>(gy[c]);
    dw[c] += g * x;
    db[c] += g;
    const float gwv = g * w[c];
    xh[c] = x;
    gw[c] = gwv;
    sum_g += gwv;
    sum_gx += gwv * x;
  }
}

// LayerNorm backward, second pass: d = rstd * (gw - mg - xh * mgx) (+ gh when
// not null) written to dh (float) and, for DT not void, to dbranch in DT.
template <typename DT>
SWIN_ALWAYS_INLINE void f32_ln_bwd_out(const float* __restrict gw, const float* __restrict xh, int64_t n, float rstd,
                                       float mg, float mgx, const float* __restrict gh, float* __restrict dh,
                                       void* dbranch) {
  const int64_t nv = n / 8 * 8;
  int64_t c = 0;
  for (; c < nv; c += 8) {
    v8f d = rstd * (load8(gw + c) - mg - load8(xh + c) * mgx);
    if (gh) d += load8(gh + c);
    store8(dh + c, d);
    if constexpr (!std::is_void<DT>::value) store8(static_cast<DT*>(dbranch) + c, d);
  }
  for (; c < n; ++c) {
    float d = rstd * (gw[c] - mg - xh[c] * mgx);
    if (gh) d += gh[c];
    dh[c] = d;
    if constexpr (!std::is_void<DT>::value) static_cast<DT*>(dbranch)[c] = static_cast<DT>(d);
  }
}

// ---------------------------------------------------------------- weight / bias gradients

// out[c] for c in [c0, c1) = the (nblocks, n) partial rows summed in block
// order (a fixed order: independent of the thread count).
template <typename acc_t>
SWIN_ALWAYS_INLINE void reduce_partials(const acc_t* part, int64_t nblocks, int64_t n, acc_t* out, int64_t c0,
                                        int64_t c1) {
  std::fill(out + c0, out + c1, acc_t(0));
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const acc_t* __restrict p = part + blk * n;
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) out[c] += p[c];
  }
}

// dweight (and dbias, unless db_part is null) = the partials summed in block
// order, over all n channels in chunks of 64 (a multiple of every vector
// width) split over threads.  Not inlined: its baseline-ISA loop stays a
// function of its own, outside the callers (tests/test_cpu_isa.py checks the
// callers have no baseline SSE arithmetic; GCC had inlined it into
// bias_gelu_bwd_into).
template <typename acc_t>
__attribute__((noinline)) void sum_partials(const acc_t* dw_part, const acc_t* db_part, int64_t nblocks, int64_t n,
                                            acc_t* dweight, acc_t* dbias) {
  at::parallel_for(0, (n + 63) / 64, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, nblocks)),
                   [&](int64_t begin, int64_t end) {
                     reduce_partials(dw_part, nblocks, n, dweight, begin * 64, std::min(n, end * 64));
                     if (db_part != nullptr) reduce_partials(db_part, nblocks, n, dbias, begin * 64, std::min(n, end * 64));
                   });
}

}  // namespace cpu
}  // namespace swin_ext

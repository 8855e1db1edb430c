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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

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

// ---------------------------------------------------------------- 8-wide float rows
//
// Loads and stores of 8 floats from float or bfloat16 memory (GCC vector
// extensions: one AVX2 register in the AVX2 clones), for the float32 fast
// paths of the row kernels.  bfloat16 is rounded to nearest even, NaN kept
// NaN, as c10::BFloat16 does.
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));

SWIN_ALWAYS_INLINE v8f load8(const float* p) { return load_vec<v8f>(p); }

SWIN_ALWAYS_INLINE v8f load8(const c10::BFloat16* p) {
  v8h raw;
  std::memcpy(&raw, p, sizeof(raw));
  return (v8f)(__builtin_convertvector(raw, v8u) << 16);
}

SWIN_ALWAYS_INLINE void store8(float* p, v8f v) { store_vec(p, v); }

SWIN_ALWAYS_INLINE void store8(c10::BFloat16* p, v8f v) {
  const v8u bits = (v8u)v;
  const v8u rounded = (bits + (0x7FFFu + ((bits >> 16) & 1u))) >> 16;
  const v8u out = v == v ? rounded : v8u{} + 0x7FC0u;  // NaN -> the canonical quiet NaN
  const v8h h = __builtin_convertvector(out, v8h);
  std::memcpy(p, &h, sizeof(h));
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

}  // namespace cpu
}  // namespace swin_ext

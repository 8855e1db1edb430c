// LayerNorm row statistics shared by the patch-merging and add+LayerNorm
// kernels: warp_row_stats for a row walked by one warp in VEC-element chunks
// (re-read per pass), group_row_stats for a row held in registers by a
// group of lanes.
//
// The statistics are right for every finite input, as the CPU kernels
// compute them (torch's float32 LayerNorm overflows from |x| ~ 1e19 on):
// pass 1 sums the row and finds max|x|; a row above layernorm_scale_above()
// is scaled by an exact power of two 2^-k (eps by 2^-2k, floored at the
// smallest normal number when eps > 0, so a constant row gives 0, not
// 0 * inf), and the mean is refined by the residuals' own mean (corrected
// two-pass: a constant row has var = 0).  The caller normalises with
// (x * f - mean) * rstd and stores mean * 2^k, rstd * 2^-k.
// ATen-free (see cuda_compat.h).
#pragma once

#include <limits>

#include "common.cuh"

namespace swin_ext {
namespace cuda {

// The (stream, branch, output) dtype combinations of the fused residual +
// LayerNorm kernels (add_layernorm, patch_merging), the one list of them:
// one dtype throughout, or a float32 residual stream with a bf16 / fp16
// branch or output (every autocast mix).  The kernels are instantiated for
// these and the glue dispatches to these (csrc/cuda/cuda_glue.h).
#define SWIN_LN_DTYPE_MIXES(X)                     \
  X(float, float, float)                           \
  X(double, double, double)                        \
  X(__half, __half, __half)                        \
  X(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16)   \
  X(float, __nv_bfloat16, __nv_bfloat16)           \
  X(float, __half, __half)                         \
  X(float, float, __nv_bfloat16)                   \
  X(float, float, __half)                          \
  X(float, __nv_bfloat16, float)                   \
  X(float, __half, float)

// Below this magnitude the sum of squared residuals over <= 2^30 channels
// cannot overflow acc_t.
template <typename acc_t>
__host__ __device__ constexpr acc_t layernorm_scale_above() {
  return sizeof(acc_t) == 4 ? acc_t(1099511627776.0) /* 2^40 */ : acc_t(0x1p488);
}

template <typename acc_t>
struct RowStats {
  acc_t mean;   // of the (scaled) row
  acc_t rstd;   // of the (scaled) row
  acc_t scale;  // 2^-k: the row is normalised as (x * scale - mean) * rstd
  int k;        // stored statistics: mean * 2^k, rstd * 2^-k
  __device__ __forceinline__ acc_t stored_mean() const { return k ? acc_ldexp(mean, k) : mean; }
  __device__ __forceinline__ acc_t stored_rstd() const { return k ? acc_ldexp(rstd, -k) : rstd; }
};

// for_each(fn) must call fn(const acc_t (&v)[VEC]) for every chunk of the
// row this lane owns, in a fixed order (every lane of the warp calls it).
template <typename acc_t, int VEC, typename ForEach>
__device__ __forceinline__ RowStats<acc_t> warp_row_stats(ForEach&& for_each, acc_t inv_n, acc_t eps) {
  acc_t s = 0, amax = 0;
  for_each([&](const acc_t (&v)[VEC]) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      s += v[e];
      amax = acc_max(amax, acc_abs(v[e]));  // fmax: a NaN never wins (it reaches the output through s)
    }
  });
  s = warp_sum(s);
  amax = warp_max(amax);
  RowStats<acc_t> r;
  r.k = 0;
  r.scale = 1;
  if (amax > layernorm_scale_above<acc_t>() && amax <= std::numeric_limits<acc_t>::max()) {
    r.k = acc_ilogb(amax);
    r.scale = acc_ldexp(acc_t(1), -r.k);
    s = 0;
    const acc_t f = r.scale;
    for_each([&](const acc_t (&v)[VEC]) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += v[e] * f;
    });
    s = warp_sum(s);
    if (eps > 0) eps = acc_max(acc_ldexp(eps, -2 * r.k), std::numeric_limits<acc_t>::min());
  }
  acc_t mu = s * inv_n;
  acc_t s1 = 0, s2 = 0;
  const acc_t f = r.scale;
  for_each([&](const acc_t (&v)[VEC]) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const acc_t d = v[e] * f - mu;
      s1 += d;
      s2 += d * d;
    }
  });
  const acc_t dm = warp_sum(s1) * inv_n;
  mu += dm;
  const acc_t var = acc_max(warp_sum(s2) * inv_n - dm * dm, acc_t(0));
  r.mean = mu;
  r.rstd = acc_inv_sqrt(var + eps);
  return r;
}

// ---------------------------------------------------------------------------
// The same statistics for rows held in registers by aligned groups of 2^lg
// lanes (add_layernorm.cuh): each lane holds NCH chunks of VEC values of its
// group's row, chunk k counted when bit k of `valid` is set (the others are
// ignored).  Two passes over the registers, the sums over the group by xor
// butterflies (every lane of a group gets the same bits).  Every lane of the
// warp calls it (the shuffles use the full mask; the rare rescaling pass is
// entered by the whole warp when any group needs it).

// a += the group's a, b += the group's b (aligned groups of 2^lg lanes).
template <typename T>
__device__ __forceinline__ void group_sum2(T& a, T& b, int lg) {
  for (int m = (1 << lg) >> 1; m > 0; m >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, m);
    b += __shfl_xor_sync(0xffffffffu, b, m);
  }
}

template <typename acc_t, int NCH, int VEC>
__device__ __forceinline__ RowStats<acc_t> group_row_stats(const acc_t (&v)[NCH][VEC], unsigned valid, int lg,
                                                           acc_t inv_n, acc_t eps) {
  acc_t s = 0, amax = 0;
#pragma unroll
  for (int k = 0; k < NCH; ++k) {
    if (valid >> k & 1u) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        s += v[k][e];
        amax = acc_max(amax, acc_abs(v[k][e]));  // fmax: a NaN never wins (it reaches the output through s)
      }
    }
  }
  for (int m = (1 << lg) >> 1; m > 0; m >>= 1) {
    s += __shfl_xor_sync(0xffffffffu, s, m);
    amax = acc_max(amax, __shfl_xor_sync(0xffffffffu, amax, m));
  }
  RowStats<acc_t> r;
  r.k = 0;
  r.scale = 1;
  const bool big = amax > layernorm_scale_above<acc_t>() && amax <= std::numeric_limits<acc_t>::max();
  if (__any_sync(0xffffffffu, big)) {  // warp-uniform: the groups that do not need it redo their sum unscaled
    r.k = big ? acc_ilogb(amax) : 0;
    r.scale = acc_ldexp(acc_t(1), -r.k);
    acc_t s2 = 0, unused = 0;
#pragma unroll
    for (int k = 0; k < NCH; ++k) {
      if (valid >> k & 1u) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) s2 += v[k][e] * r.scale;
      }
    }
    group_sum2(s2, unused, lg);
    s = s2;
    if (big && eps > 0) eps = acc_max(acc_ldexp(eps, -2 * r.k), std::numeric_limits<acc_t>::min());
  }
  acc_t mu = s * inv_n;
  acc_t s1 = 0, s2 = 0;
#pragma unroll
  for (int k = 0; k < NCH; ++k) {
    if (valid >> k & 1u) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc_t d = v[k][e] * r.scale - mu;
        s1 += d;
        s2 += d * d;
      }
    }
  }
  group_sum2(s1, s2, lg);
  const acc_t dm = s1 * inv_n;
  mu += dm;
  const acc_t var = acc_max(s2 * inv_n - dm * dm, acc_t(0));
  r.mean = mu;
  r.rstd = acc_inv_sqrt(var + eps);
  return r;
}

}  // namespace cuda
}  // namespace swin_ext

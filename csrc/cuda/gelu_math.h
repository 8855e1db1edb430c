// The exact (erf) GELU in float32 without erff: GELU(u) = u * Phi(u) and
// GELU'(u) = Phi(u) + u * phi(u), Phi the standard normal CDF, phi its
// density, through one polynomial and one exp2.
//
//   log2(2 Phi(-t)) = P(t),  t = |u| in [0, 5.6],  P of degree 10, P(0) = 0
//   Phi(u) = 1 - 2^P(|u|) / 2 for u >= 0, 2^P(|u|) / 2 for u < 0
//   phi(u) = 2^(log2(1/sqrt(2 pi)) - u^2 / (2 ln 2))
//
// Why not 0.5 * (1 + erff(u / sqrt 2)): erff evaluates two polynomials of
// degree 6-7 with per-coefficient selects and an exp (~22 instructions per
// element in the SASS of nvcc 13's libdevice), and 1 + erf cancels for
// negative u (zero relative accuracy below u ~ -3, exactly 0 below -5.54).
// Here the forward is 10 FFMA + 1 MUFU.EX2 + 3 (clamp, scale, NaN-keeping
// max) + 1 FFMA; Phi(u < 0) = 2^P / 2 keeps its relative accuracy far into
// the negative tail.  P(0) = 0 (not log2 Phi(0) = -1): near u = 0 its own
// rounding stays relative to its small value.
//
// P: a minimax fit of log2(2 Phi(-t)) relative to max(|log2(2 Phi(-t))|,
// 1e-3) on [0, 5.6], coefficients rounded to float32 one at a time from the
// highest (scripts/fit_gelu_poly.py regenerates them).  Above t = 5.6,
// Phi(-t) < 2^-25: 1 - Phi rounds to 1, and P is monotone decreasing there
// (leading coefficient < 0), so Phi(u < -5.6) is a value below Phi(-5.6) ~
// 1.1e-8 that reaches 0 (P is -inf from t ~ 4e4 on; no NaN for any u).
//
// Accuracy in float32: tests/gelu_accuracy.cpp measures it over every
// bfloat16 and float16 value and a sweep of all float32 bit patterns (CI),
// or every float32 (stride 1); the bounds it must meet, and the erff
// formula's for comparison, are in tests/test_gelu_accuracy.py.  On a GPU,
// ex2.approx adds up to 2 ulp of relative error to 2^P and to phi (the
// test's *_gpu rows).
//
// Host and device compute the same function: fmaf is one rounding on both;
// ex2_ftz is the PTX ex2.approx.ftz.f32 on the GPU and exp2f with flushed
// subnormal results on the host (the CPU harness), whose exact exp2 is
// within ex2.approx's 2 ulp.  ATen-free, no CUDA headers needed on the host.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define SWIN_GELU_FN __host__ __device__ __forceinline__
#else
#define SWIN_GELU_FN inline
#endif

namespace swin_ext {
namespace gelu {

// Above this t, 2^-25 > Phi(-t): 1 - Phi(-t) rounds to 1 in float32.
constexpr float kFitRange = 5.6f;
// gelu() clamps |u| here before the polynomial (2^P(t) is 0 in float32 from
// t ~ 14 on), so that u = +inf gives +inf, not inf * 0.
constexpr float kTailClamp = 1.0e4f;

// 2^x with subnormal results flushed to zero (ex2.approx.ftz.f32).
SWIN_GELU_FN float ex2_ftz(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  const float r = exp2f(x);
  return r < 1.17549435e-38f ? 0.0f : r;  // NaN compares false: passes through
#endif
}

// max(u, 0) with a NaN u returned as is (max.NaN.f32: one instruction from sm_80 on).
SWIN_GELU_FN float max0_nan(float u) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(u), "f"(0.0f));
  return r;
#else
  return u > 0.0f || u != u ? u : 0.0f;
#endif
}

// log2(2 Phi(-t)) for t = |u| >= 0 (accurate on [0, 5.6], decreasing beyond, -inf at t = inf).
SWIN_GELU_FN float log2_2ncdf_neg(float t) {
  float p = -0x1.e3b802p-26f;
  p = fmaf(p, t, 0x1.c1a21cp-21f);
  p = fmaf(p, t, -0x1.674a06p-17f);
  p = fmaf(p, t, 0x1.39ef3cp-14f);
  p = fmaf(p, t, -0x1.1f7a5ep-12f);
  p = fmaf(p, t, -0x1.5c49b6p-17f);
  p = fmaf(p, t, 0x1.c7eebcp-8f);
  p = fmaf(p, t, -0x1.ada24ap-5f);
  p = fmaf(p, t, -0x1.d63ddap-2f);
  p = fmaf(p, t, -0x1.26aec4p+0f);
  return p * t;
}

// Phi(u), the standard normal CDF.
SWIN_GELU_FN float normal_cdf(float u) {
  const float h = 0.5f * ex2_ftz(log2_2ncdf_neg(fabsf(u)));  // Phi(-|u|)
  return u >= 0.0f ? 1.0f - h : h;                          // NaN: h (NaN)
}

// GELU(u) = u * Phi(u), as fma(-|u| / 2, 2 Phi(-|u|), max(u, 0)): u - u Phi(-u)
// for u >= 0, u Phi(u) for u < 0, each with one rounding.  GELU(+inf) = +inf,
// GELU(-inf) = 0 (the limit; torch's composite gives NaN there), NaN -> NaN.
SWIN_GELU_FN float gelu(float u) {
  const float t = fminf(fabsf(u), kTailClamp);  // NaN -> kTailClamp: the NaN comes back through max0_nan
  return fmaf(-0.5f * t, ex2_ftz(log2_2ncdf_neg(t)), max0_nan(u));
}

// GELU'(u) = Phi(u) + u * phi(u) (NaN at u = +-inf, as torch's composite).
SWIN_GELU_FN float gelu_grad(float u) {
  const float t = fabsf(u);
  // log2(phi(t)) = log2(1 / sqrt(2 pi)) - t^2 * log2(e) / 2
  const float pdf = ex2_ftz(fmaf(t * t, -0x1.715476p-1f, -0x1.53643ap+0f));
  return fmaf(u, pdf, normal_cdf(u));
}

}  // namespace gelu
}  // namespace swin_ext

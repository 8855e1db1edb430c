// CPU kernels of fc1's epilogue (bias_gelu_fwd / bias_gelu_bwd, schemas in
// op_schemas.h): y = GELU(z + bias) with the exact (erf) GELU, and dz =
// grad_y * GELU'(z + bias) with dbias the column sums of dz, in one pass.
//
// float32 and bfloat16 z (the float32 and CPU-autocast model) run 8 lanes at
// a time (GCC vector extensions; compiled twice, AVX2+FMA and baseline, see
// cpu_microkernels.h): the normal CDF Phi from Cephes' erf / erfc
// polynomials (erf(w) = w T(w^2) for w = |u| / sqrt(2) < 1, erfc(w) =
// exp(-w^2) / w P(1 / w^2) or R(1 / w^2) above, so the lower tail keeps its
// relative accuracy: ~1e-7 relative, like erff), exp(-u^2 / 2) shared by the
// CDF and, in the backward, the density.  float64 and float16 z run the
// scalar std::erf code.
//
// Rows are split over threads with at::parallel_for in fixed blocks of
// kBgRowsPerPartial rows; the backward sums each block's dz columns (in float
// / double, before rounding to z's dtype) into a partial row and adds the
// partials in block order, so dbias does not depend on the number of threads
// (bitwise reproducible, no atomics).  The model runs this op for fc1 on the
// CPU in training (see swin_ext/layers/fast_linear.py); inference keeps
// oneDNN's GEMM with the GELU in its epilogue.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "cpu_microkernels.h"
#include "layernorm_cpu.h"

namespace swin_ext {
namespace {

using cpu::v8f;

constexpr int64_t kBgRowsPerPartial = 64;

template <typename acc_t>
inline acc_t gelu_erf(acc_t u) {
  return acc_t(0.5) * u * (acc_t(1) + std::erf(u * acc_t(0.70710678118654752440)));
}

template <typename acc_t>
inline acc_t gelu_erf_grad(acc_t u) {
  const acc_t cdf = acc_t(0.5) * (acc_t(1) + std::erf(u * acc_t(0.70710678118654752440)));
  return cdf + u * std::exp(acc_t(-0.5) * u * u) * acc_t(0.39894228040143267794);
}

// ---------------------------------------------------------------- 8-wide float32

template <int N>
SWIN_ALWAYS_INLINE v8f polevl(v8f x, const float (&c)[N]) {
  v8f r = v8f{} + c[0];
  for (int i = 1; i < N; ++i) r = r * x + c[i];
  return r;
}

// Phi(u) = 0.5 erfc(-u / sqrt(2)) for 8 floats; e = exp(-u^2 / 2).
SWIN_ALWAYS_INLINE v8f normal_cdf_v8f(v8f u, v8f& e) {
  // Cephes ndtrf.c: erf(x) = x T(x^2) on [0, 1); erfc(x) = exp(-x^2) / x P(1 / x^2) on [1, 2), R(1 / x^2) above.
  static constexpr float T[] = {7.853861353153693e-5f, -8.010193625184903e-4f, 5.188327685732524e-3f,
                                -2.685381193529856e-2f, 1.128358514861418e-1f, -3.761262582423300e-1f,
                                1.128379165726710e0f};
  static constexpr float P[] = {2.326819970068386e-2f, -1.387039388740657e-1f, 3.687424674597105e-1f,
                                -5.824733027278666e-1f, 6.210004621745983e-1f,  -4.944515323274145e-1f,
                                3.404879937665872e-1f,  -2.741127028184656e-1f, 5.638259427386472e-1f};
  static constexpr float R[] = {-1.047766399936249e1f, 1.297719955372516e1f,  -7.495518717768503e0f,
                                2.921019019210786e0f,  -1.015265279202700e0f, 4.218463358204948e-1f,
                                -2.820767439740514e-1f, 5.641895067754075e-1f};
  const v8f w = cpu::abs8(u) * 0.70710678118654752f;
  const v8f w2 = w * w;
  e = cpu::exp_v8f(-w2);
  const v8f erf_small = w * polevl(w2, T);  // erf(w), w < 1
  const v8f q = 1.0f / (w > 1.0f ? w : 1.0f);  // (w <= 1 takes erf_small)
  const v8f y = q * q;
  const v8f erfc_large = e * q * (w < 2.0f ? polevl(y, P) : polevl(y, R));  // erfc(w), w >= 1
  const v8f hi = w < 1.0f ? 0.5f + 0.5f * erf_small : 1.0f - 0.5f * erfc_large;  // Phi(|u|)
  const v8f lo = w < 1.0f ? 0.5f - 0.5f * erf_small : 0.5f * erfc_large;         // Phi(-|u|)
  return u >= 0.0f ? hi : (u < 0.0f ? lo : u);  // NaN stays NaN
}

// GELU(u) and GELU'(u) = Phi(u) + u phi(u).
SWIN_ALWAYS_INLINE v8f gelu_v8f(v8f u) {
  v8f e;
  return u * normal_cdf_v8f(u, e);
}
SWIN_ALWAYS_INLINE v8f gelu_grad_v8f(v8f u) {
  v8f e;
  const v8f cdf = normal_cdf_v8f(u, e);
  return cdf + u * e * 0.39894228040143267794f;
}

// The first n (< 8) elements of a row as one vector (zeros after), and back.
template <typename T>
SWIN_ALWAYS_INLINE v8f load_tail(const T* p, int64_t n) {
  float buf[8] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
  return cpu::load8(buf);
}
template <typename T>
SWIN_ALWAYS_INLINE void store_tail(T* p, v8f v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(v[i]);
}

template <typename T>
SWIN_ALWAYS_INLINE void bg_fwd_rows_f32(const T* z, const float* bias, T* y, int64_t K, int64_t r0, int64_t r1) {
  const int64_t Kv = K / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict zr = z + r * K;
    T* __restrict yr = y + r * K;
    int64_t k = 0;
    for (; k < Kv; k += 8) cpu::store8(yr + k, gelu_v8f(cpu::load8(zr + k) + cpu::load8(bias + k)));
    if (k < K) store_tail(yr + k, gelu_v8f(load_tail(zr + k, K - k) + load_tail(bias + k, K - k)), K - k);
  }
}

// Partial rows [p0, p1) of the backward: dz of their rows, and each block's dz column sums in part.
template <typename T>
SWIN_ALWAYS_INLINE void bg_bwd_blocks_f32(const T* gy, const T* z, const float* bias, T* dz, float* part,
                                          int64_t rows, int64_t K, int64_t p0, int64_t p1) {
  const int64_t Kv = K / 8 * 8;
  for (int64_t p = p0; p < p1; ++p) {
    float* __restrict acc = part + p * K;
    std::fill(acc, acc + K, 0.0f);
    const int64_t r1 = std::min(rows, (p + 1) * kBgRowsPerPartial);
    for (int64_t r = p * kBgRowsPerPartial; r < r1; ++r) {
      const T* __restrict zr = z + r * K;
      const T* __restrict gr = gy + r * K;
      T* __restrict dr = dz + r * K;
      int64_t k = 0;
      for (; k < Kv; k += 8) {
        const v8f g = cpu::load8(gr + k) * gelu_grad_v8f(cpu::load8(zr + k) + cpu::load8(bias + k));
        cpu::store8(dr + k, g);
        cpu::store8(acc + k, cpu::load8(acc + k) + g);
      }
      if (k < K) {
        const int64_t n = K - k;
        const v8f g = load_tail(gr + k, n) * gelu_grad_v8f(load_tail(zr + k, n) + load_tail(bias + k, n));
        store_tail(dr + k, g, n);
        for (int64_t i = 0; i < n; ++i) acc[k + i] += g[i];
      }
    }
  }
}

template <typename T>
void bg_fwd_default(const T* z, const float* b, T* y, int64_t K, int64_t r0, int64_t r1) {
  bg_fwd_rows_f32(z, b, y, K, r0, r1);
}
template <typename T>
void bg_bwd_default(const T* gy, const T* z, const float* b, T* dz, float* part, int64_t rows, int64_t K,
                    int64_t p0, int64_t p1) {
  bg_bwd_blocks_f32(gy, z, b, dz, part, rows, K, p0, p1);
}
#if SWIN_HAVE_AVX2_CLONE
template <typename T>
SWIN_TARGET_AVX2 void bg_fwd_avx2(const T* z, const float* b, T* y, int64_t K, int64_t r0, int64_t r1) {
  bg_fwd_rows_f32(z, b, y, K, r0, r1);
}
template <typename T>
SWIN_TARGET_AVX2 void bg_bwd_avx2(const T* gy, const T* z, const float* b, T* dz, float* part, int64_t rows,
                                  int64_t K, int64_t p0, int64_t p1) {
  bg_bwd_blocks_f32(gy, z, b, dz, part, rows, K, p0, p1);
}
#endif

// ---------------------------------------------------------------- generic (float64, float16)

template <typename scalar_t, typename acc_t>
void bg_fwd_generic(const scalar_t* zp, const acc_t* bp, scalar_t* yp, int64_t K, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* zr = zp + r * K;
    scalar_t* yr = yp + r * K;
    for (int64_t k = 0; k < K; ++k) yr[k] = static_cast<scalar_t>(gelu_erf<acc_t>(static_cast<acc_t>(zr[k]) + bp[k]));
  }
}

template <typename scalar_t, typename acc_t>
void bg_bwd_generic(const scalar_t* gp, const scalar_t* zp, const acc_t* bp, scalar_t* dp, acc_t* pp, int64_t rows,
                    int64_t K, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    acc_t* acc = pp + p * K;
    std::fill(acc, acc + K, acc_t(0));
    const int64_t r1 = std::min(rows, (p + 1) * kBgRowsPerPartial);
    for (int64_t r = p * kBgRowsPerPartial; r < r1; ++r) {
      const scalar_t* zr = zp + r * K;
      const scalar_t* gr = gp + r * K;
      scalar_t* dr = dp + r * K;
      for (int64_t k = 0; k < K; ++k) {
        const acc_t g = static_cast<acc_t>(gr[k]) * gelu_erf_grad<acc_t>(static_cast<acc_t>(zr[k]) + bp[k]);
        dr[k] = static_cast<scalar_t>(g);
        acc[k] += g;
      }
    }
  }
}

// ---------------------------------------------------------------- dispatch

template <typename scalar_t>
constexpr bool kVectorised = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>;

template <typename scalar_t, typename acc_t>
void bg_fwd_rows(const scalar_t* zp, const acc_t* bp, scalar_t* yp, int64_t K, int64_t r0, int64_t r1) {
  if constexpr (kVectorised<scalar_t>) {
#if SWIN_HAVE_AVX2_CLONE
    if (cpu::cpu_has_avx2()) return bg_fwd_avx2(zp, bp, yp, K, r0, r1);
#endif
    bg_fwd_default(zp, bp, yp, K, r0, r1);
  } else {
    bg_fwd_generic(zp, bp, yp, K, r0, r1);
  }
}

template <typename scalar_t, typename acc_t>
void bg_bwd_blocks(const scalar_t* gp, const scalar_t* zp, const acc_t* bp, scalar_t* dp, acc_t* pp, int64_t rows,
                   int64_t K, int64_t p0, int64_t p1) {
  if constexpr (kVectorised<scalar_t>) {
#if SWIN_HAVE_AVX2_CLONE
    if (cpu::cpu_has_avx2()) return bg_bwd_avx2(gp, zp, bp, dp, pp, rows, K, p0, p1);
#endif
    bg_bwd_default(gp, zp, bp, dp, pp, rows, K, p0, p1);
  } else {
    bg_bwd_generic(gp, zp, bp, dp, pp, rows, K, p0, p1);
  }
}

// ---------------------------------------------------------------- ATen glue

// Rows per forward task: about 16K elements, so small tensors stay on one thread.
inline int64_t bg_row_grain(int64_t K) { return std::max<int64_t>(1, (int64_t(1) << 14) / K); }

at::Tensor bias_gelu_fwd_cpu(const at::Tensor& z_in, const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_args(z_in, bias_in);
  TORCH_CHECK(z_in.device().is_cpu(), "swin_ext.bias_gelu (CPU kernel): z must be on the CPU, got ", z_in.device());
  const at::Tensor z = z_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor y = at::empty(z.sizes(), z.options());
  const int64_t rows = z.numel() / K;
  if (rows == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const acc_t* bp = bias.const_data_ptr<acc_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, bg_row_grain(K),
                     [&](int64_t begin, int64_t end) { bg_fwd_rows(zp, bp, yp, K, begin, end); });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd_cpu(const at::Tensor& grad_y_in, const at::Tensor& z_in,
                                                     const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_bwd_args(grad_y_in, z_in, bias_in);
  TORCH_CHECK(z_in.device().is_cpu(), "swin_ext.bias_gelu (CPU kernel): z must be on the CPU, got ", z_in.device());
  const at::Tensor z = z_in.contiguous(), grad_y = grad_y_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor dz = at::empty(z.sizes(), z.options());
  const int64_t rows = z.numel() / K;
  if (rows == 0) return {dz, at::zeros({K}, bias.options())};
  const int64_t nparts = (rows + kBgRowsPerPartial - 1) / kBgRowsPerPartial;
  at::Tensor part = at::empty({nparts, K}, bias.options());
  at::Tensor dbias = at::empty({K}, bias.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
    const acc_t* bp = bias.const_data_ptr<acc_t>();
    scalar_t* dp = dz.mutable_data_ptr<scalar_t>();
    acc_t* pp = part.mutable_data_ptr<acc_t>();
    // One grain = one partial block: a block's rows are summed by one thread, in order.
    at::parallel_for(0, nparts, 1,
                     [&](int64_t pb, int64_t pe) { bg_bwd_blocks(gp, zp, bp, dp, pp, rows, K, pb, pe); });
    cpu::sum_partials<acc_t>(pp, nullptr, nparts, K, dbias.mutable_data_ptr<acc_t>(), nullptr);
  });
  return {dz, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("bias_gelu_fwd", &bias_gelu_fwd_cpu);
  m.impl("bias_gelu_bwd", &bias_gelu_bwd_cpu);
}

}  // namespace swin_ext

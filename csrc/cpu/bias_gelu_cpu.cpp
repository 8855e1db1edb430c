// CPU kernels of fc1's epilogue (bias_gelu_fwd / bias_gelu_bwd, schemas in
// op_schemas.h): y = GELU(z + bias) with the exact (erf) GELU, and dz =
// grad_y * GELU'(z + bias) with dbias the column sums of dz, in one pass.
//
// float32 and bfloat16 z (the float32 and CPU-autocast model) run 8 or 16
// lanes at a time (GCC vector extensions; compiled three times, AVX-512,
// AVX2+FMA and baseline, see isa_dispatch.h): the normal CDF from one
// erfc approximation over the whole range (exp(-w^2) t R(t), below), so the
// lower tail keeps its relative accuracy, with exp(-u^2 / 2) shared by the
// CDF and, in the backward, the density.  float64 and float16 z run the
// scalar std::erf code.
//
// Rows are split over threads with at::parallel_for in fixed blocks of
// kBgRowsPerPartial rows; the backward sums each block's dz columns (in float
// / double, before rounding to z's dtype) into a partial row and adds the
// partials in block order, so dbias does not depend on the number of threads
// (bitwise reproducible, no atomics).  The model runs this op for fc1 on the
// CPU in training (see swin_ext/layers/fast_linear.py); inference takes
// oneDNN's GEMM with the GELU in its epilogue, or the fused MLP
// (mlp_cpu.cpp), which runs this file's forward rows (gelu_cpu.h).
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
#include "gelu_cpu.h"
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

// ---------------------------------------------------------------- vectorised float32
// (the GELU and the forward's rows: gelu_cpu.h)

using namespace cpu_gelu;

// dz = grad_y * GELU'(z + bias) of the U vectors at column k (gr and dr may be the same row:
// each element is read before it is written), added to the partial row acc.
template <int U, typename V, typename T>
SWIN_ALWAYS_INLINE void bg_bwd_step(const T* gr, const T* __restrict zr, const float* bias, T* dr,
                                    float* __restrict acc, int64_t k) {
  constexpr int L = cpu::lanes_of<V>;
  V u[U];
  SWIN_BG_EACH u[i] = cpu::load_lanes<V>(zr + k + i * L) + cpu::load_lanes<V>(bias + k + i * L);
  gelu_grad_n<U>(u);
  SWIN_BG_EACH {
    const V g = cpu::load_lanes<V>(gr + k + i * L) * u[i];
    cpu::store_lanes(dr + k + i * L, g);
    cpu::store_lanes(acc + k + i * L, cpu::load_lanes<V>(acc + k + i * L) + g);
  }
}

// Partial rows [p0, p1) of the backward: dz of their rows, and each block's dz column sums in part.
template <typename V, typename T>
SWIN_ALWAYS_INLINE void bg_bwd_blocks_vec(const T* gy, const T* z, const float* bias, T* dz, float* part,
                                          int64_t rows, int64_t K, int64_t p0, int64_t p1) {
  constexpr int L = cpu::lanes_of<V>;
  for (int64_t p = p0; p < p1; ++p) {
    float* __restrict acc = part + p * K;
    std::fill(acc, acc + K, 0.0f);
    const int64_t r1 = std::min(rows, (p + 1) * kBgRowsPerPartial);
    for (int64_t r = p * kBgRowsPerPartial; r < r1; ++r) {
      // gr and dr may be the same rows (bias_gelu_bwd_inplace): each element is read before it is written.
      const T* __restrict zr = z + r * K;
      const T* gr = gy + r * K;
      T* dr = dz + r * K;
      int64_t k = 0;
      for (; k + kBgUnroll * L <= K; k += kBgUnroll * L) bg_bwd_step<kBgUnroll, V>(gr, zr, bias, dr, acc, k);
      for (; k + L <= K; k += L) bg_bwd_step<1, V>(gr, zr, bias, dr, acc, k);
      if (k < K) {
        const int64_t n = K - k;
        V u[1] = {load_tail<V>(zr + k, n) + load_tail<V>(bias + k, n)};
        gelu_grad_n<1>(u);
        const V g = load_tail<V>(gr + k, n) * u[0];
        store_tail(dr + k, g, n);
        for (int64_t i = 0; i < n; ++i) acc[k + i] += g[i];
      }
    }
  }
}

#define SWIN_BG_FWD_PARAMS (const T* z, const float* b, T* y, int64_t K, int64_t r0, int64_t r1)
#define SWIN_BG_BWD_PARAMS \
  (const T* gy, const T* z, const float* b, T* dz, float* part, int64_t rows, int64_t K, int64_t p0, int64_t p1)
SWIN_CPU_CLONES((template <typename T>), bg_fwd, SWIN_BG_FWD_PARAMS, bg_fwd_rows_vec<v8f>(z, b, y, K, r0, r1));
SWIN_CPU_CLONE_AVX512((template <typename T>), bg_fwd, SWIN_BG_FWD_PARAMS,
                      bg_fwd_rows_vec<cpu::v16f>(z, b, y, K, r0, r1));
SWIN_CPU_CLONES((template <typename T>), bg_bwd, SWIN_BG_BWD_PARAMS,
                bg_bwd_blocks_vec<v8f>(gy, z, b, dz, part, rows, K, p0, p1));
SWIN_CPU_CLONE_AVX512((template <typename T>), bg_bwd, SWIN_BG_BWD_PARAMS,
                      bg_bwd_blocks_vec<cpu::v16f>(gy, z, b, dz, part, rows, K, p0, p1));
#undef SWIN_BG_FWD_PARAMS
#undef SWIN_BG_BWD_PARAMS

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
    SWIN_CPU_DISPATCH_AVX512(bg_fwd, (zp, bp, yp, K, r0, r1));
  } else {
    bg_fwd_generic(zp, bp, yp, K, r0, r1);
  }
}

template <typename scalar_t, typename acc_t>
void bg_bwd_blocks(const scalar_t* gp, const scalar_t* zp, const acc_t* bp, scalar_t* dp, acc_t* pp, int64_t rows,
                   int64_t K, int64_t p0, int64_t p1) {
  if constexpr (kVectorised<scalar_t>) {
    SWIN_CPU_DISPATCH_AVX512(bg_bwd, (gp, zp, bp, dp, pp, rows, K, p0, p1));
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

// dz = grad_y * GELU'(z + bias) written to `dz` (grad_y itself for the in-place op; z's
// dtype and shape, contiguous); returns dbias.
at::Tensor bias_gelu_bwd_into(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias,
                              const at::Tensor& dz, int64_t K) {
  const int64_t rows = z.numel() / K;
  if (rows == 0) return at::zeros({K}, bias.options());
  const int64_t nparts = ceil_div(rows, kBgRowsPerPartial);
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
  return dbias;
}

std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd_cpu(const at::Tensor& grad_y_in, const at::Tensor& z_in,
                                                     const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_bwd_args(grad_y_in, z_in, bias_in);
  TORCH_CHECK(z_in.device().is_cpu(), "swin_ext.bias_gelu (CPU kernel): z must be on the CPU, got ", z_in.device());
  const at::Tensor z = z_in.contiguous(), grad_y = grad_y_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor dz = at::empty(z.sizes(), z.options());
  at::Tensor dbias = bias_gelu_bwd_into(grad_y, z, bias, dz, K);
  return {dz, dbias};
}

// The same, dz written over grad_y (which must be contiguous: it is the output).
at::Tensor bias_gelu_bwd_inplace_cpu(const at::Tensor& grad_y, const at::Tensor& z_in, const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_bwd_inplace_args(grad_y, z_in, bias_in);
  TORCH_CHECK(z_in.device().is_cpu(), "swin_ext.bias_gelu (CPU kernel): z must be on the CPU, got ", z_in.device());
  const at::Tensor z = z_in.contiguous(), bias = bias_in.contiguous();
  return bias_gelu_bwd_into(grad_y, z, bias, grad_y, K);
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("bias_gelu_fwd", &bias_gelu_fwd_cpu);
  m.impl("bias_gelu_bwd", &bias_gelu_bwd_cpu);
  m.impl("bias_gelu_bwd_inplace", &bias_gelu_bwd_inplace_cpu);
}

}  // namespace swin_ext

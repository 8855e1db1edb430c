// CPU kernels of fc1's epilogue (bias_gelu_fwd / bias_gelu_bwd, schemas in
// op_schemas.h): y = GELU(z + bias) with the exact (erf) GELU, and dz =
// grad_y * GELU'(z + bias) with dbias the column sums of dz.
//
// Rows are split over threads with at::parallel_for in fixed blocks of
// kBgRowsPerPartial rows; the backward sums each block's dz columns (in the
// accumulation type, before rounding) into a partial row and adds the
// partials in block order, so dbias does not depend on the number of threads
// (bitwise reproducible, no atomics).  The model runs this op on CUDA only
// (on the CPU fc1's GELU is oneDNN's epilogue in inference and torch's GELU
// in training, see swin_ext/layers/fast_linear.py); the CPU kernel keeps the
// op complete on every device and is what the reference tests compare.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../checks.h"

namespace swin_ext {
namespace {

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

at::Tensor bias_gelu_fwd_cpu(const at::Tensor& z_in, const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_args(z_in, bias_in);
  TORCH_CHECK(z_in.device().is_cpu(), "swin_ext.bias_gelu (CPU kernel): z must be on the CPU, got ", z_in.device());
  const at::Tensor z = z_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor y = at::empty(z.sizes(), z.options());
  const int64_t rows = z.numel() / K;
  if (rows == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    using b_t = acc_t;  // bias in the accumulation dtype
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const b_t* bp = bias.data_ptr<b_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kBgRowsPerPartial, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* zr = zp + r * K;
        scalar_t* yr = yp + r * K;
        for (int64_t k = 0; k < K; ++k) yr[k] = static_cast<scalar_t>(gelu_erf<acc_t>(static_cast<acc_t>(zr[k]) + bp[k]));
      }
    });
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    using b_t = acc_t;  // bias in the accumulation dtype
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* gp = grad_y.data_ptr<scalar_t>();
    const b_t* bp = bias.data_ptr<b_t>();
    scalar_t* dp = dz.data_ptr<scalar_t>();
    b_t* pp = part.data_ptr<b_t>();
    // One grain = one partial block: a block's rows are summed by one thread, in order.
    at::parallel_for(0, nparts, 1, [&](int64_t pb, int64_t pe) {
      std::vector<acc_t> acc(K);
      for (int64_t p = pb; p < pe; ++p) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
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
        for (int64_t k = 0; k < K; ++k) pp[p * K + k] = static_cast<b_t>(acc[k]);
      }
    });
  });
  return {dz, part.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("bias_gelu_fwd", &bias_gelu_fwd_cpu);
  m.impl("bias_gelu_bwd", &bias_gelu_bwd_cpu);
}

}  // namespace swin_ext

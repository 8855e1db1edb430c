// swin_ext_harness::patch_merging_fwd / _bwd: the CUDA kernels of
// csrc/cuda/patch_merging.cuh run by the CPU harness on CPU tensors, with the
// same schemas and semantics as swin_ext::patch_merging_fwd / _bwd.  The glue
// mirrors csrc/cuda/ops_cuda.cu, except that every output and partial the
// kernels should write is pre-filled with NaN (see harness_window_attention.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "harness_glue.h"
#include "../checks.h"
#include "../cuda/patch_merging.cuh"

namespace swin_harness_ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd(const at::Tensor& x_in,
                                                                 const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in,
                                                                 double eps) {
  swin_ext::check_merging_args(x_in, weight_in, bias_in);
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext_harness runs on CPU tensors");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2;
  at::Tensor y = poisoned({B, H2, W2, 4 * C}, x.options());
  at::Tensor mean = poisoned({B, H2, W2}, weight.options());
  at::Tensor rstd = poisoned({B, H2, W2}, weight.options());
  if (y.numel() == 0) return {y, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patch_merging_fwd", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename swin_ext::cuda::AccType<T>::type;
    swin_ext::cuda::launch_patch_merging_fwd<T, A>(ptr<T>(x), ptr<A>(weight), ptr<A>(bias),
                                                   mut_ptr<T>(y), mut_ptr<A>(mean),
                                                   mut_ptr<A>(rstd), B, H, W, C, eps, nullptr);
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_bwd(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in) {
  swin_ext::check_merging_args(x_in, weight_in, weight_in);
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext_harness runs on CPU tensors");
  swin_ext::check_merging_bwd_args(grad_out_in, x_in, mean_in, rstd_in);
  const int64_t B = x_in.size(0), H = x_in.size(1), W = x_in.size(2), C = x_in.size(3);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  const int64_t nparts = swin_ext::cuda::merge_num_partials(B, H, W);
  at::Tensor dx = poisoned(x.sizes(), x.options());
  if (nparts == 0 || C == 0) {
    return {dx.zero_(), at::zeros({4 * C}, weight.options()), at::zeros({4 * C}, weight.options())};
  }
  at::Tensor dw_part = poisoned({nparts, 4 * C}, weight.options());
  at::Tensor db_part = poisoned({nparts, 4 * C}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patch_merging_bwd", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename swin_ext::cuda::AccType<T>::type;
    swin_ext::cuda::launch_patch_merging_bwd<T, A>(ptr<T>(grad_out), ptr<T>(x), ptr<A>(weight),
                                                   ptr<A>(mean), ptr<A>(rstd), mut_ptr<T>(dx),
                                                   mut_ptr<A>(dw_part), mut_ptr<A>(db_part), B, H,
                                                   W, C, nullptr);
  });
  return {dx, dw_part.sum(0), db_part.sum(0)};
}

}  // namespace
}  // namespace swin_harness_ops

TORCH_LIBRARY_IMPL(swin_ext_harness, CPU, m) {
  m.impl("patch_merging_fwd", &swin_harness_ops::patch_merging_fwd);
  m.impl("patch_merging_bwd", &swin_harness_ops::patch_merging_bwd);
}

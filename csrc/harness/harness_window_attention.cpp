// swin_ext_harness::window_attention_fwd / _bwd: the CUDA kernels of
// csrc/cuda/window_attention.cuh run by the CPU harness on CPU tensors, with
// the same schemas and semantics as swin_ext::window_attention_fwd / _bwd.
//
// The glue mirrors the CUDA ATen glue of csrc/cuda/ops_cuda.cu (checks,
// allocation, workspace, reduction of the partials), with one difference on purpose: every output
// and workspace the kernels are supposed to write is pre-filled with NaN, so
// an element that no kernel writes shows up in the comparison with the
// reference (on a GPU it would hold whatever was in memory).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "harness_glue.h"
#include "../checks.h"
#include "../cuda/window_attention.cuh"

namespace swin_harness_ops {
namespace {

std::tuple<at::Tensor, at::Tensor> window_attention_fwd(const at::Tensor& qkv_in,
                                                        const at::Tensor& bias_in,
                                                        const std::optional<at::Tensor>& qkv_pad,
                                                        int64_t window_size, int64_t shift_h,
                                                        int64_t shift_w, double scale) {
  const swin_ext::WindowGeometry g =
      swin_ext::check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  TORCH_CHECK(qkv_in.device().is_cpu(), "swin_ext_harness runs on CPU tensors");
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const int64_t heads = bias.size(0);
  const int64_t C = qkv.size(3) / 3, d = C / heads;
  TORCH_CHECK(d <= swin_ext::cuda::kMaxHeadDim, "head dim ", d, " > ", swin_ext::cuda::kMaxHeadDim);
  const auto acc = swin_ext::acc_type_of(qkv.scalar_type());
  at::Tensor out = poisoned({g.B, g.H, g.W, C}, qkv.options());
  at::Tensor lse = poisoned({g.B, g.nW, heads, g.N}, qkv.options().dtype(acc));
  if (out.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_fwd", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename swin_ext::cuda::AccType<T>::type;
    swin_ext::cuda::launch_attention_fwd<T, A>(ptr<T>(qkv), ptr<A>(bias), has_pad ? ptr<T>(pad) : nullptr,
                                               mut_ptr<T>(out), mut_ptr<A>(lse), g, heads, d, scale,
                                               nullptr);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_h, int64_t shift_w, double scale) {
  const swin_ext::WindowGeometry g =
      swin_ext::check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  TORCH_CHECK(qkv_in.device().is_cpu(), "swin_ext_harness runs on CPU tensors");
  const int64_t heads = bias_in.size(0);
  const int64_t C3 = qkv_in.size(3), C = C3 / 3, d = C / heads;
  TORCH_CHECK(d <= swin_ext::cuda::kMaxHeadDim, "head dim ", d, " > ", swin_ext::cuda::kMaxHeadDim);
  swin_ext::check_attention_bwd_args(grad_out_in, qkv_in, lse_in, g, heads);
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const auto aopt = bias.options();

  at::Tensor dqkv = poisoned(qkv.sizes(), qkv.options());
  if (qkv.numel() == 0) {
    return {dqkv, at::zeros({heads, g.N, g.N}, aopt), at::zeros({C3}, aopt)};
  }
  const int64_t nrb = swin_ext::cuda::attn_num_row_blocks(g.N);
  const int64_t nkb = swin_ext::cuda::attn_num_key_blocks(g.N);
  at::Tensor Dbuf = poisoned({g.B, g.nW, heads, g.N}, aopt);
  at::Tensor dbias_part = at::zeros({g.nW, heads, g.N, g.N}, aopt);  // zero on entry (documented)
  at::Tensor dpad_q_part = poisoned({g.nW, nrb, C}, aopt);
  at::Tensor dpad_kv_part = poisoned({g.B * g.nW, nkb, 2 * C}, aopt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_bwd", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename swin_ext::cuda::AccType<T>::type;
    swin_ext::cuda::launch_attention_bwd<T, A>(
        ptr<T>(grad_out), ptr<T>(qkv), ptr<A>(bias), has_pad ? ptr<T>(pad) : nullptr, ptr<A>(lse),
        mut_ptr<T>(dqkv), mut_ptr<A>(Dbuf), mut_ptr<A>(dbias_part), mut_ptr<A>(dpad_q_part),
        mut_ptr<A>(dpad_kv_part), g, heads, d, scale, nullptr);
  });
  at::Tensor dpad = at::cat({dpad_q_part.sum({0, 1}), dpad_kv_part.sum({0, 1})});
  return {dqkv, dbias_part.sum(0), dpad};
}

}  // namespace
}  // namespace swin_harness_ops

TORCH_LIBRARY_IMPL(swin_ext_harness, CPU, m) {
  m.impl("window_attention_fwd", &swin_harness_ops::window_attention_fwd);
  m.impl("window_attention_bwd", &swin_harness_ops::window_attention_bwd);
}

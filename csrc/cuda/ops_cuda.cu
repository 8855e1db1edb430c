// ATen glue of the CUDA kernels: checks, dtype dispatch, allocation, the
// current stream, launch checks.  The kernels live in the ATen-free headers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "patch_merging.cuh"
#include "window_attention.cuh"

namespace swin_ext {
namespace {

// at::Half / at::BFloat16 -> the CUDA types the kernels are written for.
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
using cuda_t = typename CudaType<scalar_t>::type;

template <typename scalar_t>
const cuda_t<scalar_t>* cptr(const at::Tensor& t) {
  return reinterpret_cast<const cuda_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}
template <typename scalar_t>
cuda_t<scalar_t>* mptr(at::Tensor& t) {
  return reinterpret_cast<cuda_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "swin_ext: CUDA kernel called with ", name, " on ", t.device());
}

void check_attention_limits(const WindowGeometry& g, int64_t heads, int64_t d) {
  TORCH_CHECK(d <= cuda::kMaxHeadDim, "swin_ext.window_attention (CUDA): head_dim ", d,
              " > ", cuda::kMaxHeadDim, " is not supported");
  TORCH_CHECK(heads <= 65535, "swin_ext.window_attention (CUDA): too many heads (", heads, ")");
  TORCH_CHECK(g.B * g.nW < (int64_t(1) << 31), "swin_ext.window_attention (CUDA): B * windows = ",
              g.B * g.nW, " exceeds the grid limit");
}

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cuda(
    const at::Tensor& qkv_in, const at::Tensor& bias_in, const std::optional<at::Tensor>& qkv_pad,
    int64_t window_size, int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  check_cuda(qkv_in, "qkv");
  const c10::cuda::CUDAGuard guard(qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const int64_t heads = bias.size(0), C = qkv.size(3) / 3, d = C / heads;
  check_attention_limits(g, heads, d);
  at::Tensor out = at::empty({g.B, g.H, g.W, C}, qkv.options());
  at::Tensor lse =
      at::empty({g.B, g.nW, heads, g.N}, qkv.options().dtype(acc_type_of(qkv.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_fwd_cuda", [&] {
        using acc_t = typename cuda::AccType<cuda_t<scalar_t>>::type;
        cuda::launch_attention_fwd<cuda_t<scalar_t>, acc_t>(
            cptr<scalar_t>(qkv), bias.const_data_ptr<acc_t>(),
            has_pad ? cptr<scalar_t>(pad) : nullptr, mptr<scalar_t>(out),
            lse.mutable_data_ptr<acc_t>(), g, heads, d, scale, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  check_cuda(qkv_in, "qkv");
  const c10::cuda::CUDAGuard guard(qkv_in.device());
  const int64_t heads = bias_in.size(0), C3 = qkv_in.size(3), C = C3 / 3, d = C / heads;
  check_attention_bwd_args(grad_out_in, qkv_in, lse_in, g, heads);
  check_attention_limits(g, heads, d);
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const auto acc_opts = bias.options();

  at::Tensor dqkv = at::empty_like(qkv);
  if (qkv.numel() == 0) {
    return {dqkv, at::zeros({heads, g.N, g.N}, acc_opts), at::zeros({C3}, acc_opts)};
  }
  const int64_t nQB = cuda::attn_num_row_blocks(g.N), nKB = cuda::attn_num_key_blocks(g.N);
  at::Tensor Dbuf = at::empty({g.B, g.nW, heads, g.N}, acc_opts);
  at::Tensor dbias_part = at::zeros({g.nW, heads, g.N, g.N}, acc_opts);
  at::Tensor dpad_q_part = at::empty({g.nW * nQB, C}, acc_opts);
  at::Tensor dpad_kv_part = at::empty({g.B * g.nW * nKB, 2 * C}, acc_opts);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_bwd_cuda", [&] {
        using acc_t = typename cuda::AccType<cuda_t<scalar_t>>::type;
        cuda::launch_attention_bwd<cuda_t<scalar_t>, acc_t>(
            cptr<scalar_t>(grad_out), cptr<scalar_t>(qkv), bias.const_data_ptr<acc_t>(),
            has_pad ? cptr<scalar_t>(pad) : nullptr, lse.const_data_ptr<acc_t>(),
            mptr<scalar_t>(dqkv), Dbuf.mutable_data_ptr<acc_t>(),
            dbias_part.mutable_data_ptr<acc_t>(), dpad_q_part.mutable_data_ptr<acc_t>(),
            dpad_kv_part.mutable_data_ptr<acc_t>(), g, heads, d, scale, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  // Partials are reduced over fixed shapes: reproducible run to run.
  at::Tensor dpad = at::cat({dpad_q_part.sum(0), dpad_kv_part.sum(0)});
  return {dqkv, dbias_part.sum(0), dpad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd_cuda(const at::Tensor& x_in,
                                                                      const at::Tensor& weight_in,
                                                                      const at::Tensor& bias_in,
                                                                      double eps) {
  check_merging_args(x_in, weight_in, bias_in);
  check_cuda(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2;
  at::Tensor y = at::empty({B, H2, W2, 4 * C}, x.options());
  at::Tensor mean = at::empty({B, H2, W2}, weight.options());
  at::Tensor rstd = at::empty({B, H2, W2}, weight.options());
  if (y.numel() == 0) return {y, mean, rstd};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "patch_merging_fwd_cuda", [&] {
        using acc_t = typename cuda::AccType<cuda_t<scalar_t>>::type;
        cuda::launch_patch_merging_fwd<cuda_t<scalar_t>, acc_t>(
            cptr<scalar_t>(x), weight.const_data_ptr<acc_t>(), bias.const_data_ptr<acc_t>(),
            mptr<scalar_t>(y), mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), B,
            H, W, C, eps, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_bwd_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in) {
  check_merging_args(x_in, weight_in, weight_in);
  check_cuda(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t B = x_in.size(0), H = x_in.size(1), W = x_in.size(2), C = x_in.size(3);
  check_merging_bwd_args(grad_out_in, x_in, mean_in, rstd_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  const int64_t nparts = cuda::merge_num_partials(B, H, W);
  TORCH_CHECK(nparts < (int64_t(1) << 31), "swin_ext.patch_merging (CUDA): input too large");
  at::Tensor dx = at::empty_like(x);
  if (nparts == 0 || C == 0) {
    return {dx.zero_(), at::zeros({4 * C}, weight.options()), at::zeros({4 * C}, weight.options())};
  }
  at::Tensor dw_part = at::empty({nparts, 4 * C}, weight.options());
  at::Tensor db_part = at::empty({nparts, 4 * C}, weight.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "patch_merging_bwd_cuda", [&] {
        using acc_t = typename cuda::AccType<cuda_t<scalar_t>>::type;
        cuda::launch_patch_merging_bwd<cuda_t<scalar_t>, acc_t>(
            cptr<scalar_t>(grad_out), cptr<scalar_t>(x), weight.const_data_ptr<acc_t>(),
            mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(), mptr<scalar_t>(dx),
            dw_part.mutable_data_ptr<acc_t>(), db_part.mutable_data_ptr<acc_t>(), B, H, W, C,
            stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {dx, dw_part.sum(0), db_part.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CUDA, m) {
  m.impl("window_attention_fwd", &window_attention_fwd_cuda);
  m.impl("window_attention_bwd", &window_attention_bwd_cuda);
  m.impl("patch_merging_fwd", &patch_merging_fwd_cuda);
  m.impl("patch_merging_bwd", &patch_merging_bwd_cuda);
}

}  // namespace swin_ext

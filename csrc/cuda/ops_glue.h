// ATen glue of the CUDA kernels: argument checks, dtype dispatch, allocation
// of outputs and workspaces, the launch, and the deterministic reduction of
// the partials.  Written once, instantiated twice:
//   * ops_cuda.cu:  Backend = CudaBackend, for CUDA tensors (swin_ext::*);
//   * csrc/harness/harness_kernels.cpp:  Backend = HarnessBackend, for CPU
//     tensors run by the CPU execution harness (swin_ext_harness::*), so
//     the tests exercise this very glue, not a copy of it.
//
// A Backend provides:
//   using Guard = ...;                    constructed from the tensors' device
//   static void check_device(const at::Tensor&, const char* name);
//   static cudaStream_t stream();
//   static at::Tensor output(at::IntArrayRef, const at::TensorOptions&);
//                                         storage the kernels must fully write
//   static void check_launch();
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../checks.h"
#include "patch_merging.cuh"
#include "window_attention.cuh"

namespace swin_ext {
namespace cuda_glue {

// at::Half / at::BFloat16 -> the CUDA types the kernels are written for
// (same layout).
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
template <typename T>
using cuda_t = typename CudaType<T>::type;

template <typename T>
inline const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}
template <typename T>
inline T* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

inline void check_attention_limits(const WindowGeometry& g, int64_t heads, int64_t d) {
  TORCH_CHECK(d <= cuda::kMaxHeadDim, "swin_ext.window_attention (CUDA): head_dim ", d, " > ",
              cuda::kMaxHeadDim, " is not supported");
  TORCH_CHECK(heads <= 65535, "swin_ext.window_attention (CUDA): too many heads (", heads, ")");
  TORCH_CHECK(g.B * g.nW < (int64_t(1) << 31), "swin_ext.window_attention (CUDA): B * windows = ",
              g.B * g.nW, " exceeds the grid limit");
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_fwd(const at::Tensor& qkv_in,
                                                        const at::Tensor& bias_in,
                                                        const std::optional<at::Tensor>& qkv_pad,
                                                        int64_t window_size, int64_t shift_h,
                                                        int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const int64_t heads = bias.size(0), C = qkv.size(3) / 3, d = C / heads;
  check_attention_limits(g, heads, d);
  at::Tensor out = Backend::output({g.B, g.H, g.W, C}, qkv.options());
  at::Tensor lse =
      Backend::output({g.B, g.nW, heads, g.N}, qkv.options().dtype(acc_type_of(qkv.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_fwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        using A = typename cuda::AccType<T>::type;
        cuda::launch_attention_fwd<T, A>(ptr<T>(qkv), ptr<A>(bias), has_pad ? ptr<T>(pad) : nullptr,
                                         mut_ptr<T>(out), mut_ptr<A>(lse), g, heads, d, scale,
                                         stream);
        Backend::check_launch();
      });
  return {out, lse};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
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

  at::Tensor dqkv = Backend::output(qkv.sizes(), qkv.options());
  if (qkv.numel() == 0) {
    return {dqkv, at::zeros({heads, g.N, g.N}, acc_opts), at::zeros({C3}, acc_opts)};
  }
  const int64_t nKB = cuda::attn_num_key_blocks(g.N);
  at::Tensor Dbuf = Backend::output({g.B, g.nW, heads, g.N}, acc_opts);
  at::Tensor dbias_part = at::zeros({g.nW, heads, g.N, g.N}, acc_opts);  // accumulated in place
  at::Tensor dpad_kv_part = Backend::output({g.B * g.nW * nKB, 2 * C}, acc_opts);
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_bwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        using A = typename cuda::AccType<T>::type;
        cuda::launch_attention_bwd<T, A>(
            ptr<T>(grad_out), ptr<T>(qkv), ptr<A>(bias), has_pad ? ptr<T>(pad) : nullptr,
            ptr<A>(lse), mut_ptr<T>(dqkv), mut_ptr<A>(Dbuf), mut_ptr<A>(dbias_part),
            mut_ptr<A>(dpad_kv_part), g, heads, d, scale, stream);
        Backend::check_launch();
      });
  // Partials are reduced over fixed shapes: reproducible run to run.  The q
  // part of the pad gradient is zero: padding queries have dO = 0.
  at::Tensor dpad = at::cat({at::zeros({C}, acc_opts), dpad_kv_part.sum(0)});
  return {dqkv, dbias_part.sum(0), dpad};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd(const at::Tensor& x_in,
                                                                 const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in,
                                                                 double eps) {
  check_merging_args(x_in, weight_in, bias_in);
  Backend::check_device(x_in, "x");
  const typename Backend::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2;
  at::Tensor y = Backend::output({B, H2, W2, 4 * C}, x.options());
  at::Tensor mean = Backend::output({B, H2, W2}, weight.options());
  at::Tensor rstd = Backend::output({B, H2, W2}, weight.options());
  if (y.numel() == 0) return {y, mean, rstd};
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "patch_merging_fwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        using A = typename cuda::AccType<T>::type;
        cuda::launch_patch_merging_fwd<T, A>(ptr<T>(x), ptr<A>(weight), ptr<A>(bias), mut_ptr<T>(y),
                                             mut_ptr<A>(mean), mut_ptr<A>(rstd), B, H, W, C, eps,
                                             stream);
        Backend::check_launch();
      });
  return {y, mean, rstd};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_bwd(const at::Tensor& grad_out_in,
                                                                 const at::Tensor& x_in,
                                                                 const at::Tensor& weight_in,
                                                                 const at::Tensor& mean_in,
                                                                 const at::Tensor& rstd_in) {
  check_merging_args(x_in, weight_in, weight_in);
  Backend::check_device(x_in, "x");
  const typename Backend::Guard guard(x_in.device());
  const int64_t B = x_in.size(0), H = x_in.size(1), W = x_in.size(2), C = x_in.size(3);
  check_merging_bwd_args(grad_out_in, x_in, mean_in, rstd_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  const int64_t nparts = cuda::merge_num_partials(B, H, W);
  TORCH_CHECK(nparts < (int64_t(1) << 31), "swin_ext.patch_merging (CUDA): input too large");
  at::Tensor dx = Backend::output(x.sizes(), x.options());
  if (nparts == 0 || C == 0) {
    return {dx.zero_(), at::zeros({4 * C}, weight.options()), at::zeros({4 * C}, weight.options())};
  }
  at::Tensor dw_part = Backend::output({nparts, 4 * C}, weight.options());
  at::Tensor db_part = Backend::output({nparts, 4 * C}, weight.options());
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "patch_merging_bwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        using A = typename cuda::AccType<T>::type;
        cuda::launch_patch_merging_bwd<T, A>(ptr<T>(grad_out), ptr<T>(x), ptr<A>(weight),
                                             ptr<A>(mean), ptr<A>(rstd), mut_ptr<T>(dx),
                                             mut_ptr<A>(dw_part), mut_ptr<A>(db_part), B, H, W, C,
                                             stream);
        Backend::check_launch();
      });
  return {dx, dw_part.sum(0), db_part.sum(0)};
}

}  // namespace cuda_glue
}  // namespace swin_ext

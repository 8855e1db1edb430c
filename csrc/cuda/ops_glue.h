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

#include <cstdlib>
#include <cstring>

#include "../checks.h"
#include "attention/api.h"
#include "patch_merging.cuh"

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

// The attention kernels work in 32-bit geometry; everything that must fit
// is checked here, with the shape in the message.
inline void check_attention_limits(const WindowGeometry& g, int64_t heads, int64_t d) {
  TORCH_CHECK(d >= 1 && d <= cuda::attn::kMaxHeadDim, "swin_ext.window_attention (CUDA): head_dim ", d,
              " is not supported (1 <= head_dim <= ", cuda::attn::kMaxHeadDim, ")");
  constexpr int64_t kMax32 = (int64_t(1) << 31) - 1;
  TORCH_CHECK(g.H * g.W <= kMax32 && g.Hp <= kMax32 && g.Wp <= kMax32 && g.nW <= kMax32 &&
                  g.N <= kMax32 && g.B <= kMax32 && heads * d * 3 <= kMax32,
              "swin_ext.window_attention (CUDA): map ", g.H, "x", g.W, " (windows ", g.nW,
              ", batch ", g.B, ", channels ", heads * d, ") exceeds the kernels' 32-bit indexing");
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline cuda::attn::AttnParams attention_params(const WindowGeometry& g, int64_t heads, int64_t d,
                                               double scale, size_t elem_size) {
  cuda::attn::AttnParams p;
  p.g = {static_cast<int>(g.H), static_cast<int>(g.W), static_cast<int>(g.Hp), static_cast<int>(g.Wp),
         static_cast<int>(g.ws), static_cast<int>(g.N), static_cast<int>(g.nWw), static_cast<int>(g.nW),
         static_cast<int>(g.sh), static_cast<int>(g.sw)};
  p.B = static_cast<int>(g.B);
  p.heads = static_cast<int>(heads);
  p.d = static_cast<int>(d);
  p.C = static_cast<int>(heads * d);
  p.img_qkv = g.H * g.W * 3 * heads * d;
  p.img_out = g.H * g.W * heads * d;
  p.scale = scale;
  p.masked = g.sh > 0 || g.sw > 0;
  p.padded = g.Hp != g.H || g.Wp != g.W;
  // 16-byte vectors when every row slice (token stride 3C or C, head offset
  // h * d) is a multiple of 16 bytes; the pointers are checked by the caller.
  p.vec = (d * elem_size) % 16 == 0;
  return p;
}

inline int device_smem_optin() {
  int dev = 0, v = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  TORCH_CHECK(e == cudaSuccess, "swin_ext.window_attention (CUDA): cannot read the device's shared-memory limit: ",
              cudaGetErrorString(e));
  return v;
}

// SWIN_EXT_ATTN_BWD=fused|streaming forces the backward kernels (tests,
// debugging); unset or anything else: the fused kernel where it fits.
inline cuda::attn::BwdChoice attention_bwd_choice() {
  const char* v = std::getenv("SWIN_EXT_ATTN_BWD");
  if (v == nullptr) return cuda::attn::BwdChoice::kAuto;
  if (std::strcmp(v, "fused") == 0) return cuda::attn::BwdChoice::kFused;
  if (std::strcmp(v, "streaming") == 0) return cuda::attn::BwdChoice::kStreaming;
  return cuda::attn::BwdChoice::kAuto;
}

// SWIN_EXT_ATTN_CHUNK=<n> forces the images per backward block (tests of
// the multi-image bias accumulation on small inputs); else a rule of the shape.
inline int attention_bwd_chunk() {
  const char* v = std::getenv("SWIN_EXT_ATTN_CHUNK");
  if (v == nullptr) return 0;
  const long n = std::strtol(v, nullptr, 10);
  return n > 0 && n < 1024 ? static_cast<int>(n) : 0;
}

inline void check_attention_launch(int64_t blocks, int smem, int optin, const WindowGeometry& g, int64_t d,
                                   at::ScalarType dtype, const char* kernel) {
  TORCH_CHECK(blocks < (int64_t(1) << 31), "swin_ext.window_attention (CUDA): ", kernel, " needs ", blocks,
              " blocks, more than a grid holds (batch ", g.B, ", ", g.nW, " windows)");
  TORCH_CHECK(smem <= optin, "swin_ext.window_attention (CUDA): ", kernel, " needs ", smem,
              " bytes of shared memory per block for window ", g.ws, ", head_dim ", d, ", dtype ", dtype,
              "; this GPU allows ", optin);
}

inline void check_attention_status(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "swin_ext.window_attention (CUDA): ", what, " failed: ", cudaGetErrorString(e));
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_fwd(const at::Tensor& qkv_in,
                                                        const at::Tensor& bias_in,
                                                        const std::optional<at::Tensor>& qkv_pad,
                                                        int64_t window_size, int64_t shift_h,
                                                        int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  check_attention_scale(scale);
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const int64_t heads = bias.size(0), C = qkv.size(3) / 3, d = C / heads;
  at::Tensor out = Backend::output({g.B, g.H, g.W, C}, qkv.options());
  at::Tensor lse =
      Backend::output({g.B, g.nW, heads, g.N}, qkv.options().dtype(acc_type_of(qkv.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  check_attention_limits(g, heads, d);
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_fwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        cuda::attn::AttnParams p = attention_params(g, heads, d, scale, sizeof(T));
        p.qkv = qkv.const_data_ptr();
        p.bias = bias.const_data_ptr();
        p.pad = has_pad ? pad.const_data_ptr() : nullptr;
        p.out = out.mutable_data_ptr();
        p.lse_out = lse.mutable_data_ptr();
        p.vec = p.vec && aligned16(p.qkv) && aligned16(p.out) && (!has_pad || aligned16(p.pad));
        const cuda::attn::FwdPlan plan = cuda::attn::attention_fwd_plan<T>(p);
        check_attention_launch(plan.blocks, plan.smem, device_smem_optin(), g, d, qkv.scalar_type(), "the forward kernel");
        check_attention_status(cuda::attn::attention_fwd_run<T>(p, plan, stream), "the forward launch");
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
  check_attention_scale(scale);
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const int64_t heads = bias_in.size(0), C3 = qkv_in.size(3), C = C3 / 3, d = C / heads;
  check_attention_bwd_args(grad_out_in, qkv_in, lse_in, g, heads);
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
  check_attention_limits(g, heads, d);
  const cudaStream_t stream = Backend::stream();
  at::Tensor dbias, dpad;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_bwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        cuda::attn::AttnParams p = attention_params(g, heads, d, scale, sizeof(T));
        p.qkv = qkv.const_data_ptr();
        p.bias = bias.const_data_ptr();
        p.pad = has_pad ? pad.const_data_ptr() : nullptr;
        p.lse = lse.const_data_ptr();
        p.grad_out = grad_out.const_data_ptr();
        p.dqkv = dqkv.mutable_data_ptr();
        p.vec = p.vec && aligned16(p.qkv) && aligned16(p.grad_out) && aligned16(p.dqkv) &&
                (!has_pad || aligned16(p.pad));
        const int optin = device_smem_optin();
        const cuda::attn::BwdPlan plan = cuda::attn::attention_bwd_plan<T>(p, optin, attention_bwd_choice(), attention_bwd_chunk());
        const bool fused = plan.path == cuda::attn::BwdPath::kFused;
        const int64_t blocks = static_cast<int64_t>(fused ? plan.n_chunks : plan.n_chunks * plan.n_row_blocks) * g.nW * heads;
        check_attention_launch(blocks, plan.smem, optin, g, d, qkv.scalar_type(),
                               fused ? "the fused backward kernel" : "the dq backward kernel");
        if (!fused) {
          check_attention_launch(g.B * g.nW * heads * plan.n_key_blocks, plan.smem_dkv, optin, g, d,
                                 qkv.scalar_type(), "the dk/dv backward kernel");
        }
        // Workspaces: every element is written by the kernels.
        at::Tensor dbias_part = Backend::output({plan.dbias_part_elems}, acc_opts);
        at::Tensor dpad_part = Backend::output({plan.dpad_slots, 2 * C}, acc_opts);
        at::Tensor dbuf = Backend::output({plan.dbuf_elems}, acc_opts);
        p.dbias_part = dbias_part.mutable_data_ptr();
        p.dpad_part = plan.dpad_slots ? dpad_part.mutable_data_ptr() : nullptr;
        p.Dbuf = plan.dbuf_elems ? dbuf.mutable_data_ptr() : nullptr;
        check_attention_status(cuda::attn::attention_bwd_run<T>(p, plan, stream), "the backward launch");
        Backend::check_launch();
        // Partials reduced over fixed shapes: bitwise reproducible run to run.
        dbias = dbias_part.view({-1, heads, g.N, g.N}).sum(0);
        // The q part of the padding vector's gradient is zero: padding queries have dO = 0.
        dpad = plan.dpad_slots ? at::cat({at::zeros({C}, acc_opts), dpad_part.sum(0)}) : at::zeros({C3}, acc_opts);
      });
  return {dqkv, dbias, dpad};
}

// The merging kernels index pixels and channels in 32 bits.
inline void check_merging_limits(int64_t B, int64_t H, int64_t W, int64_t C) {
  constexpr int64_t kMax32 = (int64_t(1) << 31) - 1;
  TORCH_CHECK(B * H * W <= kMax32 && 4 * C <= kMax32 && B * ((H + 1) / 2) * ((W + 1) / 2) <= kMax32,
              "swin_ext.patch_merging (CUDA): input (", B, ", ", H, ", ", W, ", ", C,
              ") exceeds the kernels' 32-bit pixel indexing");
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd(const at::Tensor& x_in,
                                                                 const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in,
                                                                 double eps) {
  check_merging_args(x_in, weight_in, bias_in);
  check_merging_eps(eps);
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
  check_merging_limits(B, H, W, C);
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
  at::Tensor dx = Backend::output(x.sizes(), x.options());
  if (B * ((H + 1) / 2) * ((W + 1) / 2) == 0 || C == 0) {
    return {dx.zero_(), at::zeros({4 * C}, weight.options()), at::zeros({4 * C}, weight.options())};
  }
  check_merging_limits(B, H, W, C);
  const size_t acc_size = x.scalar_type() == at::kDouble ? sizeof(double) : sizeof(float);
  const int nwarps = cuda::merge_bwd_warps(4 * C, acc_size);
  TORCH_CHECK(nwarps > 0, "swin_ext.patch_merging (CUDA): C = ", C, " is too large for the backward kernel (",
              "its per-block weight/bias accumulators of 2 * 4C values exceed ", cuda::kMergeBwdMaxSmem,
              " bytes of shared memory)");
  const int64_t nparts = cuda::merge_num_partials(B, H, W, nwarps);
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
                                             nwarps, stream);
        Backend::check_launch();
      });
  // Partials reduced over a fixed shape: bitwise reproducible run to run.
  return {dx, dw_part.sum(0), db_part.sum(0)};
}

}  // namespace cuda_glue
}  // namespace swin_ext

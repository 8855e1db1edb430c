// ATen glue of the CUDA kernels: argument checks, dtype dispatch, allocation
// of outputs and workspaces, the launch, and the deterministic reduction of
// the partials.  Written once, instantiated twice:
//   * ops_cuda.cu:  Backend = CudaBackend, for CUDA tensors (swin_ext::*);
//   * the CPU execution harness's glue:  Backend = HarnessBackend, for CPU
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
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../checks.h"
#include "add_layernorm.cuh"
#include "bias_gelu.cuh"
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

// Swin V2's per-head scale: (heads,) in the accumulation dtype, on qkv's device.
inline void check_head_scale(const at::Tensor& head_scale, const at::Tensor& qkv, int64_t heads) {
  const auto acc = acc_type_of(qkv.scalar_type());
  TORCH_CHECK(head_scale.dim() == 1 && head_scale.size(0) == heads && head_scale.scalar_type() == acc,
              "swin_ext.window_attention_v2: head_scale must be ", acc, " (", heads, ",), got ",
              head_scale.scalar_type(), " ", head_scale.sizes());
  check_same_device(qkv, head_scale, "qkv", "head_scale");
}

// The forward of both attention ops: V1 (head_scale undefined) and Swin V2's
// cosine attention (q, k L2-normalised, q times head_scale, scale 1).
template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_fwd_impl(const at::Tensor& qkv_in,
                                                             const at::Tensor& bias_in,
                                                             const std::optional<at::Tensor>& qkv_pad,
                                                             const at::Tensor& head_scale_in,
                                                             int64_t window_size, int64_t shift_h,
                                                             int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  check_attention_scale(scale);
  const bool v2 = head_scale_in.defined();
  if (v2) check_head_scale(head_scale_in, qkv_in, bias_in.size(0));
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const at::Tensor head_scale = v2 ? head_scale_in.contiguous() : at::Tensor();
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
        p.qk_norm = v2;
        p.head_scale = v2 ? head_scale.const_data_ptr() : nullptr;
        p.vec = p.vec && aligned16(p.qkv) && aligned16(p.out) && (!has_pad || aligned16(p.pad));
        const cuda::attn::FwdPlan plan = cuda::attn::attention_fwd_plan<T>(p);
        check_attention_launch(plan.blocks, plan.smem, device_smem_optin(), g, d, qkv.scalar_type(), "the forward kernel");
        check_attention_status(cuda::attn::attention_fwd_run<T>(p, plan, stream), "the forward launch");
        Backend::check_launch();
      });
  return {out, lse};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_fwd(const at::Tensor& qkv, const at::Tensor& bias,
                                                        const std::optional<at::Tensor>& qkv_pad,
                                                        int64_t window_size, int64_t shift_h,
                                                        int64_t shift_w, double scale) {
  return window_attention_fwd_impl<Backend>(qkv, bias, qkv_pad, at::Tensor(), window_size, shift_h, shift_w, scale);
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_v2_fwd(const at::Tensor& qkv, const at::Tensor& bias,
                                                           const std::optional<at::Tensor>& qkv_pad,
                                                           const at::Tensor& head_scale, int64_t window_size,
                                                           int64_t shift_h, int64_t shift_w) {
  return window_attention_fwd_impl<Backend>(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w, 1.0);
}

// The backward of both attention ops; dhead_scale is returned (V2) or empty.
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_impl(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& head_scale_in, const at::Tensor& lse_in,
    int64_t window_size, int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  check_attention_scale(scale);
  const bool v2 = head_scale_in.defined();
  if (v2) check_head_scale(head_scale_in, qkv_in, bias_in.size(0));
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
  const at::Tensor head_scale = v2 ? head_scale_in.contiguous() : at::Tensor();
  const auto acc_opts = bias.options();

  at::Tensor dqkv = Backend::output(qkv.sizes(), qkv.options());
  if (qkv.numel() == 0) {
    return {dqkv, at::zeros({heads, g.N, g.N}, acc_opts), at::zeros({C3}, acc_opts),
            v2 ? at::zeros({heads}, acc_opts) : at::Tensor()};
  }
  check_attention_limits(g, heads, d);
  const cudaStream_t stream = Backend::stream();
  at::Tensor dbias, dpad, dscale;
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
        p.qk_norm = v2;
        p.head_scale = v2 ? head_scale.const_data_ptr() : nullptr;
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
        const int64_t dscale_slots = !v2 ? 0 : (fused ? plan.n_chunks : plan.n_chunks * plan.n_row_blocks) * g.nW;
        at::Tensor dscale_part = Backend::output({dscale_slots, heads}, acc_opts);
        p.dscale_part = v2 ? dscale_part.mutable_data_ptr() : nullptr;
        p.dbias_part = dbias_part.mutable_data_ptr();
        p.dpad_part = plan.dpad_slots ? dpad_part.mutable_data_ptr() : nullptr;
        p.Dbuf = plan.dbuf_elems ? dbuf.mutable_data_ptr() : nullptr;
        check_attention_status(cuda::attn::attention_bwd_run<T>(p, plan, stream), "the backward launch");
        Backend::check_launch();
        // Partials reduced over fixed shapes: bitwise reproducible run to run.
        dbias = dbias_part.view({-1, heads, g.N, g.N}).sum(0);
        // The q part of the padding vector's gradient is zero: padding queries have dO = 0.
        dpad = plan.dpad_slots ? at::cat({at::zeros({C}, acc_opts), dpad_part.sum(0)}) : at::zeros({C3}, acc_opts);
        if (v2) dscale = dscale_part.sum(0);
      });
  return {dqkv, dbias, dpad, dscale};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse, int64_t window_size,
    int64_t shift_h, int64_t shift_w, double scale) {
  auto r = window_attention_bwd_impl<Backend>(grad_out, qkv, bias, qkv_pad, at::Tensor(), lse, window_size, shift_h,
                                              shift_w, scale);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_v2_bwd(
    const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& head_scale, const at::Tensor& lse,
    int64_t window_size, int64_t shift_h, int64_t shift_w) {
  return window_attention_bwd_impl<Backend>(grad_out, qkv, bias, qkv_pad, head_scale, lse, window_size, shift_h,
                                            shift_w, 1.0);
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


// ------------------------------------------------------------------ add + LayerNorm

// The fused dtype combinations of (x / h, branch, y): one dtype throughout,
// or the autocast mixes of a float32 residual stream with a bf16 / fp16
// branch and output (every other mix runs promoted, see add_layernorm_fwd).
// f.template operator()<TX, TB, TY>() is called with the CUDA types.
template <class F>
void dispatch_add_layernorm(at::ScalarType tx, at::ScalarType tb, at::ScalarType ty, const char* what, F&& f) {
  using at::kBFloat16;
  using at::kDouble;
  using at::kFloat;
  using at::kHalf;
  auto is = [&](at::ScalarType a, at::ScalarType b, at::ScalarType c) { return tx == a && tb == b && ty == c; };
  if (is(kFloat, kFloat, kFloat)) return f.template operator()<float, float, float>();
  if (is(kDouble, kDouble, kDouble)) return f.template operator()<double, double, double>();
  if (is(kHalf, kHalf, kHalf)) return f.template operator()<__half, __half, __half>();
  if (is(kBFloat16, kBFloat16, kBFloat16)) return f.template operator()<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16>();
  if (is(kFloat, kBFloat16, kBFloat16)) return f.template operator()<float, __nv_bfloat16, __nv_bfloat16>();
  if (is(kFloat, kHalf, kHalf)) return f.template operator()<float, __half, __half>();
  if (is(kFloat, kFloat, kBFloat16)) return f.template operator()<float, float, __nv_bfloat16>();
  if (is(kFloat, kFloat, kHalf)) return f.template operator()<float, float, __half>();
  if (is(kFloat, kBFloat16, kFloat)) return f.template operator()<float, __nv_bfloat16, float>();
  if (is(kFloat, kHalf, kFloat)) return f.template operator()<float, __half, float>();
  TORCH_CHECK(false, "swin_ext.add_layernorm (CUDA): ", what, " dtypes (", tx, ", ", tb, ", ", ty,
              ") are not supported: one dtype throughout, or a float32 residual stream with a float16 / "
              "bfloat16 branch or output");
}

// Whether (x / h, branch, y) is one of dispatch_add_layernorm's fused combinations.
inline bool add_layernorm_fused_dtypes(at::ScalarType tx, at::ScalarType tb, at::ScalarType ty) {
  const bool low_b = tb == at::kHalf || tb == at::kBFloat16, low_y = ty == at::kHalf || ty == at::kBFloat16;
  if (tx == tb && tb == ty) return true;
  return tx == at::kFloat && ((low_b && ty == tb) || (tb == at::kFloat && low_y) || (low_b && ty == at::kFloat));
}

// The dtype every other combination runs in: float64 if any is float64, else float32.
inline at::ScalarType add_layernorm_promoted(at::ScalarType tx, at::ScalarType tb, at::ScalarType ty) {
  return (tx == at::kDouble || tb == at::kDouble || ty == at::kDouble) ? at::kDouble : at::kFloat;
}

inline void check_add_layernorm_limits(int64_t rows, int64_t C) {
  constexpr int64_t kMax32 = (int64_t(1) << 31) - 1;
  TORCH_CHECK(rows <= kMax32 && C <= kMax32, "swin_ext.add_layernorm (CUDA): ", rows, " rows of ", C,
              " channels exceed the kernels' 32-bit row indexing");
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_fwd(
    const at::Tensor& x_in, const at::Tensor& branch_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
    double eps, std::optional<at::ScalarType> y_dtype) {
  check_add_layernorm_args(x_in, branch_in, weight_in, bias_in, y_dtype);
  check_layernorm_eps(eps, "swin_ext.add_layernorm");
  Backend::check_device(x_in, "x");
  const at::ScalarType tx = x_in.scalar_type(), ty_req = y_dtype.value_or(tx);
  if (!add_layernorm_fused_dtypes(tx, branch_in.scalar_type(), ty_req)) {
    // Another mix of dtypes (none that autocast makes): h = x + branch summed
    // in the promoted dtype c and stored in x's dtype, as the CPU kernel
    // does, then the fused kernel in c on the stored h (its LayerNorm is that
    // of the tensor h) and y cast once to y_dtype.  Extra passes, same result.
    const at::ScalarType c = add_layernorm_promoted(tx, branch_in.scalar_type(), ty_req);
    const at::Tensor h = (x_in.to(c) + branch_in.to(c)).to(tx);
    const at::Tensor hc = h.to(c);
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    auto [h2, yc, mean, rstd] = add_layernorm_fwd<Backend>(hc, at::zeros_like(hc), weight_in.to(acc), bias_in.to(acc),
                                                          eps, std::nullopt);
    (void)h2;
    const auto stat = weight_in.scalar_type();
    return {h, yc.to(ty_req), mean.to(stat), rstd.to(stat)};
  }
  const typename Backend::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), branch = branch_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  const at::ScalarType ty = y_dtype.value_or(x.scalar_type());
  at::Tensor h = Backend::output(x.sizes(), x.options());
  at::Tensor y = Backend::output(x.sizes(), x.options().dtype(ty));
  const auto stat_sizes = x.sizes().slice(0, x.dim() - 1);
  at::Tensor mean = Backend::output(stat_sizes, weight.options());
  at::Tensor rstd = Backend::output(stat_sizes, weight.options());
  if (rows == 0) return {h, y, mean, rstd};
  check_add_layernorm_limits(rows, C);
  const cudaStream_t stream = Backend::stream();
  dispatch_add_layernorm(x.scalar_type(), branch.scalar_type(), ty, "forward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    cuda::launch_add_layernorm_fwd<TX, TB, TY, A>(ptr<TX>(x), ptr<TB>(branch), ptr<A>(weight), ptr<A>(bias),
                                                  mut_ptr<TX>(h), mut_ptr<TY>(y), mut_ptr<A>(mean), mut_ptr<A>(rstd),
                                                  rows, C, eps, stream);
    Backend::check_launch();
  });
  return {h, y, mean, rstd};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_bwd(
    const std::optional<at::Tensor>& grad_h_in, const at::Tensor& grad_y_in, const at::Tensor& h_in,
    const at::Tensor& weight_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    std::optional<at::ScalarType> branch_dtype) {
  check_add_layernorm_bwd_args(grad_h_in, grad_y_in, h_in, weight_in, mean_in, rstd_in, branch_dtype);
  Backend::check_device(h_in, "h");
  const at::ScalarType th = h_in.scalar_type(), tb_req = branch_dtype.value_or(th);
  if (!add_layernorm_fused_dtypes(th, tb_req, grad_y_in.scalar_type())) {
    // Another mix of dtypes (see the forward): the fused kernel in the promoted dtype, cast back once.
    const at::ScalarType c = add_layernorm_promoted(th, tb_req, grad_y_in.scalar_type());
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    std::optional<at::Tensor> gh;
    if (grad_h_in.has_value()) gh = grad_h_in->to(c);
    auto [dhc, unused, dw, db] = add_layernorm_bwd<Backend>(gh, grad_y_in.to(c), h_in.to(c), weight_in.to(acc),
                                                            mean_in.to(acc), rstd_in.to(acc), std::nullopt);
    (void)unused;
    const auto stat = weight_in.scalar_type();
    at::Tensor dbranch = branch_dtype.has_value() ? dhc.to(*branch_dtype) : at::empty({0}, h_in.options());
    return {dhc.to(th), dbranch, dw.to(stat), db.to(stat)};
  }
  const typename Backend::Guard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), grad_y = grad_y_in.contiguous();
  const at::Tensor grad_h = grad_h_in.has_value() ? grad_h_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous(), mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const int64_t C = h.size(-1), rows = C ? h.numel() / C : 0;
  at::Tensor dh = Backend::output(h.sizes(), h.options());
  at::Tensor dbranch = branch_dtype.has_value() ? Backend::output(h.sizes(), h.options().dtype(*branch_dtype))
                                                : at::empty({0}, h.options());
  if (rows == 0) {
    return {dh, dbranch, at::zeros({C}, weight.options()), at::zeros({C}, weight.options())};
  }
  check_add_layernorm_limits(rows, C);
  const size_t acc_size = h.scalar_type() == at::kDouble ? sizeof(double) : sizeof(float);
  const int nwarps = cuda::add_ln_bwd_warps(C, acc_size);
  TORCH_CHECK(nwarps > 0, "swin_ext.add_layernorm (CUDA): C = ", C, " is too large for the backward kernel (its ",
              "per-block weight/bias accumulators of 2C values exceed ", cuda::kAddLnBwdMaxSmem, " bytes of shared memory)");
  const int64_t nparts = cuda::add_ln_num_partials(rows, nwarps);
  at::Tensor dw_part = Backend::output({nparts, C}, weight.options());
  at::Tensor db_part = Backend::output({nparts, C}, weight.options());
  const cudaStream_t stream = Backend::stream();
  const at::ScalarType tb = branch_dtype.value_or(h.scalar_type());
  dispatch_add_layernorm(h.scalar_type(), tb, grad_y.scalar_type(), "backward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    cuda::launch_add_layernorm_bwd<TX, TB, TY, A>(
        grad_h.defined() ? ptr<TX>(grad_h) : nullptr, ptr<TY>(grad_y), ptr<TX>(h), ptr<A>(weight), ptr<A>(mean),
        ptr<A>(rstd), mut_ptr<TX>(dh), branch_dtype.has_value() ? mut_ptr<TB>(dbranch) : nullptr,
        mut_ptr<A>(dw_part), mut_ptr<A>(db_part), rows, C, nwarps, stream);
    Backend::check_launch();
  });
  // Partials reduced over a fixed shape: bitwise reproducible run to run.
  return {dh, dbranch, dw_part.sum(0), db_part.sum(0)};
}

// ------------------------------------------------------------------ bias + GELU

inline void check_bias_gelu_limits(int64_t K) {
  constexpr int64_t kMax32 = (int64_t(1) << 31) - 1;
  TORCH_CHECK(K <= kMax32, "swin_ext.bias_gelu (CUDA): K = ", K, " exceeds the kernels' 32-bit column indexing");
}

template <class Backend>
at::Tensor bias_gelu_fwd(const at::Tensor& z_in, const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_args(z_in, bias_in);
  Backend::check_device(z_in, "z");
  const typename Backend::Guard guard(z_in.device());
  const at::Tensor z = z_in.contiguous(), bias = bias_in.contiguous();
  const int64_t rows = z.numel() / K;
  at::Tensor y = Backend::output(z.sizes(), z.options());
  if (rows == 0) return y;
  check_bias_gelu_limits(K);
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_fwd_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename cuda::AccType<T>::type;
    cuda::launch_bias_gelu_fwd<T, A>(ptr<T>(z), ptr<A>(bias), mut_ptr<T>(y), rows, K, stream);
    Backend::check_launch();
  });
  return y;
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd(const at::Tensor& grad_y_in, const at::Tensor& z_in,
                                                 const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_bwd_args(grad_y_in, z_in, bias_in);
  Backend::check_device(z_in, "z");
  const typename Backend::Guard guard(z_in.device());
  const at::Tensor z = z_in.contiguous(), grad_y = grad_y_in.contiguous(), bias = bias_in.contiguous();
  const int64_t rows = z.numel() / K;
  at::Tensor dz = Backend::output(z.sizes(), z.options());
  if (rows == 0) return {dz, at::zeros({K}, bias.options())};
  check_bias_gelu_limits(K);
  at::Tensor db_part = Backend::output({cuda::bias_gelu_row_chunks(rows), K}, bias.options());
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_bwd_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename cuda::AccType<T>::type;
    cuda::launch_bias_gelu_bwd<T, A>(ptr<T>(grad_y), ptr<T>(z), ptr<A>(bias), mut_ptr<T>(dz), mut_ptr<A>(db_part),
                                     rows, K, stream);
    Backend::check_launch();
  });
  // Partials reduced over a fixed shape: bitwise reproducible run to run.
  return {dz, db_part.sum(0)};
}

// ------------------------------------------------------------------ registration

// The kernels of every op through this glue, for one backend: ops_cuda.cu
// (CUDA tensors) and the harness (CPU tensors) register the same list.
template <class Backend>
void register_kernels(torch::Library& m) {
  m.impl("window_attention_fwd", &window_attention_fwd<Backend>);
  m.impl("window_attention_bwd", &window_attention_bwd<Backend>);
  m.impl("window_attention_v2_fwd", &window_attention_v2_fwd<Backend>);
  m.impl("window_attention_v2_bwd", &window_attention_v2_bwd<Backend>);
  m.impl("patch_merging_fwd", &patch_merging_fwd<Backend>);
  m.impl("patch_merging_bwd", &patch_merging_bwd<Backend>);
  m.impl("add_layernorm_fwd", &add_layernorm_fwd<Backend>);
  m.impl("add_layernorm_bwd", &add_layernorm_bwd<Backend>);
  m.impl("bias_gelu_fwd", &bias_gelu_fwd<Backend>);
  m.impl("bias_gelu_bwd", &bias_gelu_bwd<Backend>);
}

}  // namespace cuda_glue
}  // namespace swin_ext

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
  TORCH_CHECK(g.tokens() <= kMax32 && g.Tp <= kMax32 && g.Hp <= kMax32 && g.Wp <= kMax32 && g.nW <= kMax32 &&
                  g.N <= kMax32 && g.B <= kMax32 && heads * d * 3 <= kMax32,
              "swin_ext.window_attention (CUDA): map ", g.T, "x", g.H, "x", g.W, " (windows ", g.nW,
              ", batch ", g.B, ", channels ", heads * d, ") exceeds the kernels' 32-bit indexing");
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline cuda::attn::AttnParams attention_params(const WindowGeometry& g, int64_t heads, int64_t d,
                                               double scale, size_t elem_size) {
  cuda::attn::AttnParams p;
  const auto i32 = [](int64_t v) { return static_cast<int>(v); };  // check_attention_limits: they fit
  p.g = {i32(g.T),  i32(g.H), i32(g.W),   i32(g.Tp),  i32(g.Hp), i32(g.Wp), i32(g.wt), i32(g.wh),
         i32(g.ww), i32(g.N), i32(g.nWh), i32(g.nWw), i32(g.nW), i32(g.st), i32(g.sh), i32(g.sw)};
  p.g.set_divisors();
  p.B = static_cast<int>(g.B);
  p.heads = static_cast<int>(heads);
  p.d = static_cast<int>(d);
  p.C = static_cast<int>(heads * d);
  p.img_qkv = g.tokens() * 3 * heads * d;
  p.img_out = g.tokens() * heads * d;
  p.scale = scale;
  p.masked = g.shifted();
  p.padded = g.padded();
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

// SWIN_EXT_ATTN_CHUNK=<n> forces the images per block of the backward and of
// the one-tile forward (tests of the multi-image paths on small inputs);
// else a rule of the shape.
inline int attention_chunk() {
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
              " bytes of shared memory per block for window (", g.wt, ", ", g.wh, ", ", g.ww, ") of N = ", g.N,
              " tokens, head_dim ", d, ", dtype ", dtype,
              "; this GPU allows ", optin);
}

// A CUDA launch whose rows cannot move as 16-byte vectors runs the
// kernels' element-by-element path, several times slower: say so once, with
// the reason.
inline void warn_attention_scalar_path(int64_t d, size_t elem_size, bool aligned, const char* op) {
  if ((d * static_cast<int64_t>(elem_size)) % 16 != 0) {
    TORCH_WARN_ONCE("swin_ext.window_attention (CUDA): head_dim ", d, " is not a multiple of ", 16 / elem_size,
                    " elements, so the ", op, " kernels move rows element by element (slow path)");
  } else if (!aligned) {
    TORCH_WARN_ONCE("swin_ext.window_attention (CUDA): a tensor's storage is not 16-byte aligned (an offset view?), "
                    "so the ", op, " kernels move rows element by element (slow path); pass contiguous tensors "
                    "with their own storage");
  }
}

// The vector paths address a row chunk of an image as a 32-bit count of
// 16-byte vectors.
inline void check_attention_image_size(int64_t elems_per_image, size_t elem_size) {
  TORCH_CHECK(elems_per_image * static_cast<int64_t>(elem_size) / 16 < (int64_t(1) << 32) - 1,
              "swin_ext.window_attention (CUDA): one image of qkv holds ", elems_per_image,
              " elements, more than the kernels' 32-bit addressing of 16-byte vectors allows");
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
// g_in: the geometry check_attention_args returned for qkv_in.
template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_fwd_impl(const at::Tensor& qkv_in,
                                                             const at::Tensor& bias_in,
                                                             const std::optional<at::Tensor>& qkv_pad,
                                                             const at::Tensor& head_scale_in,
                                                             const WindowGeometry& g_in, double scale) {
  check_attention_scale(scale);
  const bool v2 = head_scale_in.defined();
  if (v2) check_head_scale(head_scale_in, qkv_in, bias_in.size(0));
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const WindowGeometry& g = g_in;
  const at::Tensor qkv = qkv_in.contiguous().view({g.B * g.T, g.H, g.W, qkv_in.size(-1)});
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const at::Tensor head_scale = v2 ? head_scale_in.contiguous() : at::Tensor();
  const int64_t heads = bias.size(0), C = qkv.size(3) / 3, d = C / heads;
  std::vector<int64_t> out_sizes = attention_map_sizes(g_in, qkv_in);
  out_sizes.push_back(C);
  at::Tensor out = Backend::output({g.B * g.T, g.H, g.W, C}, qkv.options());
  at::Tensor lse =
      Backend::output({g.B, g.nW, heads, g.N}, qkv.options().dtype(acc_type_of(qkv.scalar_type())));
  const std::vector<int64_t> lse_sizes = {g_in.B, g_in.nW, heads, g_in.N};
  if (out.numel() == 0) return {out.view(out_sizes), lse.view(lse_sizes)};
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
        const bool aligned = aligned16(p.qkv) && aligned16(p.out) && (!has_pad || aligned16(p.pad));
        warn_attention_scalar_path(d, sizeof(T), aligned, "forward");
        p.vec = p.vec && aligned;
        check_attention_image_size(p.img_qkv, sizeof(T));
        const cuda::attn::FwdPlan plan = cuda::attn::attention_fwd_plan<T>(p, attention_chunk());
        check_attention_launch(plan.blocks, plan.smem, device_smem_optin(), g, d, qkv.scalar_type(), "the forward kernel");
        check_attention_status(cuda::attn::attention_fwd_run<T>(p, plan, stream),
                               "the forward launch (or raising its shared-memory limit)");
        Backend::check_launch();
      });
  return {out.view(out_sizes), lse.view(lse_sizes)};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_fwd(const at::Tensor& qkv, const at::Tensor& bias,
                                                        const std::optional<at::Tensor>& qkv_pad,
                                                        at::IntArrayRef window_size, at::IntArrayRef shift,
                                                        double scale) {
  const WindowGeometry g = check_attention_args(qkv, bias, qkv_pad, window_size, shift);
  return window_attention_fwd_impl<Backend>(qkv, bias, qkv_pad, at::Tensor(), g, scale);
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_v2_fwd(const at::Tensor& qkv, const at::Tensor& bias,
                                                           const std::optional<at::Tensor>& qkv_pad,
                                                           const at::Tensor& head_scale, int64_t window_size,
                                                           int64_t shift_h, int64_t shift_w) {
  const WindowGeometry g = check_attention_args_2d(qkv, bias, qkv_pad, window_size, shift_h, shift_w);
  return window_attention_fwd_impl<Backend>(qkv, bias, qkv_pad, head_scale, g, 1.0);
}

// The backward of both attention ops; dhead_scale is returned (V2) or empty.
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_impl(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& head_scale_in, const at::Tensor& lse_in,
    const WindowGeometry& g_in, double scale) {
  check_attention_scale(scale);
  const bool v2 = head_scale_in.defined();
  if (v2) check_head_scale(head_scale_in, qkv_in, bias_in.size(0));
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const int64_t heads = bias_in.size(0), C3 = qkv_in.size(-1), C = C3 / 3, d = C / heads;
  check_attention_bwd_args(grad_out_in, qkv_in, lse_in, g_in, heads);
  const WindowGeometry& g = g_in;
  const at::Tensor qkv = qkv_in.contiguous().view({g.B * g.T, g.H, g.W, C3});
  const at::Tensor bias = bias_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous().view({g.B * g.T, g.H, g.W, C});
  const at::Tensor lse = lse_in.contiguous().view({g.B, g.nW, heads, g.N});
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const at::Tensor head_scale = v2 ? head_scale_in.contiguous() : at::Tensor();
  const auto acc_opts = bias.options();

  at::Tensor dqkv = Backend::output(qkv.sizes(), qkv.options());
  if (qkv.numel() == 0) {
    return {dqkv.view(qkv_in.sizes()), at::zeros({heads, g.N, g.N}, acc_opts), at::zeros({C3}, acc_opts),
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
        const bool aligned = aligned16(p.qkv) && aligned16(p.grad_out) && aligned16(p.dqkv) &&
                             (!has_pad || aligned16(p.pad));
        warn_attention_scalar_path(d, sizeof(T), aligned, "backward");
        p.vec = p.vec && aligned;
        p.qk_norm = v2;
        p.head_scale = v2 ? head_scale.const_data_ptr() : nullptr;
        const int optin = device_smem_optin();
        const cuda::attn::BwdPlan plan = cuda::attn::attention_bwd_plan<T>(p, optin, attention_bwd_choice(), attention_chunk());
        const bool two_kernels = plan.smem_dkv > 0;  // the SIMT dq + dk/dv pair
        const int64_t blocks = static_cast<int64_t>(plan.n_chunks) * plan.n_row_blocks * g.nW * heads;
        check_attention_launch(blocks, plan.smem, optin, g, d, qkv.scalar_type(),
                               two_kernels ? "the dq backward kernel" : "the backward kernel");
        if (two_kernels) {
          check_attention_launch(g.B * g.nW * heads * plan.n_key_blocks, plan.smem_dkv, optin, g, d,
                                 qkv.scalar_type(), "the dk/dv backward kernel");
        }
        // Workspaces: every element is written by the kernels.
        at::Tensor dbias_part = Backend::output({plan.dbias_part_elems}, acc_opts);
        at::Tensor dpad_part = Backend::output({plan.dpad_slots, 2 * C}, acc_opts);
        at::Tensor dbuf = Backend::output({plan.dbuf_elems}, acc_opts);
        at::Tensor dscale_part = Backend::output({plan.dscale_slots, heads}, acc_opts);
        at::Tensor out_fwd, drow, dq_ws;
        if (plan.drow_elems) {
          // The key-tiled tensor-core kernels take D = rowsum(dO o O) of the
          // forward's output, recomputed here (the op's schema has no `out`) in
          // float32 from the same rounded inputs: from the bf16 / fp16-rounded
          // output, D would be off by dO . (O - round(O)) in every row, an error
          // that V2's d head_scale sums over every window (twice the
          // composite's error at bf16 under the harness).
          const std::optional<at::Tensor> pad32 =
              has_pad ? std::optional<at::Tensor>(pad.to(at::kFloat)) : std::nullopt;
          out_fwd = std::get<0>(window_attention_fwd_impl<Backend>(qkv_in.to(at::kFloat), bias, pad32, head_scale,
                                                                   g, scale));
          drow = Backend::output({plan.drow_elems}, acc_opts);
          dq_ws = Backend::output({plan.dq_ws_elems}, acc_opts);
          p.out_fwd = out_fwd.const_data_ptr();
          p.Drow = drow.mutable_data_ptr();
          p.dq_ws = plan.dq_ws_elems ? dq_ws.mutable_data_ptr() : nullptr;
          p.vec = p.vec && aligned16(p.out_fwd);
        }
        p.dscale_part = v2 ? dscale_part.mutable_data_ptr() : nullptr;
        p.dbias_part = dbias_part.mutable_data_ptr();
        p.dpad_part = plan.dpad_slots ? dpad_part.mutable_data_ptr() : nullptr;
        p.Dbuf = plan.dbuf_elems ? dbuf.mutable_data_ptr() : nullptr;
        check_attention_status(cuda::attn::attention_bwd_run<T>(p, plan, stream),
                               "the backward launch (or raising its shared-memory limit)");
        Backend::check_launch();
        // Partials reduced over fixed shapes: bitwise reproducible run to run.
        dbias = dbias_part.view({-1, heads, g.N, g.N}).sum(0);
        // The q part of the padding vector's gradient is zero: padding queries have dO = 0.
        dpad = plan.dpad_slots ? at::cat({at::zeros({C}, acc_opts), dpad_part.sum(0)}) : at::zeros({C3}, acc_opts);
        if (v2) dscale = dscale_part.sum(0);
      });
  return {dqkv.view(qkv_in.sizes()), dbias, dpad, dscale};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse, at::IntArrayRef window_size,
    at::IntArrayRef shift, double scale) {
  const WindowGeometry g = check_attention_args(qkv, bias, qkv_pad, window_size, shift);
  auto r = window_attention_bwd_impl<Backend>(grad_out, qkv, bias, qkv_pad, at::Tensor(), lse, g, scale);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_v2_bwd(
    const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& head_scale, const at::Tensor& lse,
    int64_t window_size, int64_t shift_h, int64_t shift_w) {
  const WindowGeometry g = check_attention_args_2d(qkv, bias, qkv_pad, window_size, shift_h, shift_w);
  return window_attention_bwd_impl<Backend>(grad_out, qkv, bias, qkv_pad, head_scale, lse, g, 1.0);
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

// SWIN_EXT_ADD_LN_BLOCKS=<n> sets the register path's target block count
// (tests: several row groups per warp on small inputs); else the default.
inline int64_t add_layernorm_target_blocks() {
  const char* v = std::getenv("SWIN_EXT_ADD_LN_BLOCKS");
  const long n = v == nullptr ? 0 : std::strtol(v, nullptr, 10);
  return n > 0 && n < (1L << 30) ? n : cuda::kAddLnTargetBlocks;
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
    const bool aligned = cuda::add_ln_aligned({x.const_data_ptr(), branch.const_data_ptr(), h.const_data_ptr(),
                                               y.const_data_ptr()});
    const cuda::AddLnPlan plan = cuda::add_ln_plan<TX, TB, TY, A>(rows, C, aligned, false, add_layernorm_target_blocks());
    cuda::launch_add_layernorm_fwd<TX, TB, TY, A>(ptr<TX>(x), ptr<TB>(branch), ptr<A>(weight), ptr<A>(bias),
                                                  mut_ptr<TX>(h), mut_ptr<TY>(y), mut_ptr<A>(mean), mut_ptr<A>(rstd),
                                                  rows, C, eps, plan, stream);
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
  const cudaStream_t stream = Backend::stream();
  const at::ScalarType tb = branch_dtype.value_or(h.scalar_type());
  at::Tensor dw_part, db_part;
  dispatch_add_layernorm(h.scalar_type(), tb, grad_y.scalar_type(), "backward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    const bool aligned = cuda::add_ln_aligned({grad_h.defined() ? grad_h.const_data_ptr() : nullptr,
                                               grad_y.const_data_ptr(), h.const_data_ptr(), dh.const_data_ptr(),
                                               branch_dtype.has_value() ? dbranch.const_data_ptr() : nullptr});
    const cuda::AddLnPlan plan = cuda::add_ln_plan<TX, TB, TY, A>(rows, C, aligned, true, add_layernorm_target_blocks());
    TORCH_CHECK(plan.reg || plan.nwarps > 0, "swin_ext.add_layernorm (CUDA): C = ", C, " is too large for the ",
                "backward kernel (its per-block weight/bias accumulators of 2C values exceed ", cuda::kAddLnBwdMaxSmem,
                " bytes of shared memory)");
    dw_part = Backend::output({plan.partials(), C}, weight.options());
    db_part = Backend::output({plan.partials(), C}, weight.options());
    cuda::launch_add_layernorm_bwd<TX, TB, TY, A>(
        grad_h.defined() ? ptr<TX>(grad_h) : nullptr, ptr<TY>(grad_y), ptr<TX>(h), ptr<A>(weight), ptr<A>(mean),
        ptr<A>(rstd), mut_ptr<TX>(dh), branch_dtype.has_value() ? mut_ptr<TB>(dbranch) : nullptr,
        mut_ptr<A>(dw_part), mut_ptr<A>(db_part), rows, C, plan, stream);
    Backend::check_launch();
  });
  // Partials reduced over a fixed shape: bitwise reproducible run to run.
  return {dh, dbranch, dw_part.sum(0), db_part.sum(0)};
}

// ------------------------------------------------------------------ patch merging

// The merging kernels index pixels and channels in 32 bits.
inline void check_merging_limits(int64_t B, int64_t H, int64_t W, int64_t C) {
  constexpr int64_t kMax32 = (int64_t(1) << 31) - 1;
  TORCH_CHECK(B * H * W <= kMax32 && 4 * C <= kMax32 && B * ((H + 1) / 2) * ((W + 1) / 2) <= kMax32,
              "swin_ext.patch_merging (CUDA): input (", B, ", ", H, ", ", W, ", ", C,
              ") exceeds the kernels' 32-bit pixel indexing");
}

// The dtype the residual add of patch merging runs in (its contract, as
// add_layernorm's): float64 if x or the branch is float64, else float32.
inline at::ScalarType merging_add_dtype(at::ScalarType tx, const std::optional<at::Tensor>& branch) {
  return (tx == at::kDouble || (branch.has_value() && branch->scalar_type() == at::kDouble)) ? at::kDouble
                                                                                              : at::kFloat;
}

// h = x + branch (summed in merging_add_dtype, rounded to x's dtype), or x.
inline at::Tensor merging_h(const at::Tensor& x, const std::optional<at::Tensor>& branch) {
  if (!branch.has_value()) return x;
  const at::ScalarType add = merging_add_dtype(x.scalar_type(), branch);
  return (x.to(add) + branch->to(add)).to(x.scalar_type());
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd(const at::Tensor& x_in, const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in, double eps,
                                                                 const std::optional<at::Tensor>& branch_in,
                                                                 std::optional<at::ScalarType> y_dtype) {
  check_merging_args(x_in, weight_in, bias_in, branch_in, y_dtype);
  check_merging_eps(eps);
  Backend::check_device(x_in, "x");
  const at::ScalarType tx = x_in.scalar_type(), ty = y_dtype.value_or(tx);
  const at::ScalarType tb = branch_in.has_value() ? branch_in->scalar_type() : tx;
  if (!add_layernorm_fused_dtypes(tx, tb, ty)) {
    // Another mix of dtypes (none that autocast makes): h as the contract
    // says, then the fused kernel in the promoted dtype c on it and y cast
    // once to y_dtype (add_layernorm_fwd's fallback).  Extra passes, same result.
    const at::ScalarType c = add_layernorm_promoted(tx, tb, ty);
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    auto [yc, mean, rstd] = patch_merging_fwd<Backend>(merging_h(x_in, branch_in).to(c), weight_in.to(acc),
                                                       bias_in.to(acc), eps, std::nullopt, std::nullopt);
    const auto stat = weight_in.scalar_type();
    return {yc.to(ty), mean.to(stat), rstd.to(stat)};
  }
  const typename Backend::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor branch = branch_in.has_value() ? branch_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2;
  at::Tensor y = Backend::output({B, H2, W2, 4 * C}, x.options().dtype(ty));
  at::Tensor mean = Backend::output({B, H2, W2}, weight.options());
  at::Tensor rstd = Backend::output({B, H2, W2}, weight.options());
  if (y.numel() == 0) return {y, mean, rstd};
  check_merging_limits(B, H, W, C);
  const cudaStream_t stream = Backend::stream();
  const void* bp = branch.defined() ? branch.const_data_ptr() : nullptr;
  dispatch_add_layernorm(tx, tb, ty, "patch_merging forward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    const bool aligned = cuda::merge_aligned({x.const_data_ptr(), bp, y.const_data_ptr(), weight.const_data_ptr(),
                                              bias.const_data_ptr()});
    const cuda::MergePlan plan =
        cuda::merge_plan(B, H, W, C, cuda::merge_vec<TX, TB, TY>(), sizeof(A), aligned, /*backward=*/false);
    cuda::launch_patch_merging_fwd<TX, TB, TY, A>(ptr<TX>(x), static_cast<const TB*>(bp), ptr<A>(weight),
                                                  ptr<A>(bias), mut_ptr<TY>(y), mut_ptr<A>(mean), mut_ptr<A>(rstd),
                                                  B, H, W, C, eps, plan, stream);
    Backend::check_launch();
  });
  return {y, mean, rstd};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_merging_bwd(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, const std::optional<at::Tensor>& branch_in,
    std::optional<at::ScalarType> branch_dtype) {
  check_merging_args(x_in, weight_in, weight_in, branch_in);
  Backend::check_device(x_in, "x");
  check_merging_bwd_args(grad_out_in, x_in, mean_in, rstd_in, branch_dtype);
  const at::ScalarType tx = x_in.scalar_type(), ty = grad_out_in.scalar_type();
  // The kernels' branch dtype is that of the branch read and of dbranch written.
  const at::ScalarType tb = branch_in.has_value() ? branch_in->scalar_type() : branch_dtype.value_or(tx);
  if (!add_layernorm_fused_dtypes(tx, tb, ty) || branch_dtype.value_or(tb) != tb) {
    // Another mix (see the forward): h recomputed as the contract says, the
    // fused kernel in the promoted dtype, dx and dbranch cast back once.
    const at::ScalarType c = add_layernorm_promoted(tx, add_layernorm_promoted(tb, branch_dtype.value_or(tb), ty), ty);
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    auto [dxc, unused, dw, db] = patch_merging_bwd<Backend>(grad_out_in.to(c), merging_h(x_in, branch_in).to(c),
                                                            weight_in.to(acc), mean_in.to(acc), rstd_in.to(acc),
                                                            std::nullopt, std::nullopt);
    (void)unused;
    const auto stat = weight_in.scalar_type();
    at::Tensor dbranch = branch_dtype.has_value() ? dxc.to(*branch_dtype) : at::empty({0}, x_in.options());
    return {dxc.to(tx), dbranch, dw.to(stat), db.to(stat)};
  }
  const typename Backend::Guard guard(x_in.device());
  const int64_t B = x_in.size(0), H = x_in.size(1), W = x_in.size(2), C = x_in.size(3);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor branch = branch_in.has_value() ? branch_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  at::Tensor dx = Backend::output(x.sizes(), x.options());
  at::Tensor dbranch = branch_dtype.has_value() ? Backend::output(x.sizes(), x.options().dtype(*branch_dtype))
                                                : at::empty({0}, x.options());
  if (B * ((H + 1) / 2) * ((W + 1) / 2) == 0 || C == 0) {
    return {dx.zero_(), dbranch.zero_(), at::zeros({4 * C}, weight.options()), at::zeros({4 * C}, weight.options())};
  }
  check_merging_limits(B, H, W, C);
  const size_t acc_size = tx == at::kDouble ? sizeof(double) : sizeof(float);
  const void* bp = branch.defined() ? branch.const_data_ptr() : nullptr;
  void* dbp = branch_dtype.has_value() ? dbranch.mutable_data_ptr() : nullptr;
  const bool aligned = cuda::merge_aligned({grad_out.const_data_ptr(), x.const_data_ptr(), bp, weight.const_data_ptr(),
                                            dx.const_data_ptr(), dbp});
  cuda::MergePlan plan;
  dispatch_add_layernorm(tx, tb, ty, "patch_merging backward", [&]<typename TX, typename TB, typename TY>() {
    plan = cuda::merge_plan(B, H, W, C, cuda::merge_vec<TX, TB, TY>(), acc_size, aligned, /*backward=*/true);
  });
  TORCH_CHECK(plan.reg || plan.nwarps > 0, "swin_ext.patch_merging (CUDA): C = ", C,
              " is too large for the backward kernel (its per-block weight/bias accumulators of 2 * 4C values exceed ",
              cuda::kMergeBwdMaxSmem, " bytes of shared memory)");
  at::Tensor dw_part = Backend::output({plan.blocks, 4 * C}, weight.options());
  at::Tensor db_part = Backend::output({plan.blocks, 4 * C}, weight.options());
  const cudaStream_t stream = Backend::stream();
  dispatch_add_layernorm(tx, tb, ty, "patch_merging backward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    cuda::launch_patch_merging_bwd<TX, TB, TY, A>(ptr<TY>(grad_out), ptr<TX>(x), static_cast<const TB*>(bp),
                                                  ptr<A>(weight), ptr<A>(mean), ptr<A>(rstd), mut_ptr<TX>(dx),
                                                  static_cast<TB*>(dbp), mut_ptr<A>(dw_part), mut_ptr<A>(db_part), B,
                                                  H, W, C, plan, stream);
    Backend::check_launch();
  });
  // Partials reduced over a fixed shape: bitwise reproducible run to run.
  return {dx, dbranch, dw_part.sum(0), db_part.sum(0)};
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
    const cuda::BgPlan plan =
        cuda::bias_gelu_plan<T>(rows, K, cuda::bias_gelu_aligned({z.const_data_ptr(), y.const_data_ptr()}));
    cuda::launch_bias_gelu_fwd<T, A>(ptr<T>(z), ptr<A>(bias), mut_ptr<T>(y), rows, K, plan, stream);
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
  at::Tensor db_part;
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_bwd_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename cuda::AccType<T>::type;
    const cuda::BgPlan plan = cuda::bias_gelu_plan<T>(
        rows, K, cuda::bias_gelu_aligned({grad_y.const_data_ptr(), z.const_data_ptr(), dz.const_data_ptr()}));
    db_part = Backend::output({plan.chunks, K}, bias.options());
    cuda::launch_bias_gelu_bwd<T, A>(ptr<T>(grad_y), ptr<T>(z), ptr<A>(bias), mut_ptr<T>(dz), mut_ptr<A>(db_part),
                                     rows, K, plan, stream);
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

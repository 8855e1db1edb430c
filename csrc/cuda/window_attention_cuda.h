// The ATen glue shared by the two attention ops (window_attention_cuda.cu,
// window_attention_v2_cuda.cu): the kernels' limits, the launch parameters,
// and the forward and backward of both -- V1 (head_scale undefined) and Swin
// V2's cosine attention run the same kernels (a flag).  See cuda_glue.h for
// the Backend.
#pragma once

#include "attention/api.h"
#include "cuda_glue.h"

namespace swin_ext {
namespace cuda_glue {

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

// The table form of the bias (bias_table.h): the expansion's blocks (heads *
// N) and the table's elements (rows * heads) are 32-bit in the kernels.
inline void check_bias_table_limits(const WindowGeometry& g, int64_t heads, int64_t rows) {
  constexpr int64_t kMax32 = (int64_t(1) << 31) - 1;
  TORCH_CHECK(heads * g.N <= kMax32 && rows * heads <= kMax32, "swin_ext.window_attention (CUDA): the relative-position "
              "table (", rows, ", ", heads, ") of window (", g.wt, ", ", g.wh, ", ", g.ww,
              ") exceeds the kernels' 32-bit indexing; pass the gathered (heads, N, N) bias");
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
  p.inv_scale = static_cast<float>(1.0 / scale);  // (scale 0: inf; tile_folds_bias is then false)
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
// debugging); =tile4 takes the tile kernel's four-blocks-per-SM form where it
// exists (V1, head_dim 32, bf16 / fp16: an A/B of gpu_check); =pertile the
// key-tiled kernel's form without the window's tables in shared memory, and
// the streaming forward's likewise (tests: the path of windows too large for
// them); unset or anything else: the fused kernel where it fits.
inline cuda::attn::BwdChoice attention_bwd_choice() {
  const char* v = std::getenv("SWIN_EXT_ATTN_BWD");
  if (v == nullptr) return cuda::attn::BwdChoice::kAuto;
  if (std::strcmp(v, "fused") == 0) return cuda::attn::BwdChoice::kFused;
  if (std::strcmp(v, "streaming") == 0) return cuda::attn::BwdChoice::kStreaming;
  if (std::strcmp(v, "tile4") == 0) return cuda::attn::BwdChoice::kTile4;
  if (std::strcmp(v, "pertile") == 0) return cuda::attn::BwdChoice::kPerTile;
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

// The accumulation type of the kernels of element type T (the bias's type).
template <typename T>
using attention_acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// The table form of the bias for the kernels that read the (heads, N, N)
// bias: the table expanded on the device (bias_table_kernels.cuh).
template <class Backend, typename A>
at::Tensor expand_bias_table(const cuda::attn::AttnParams& p, const at::Tensor& table, cudaStream_t stream) {
  at::Tensor full = Backend::output({p.heads, p.g.N, p.g.N}, table.options());
  check_attention_status(cuda::attn::bias_table_expand<A>(p, table.const_data_ptr(), full.mutable_data_ptr(), stream),
                         "the bias-table expansion launch");
  Backend::check_launch();
  return full;
}

// Their (heads, N, N) bias gradient binned into the table's rows: (rows, heads).
template <class Backend, typename A>
at::Tensor bin_bias_gradient(const cuda::attn::AttnParams& p, const at::Tensor& dfull, cudaStream_t stream) {
  const at::Tensor src = dfull.contiguous();
  at::Tensor dtable = Backend::output({p.bias_rows, p.heads}, dfull.options());
  check_attention_status(cuda::attn::bias_table_bin<A>(p, src.const_data_ptr(), dtable.mutable_data_ptr(), stream),
                         "the bias-table gradient launch");
  Backend::check_launch();
  return dtable;
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
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const WindowGeometry& g = g_in;
  const at::Tensor qkv = qkv_in.contiguous().view({g.B * g.T, g.H, g.W, qkv_in.size(-1)});
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const at::Tensor head_scale = v2 ? head_scale_in.contiguous() : at::Tensor();
  const bool table = bias_is_table(bias);
  const int64_t heads = attention_heads(bias), C = qkv.size(3) / 3, d = C / heads;
  std::vector<int64_t> out_sizes = attention_map_sizes(g_in, qkv_in);
  out_sizes.push_back(C);
  at::Tensor out = Backend::output({g.B * g.T, g.H, g.W, C}, qkv.options());
  at::Tensor lse =
      Backend::output({g.B, g.nW, heads, g.N}, qkv.options().dtype(acc_type_of(qkv.scalar_type())));
  const std::vector<int64_t> lse_sizes = {g_in.B, g_in.nW, heads, g_in.N};
  if (out.numel() == 0) return {out.view(out_sizes), lse.view(lse_sizes)};
  check_attention_limits(g, heads, d);
  if (table) check_bias_table_limits(g, heads, bias.size(0));
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_fwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        cuda::attn::AttnParams p = attention_params(g, heads, d, scale, sizeof(T));
        p.qkv = qkv.const_data_ptr();
        p.bias = bias.const_data_ptr();
        p.bias_table = table;
        p.bias_rows = table ? static_cast<int>(bias.size(0)) : 0;
        p.pad = has_pad ? pad.const_data_ptr() : nullptr;
        p.out = out.mutable_data_ptr();
        p.lse_out = lse.mutable_data_ptr();
        p.qk_norm = v2;
        p.head_scale = v2 ? head_scale.const_data_ptr() : nullptr;
        const bool aligned = aligned16(p.qkv) && aligned16(p.out) && (!has_pad || aligned16(p.pad));
        warn_attention_scalar_path(d, sizeof(T), aligned, "forward");
        p.vec = p.vec && aligned;
        check_attention_image_size(p.img_qkv, sizeof(T));
        const cuda::attn::FwdPlan plan = cuda::attn::attention_fwd_plan<T>(
            p, attention_chunk(), attention_bwd_choice() == cuda::attn::BwdChoice::kPerTile,
            static_cast<int>(device_sm_count()));
        check_attention_launch(plan.blocks, plan.smem, device_smem_optin(), g, d, qkv.scalar_type(), "the forward kernel");
        at::Tensor bias_full;  // the table expanded for a kernel without a table read
        if (plan.bias_expanded) {
          bias_full = expand_bias_table<Backend, attention_acc_t<scalar_t>>(p, bias, stream);
          p.bias = bias_full.const_data_ptr();
          p.bias_table = false;
        }
        check_attention_status(cuda::attn::attention_fwd_run<T>(p, plan, stream),
                               "the forward launch (or raising its shared-memory limit)");
        Backend::check_launch();
      });
  return {out.view(out_sizes), lse.view(lse_sizes)};
}

// The backward of both attention ops; dhead_scale is returned (V2) or empty.
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_impl(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& head_scale_in, const at::Tensor& lse_in,
    const WindowGeometry& g_in, double scale) {
  check_attention_scale(scale);
  const bool v2 = head_scale_in.defined();
  Backend::check_device(qkv_in, "qkv");
  const typename Backend::Guard guard(qkv_in.device());
  const bool table = bias_is_table(bias_in);
  const int64_t heads = attention_heads(bias_in), C3 = qkv_in.size(-1), C = C3 / 3, d = C / heads;
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
    // dbias in bias's form: the table's gradient, or the (heads, N, N) one.
    return {dqkv.view(qkv_in.sizes()), at::zeros(bias.sizes(), acc_opts), at::zeros({C3}, acc_opts),
            v2 ? at::zeros({heads}, acc_opts) : at::Tensor()};
  }
  check_attention_limits(g, heads, d);
  if (table) check_bias_table_limits(g, heads, bias.size(0));
  const cudaStream_t stream = Backend::stream();
  at::Tensor dbias, dpad, dscale;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_bwd_cuda", [&] {
        using T = cuda_t<scalar_t>;
        cuda::attn::AttnParams p = attention_params(g, heads, d, scale, sizeof(T));
        p.qkv = qkv.const_data_ptr();
        p.bias = bias.const_data_ptr();
        p.bias_table = table;
        p.bias_rows = table ? static_cast<int>(bias.size(0)) : 0;
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
        // The bias the kernels read: the table (the tile kernel reads it and
        // bins its gradient), else the (heads, N, N) bias, expanded from a table.
        at::Tensor bias_k = bias;
        if (plan.bias_expanded) {
          bias_k = expand_bias_table<Backend, attention_acc_t<scalar_t>>(p, bias, stream);
          p.bias = bias_k.const_data_ptr();
          p.bias_table = false;
        }
        // Workspaces: every element is written by the kernels.
        at::Tensor dbias_part = Backend::output({plan.dbias_part_elems}, acc_opts);
        at::Tensor dpad_part = Backend::output({plan.dpad_slots, 2 * C}, acc_opts);
        at::Tensor dbuf = Backend::output({plan.dbuf_elems}, acc_opts);
        at::Tensor dscale_part = Backend::output({plan.dscale_slots, heads}, acc_opts);
        at::Tensor drow, dq_ws, dbias_ws;
        if (plan.drow_elems) {  // the key-tiled kernel's scratch: D of its rows, dQ (where not in shared memory)
          drow = Backend::output({plan.drow_elems}, acc_opts);
          dq_ws = Backend::output({plan.dq_ws_elems}, acc_opts);
          p.Drow = drow.mutable_data_ptr();
          p.dq_ws = plan.dq_ws_elems ? dq_ws.mutable_data_ptr() : nullptr;
        }
        if (plan.dbias_ws_elems) {  // (and its bias gradient's sums before the binning)
          dbias_ws = Backend::output({plan.dbias_ws_elems}, acc_opts);
          p.dbias_ws = dbias_ws.mutable_data_ptr();
        }
        p.dscale_part = v2 ? dscale_part.mutable_data_ptr() : nullptr;
        p.dbias_part = dbias_part.mutable_data_ptr();
        p.dpad_part = plan.dpad_slots ? dpad_part.mutable_data_ptr() : nullptr;
        p.Dbuf = plan.dbuf_elems ? dbuf.mutable_data_ptr() : nullptr;
        check_attention_status(cuda::attn::attention_bwd_run<T>(p, plan, stream),
                               "the backward launch (or raising its shared-memory limit)");
        Backend::check_launch();
        // Partials reduced over fixed shapes: bitwise reproducible run to run.
        if (plan.dbias_binned) {  // (chunks, windows, heads, rows) partials of the table's gradient
          // Summed straight into the table's (rows, heads) layout: one launch, no transposing copy.
          dbias = Backend::output({p.bias_rows, heads}, acc_opts);
          at::Tensor dbias_t = dbias.t();
          at::sum_out(dbias_t, dbias_part.view({-1, heads, p.bias_rows}), at::IntArrayRef{0});
        } else {
          dbias = dbias_part.view({-1, heads, g.N, g.N}).sum(0);
          if (table) dbias = bin_bias_gradient<Backend, attention_acc_t<scalar_t>>(p, dbias, stream);
        }
        // The q part of the padding vector's gradient is zero: padding queries have dO = 0.
        if (plan.dpad_slots) {
          dpad = Backend::output({C3}, acc_opts);
          dpad.narrow(0, 0, C).zero_();
          at::Tensor dpad_kv = dpad.narrow(0, C, 2 * C);
          at::sum_out(dpad_kv, dpad_part, at::IntArrayRef{0});
        } else {
          dpad = at::zeros({C3}, acc_opts);
        }
        if (v2) dscale = dscale_part.sum(0);
      });
  return {dqkv.view(qkv_in.sizes()), dbias, dpad, dscale};
}

}  // namespace cuda_glue
}  // namespace swin_ext

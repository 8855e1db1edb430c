// The schema of every swin_ext operator, and define_ops(), the one list of
// them: csrc/ops.cpp defines them under torch.ops.swin_ext and the test-only
// harness library the same ones under swin_ext_harness, so the two cannot
// drift apart.  A new op is one schema string here and one line in
// define_ops(); its kernels register with TORCH_LIBRARY_IMPL.
#pragma once

#include <torch/library.h>

namespace swin_ext {
namespace schema {

// Fused shifted-window attention, on 2-D maps (Swin) and 3-D maps (Video Swin).
//   qkv     (B, H, W, 3C)     token-major output of the qkv Linear, or
//           (B, T, H, W, 3C)  a clip of T frames
//   bias    (heads, N, N)     relative-position bias, N = the window's token
//                             count, dtype float32 (float64 when qkv is float64),
//           or (rows, heads)  the relative-position table, read through the
//                             standard index of the window (bias_table.h)
//   qkv_pad (3C,) or None     the qkv vector of padding tokens (the Linear's
//                             bias: the map is zero-padded before the Linear)
//   window_size, shift        one entry per map axis: (wh, ww) and (sh, sw),
//                             or (wt, wh, ww) and (st, sh, sw); 0 <= s < w
// returns out (B, [T,] H, W, C) and lse (B, nW, heads, N) in the accumulation
// dtype (nW windows per image, in (T, H, W) row-major order).
constexpr const char* kWindowAttentionFwd =
    "window_attention_fwd(Tensor qkv, Tensor bias, Tensor? qkv_pad, int[] window_size, "
    "int[] shift, float scale) -> (Tensor, Tensor)";
// returns dqkv (qkv's shape), dbias (bias's shape: (heads, N, N) or the
// table's (rows, heads), each row summed in a fixed order) and dqkv_pad
// (3C,), the last two in the accumulation dtype.
constexpr const char* kWindowAttentionBwd =
    "window_attention_bwd(Tensor grad_out, Tensor qkv, Tensor bias, Tensor? qkv_pad, "
    "Tensor lse, int[] window_size, int[] shift, float scale) -> (Tensor, Tensor, Tensor)";
// Swin V2's scaled cosine attention on the same kernels: q and k rows are
// L2-normalised (x / max(||x||, 1e-12)) and q is multiplied by head_scale
// (heads,) in the accumulation dtype (the caller's exp(clamp(logit_scale))),
// instead of a scalar scale; otherwise as window_attention_fwd on a 2-D map with a
// square window (window_size, shift_h, shift_w).
constexpr const char* kWindowAttentionV2Fwd =
    "window_attention_v2_fwd(Tensor qkv, Tensor bias, Tensor? qkv_pad, Tensor head_scale, int window_size, "
    "int shift_h, int shift_w) -> (Tensor, Tensor)";
// returns dqkv, dbias, dqkv_pad and dhead_scale (heads,).
constexpr const char* kWindowAttentionV2Bwd =
    "window_attention_v2_bwd(Tensor grad_out, Tensor qkv, Tensor bias, Tensor? qkv_pad, Tensor head_scale, "
    "Tensor lse, int window_size, int shift_h, int shift_w) -> (Tensor, Tensor, Tensor, Tensor)";
// Patch merging (2x2 gather, zero padding of odd sizes) fused with the
// stage's pending residual add and LayerNorm(4C).
//   x (B, H, W, C)      the residual stream (float32/float64/float16/bfloat16)
//   weight/bias (4C,)   in the accumulation dtype of x
//   branch (B, H, W, C) or None: the branch added to x first (any of the four
//                       dtypes; under autocast the bf16/fp16 output of the
//                       stage's last Linear), as add_layernorm_fwd accepts it:
//                       h = x + branch summed in float32 (float64 if either
//                       is float64) and rounded to x's dtype; None: h = x
//   y_dtype             dtype of y (None: x's dtype; under autocast the
//                       autocast dtype, so the reduction Linear needs no cast)
// returns y = LayerNorm(gather(h)) (B, ceil(H/2), ceil(W/2), 4C) in y_dtype,
// mean and rstd (B, H2, W2) in the accumulation dtype.  h is not stored.
constexpr const char* kPatchMergingFwd =
    "patch_merging_fwd(Tensor x, Tensor weight, Tensor bias, float eps, Tensor? branch=None, "
    "ScalarType? y_dtype=None) -> (Tensor, Tensor, Tensor)";
// grad_out (y's dtype); x and branch as given to the forward (h is recomputed
// from them); returns dx (B, H, W, C) in x's dtype, dbranch = the same values
// in branch_dtype (an empty (0,) tensor when branch_dtype is None: the caller
// reuses dx, as add_layernorm_bwd does), and dweight, dbias (4C,) in the
// accumulation dtype, bitwise deterministic.
constexpr const char* kPatchMergingBwd =
    "patch_merging_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor mean, Tensor rstd, "
    "Tensor? branch=None, ScalarType? branch_dtype=None) -> (Tensor, Tensor, Tensor, Tensor)";

// Residual add fused with LayerNorm over the last dim.
//   x, branch (..., C)   the residual stream and the branch added to it; each
//                        float32/float64/float16/bfloat16, the two may differ
//                        (under autocast: float32 stream, bf16 Linear output)
//   weight, bias (C,)    in the accumulation dtype of x (float32, float64 for
//                        float64 x)
//   y_dtype              dtype of y (None: x's dtype)
// returns h = x + branch (summed in float32, float64 if either is float64,
// stored in x's dtype), y = LayerNorm(h) in y_dtype, and mean, rstd (...) in
// the accumulation dtype.
constexpr const char* kAddLayerNormFwd =
    "add_layernorm_fwd(Tensor x, Tensor branch, Tensor weight, Tensor bias, float eps, "
    "ScalarType? y_dtype) -> (Tensor, Tensor, Tensor, Tensor)";
// grad_h (h's dtype, optional: the gradient reaching h from its other uses)
// and grad_y (y's dtype); returns dh = grad_h + LayerNorm-backward(grad_y) in
// h's dtype (the gradient of x), dbranch = the same values in branch_dtype
// (an empty (0,) tensor when branch_dtype is None: the caller reuses dh), and
// dweight, dbias (C,) in the accumulation dtype, bitwise deterministic.
constexpr const char* kAddLayerNormBwd =
    "add_layernorm_bwd(Tensor? grad_h, Tensor grad_y, Tensor h, Tensor weight, Tensor mean, "
    "Tensor rstd, ScalarType? branch_dtype) -> (Tensor, Tensor, Tensor, Tensor)";

// fc1's epilogue: y = GELU(z + bias), the exact (erf) GELU, over the output
// z (..., K) of the bias-free fc1 GEMM; bias (K,) in z's accumulation dtype.
constexpr const char* kBiasGeluFwd = "bias_gelu_fwd(Tensor z, Tensor bias) -> Tensor";
// returns dz = grad_y * GELU'(z + bias) in z's dtype and dbias (K,) = the
// column sums of dz (from float32 values, fixed-order partials).
constexpr const char* kBiasGeluBwd = "bias_gelu_bwd(Tensor grad_y, Tensor z, Tensor bias) -> (Tensor, Tensor)";
// The same with dz written over grad_y (contiguous, sharing no memory with z
// or bias); returns dbias.  The autograd kernel of bias_gelu_fwd calls it when
// the incoming gradient is a CPU tensor that nothing else references (no
// allocation and first touch of a fresh (..., K) map per MLP); on CUDA it is
// bias_gelu_bwd and a copy.
constexpr const char* kBiasGeluBwdInplace = "bias_gelu_bwd_inplace(Tensor(a!) grad_y, Tensor z, Tensor bias) -> Tensor";

// The block Linears' float32 GEMMs on the CPU (csrc/cpu/linear_cpu.cpp; no
// CUDA kernel: on a GPU the model uses cuBLAS through F.linear).
//   x (T, in), weight (out, in), bias (out,) or None: float32 CPU tensors,
//   in and out positive multiples of 16
// returns y = x weight^T + bias (T, out).
constexpr const char* kLinearCpuFwd = "linear_cpu_fwd(Tensor x, Tensor weight, Tensor? bias) -> Tensor";
// returns dx = grad_y weight (T, in) and dweight = grad_y^T x (out, in), each
// an empty (0,) tensor where `needs` is false; bitwise the same for any
// number of threads.  The bias gradient is grad_y's column sum (the caller's).
constexpr const char* kLinearCpuBwd =
    "linear_cpu_bwd(Tensor grad_y, Tensor x, Tensor weight, bool[2] needs) -> (Tensor, Tensor)";
// The transformer MLP's inference forward on the CPU (csrc/cpu/mlp_cpu.cpp; no
// autograd, no CUDA kernel): x (T, in), fc1_weight (hidden, in), fc2_weight
// (out, hidden), biases (hidden,) / (out,) or None, float32 CPU tensors, every
// width a positive multiple of 16; returns y = fc2(GELU(fc1(x))) (T, out),
// exact GELU, bitwise linear_cpu_fwd(bias_gelu_fwd(linear_cpu_fwd(x,
// fc1_weight, None), fc1_bias), fc2_weight, fc2_bias).
constexpr const char* kMlpCpuFwd =
    "mlp_cpu_fwd(Tensor x, Tensor fc1_weight, Tensor? fc1_bias, Tensor fc2_weight, Tensor? fc2_bias) -> Tensor";

// The higher-order backward of each op: the vector-Jacobian product of its
// plain-PyTorch composite (swin_ext/ops/reference.py), differentiable to any
// order.  The C++ autograd kernels (csrc/autograd/) call one when grad mode is
// on in the backward (create_graph=True) or a cotangent carries a forward-mode
// tangent; its CompositeImplicitAutograd kernel is registered from Python, next
// to the op's composite (swin_ext/ops/<op>.py).  Each returns one gradient per
// differentiable input, in order (an empty placeholder where `needs` is false).
// Not public: swin_ext's ops are differentiated through their wrappers.
constexpr const char* kWindowAttentionVjp =
    "window_attention_vjp(Tensor qkv, Tensor bias, Tensor? qkv_pad, Tensor grad_out, int[] window_size, "
    "int[] shift, float scale, bool[3] needs) -> Tensor[]";
constexpr const char* kWindowAttentionV2Vjp =
    "window_attention_v2_vjp(Tensor qkv, Tensor bias, Tensor? qkv_pad, Tensor head_scale, Tensor grad_out, "
    "int window_size, int shift_h, int shift_w, bool[4] needs) -> Tensor[]";
constexpr const char* kPatchMergingVjp =
    "patch_merging_vjp(Tensor x, Tensor weight, Tensor bias, Tensor? branch, Tensor grad_out, float eps, "
    "ScalarType y_dtype, bool[4] needs) -> Tensor[]";
// The LayerNorm of h (add_layernorm's saved output) only: (dh, dweight, dbias).
constexpr const char* kAddLayerNormVjp =
    "add_layernorm_vjp(Tensor h, Tensor weight, Tensor bias, Tensor grad_y, float eps, ScalarType y_dtype, "
    "bool[3] needs) -> Tensor[]";
constexpr const char* kBiasGeluVjp = "bias_gelu_vjp(Tensor z, Tensor bias, Tensor grad_y, bool[2] needs) -> Tensor[]";

// Defines every operator of the list on `m`.
inline void define_ops(torch::Library& m) {
  m.def(kWindowAttentionFwd);
  m.def(kWindowAttentionBwd);
  m.def(kWindowAttentionV2Fwd);
  m.def(kWindowAttentionV2Bwd);
  m.def(kPatchMergingFwd);
  m.def(kPatchMergingBwd);
  m.def(kAddLayerNormFwd);
  m.def(kAddLayerNormBwd);
  m.def(kBiasGeluFwd);
  m.def(kBiasGeluBwd);
  m.def(kBiasGeluBwdInplace);
}

// Defines the higher-order backward operators (swin_ext only: the CUDA harness
// runs the raw kernels, without autograd).
inline void define_vjp_ops(torch::Library& m) {
  m.def(kWindowAttentionVjp);
  m.def(kWindowAttentionV2Vjp);
  m.def(kPatchMergingVjp);
  m.def(kAddLayerNormVjp);
  m.def(kBiasGeluVjp);
}

// Defines the CPU-only operators (swin_ext only: the CUDA harness has no use
// for them).
inline void define_cpu_ops(torch::Library& m) {
  m.def(kLinearCpuFwd);
  m.def(kLinearCpuBwd);
  m.def(kMlpCpuFwd);
}

}  // namespace schema
}  // namespace swin_ext

// Argument checks shared by the CPU and CUDA ATen glue: the one rulebook of
// what an op accepts (shapes, dtypes, devices, limits).  The glue files
// (csrc/cpu/<op>_cpu.cpp, csrc/cuda/<op>_cuda.cu) add only what their
// kernels need beyond it (the CUDA kernels' 32-bit indexing, say).
//
// Every size argument is bounded before any arithmetic is done on it, and
// every derived size (tokens per window, windows, output elements) is
// computed with overflow checks, so no product can wrap around before it
// reaches a kernel.  swin_ext/ops/_validate.py runs the same checks in
// Python (the wrappers and the fake kernels), with the same bounds.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/safe_numerics.h>

#include <cmath>
#include <vector>

#include "bias_table.h"
#include "swin_geometry.h"

namespace swin_ext {

// Largest window side along any axis.
constexpr int64_t kMaxWindowSize = int64_t(1) << 15;
// Largest number of tokens in a window, N = wt * wh * ww (N^2 <= 2^60 bias
// entries per head).  A 2-D window of 7 is N = 49; Video Swin's (8, 7, 7) is
// N = 392.  The CPU kernel takes any N up to this; what the CUDA kernels take
// is checked in their glue (csrc/cuda/window_attention_cuda.h, check_attention_limits).
constexpr int64_t kMaxWindowTokens = int64_t(1) << 30;
// Largest relative-position table (rows) the table form of the bias takes
// (bias_table.h indexes it with int).
constexpr int64_t kMaxInt32Rows = (int64_t(1) << 31) - 1;
// Largest dimension of any tensor argument (B, H, W, channels).  Only a
// tensor without elements (or a meta tensor) can come near it; bounding it
// keeps H + ws, 2 * H2, 4 * C and friends far from int64 overflow.
constexpr int64_t kMaxDim = int64_t(1) << 40;
// Largest patch-merging channel count C (4C <= 2^30; the LayerNorm
// statistics' overflow guard relies on it, see patch_merging_cpu.cpp).
constexpr int64_t kMaxMergeChannels = int64_t(1) << 28;
// Largest add_layernorm channel count C (the LayerNorm statistics' overflow
// guard, see layernorm_cpu.h, needs n <= 2^30 elements per row).
constexpr int64_t kMaxLayerNormChannels = int64_t(1) << 30;

// a * b, or an error naming `what` if the product does not fit in int64.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  TORCH_CHECK(a >= 0 && b >= 0 && !c10::mul_overflows(a, b, &out), "swin_ext: ", what,
              " overflows int64 (", a, " * ", b, ")");
  return out;
}

// ceil(a / b) for a >= 0, b >= 1, without forming a + b - 1.
inline int64_t checked_ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// A dense (strided) tensor: sparse, mkldnn or nested inputs are refused by name.
inline void check_strided(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.layout() == at::kStrided, "swin_ext: ", name,
              " must be a dense (strided) tensor, got layout ", t.layout());
}

// Every dimension of `t` in [0, kMaxDim].
inline void check_dims_bounded(const at::Tensor& t, const char* name) {
  for (int64_t i = 0; i < t.dim(); ++i) {
    TORCH_CHECK(t.size(i) <= kMaxDim, "swin_ext: ", name, " dimension ", i, " is ", t.size(i),
                ", larger than the supported ", kMaxDim);
  }
}

inline void check_float(const at::Tensor& t, const char* name) {
  check_strided(t, name);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()) &&
                  (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                   t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16),
              "swin_ext: ", name, " must be float32, float64, float16 or bfloat16, got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* an,
                              const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "swin_ext: ", an, " is on ", a.device(), " but ", bn,
              " is on ", b.device());
}

// The attention's logit scale: a finite number (the CPU and CUDA glue call it).
inline void check_attention_scale(double scale) {
  TORCH_CHECK(std::isfinite(scale), "swin_ext.window_attention: scale must be finite, got ", scale);
}

// A LayerNorm epsilon: finite and >= 0 (`op` names the operator in the message).
inline void check_layernorm_eps(double eps, const char* op) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
}

// An optional dtype argument of the add_layernorm ops: one of the four floating dtypes.
inline void check_float_dtype(const std::optional<at::ScalarType>& t, const char* op,
                              const char* name) {
  TORCH_CHECK(!t.has_value() || *t == at::kFloat || *t == at::kDouble || *t == at::kHalf ||
                  *t == at::kBFloat16,
              op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", *t);
}

// The channel count of a (..., C) LayerNorm input, checked: rank >= 1,
// 1 <= C <= kMaxLayerNormChannels, every dim bounded, the element count
// representable.
inline int64_t check_layernorm_input(const at::Tensor& t, const char* op, const char* name) {
  check_float(t, name);
  TORCH_CHECK(t.dim() >= 1, op, ": ", name, " must be (..., C) with at least one dim, got a scalar");
  check_dims_bounded(t, name);
  const int64_t C = t.size(-1);
  TORCH_CHECK(C >= 1 && C <= kMaxLayerNormChannels, op, ": the last dim C of ", name,
              " must be in [1, ", kMaxLayerNormChannels, "], got ", C);
  int64_t n = 1;
  for (int64_t i = 0; i < t.dim(); ++i) n = checked_mul(n, t.size(i), "add_layernorm: the element count");
  return C;
}

// Validates the arguments of add_layernorm_fwd; returns C.
inline int64_t check_add_layernorm_args(const at::Tensor& x, const at::Tensor& branch,
                                        const at::Tensor& weight, const at::Tensor& bias,
                                        const std::optional<at::ScalarType>& y_dtype) {
  constexpr const char* op = "swin_ext.add_layernorm";
  const int64_t C = check_layernorm_input(x, op, "x");
  check_float(branch, "branch");
  TORCH_CHECK(branch.sizes() == x.sizes(), op, ": branch must have the shape of x ", x.sizes(),
              ", got ", branch.sizes());
  check_strided(weight, "weight");
  check_strided(bias, "bias");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C && bias.dim() == 1 && bias.size(0) == C, op,
              ": weight and bias must be (", C, ",), got ", weight.sizes(), " and ", bias.sizes());
  const auto acc = acc_type_of(x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == acc && bias.scalar_type() == acc, op, ": weight/bias must be ",
              acc, " for x of dtype ", x.scalar_type(), ", got ", weight.scalar_type(), " and ",
              bias.scalar_type());
  check_float_dtype(y_dtype, op, "y_dtype");
  check_same_device(x, branch, "x", "branch");
  check_same_device(x, weight, "x", "weight");
  check_same_device(x, bias, "x", "bias");
  return C;
}

// Validates the arguments of add_layernorm_bwd; returns C.
inline int64_t check_add_layernorm_bwd_args(const std::optional<at::Tensor>& grad_h,
                                            const at::Tensor& grad_y, const at::Tensor& h,
                                            const at::Tensor& weight, const at::Tensor& mean,
                                            const at::Tensor& rstd,
                                            const std::optional<at::ScalarType>& branch_dtype) {
  constexpr const char* op = "swin_ext.add_layernorm_bwd";
  const int64_t C = check_layernorm_input(h, op, "h");
  check_float(grad_y, "grad_y");
  TORCH_CHECK(grad_y.sizes() == h.sizes(), op, ": grad_y must have the shape of h ", h.sizes(),
              ", got ", grad_y.sizes());
  if (grad_h.has_value()) {
    check_strided(*grad_h, "grad_h");
    TORCH_CHECK(grad_h->sizes() == h.sizes() && grad_h->scalar_type() == h.scalar_type(), op,
                ": grad_h must be ", h.scalar_type(), " ", h.sizes(), ", got ", grad_h->scalar_type(),
                " ", grad_h->sizes());
    check_same_device(h, *grad_h, "h", "grad_h");
  }
  check_strided(weight, "weight");
  const auto acc = acc_type_of(h.scalar_type());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C && weight.scalar_type() == acc, op,
              ": weight must be ", acc, " (", C, ",), got ", weight.scalar_type(), " ",
              weight.sizes());
  const auto rows_shape = h.sizes().slice(0, h.dim() - 1);
  for (const at::Tensor* t : {&mean, &rstd}) {
    check_strided(*t, "mean/rstd");
    TORCH_CHECK(t->sizes() == rows_shape && t->scalar_type() == acc, op, ": mean/rstd must be ", acc,
                " ", rows_shape, ", got ", t->scalar_type(), " ", t->sizes());
  }
  check_float_dtype(branch_dtype, op, "branch_dtype");
  check_same_device(h, grad_y, "h", "grad_y");
  check_same_device(h, weight, "h", "weight");
  check_same_device(h, mean, "h", "mean");
  check_same_device(h, rstd, "h", "rstd");
  return C;
}

// Validates the arguments of bias_gelu_fwd (z (..., K), bias (K,) in z's
// accumulation dtype); returns K.
inline int64_t check_bias_gelu_args(const at::Tensor& z, const at::Tensor& bias) {
  constexpr const char* op = "swin_ext.bias_gelu";
  const int64_t K = check_layernorm_input(z, op, "z");
  check_strided(bias, "bias");
  const auto acc = acc_type_of(z.scalar_type());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == K && bias.scalar_type() == acc, op, ": bias must be ", acc,
              " (", K, ",) for z of dtype ", z.scalar_type(), " and shape ", z.sizes(), ", got ",
              bias.scalar_type(), " ", bias.sizes());
  check_same_device(z, bias, "z", "bias");
  return K;
}

// Validates the arguments of bias_gelu_bwd; returns K.
inline int64_t check_bias_gelu_bwd_args(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias) {
  const int64_t K = check_bias_gelu_args(z, bias);
  check_float(grad_y, "grad_y");
  TORCH_CHECK(grad_y.sizes() == z.sizes() && grad_y.scalar_type() == z.scalar_type(),
              "swin_ext.bias_gelu_bwd: grad_y must be ", z.scalar_type(), " ", z.sizes(), ", got ",
              grad_y.scalar_type(), " ", grad_y.sizes());
  check_same_device(z, grad_y, "z", "grad_y");
  return K;
}

// Validates the arguments of bias_gelu_bwd_inplace (dz is written over grad_y):
// those of bias_gelu_bwd, and grad_y contiguous, sharing no memory with z or bias.
inline int64_t check_bias_gelu_bwd_inplace_args(const at::Tensor& grad_y, const at::Tensor& z,
                                                const at::Tensor& bias) {
  const int64_t K = check_bias_gelu_bwd_args(grad_y, z, bias);
  constexpr const char* op = "swin_ext.bias_gelu_bwd_inplace";
  TORCH_CHECK(grad_y.is_contiguous(), op, ": grad_y is overwritten with dz, so it must be contiguous, got strides ",
              grad_y.strides());
  TORCH_CHECK(at::get_overlap_status(grad_y, z) == at::MemOverlapStatus::No &&
                  at::get_overlap_status(grad_y, bias) == at::MemOverlapStatus::No,
              op, ": grad_y is overwritten with dz, so it must not share memory with z or bias");
  return K;
}

// The attention's `bias` is the gathered (heads, N, N) bias or the
// relative-position table (rows, heads) of bias_table.h.
inline bool bias_is_table(const at::Tensor& bias) { return bias.dim() == 2; }
inline int64_t attention_heads(const at::Tensor& bias) { return bias_is_table(bias) ? bias.size(1) : bias.size(0); }

// Validates the attention arguments and returns the window geometry.
//
// qkv is (B, H, W, 3C) -- a 2-D map, window (wh, ww), shift (sh, sw) -- or
// (B, T, H, W, 3C) -- a 3-D map (video), window (wt, wh, ww), shift
// (st, sh, sw); `window` and `shift` have one entry per map axis.  A 2-D map
// is the 3-D geometry with T = 1, wt = 1, st = 0 (swin_geometry.h).
//
// Limits: every window side in [1, kMaxWindowSize], the window's token count
// N = wt * wh * ww in [1, kMaxWindowTokens] (Video Swin's (8, 7, 7) is
// N = 392; N^2 bias entries per head), 0 <= shift < window on every axis.
inline WindowGeometry check_attention_args(const at::Tensor& qkv, const at::Tensor& bias,
                                           const std::optional<at::Tensor>& qkv_pad,
                                           at::IntArrayRef window, at::IntArrayRef shift) {
  TORCH_CHECK(qkv.dim() == 4 || qkv.dim() == 5,
              "swin_ext.window_attention: qkv must be (B, H, W, 3C) or (B, T, H, W, 3C), got ", qkv.dim(),
              " dims");
  check_float(qkv, "qkv");
  check_dims_bounded(qkv, "qkv");
  check_strided(bias, "bias");
  const int64_t axes = qkv.dim() - 2;
  TORCH_CHECK(static_cast<int64_t>(window.size()) == axes && static_cast<int64_t>(shift.size()) == axes,
              "swin_ext.window_attention: window_size and shift need one entry per map axis (", axes,
              " for qkv of ", qkv.dim(), " dims), got window_size ", window, " and shift ", shift);
  // Bounded before anything is computed from them: the products cannot overflow.
  for (const int64_t w : window) {
    TORCH_CHECK(w >= 1 && w <= kMaxWindowSize, "swin_ext.window_attention: window_size must be in [1, ",
                kMaxWindowSize, "], got ", w);
  }
  for (int64_t i = 0; i < axes; ++i) {
    TORCH_CHECK(shift[i] >= 0 && shift[i] < window[i],
                "swin_ext.window_attention: shift must satisfy 0 <= shift < window_size on every axis, got shift ",
                shift, " for window_size ", window);
  }
  int64_t N = 1;  // <= 2^45 before the check
  for (const int64_t w : window) N *= w;
  TORCH_CHECK(N <= kMaxWindowTokens, "swin_ext.window_attention: a window of ", window, " holds ", N,
              " tokens, more than the supported ", kMaxWindowTokens);
  const int64_t C3 = qkv.size(-1);
  TORCH_CHECK(C3 % 3 == 0, "swin_ext.window_attention: last dim of qkv must be 3*C, got ", C3);
  const int64_t rows = bias_table_rows(axes == 3 ? window[0] : 1, window[axes - 2], window[axes - 1]);
  TORCH_CHECK((bias.dim() == 3 && bias.size(1) == N && bias.size(2) == N) || (bias.dim() == 2 && bias.size(0) == rows),
              "swin_ext.window_attention: bias must be (heads, ", N, ", ", N, ") or the relative-position table (",
              rows, ", heads) for window_size ", window, ", got ", bias.sizes());
  TORCH_CHECK(!bias_is_table(bias) || rows <= kMaxInt32Rows,
              "swin_ext.window_attention: the relative-position table of window_size ", window, " has ", rows,
              " rows, more than the supported ", kMaxInt32Rows, "; pass the gathered (heads, N, N) bias");
  const int64_t heads = attention_heads(bias);
  TORCH_CHECK(heads >= 1 && (C3 / 3) % heads == 0, "swin_ext.window_attention: C = ", C3 / 3,
              " is not divisible by heads = ", heads);
  TORCH_CHECK(bias.scalar_type() == acc_type_of(qkv.scalar_type()),
              "swin_ext.window_attention: bias must be ", acc_type_of(qkv.scalar_type()),
              " for qkv of dtype ", qkv.scalar_type(), ", got ", bias.scalar_type());
  check_same_device(qkv, bias, "qkv", "bias");
  if (qkv_pad.has_value()) {
    const auto& p = *qkv_pad;
    check_strided(p, "qkv_pad");
    TORCH_CHECK(p.dim() == 1 && p.size(0) == C3, "swin_ext.window_attention: qkv_pad must be (",
                C3, ",), got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == qkv.scalar_type(),
                "swin_ext.window_attention: qkv_pad dtype ", p.scalar_type(),
                " differs from qkv dtype ", qkv.scalar_type());
    check_same_device(qkv, p, "qkv", "qkv_pad");
  }
  const bool video = axes == 3;
  const int64_t T = video ? qkv.size(1) : 1, H = qkv.size(axes - 1), W = qkv.size(axes);
  const int64_t wt = video ? window[0] : 1, wh = window[axes - 2], ww = window[axes - 1];
  const int64_t st = video ? shift[0] : 0, sh = shift[axes - 2], sw = shift[axes - 1];
  // Every size make_geometry and the kernels derive, checked for overflow
  // (sizes <= 2^40 and windows <= 2^15, so T + wt cannot wrap).
  const int64_t nW = checked_mul(checked_mul(checked_ceil_div(T, wt), checked_ceil_div(H, wh),
                                             "window_attention: the number of windows"),
                                 checked_ceil_div(W, ww), "window_attention: the number of windows");
  checked_mul(checked_mul(checked_mul(qkv.size(0), nW, "window_attention: B * windows"), heads,
                          "window_attention: B * windows * heads"),
              N, "window_attention: the lse size B * windows * heads * N");
  checked_mul(checked_mul(checked_mul(qkv.size(0), T, "window_attention: B * T"), H, "window_attention: B * T * H"),
              checked_mul(W, C3, "window_attention: W * 3C"), "window_attention: the qkv size");
  return make_geometry(qkv.size(0), T, H, W, wt, wh, ww, st, sh, sw);
}

// The 2-D form (Swin V2's raw ops): qkv (B, H, W, 3C), a square window.
inline WindowGeometry check_attention_args_2d(const at::Tensor& qkv, const at::Tensor& bias,
                                              const std::optional<at::Tensor>& qkv_pad, int64_t window_size,
                                              int64_t shift_h, int64_t shift_w) {
  TORCH_CHECK(qkv.dim() == 4, "swin_ext.window_attention_v2: qkv must be (B, H, W, 3C), got ", qkv.dim(),
              " dims");
  const int64_t window[2] = {window_size, window_size};
  const int64_t shift[2] = {shift_h, shift_w};
  return check_attention_args(qkv, bias, qkv_pad, window, shift);
}

// Swin V2's per-head logit scale (window_attention_v2_*): (heads,) in qkv's
// accumulation dtype, on qkv's device.
inline void check_v2_head_scale(const at::Tensor& head_scale, const at::Tensor& qkv, int64_t heads) {
  const auto acc = acc_type_of(qkv.scalar_type());
  check_strided(head_scale, "head_scale");
  TORCH_CHECK(head_scale.dim() == 1 && head_scale.size(0) == heads && head_scale.scalar_type() == acc,
              "swin_ext.window_attention_v2: head_scale must be ", acc, " (", heads, ",), got ",
              head_scale.scalar_type(), " ", head_scale.sizes());
  check_same_device(qkv, head_scale, "qkv", "head_scale");
}

// The map's own sizes of a geometry: (B, H, W) or (B, T, H, W), as `like` has them.
inline std::vector<int64_t> attention_map_sizes(const WindowGeometry& g, const at::Tensor& like) {
  if (like.dim() == 5) return {g.B, g.T, g.H, g.W};
  return {g.B, g.H, g.W};
}

// Validates the extra arguments of the attention backward.
inline void check_attention_bwd_args(const at::Tensor& grad_out, const at::Tensor& qkv,
                                     const at::Tensor& lse, const WindowGeometry& g,
                                     int64_t heads) {
  check_strided(grad_out, "grad_out");
  check_strided(lse, "lse");
  const int64_t C = qkv.size(-1) / 3;
  std::vector<int64_t> want = attention_map_sizes(g, qkv);
  want.push_back(C);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(want),
              "swin_ext.window_attention_bwd: grad_out must be ", at::IntArrayRef(want), ", got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == qkv.scalar_type(),
              "swin_ext.window_attention_bwd: grad_out dtype ", grad_out.scalar_type(),
              " differs from qkv dtype ", qkv.scalar_type());
  const auto acc = acc_type_of(qkv.scalar_type());
  TORCH_CHECK(lse.dim() == 4 && lse.size(0) == g.B && lse.size(1) == g.nW &&
                  lse.size(2) == heads && lse.size(3) == g.N && lse.scalar_type() == acc,
              "swin_ext.window_attention_bwd: lse must be ", acc, " (", g.B, ", ", g.nW, ", ",
              heads, ", ", g.N, "), got ", lse.scalar_type(), " ", lse.sizes());
  check_same_device(qkv, grad_out, "qkv", "grad_out");
  check_same_device(qkv, lse, "qkv", "lse");
  // The per-window bias-gradient partials (windows, heads, N, N).
  checked_mul(checked_mul(g.nW, heads, "window_attention_bwd: windows * heads"),
              checked_mul(g.N, g.N, "window_attention_bwd: N * N"),
              "window_attention_bwd: the bias-gradient partials windows * heads * N * N");
}

// Validates the arguments of patch_merging_fwd (branch and y_dtype optional).
inline void check_merging_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               const std::optional<at::Tensor>& branch = std::nullopt,
                               const std::optional<at::ScalarType>& y_dtype = std::nullopt) {
  TORCH_CHECK(x.dim() == 4, "swin_ext.patch_merging: x must be (B, H, W, C), got ", x.dim(),
              " dims");
  check_float(x, "x");
  check_dims_bounded(x, "x");
  check_strided(weight, "weight");
  check_strided(bias, "bias");
  TORCH_CHECK(x.size(3) <= kMaxMergeChannels, "swin_ext.patch_merging: C = ", x.size(3),
              " is larger than the supported ", kMaxMergeChannels);
  const int64_t C4 = 4 * x.size(3);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C4 && bias.dim() == 1 && bias.size(0) == C4,
              "swin_ext.patch_merging: weight and bias must be (", C4, ",), got ", weight.sizes(),
              " and ", bias.sizes());
  const auto acc = acc_type_of(x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == acc && bias.scalar_type() == acc,
              "swin_ext.patch_merging: weight/bias must be ", acc, " for x of dtype ",
              x.scalar_type(), ", got ", weight.scalar_type(), " and ", bias.scalar_type());
  check_same_device(x, weight, "x", "weight");
  check_same_device(x, bias, "x", "bias");
  if (branch.has_value()) {
    check_float(*branch, "branch");
    TORCH_CHECK(branch->sizes() == x.sizes(), "swin_ext.patch_merging: branch must have the shape of x ",
                x.sizes(), ", got ", branch->sizes());
    check_same_device(x, *branch, "x", "branch");
  }
  check_float_dtype(y_dtype, "swin_ext.patch_merging", "y_dtype");
  // Output elements B * ceil(H/2) * ceil(W/2) * 4C, checked for overflow.
  checked_mul(checked_mul(checked_mul(x.size(0), checked_ceil_div(x.size(1), 2),
                                      "patch_merging: B * H2"),
                          checked_ceil_div(x.size(2), 2), "patch_merging: B * H2 * W2"),
              C4, "patch_merging: the output size B * H2 * W2 * 4C");
}

// Validates the arguments of patch_merging_bwd: x, weight and branch as the
// forward takes them (the backward has no bias), grad_out in any of the four
// floating dtypes (y's), mean/rstd in the accumulation dtype.
inline void check_merging_bwd_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& mean, const at::Tensor& rstd,
                                   const std::optional<at::Tensor>& branch,
                                   const std::optional<at::ScalarType>& branch_dtype) {
  check_merging_args(x, weight, /*bias=*/weight, branch);
  check_float(grad_out, "grad_out");
  check_strided(mean, "mean");
  check_strided(rstd, "rstd");
  const int64_t B = x.size(0), H2 = checked_ceil_div(x.size(1), 2),
                W2 = checked_ceil_div(x.size(2), 2);
  const int64_t C4 = 4 * x.size(3);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == B && grad_out.size(1) == H2 &&
                  grad_out.size(2) == W2 && grad_out.size(3) == C4,
              "swin_ext.patch_merging_bwd: grad_out must be (", B, ", ", H2, ", ", W2, ", ", C4,
              "), got ", grad_out.sizes());
  const auto acc = acc_type_of(x.scalar_type());
  for (const at::Tensor* t : {&mean, &rstd}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == H2 && t->size(2) == W2 &&
                    t->scalar_type() == acc,
                "swin_ext.patch_merging_bwd: mean/rstd must be ", acc, " (", B, ", ", H2, ", ",
                W2, "), got ", t->scalar_type(), " ", t->sizes());
  }
  check_float_dtype(branch_dtype, "swin_ext.patch_merging_bwd", "branch_dtype");
  check_same_device(x, grad_out, "x", "grad_out");
  check_same_device(x, mean, "x", "mean");
  check_same_device(x, rstd, "x", "rstd");
}

}  // namespace swin_ext

// Argument checks shared by the CPU and CUDA ATen glue.
#pragma once

#include <ATen/ATen.h>

#include "swin_geometry.h"

namespace swin_ext {

inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_float(const at::Tensor& t, const char* name) {
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

// Validates the attention arguments and returns the window geometry.
inline WindowGeometry check_attention_args(const at::Tensor& qkv, const at::Tensor& bias,
                                           const std::optional<at::Tensor>& qkv_pad,
                                           int64_t window_size, int64_t shift_h,
                                           int64_t shift_w) {
  TORCH_CHECK(qkv.dim() == 4, "swin_ext.window_attention: qkv must be (B, H, W, 3C), got ",
              qkv.dim(), " dims");
  check_float(qkv, "qkv");
  TORCH_CHECK(window_size >= 1, "swin_ext.window_attention: window_size must be >= 1, got ",
              window_size);
  TORCH_CHECK(shift_h >= 0 && shift_h < window_size && shift_w >= 0 && shift_w < window_size,
              "swin_ext.window_attention: shift must satisfy 0 <= shift < window_size (",
              window_size, "), got (", shift_h, ", ", shift_w, ")");
  const int64_t C3 = qkv.size(3);
  TORCH_CHECK(C3 % 3 == 0, "swin_ext.window_attention: last dim of qkv must be 3*C, got ", C3);
  const int64_t N = window_size * window_size;
  TORCH_CHECK(bias.dim() == 3 && bias.size(1) == N && bias.size(2) == N,
              "swin_ext.window_attention: bias must be (heads, ", N, ", ", N, "), got ",
              bias.sizes());
  const int64_t heads = bias.size(0);
  TORCH_CHECK(heads >= 1 && (C3 / 3) % heads == 0, "swin_ext.window_attention: C = ", C3 / 3,
              " is not divisible by heads = ", heads);
  TORCH_CHECK(bias.scalar_type() == acc_type_of(qkv.scalar_type()),
              "swin_ext.window_attention: bias must be ", acc_type_of(qkv.scalar_type()),
              " for qkv of dtype ", qkv.scalar_type(), ", got ", bias.scalar_type());
  check_same_device(qkv, bias, "qkv", "bias");
  if (qkv_pad.has_value()) {
    const auto& p = *qkv_pad;
    TORCH_CHECK(p.dim() == 1 && p.size(0) == C3, "swin_ext.window_attention: qkv_pad must be (",
                C3, ",), got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == qkv.scalar_type(),
                "swin_ext.window_attention: qkv_pad dtype ", p.scalar_type(),
                " differs from qkv dtype ", qkv.scalar_type());
    check_same_device(qkv, p, "qkv", "qkv_pad");
  }
  return make_geometry(qkv.size(0), qkv.size(1), qkv.size(2), window_size, shift_h, shift_w);
}

// Validates the extra arguments of the attention backward.
inline void check_attention_bwd_args(const at::Tensor& grad_out, const at::Tensor& qkv,
                                     const at::Tensor& lse, const WindowGeometry& g,
                                     int64_t heads) {
  const int64_t C = qkv.size(3) / 3;
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.B && grad_out.size(1) == g.H &&
                  grad_out.size(2) == g.W && grad_out.size(3) == C,
              "swin_ext.window_attention_bwd: grad_out must be (", g.B, ", ", g.H, ", ", g.W,
              ", ", C, "), got ", grad_out.sizes());
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
}

inline void check_merging_args(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 4, "swin_ext.patch_merging: x must be (B, H, W, C), got ", x.dim(),
              " dims");
  check_float(x, "x");
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
}

// Validates the extra arguments of the patch-merging backward.
inline void check_merging_bwd_args(const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& mean, const at::Tensor& rstd) {
  const int64_t B = x.size(0), H2 = (x.size(1) + 1) / 2, W2 = (x.size(2) + 1) / 2;
  const int64_t C4 = 4 * x.size(3);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == B && grad_out.size(1) == H2 &&
                  grad_out.size(2) == W2 && grad_out.size(3) == C4,
              "swin_ext.patch_merging_bwd: grad_out must be (", B, ", ", H2, ", ", W2, ", ", C4,
              "), got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(),
              "swin_ext.patch_merging_bwd: grad_out dtype ", grad_out.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  const auto acc = acc_type_of(x.scalar_type());
  for (const at::Tensor* t : {&mean, &rstd}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == H2 && t->size(2) == W2 &&
                    t->scalar_type() == acc,
                "swin_ext.patch_merging_bwd: mean/rstd must be ", acc, " (", B, ", ", H2, ", ",
                W2, "), got ", t->scalar_type(), " ", t->sizes());
  }
  check_same_device(x, grad_out, "x", "grad_out");
  check_same_device(x, mean, "x", "mean");
  check_same_device(x, rstd, "x", "rstd");
}

}  // namespace swin_ext

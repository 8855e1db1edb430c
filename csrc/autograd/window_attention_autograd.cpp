// Autograd of swin_ext::window_attention_{fwd,bwd} and window_attention_v2_{fwd,bwd}
// (the contract: autograd_common.h).  The forward saves its inputs and lse; the
// backward recomputes the probabilities from them.
#include "autograd_common.h"

namespace swin_ext {
namespace autograd {
namespace {

using Out2 = std::tuple<at::Tensor, at::Tensor>;
using Out3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Out4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Opt = std::optional<at::Tensor>;

// ----------------------------------------------------------------------------- V1

using FwdSig = Out2(const at::Tensor&, const at::Tensor&, const Opt&, at::IntArrayRef, at::IntArrayRef, double);
using BwdSig = Out3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Opt&, const at::Tensor&,
                    at::IntArrayRef, at::IntArrayRef, double);
using VjpSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const Opt&, const at::Tensor&,
                                       at::IntArrayRef, at::IntArrayRef, double, std::array<bool, 3>);

Out2 call_fwd(const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad, at::IntArrayRef window_size,
              at::IntArrayRef shift, double scale) {
  static auto op = typed_op<FwdSig>("swin_ext::window_attention_fwd");
  return below_autograd(op, qkv, bias, qkv_pad, window_size, shift, scale);
}

Out3 call_bwd(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad,
              const at::Tensor& lse, at::IntArrayRef window_size, at::IntArrayRef shift, double scale) {
  static auto op = typed_op<BwdSig>("swin_ext::window_attention_bwd");
  return below_autograd(op, grad_out, qkv, bias, qkv_pad, lse, window_size, shift, scale);
}

}  // namespace

// Inputs qkv, bias, qkv_pad (mask bits 0-2); outputs out, lse (not differentiable).
class WindowAttentionFunction : public torch::autograd::Function<WindowAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv, const at::Tensor& bias,
                               const Opt& qkv_pad, at::IntArrayRef window_size, at::IntArrayRef shift, double scale) {
    auto [out, lse] = call_fwd(qkv, bias, qkv_pad, window_size, shift, scale);
    ctx->mark_non_differentiable({lse});
    ctx->save_for_backward({qkv, bias, qkv_pad.value_or(at::Tensor()), lse});
    ctx->saved_data["needs"] = grad_mask(qkv, bias, qkv_pad);
    ctx->saved_data["window_size"] = window_size.vec();
    ctx->saved_data["shift"] = shift.vec();
    ctx->saved_data["scale"] = scale;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &qkv = saved[0], &bias = saved[1], &qkv_pad = saved[2], &lse = saved[3];
    const std::vector<int64_t> window = ctx->saved_data["window_size"].toIntVector();
    const std::vector<int64_t> shift = ctx->saved_data["shift"].toIntVector();
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor& grad_out = grads[0];
    at::Tensor dqkv, dbias, dpad;
    if (higher_order(grad_out)) {
      static auto vjp = typed_op<VjpSig>("swin_ext::window_attention_vjp");
      const std::array<bool, 3> need{needs(ctx, 0), needs(ctx, 1), needs(ctx, 2)};
      auto g = needed(vjp.call(qkv, bias, opt(qkv_pad), grad_out, window, shift, scale, need), need);
      dqkv = g[0], dbias = g[1], dpad = g[2];
    } else {
      std::tie(dqkv, dbias, dpad) = call_bwd(grad_out, qkv, bias, opt(qkv_pad), lse, window, shift, scale);
      dpad = qkv_pad.defined() ? dpad.to(qkv.scalar_type()) : at::Tensor();
    }
    return {dqkv, dbias, dpad, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

namespace {

Out2 fwd_autograd(const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad, at::IntArrayRef window_size,
                  at::IntArrayRef shift, double scale) {
  check_forward_call("window_attention", qkv, bias, qkv_pad);
  if (!records(qkv, bias, qkv_pad)) return call_fwd(qkv, bias, qkv_pad, window_size, shift, scale);
  auto out = WindowAttentionFunction::apply(qkv, bias, qkv_pad, window_size, shift, scale);
  return {out[0], out[1]};
}

Out3 bwd_autograd(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad,
                  const at::Tensor& lse, at::IntArrayRef window_size, at::IntArrayRef shift, double scale) {
  check_backward_call("window_attention", grad_out, qkv, bias, qkv_pad, lse);
  return call_bwd(grad_out, qkv, bias, qkv_pad, lse, window_size, shift, scale);
}

// ----------------------------------------------------------------------------- V2

using V2FwdSig = Out2(const at::Tensor&, const at::Tensor&, const Opt&, const at::Tensor&, int64_t, int64_t, int64_t);
using V2BwdSig = Out4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Opt&, const at::Tensor&,
                      const at::Tensor&, int64_t, int64_t, int64_t);
using V2VjpSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const Opt&, const at::Tensor&,
                                         const at::Tensor&, int64_t, int64_t, int64_t, std::array<bool, 4>);

Out2 call_v2_fwd(const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad, const at::Tensor& head_scale,
                 int64_t window_size, int64_t shift_h, int64_t shift_w) {
  static auto op = typed_op<V2FwdSig>("swin_ext::window_attention_v2_fwd");
  return below_autograd(op, qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w);
}

Out4 call_v2_bwd(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad,
                 const at::Tensor& head_scale, const at::Tensor& lse, int64_t window_size, int64_t shift_h,
                 int64_t shift_w) {
  static auto op = typed_op<V2BwdSig>("swin_ext::window_attention_v2_bwd");
  return below_autograd(op, grad_out, qkv, bias, qkv_pad, head_scale, lse, window_size, shift_h, shift_w);
}

}  // namespace

// Inputs qkv, bias, qkv_pad, head_scale (mask bits 0-3); outputs out, lse (not differentiable).
class WindowAttentionV2Function : public torch::autograd::Function<WindowAttentionV2Function> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv, const at::Tensor& bias,
                               const Opt& qkv_pad, const at::Tensor& head_scale, int64_t window_size,
                               int64_t shift_h, int64_t shift_w) {
    auto [out, lse] = call_v2_fwd(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w);
    ctx->mark_non_differentiable({lse});
    ctx->save_for_backward({qkv, bias, qkv_pad.value_or(at::Tensor()), head_scale, lse});
    ctx->saved_data["needs"] = grad_mask(qkv, bias, qkv_pad, head_scale);
    ctx->saved_data["window_size"] = window_size;
    ctx->saved_data["shift_h"] = shift_h;
    ctx->saved_data["shift_w"] = shift_w;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &qkv = saved[0], &bias = saved[1], &qkv_pad = saved[2], &head_scale = saved[3];
    const at::Tensor& lse = saved[4];
    const int64_t ws = ctx->saved_data["window_size"].toInt();
    const int64_t sh = ctx->saved_data["shift_h"].toInt(), sw = ctx->saved_data["shift_w"].toInt();
    const at::Tensor& grad_out = grads[0];
    at::Tensor dqkv, dbias, dpad, dscale;
    if (higher_order(grad_out)) {
      static auto vjp = typed_op<V2VjpSig>("swin_ext::window_attention_v2_vjp");
      const std::array<bool, 4> need{needs(ctx, 0), needs(ctx, 1), needs(ctx, 2), needs(ctx, 3)};
      auto g = needed(vjp.call(qkv, bias, opt(qkv_pad), head_scale, grad_out, ws, sh, sw, need), need);
      dqkv = g[0], dbias = g[1], dpad = g[2], dscale = g[3];
    } else {
      std::tie(dqkv, dbias, dpad, dscale) = call_v2_bwd(grad_out, qkv, bias, opt(qkv_pad), head_scale, lse, ws, sh, sw);
      dpad = qkv_pad.defined() ? dpad.to(qkv.scalar_type()) : at::Tensor();
    }
    return {dqkv, dbias, dpad, dscale, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

namespace {

Out2 v2_fwd_autograd(const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad, const at::Tensor& head_scale,
                     int64_t window_size, int64_t shift_h, int64_t shift_w) {
  check_forward_call("window_attention_v2", qkv, bias, qkv_pad, head_scale);
  if (!records(qkv, bias, qkv_pad, head_scale)) {
    return call_v2_fwd(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w);
  }
  auto out = WindowAttentionV2Function::apply(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w);
  return {out[0], out[1]};
}

Out4 v2_bwd_autograd(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias, const Opt& qkv_pad,
                     const at::Tensor& head_scale, const at::Tensor& lse, int64_t window_size, int64_t shift_h,
                     int64_t shift_w) {
  check_backward_call("window_attention_v2", grad_out, qkv, bias, qkv_pad, head_scale, lse);
  return call_v2_bwd(grad_out, qkv, bias, qkv_pad, head_scale, lse, window_size, shift_h, shift_w);
}

}  // namespace
}  // namespace autograd
}  // namespace swin_ext

TORCH_LIBRARY_IMPL(swin_ext, Autograd, m) {
  m.impl("window_attention_fwd", TORCH_FN(swin_ext::autograd::fwd_autograd));
  m.impl("window_attention_bwd", TORCH_FN(swin_ext::autograd::bwd_autograd));
  m.impl("window_attention_v2_fwd", TORCH_FN(swin_ext::autograd::v2_fwd_autograd));
  m.impl("window_attention_v2_bwd", TORCH_FN(swin_ext::autograd::v2_bwd_autograd));
}

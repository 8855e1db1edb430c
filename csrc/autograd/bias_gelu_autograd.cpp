// Autograd of swin_ext::bias_gelu_{fwd,bwd} (the contract: autograd_common.h).
#include "autograd_common.h"

namespace swin_ext {
namespace autograd {
namespace {

using FwdSig = at::Tensor(const at::Tensor&, const at::Tensor&);
using BwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using VjpSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 2>);

at::Tensor call_fwd(const at::Tensor& z, const at::Tensor& bias) {
  static auto op = typed_op<FwdSig>("swin_ext::bias_gelu_fwd");
  return below_autograd(op, z, bias);
}

std::tuple<at::Tensor, at::Tensor> call_bwd(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias) {
  static auto op = typed_op<BwdSig>("swin_ext::bias_gelu_bwd");
  return below_autograd(op, grad_y, z, bias);
}

}  // namespace

// Inputs z, bias (mask bits 0-1); output y.
class BiasGeluFunction : public torch::autograd::Function<BiasGeluFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, const at::Tensor& bias) {
    at::Tensor y = call_fwd(z, bias);
    ctx->save_for_backward({z, bias});
    ctx->saved_data["needs"] = grad_mask(z, bias);
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &z = saved[0], &bias = saved[1];
    const at::Tensor& grad_y = grads[0];
    if (higher_order(grad_y)) {
      static auto vjp = typed_op<VjpSig>("swin_ext::bias_gelu_vjp");
      const std::array<bool, 2> need{needs(ctx, 0), needs(ctx, 1)};
      auto g = needed(vjp.call(z, bias, grad_y, need), need);
      return {g[0], g[1]};
    }
    auto [dz, dbias] = call_bwd(grad_y.contiguous(), z, bias);
    return {dz, dbias};
  }
};

namespace {

at::Tensor fwd_autograd(const at::Tensor& z, const at::Tensor& bias) {
  check_forward_call("bias_gelu", z, bias);
  if (!records(z, bias)) return call_fwd(z, bias);
  return BiasGeluFunction::apply(z, bias)[0];
}

std::tuple<at::Tensor, at::Tensor> bwd_autograd(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias) {
  check_backward_call("bias_gelu", grad_y, z, bias);
  return call_bwd(grad_y, z, bias);
}

}  // namespace
}  // namespace autograd
}  // namespace swin_ext

TORCH_LIBRARY_IMPL(swin_ext, Autograd, m) {
  m.impl("bias_gelu_fwd", TORCH_FN(swin_ext::autograd::fwd_autograd));
  m.impl("bias_gelu_bwd", TORCH_FN(swin_ext::autograd::bwd_autograd));
}

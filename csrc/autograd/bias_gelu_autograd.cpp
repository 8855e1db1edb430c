// Autograd of swin_ext::bias_gelu_{fwd,bwd} (the contract: autograd_common.h).
#include "autograd_common.h"

namespace swin_ext {
namespace autograd {
namespace {

using FwdSig = at::Tensor(const at::Tensor&, const at::Tensor&);
using BwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using InplaceSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using VjpSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 2>);

at::Tensor call_fwd(const at::Tensor& z, const at::Tensor& bias) {
  static auto op = typed_op<FwdSig>("swin_ext::bias_gelu_fwd");
  return below_autograd(op, z, bias);
}

std::tuple<at::Tensor, at::Tensor> call_bwd(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias) {
  static auto op = typed_op<BwdSig>("swin_ext::bias_gelu_bwd");
  return below_autograd(op, grad_y, z, bias);
}

at::Tensor call_bwd_inplace(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias) {
  static auto op = typed_op<InplaceSig>("swin_ext::bias_gelu_bwd_inplace");
  return below_autograd(op, grad_y, z, bias);
}

// Whether the backward may write dz over the incoming gradient g (already
// contiguous): an eager, plain CPU tensor of z's dtype and shape that nothing
// else can observe (sole_handle).  On a GPU the caching allocator makes a fresh
// dz cheap, and the CUDA in-place op copies anyway.
bool may_overwrite(const at::Tensor& g, const at::Tensor& z) {
  constexpr auto traced = c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                               c10::DispatchKey::PythonTLSSnapshot});
  return g.device().is_cpu() && g.layout() == at::kStrided && g.scalar_type() == z.scalar_type() &&
         g.sizes() == z.sizes() && g.is_contiguous() && !g.is_inference() && !g.is_neg() && !g.is_conj() &&
         !g.key_set().has_any(traced) && sole_handle(g);
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

  // `grads` by reference: the engine's own list (torch::autograd::CppNode::apply), so that
  // moving the gradient out leaves this the only handle when nothing else holds it.
  static variable_list backward(AutogradContext* ctx, variable_list& grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &z = saved[0], &bias = saved[1];
    at::Tensor grad_y = std::move(grads[0]);
    if (higher_order(grad_y)) {
      static auto vjp = typed_op<VjpSig>("swin_ext::bias_gelu_vjp");
      const std::array<bool, 2> need{needs(ctx, 0), needs(ctx, 1)};
      auto g = needed(vjp.call(z, bias, grad_y, need), need);
      return {g[0], g[1]};
    }
    if (!grad_y.is_contiguous()) grad_y = grad_y.contiguous();
    if (may_overwrite(grad_y, z)) {
      at::Tensor dbias = call_bwd_inplace(grad_y, z, bias);
      return {std::move(grad_y), dbias};
    }
    auto [dz, dbias] = call_bwd(grad_y, z, bias);
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

at::Tensor bwd_inplace_autograd(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias) {
  check_backward_call("bias_gelu", grad_y, z, bias);
  at::Tensor dbias = call_bwd_inplace(grad_y, z, bias);
  torch::autograd::impl::bump_version(grad_y);
  return dbias;
}

}  // namespace
}  // namespace autograd
}  // namespace swin_ext

TORCH_LIBRARY_IMPL(swin_ext, Autograd, m) {
  m.impl("bias_gelu_fwd", TORCH_FN(swin_ext::autograd::fwd_autograd));
  m.impl("bias_gelu_bwd", TORCH_FN(swin_ext::autograd::bwd_autograd));
  m.impl("bias_gelu_bwd_inplace", TORCH_FN(swin_ext::autograd::bwd_inplace_autograd));
}

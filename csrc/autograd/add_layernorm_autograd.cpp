// Autograd of swin_ext::add_layernorm_{fwd,bwd} (the contract: autograd_common.h).
#include "autograd_common.h"

namespace swin_ext {
namespace autograd {
namespace {

using Out4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using FwdSig = Out4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                    std::optional<at::ScalarType>);
using BwdSig = Out4(const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const at::Tensor&, const at::Tensor&, std::optional<at::ScalarType>);
using VjpSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       double, at::ScalarType, std::array<bool, 3>);

Out4 call_fwd(const at::Tensor& x, const at::Tensor& branch, const at::Tensor& weight, const at::Tensor& bias,
              double eps, std::optional<at::ScalarType> y_dtype) {
  static auto op = typed_op<FwdSig>("swin_ext::add_layernorm_fwd");
  return below_autograd(op, x, branch, weight, bias, eps, y_dtype);
}

Out4 call_bwd(const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_y, const at::Tensor& h,
              const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd,
              std::optional<at::ScalarType> branch_dtype) {
  static auto op = typed_op<BwdSig>("swin_ext::add_layernorm_bwd");
  return below_autograd(op, grad_h, grad_y, h, weight, mean, rstd, branch_dtype);
}

}  // namespace

// Inputs x, branch, weight, bias (mask bits 0-3); outputs h, y, mean, rstd.
class AddLayerNormFunction : public torch::autograd::Function<AddLayerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& branch,
                               const at::Tensor& weight, const at::Tensor& bias, double eps,
                               std::optional<at::ScalarType> y_dtype) {
    auto [h, y, mean, rstd] = call_fwd(x, branch, weight, bias, eps, y_dtype);
    ctx->mark_non_differentiable({mean, rstd});
    // An unused h (the final norm) or y gives an undefined gradient, not a zero tensor to read.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({h, weight, bias, mean, rstd});
    ctx->saved_data["needs"] = grad_mask(x, branch, weight, bias);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["branch_dtype"] = branch.scalar_type();
    ctx->saved_data["y_dtype"] = y.scalar_type();
    return {h, y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &h = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &rstd = saved[4];
    const at::Tensor &grad_h = grads[0], &grad_y = grads[1];
    const bool need_x = needs(ctx, 0), need_branch = needs(ctx, 1);
    const bool need_h = need_x || need_branch;
    const auto branch_dtype = ctx->saved_data["branch_dtype"].toScalarType();
    at::Tensor dh, dw, db;
    if (!grad_y.defined()) {
      // y is unused: h's gradient passes through unchanged.
      if (need_h) dh = grad_h;
    } else if (higher_order(grad_h, grad_y)) {
      // The differentiable LayerNorm composite of h; h is a saved output, so the
      // graph reaches x and branch through this node again.
      static auto vjp = typed_op<VjpSig>("swin_ext::add_layernorm_vjp");
      const std::array<bool, 3> need{need_h, needs(ctx, 2), needs(ctx, 3)};
      auto g = needed(vjp.call(h, weight, bias, grad_y, ctx->saved_data["eps"].toDouble(),
                               ctx->saved_data["y_dtype"].toScalarType(), need),
                      need);
      dh = g[0], dw = g[1], db = g[2];
      if (need_h && grad_h.defined()) dh = dh + grad_h;
    } else {
      const auto want = need_branch && branch_dtype != h.scalar_type() ? std::optional<at::ScalarType>(branch_dtype)
                                                                       : std::nullopt;
      at::Tensor dbranch;
      std::tie(dh, dbranch, dw, db) = call_bwd(opt(grad_h), grad_y, h, weight, mean, rstd, want);
      if (want.has_value()) return {need_x ? dh : at::Tensor(), dbranch, dw, db, at::Tensor(), at::Tensor()};
    }
    if (!dh.defined()) return {at::Tensor(), at::Tensor(), dw, db, at::Tensor(), at::Tensor()};
    // x and branch get the same gradient (h = x + branch), in their own dtypes.
    at::Tensor dbranch = need_branch ? dh.to(branch_dtype) : at::Tensor();
    return {need_x ? dh : at::Tensor(), dbranch, dw, db, at::Tensor(), at::Tensor()};
  }
};

namespace {

Out4 fwd_autograd(const at::Tensor& x, const at::Tensor& branch, const at::Tensor& weight, const at::Tensor& bias,
                  double eps, std::optional<at::ScalarType> y_dtype) {
  check_forward_call("add_layernorm", x, branch, weight, bias);
  if (!records(x, branch, weight, bias)) return call_fwd(x, branch, weight, bias, eps, y_dtype);
  auto out = AddLayerNormFunction::apply(x, branch, weight, bias, eps, y_dtype);
  return {out[0], out[1], out[2], out[3]};
}

Out4 bwd_autograd(const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_y, const at::Tensor& h,
                  const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd,
                  std::optional<at::ScalarType> branch_dtype) {
  check_backward_call("add_layernorm", grad_h, grad_y, h, weight, mean, rstd);
  return call_bwd(grad_h, grad_y, h, weight, mean, rstd, branch_dtype);
}

}  // namespace
}  // namespace autograd
}  // namespace swin_ext

TORCH_LIBRARY_IMPL(swin_ext, Autograd, m) {
  m.impl("add_layernorm_fwd", TORCH_FN(swin_ext::autograd::fwd_autograd));
  m.impl("add_layernorm_bwd", TORCH_FN(swin_ext::autograd::bwd_autograd));
}

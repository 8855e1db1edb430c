// Autograd of swin_ext::patch_merging_{fwd,bwd} (the contract: autograd_common.h).
#include "autograd_common.h"

namespace swin_ext {
namespace autograd {
namespace {

using Out3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Out4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using FwdSig = Out3(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, const std::optional<at::Tensor>&,
                    std::optional<at::ScalarType>);
using BwdSig = Out4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const std::optional<at::Tensor>&, std::optional<at::ScalarType>);
using VjpSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const std::optional<at::Tensor>&, const at::Tensor&, double, at::ScalarType,
                                       std::array<bool, 4>);

Out3 call_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
              const std::optional<at::Tensor>& branch, std::optional<at::ScalarType> y_dtype) {
  static auto op = typed_op<FwdSig>("swin_ext::patch_merging_fwd");
  return below_autograd(op, x, weight, bias, eps, branch, y_dtype);
}

Out4 call_bwd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mean,
              const at::Tensor& rstd, const std::optional<at::Tensor>& branch,
              std::optional<at::ScalarType> branch_dtype) {
  static auto op = typed_op<BwdSig>("swin_ext::patch_merging_bwd");
  return below_autograd(op, grad_out, x, weight, mean, rstd, branch, branch_dtype);
}

}  // namespace

// Inputs x, weight, bias, branch (mask bits 0-3); outputs y, mean, rstd.  h = x + branch
// is not stored: the backward recomputes it from x and the branch.
class PatchMergingFunction : public torch::autograd::Function<PatchMergingFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, double eps, const std::optional<at::Tensor>& branch,
                               std::optional<at::ScalarType> y_dtype) {
    auto [y, mean, rstd] = call_fwd(x, weight, bias, eps, branch, y_dtype);
    ctx->mark_non_differentiable({mean, rstd});
    ctx->save_for_backward({x, weight, bias, mean, rstd, branch.value_or(at::Tensor())});
    ctx->saved_data["needs"] = grad_mask(x, weight, bias, branch);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["y_dtype"] = y.scalar_type();
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &rstd = saved[4];
    const at::Tensor& branch = saved[5];
    const at::Tensor& grad_y = grads[0];
    const bool need_x = needs(ctx, 0), need_branch = needs(ctx, 3);  // bit 3 is set only for a branch
    at::Tensor dx, dw, db, dbranch;
    if (higher_order(grad_y)) {
      static auto vjp = typed_op<VjpSig>("swin_ext::patch_merging_vjp");
      const std::array<bool, 4> need{need_x, needs(ctx, 1), needs(ctx, 2), need_branch};
      auto g = needed(vjp.call(x, weight, bias, opt(branch), grad_y, ctx->saved_data["eps"].toDouble(),
                               ctx->saved_data["y_dtype"].toScalarType(), need),
                      need);
      dx = g[0], dw = g[1], db = g[2], dbranch = g[3];
    } else {
      const auto want = need_branch && branch.scalar_type() != x.scalar_type()
                            ? std::optional<at::ScalarType>(branch.scalar_type())
                            : std::nullopt;
      std::tie(dx, dbranch, dw, db) = call_bwd(grad_y, x, weight, mean, rstd, opt(branch), want);
      if (need_branch && !want.has_value()) dbranch = dx;  // x and branch get the same gradient
      if (!need_branch) dbranch = at::Tensor();
      if (!need_x) dx = at::Tensor();
    }
    return {dx, dw, db, at::Tensor(), dbranch, at::Tensor()};
  }
};

namespace {

Out3 fwd_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                  const std::optional<at::Tensor>& branch, std::optional<at::ScalarType> y_dtype) {
  check_forward_call("patch_merging", x, weight, bias, branch);
  if (!records(x, weight, bias, branch)) return call_fwd(x, weight, bias, eps, branch, y_dtype);
  auto out = PatchMergingFunction::apply(x, weight, bias, eps, branch, y_dtype);
  return {out[0], out[1], out[2]};
}

Out4 bwd_autograd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mean,
                  const at::Tensor& rstd, const std::optional<at::Tensor>& branch,
                  std::optional<at::ScalarType> branch_dtype) {
  check_backward_call("patch_merging", grad_out, x, weight, mean, rstd, branch);
  return call_bwd(grad_out, x, weight, mean, rstd, branch, branch_dtype);
}

}  // namespace
}  // namespace autograd
}  // namespace swin_ext

TORCH_LIBRARY_IMPL(swin_ext, Autograd, m) {
  m.impl("patch_merging_fwd", TORCH_FN(swin_ext::autograd::fwd_autograd));
  m.impl("patch_merging_bwd", TORCH_FN(swin_ext::autograd::bwd_autograd));
}

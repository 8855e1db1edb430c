// What the five ops' C++ autograd kernels share (csrc/autograd/<op>_autograd.cpp).
//
// Each public op is a forward and a backward operator (op_schemas.h).  Their
// autograd kernels live here, in C++, as torchvision's
// csrc/ops/autograd/roi_align_kernel.cpp does, for the host's sake: the
// torch.library Python autograd (an autograd.Function, setup_context and a
// Python backward per call, and a Python kernel on the backward operator) cost
// ~50-80 us per forward + backward on the development CPU against a few us
// here (benchmarks/host_overhead.py), on every call of an eager training step.
//
// The contract, the same as the Python path it replaces (swin_ext/ops/_autograd.py):
//   * a forward operator records a node when grad mode is on and a tensor
//     input requires grad; otherwise it runs below autograd directly;
//   * the first-order backward runs the fused backward operator;
//   * a higher-order backward (grad mode on in the backward: create_graph=True,
//     gradgradcheck) or a cotangent carrying a forward-mode tangent calls the
//     op's `<op>_vjp` operator, whose CompositeImplicitAutograd kernel is
//     registered from Python (swin_ext/ops/<op>.py): the vjp of the op's
//     plain-PyTorch composite, differentiable to any order;
//   * no operator propagates forward-mode tangents: an input carrying one is
//     refused with an error naming the wrapper that does (the public wrappers
//     compute forward-mode AD through the composite);
//   * a backward operator is not differentiable: building a graph through
//     one raises, naming the public op whose backward is.
// Under torch.func transforms the wrappers use their Python autograd.Function
// instead (functorch needs setup_context and a vmap rule), so none of this runs there.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/version.h>

#include <array>
#include <optional>
#include <vector>

namespace swin_ext {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of an operator, e.g. typed_op<Sig>("swin_ext::bias_gelu_fwd");
// callers keep it in a function-local static (looked up once).
template <typename Sig>
c10::TypedOperatorHandle<Sig> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Whether `t` carries a forward-mode AD tangent (eager dual tensors live at level 0).
inline bool has_tangent(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
inline bool has_tangent(const std::optional<at::Tensor>& t) { return t.has_value() && has_tangent(*t); }

inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }

// Whether the call records a node: grad mode on and a tensor input requiring grad.
template <typename... Ts>
bool records(const Ts&... ts) {
  return at::GradMode::is_enabled() && (requires_grad(ts) || ...);
}

// The forward operator swin_ext::<pub>_fwd refuses forward-mode tangents on its tensor inputs.
template <typename... Ts>
void check_forward_call(const char* pub, const Ts&... ts) {
  TORCH_CHECK(!(has_tangent(ts) || ...), "torch.ops.swin_ext.", pub,
              "_fwd does not propagate forward-mode AD tangents (torch.autograd.forward_ad dual tensors, "
              "torch.func.jvp): call swin_ext.",
              pub, " eagerly (not under torch.compile), which computes forward-mode derivatives through "
              "the reference composite");
}

// The backward operator swin_ext::<pub>_bwd refuses tangents and is not differentiable.
template <typename... Ts>
void check_backward_call(const char* pub, const Ts&... ts) {
  TORCH_CHECK(!(has_tangent(ts) || ...), "torch.ops.swin_ext.", pub,
              "_bwd does not propagate forward-mode AD tangents (torch.autograd.forward_ad dual tensors, "
              "torch.func.jvp): a backward operator has no forward-mode derivative; differentiate swin_ext.",
              pub, " instead");
  TORCH_CHECK(!records(ts...), "swin_ext::", pub, "_bwd is not differentiable; differentiate swin_ext.", pub,
              " instead (its backward supports create_graph=True and torch.func)");
}

// `op(args...)` below autograd: the kernel of the device the arguments are on.
template <typename Sig, typename... Args>
decltype(auto) below_autograd(const c10::TypedOperatorHandle<Sig>& op, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(args...);
}

// Whether a backward must go through the differentiable composite: a graph of the
// backward is being built, or a cotangent carries a forward-mode tangent.
template <typename... Ts>
bool higher_order(const Ts&... grads) {
  return at::GradMode::is_enabled() || (has_tangent(grads) || ...);
}

// Which tensor inputs require grad, as a bit mask (bit i: the i-th argument), for
// ctx->saved_data["needs"]: as Python's static ctx.needs_input_grad.
template <typename... Ts>
int64_t grad_mask(const Ts&... ts) {
  int64_t mask = 0, bit = 0;
  ((mask |= requires_grad(ts) ? (int64_t{1} << bit) : 0, ++bit), ...);
  return mask;
}

// Bit i of the mask saved by grad_mask.
inline bool needs(AutogradContext* ctx, int i) { return (ctx->saved_data["needs"].toInt() >> i) & 1; }

// An optional tensor argument from a saved variable (undefined: None).
inline std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The gradients of an `<op>_vjp` operator, which returns one tensor per
// differentiable input (a placeholder where `needs` is false): undefined where
// not needed.
template <size_t N>
std::array<at::Tensor, N> needed(std::vector<at::Tensor> grads, const std::array<bool, N>& needs) {
  TORCH_CHECK(grads.size() == N, "swin_ext: a vjp operator returned ", grads.size(), " gradients, expected ", N);
  std::array<at::Tensor, N> out;
  for (size_t i = 0; i < N; ++i) {
    if (needs[i]) out[i] = std::move(grads[i]);
  }
  return out;
}

// Whether nothing but this handle can observe a write into t's memory: no other
// reference to the tensor (a hook's list, retain_grad, a caller's grad_tensors,
// a saved variable) and none to its storage, except -- for a view, such as the
// gradient a reshape's backward hands on -- its base, which nothing else holds.
// A Python wrapper that holds the only reference to its tensor (the tensor came
// out of a Python backward and the wrapper waits to be freed) does not count,
// as for AccumulateGrad's stealing of a gradient (torch >= 2.13; older
// releases count it, which only makes this more conservative).
inline bool sole_handle(const at::Tensor& t) {
  // x has no reference but `refs` (and perhaps its Python wrapper's, as above).
  const auto unshared = [](const at::Tensor& x, size_t refs) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
    return torch::autograd::impl::is_tensor_stealable(x, refs);
#else
    return x.use_count() == refs;
#endif
  };
  if (!t.has_storage() || !unshared(t, 1)) return false;
  if (!t.is_view()) return t.storage().use_count() == 1;
  at::TensorBase base_ref = t._base();
  const at::Tensor base(std::move(base_ref));  // a second reference, beside t's view metadata
  return t.storage().use_count() == 2 && base.has_storage() && base.storage().is_alias_of(t.storage()) &&
         unshared(base, 2);
}

}  // namespace autograd
}  // namespace swin_ext

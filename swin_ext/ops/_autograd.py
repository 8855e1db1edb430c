"""What every op module wires the same way: first- and higher-order autograd, vmap, the raw backward ops.

The contract each op module follows (see any of them top to bottom):

* the first-order backward runs the op's fused backward kernel; when a
  second-order graph is being built (``create_graph=True``,
  ``gradgradcheck``, ``torch.func`` transforms) the backward is instead
  :func:`vjp` of the op's plain-PyTorch composite (:mod:`.reference`), which
  is differentiable to any order;
* under a ``torch.func`` transform the wrapper calls the op through an
  ``autograd.Function`` with ``setup_context`` and a generated vmap rule
  (:func:`functorch_active` decides), because ``register_autograd`` alone
  does not compose with functorch;
* forward-mode AD (``torch.autograd.forward_ad`` dual tensors,
  ``torch.func.jvp``, ``jacfwd``, ``hessian``, forward-over-forward): the
  wrappers compute the call through the op's reference composite
  (:func:`forward_mode`, :func:`composite_call`; the same math, in the
  accumulation dtype like the kernels, autocast off), which is
  differentiable in both modes to any order.  A ``jvp`` staticmethod on an
  ``autograd.Function`` would keep the fused forward, but torch drops the
  outer tangent of forward-over-forward through it (the jvp rule runs with
  forward grad disabled), a silently wrong second derivative.  The raw ops
  refuse tangents with an error naming the wrapper (:func:`register_autograd`);
* the raw ``*_bwd`` ops are not differentiable themselves: building a graph
  through one raises (:func:`register_backward_op`), as torchvision's
  ``autograd/roi_align_kernel.cpp`` does.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.autograd import forward_ad as _fwad

__all__ = ["functorch_active", "has_tangent", "forward_mode", "autocast_dtype", "composite_call", "vjp", "vmap_loop",
           "register_autograd", "register_backward_op"]


def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is running (never while compiling)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def has_tangent(tensors: Sequence[object]) -> bool:
    """Whether a ``torch.autograd.forward_ad`` tangent rides on any of ``tensors`` (eager dual tensors)."""
    if _fwad._current_level < 0 or not torch._C._is_fwd_grad_enabled():
        return False
    return any(isinstance(t, torch.Tensor) and _fwad.unpack_dual(t).tangent is not None for t in tensors)


def forward_mode(tensors: Sequence[object]) -> bool:
    """Whether forward-mode AD is computing tangents through a call on ``tensors``.

    Eager dual tensors carry their tangent; under ``torch.func`` the tangents
    hide in functorch's wrappers, so any open forward-AD level
    (``torch.func.jvp``, ``jacfwd``, ``hessian`` open one) counts.  Never
    while compiling (the compiled graph keeps the ops).
    """
    if _fwad._current_level < 0 or torch.compiler.is_compiling():
        return False
    return torch._C._are_functorch_transforms_active() or has_tangent(tensors)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype ``torch.autocast`` casts to on ``device_type``, or ``None`` when it is off.

    Traced by ``torch.compile`` (the compiled graph is guarded on the
    autocast state).  torch < 2.4 has no ``device_type`` argument and no
    ``get_autocast_dtype``: the CPU / GPU specific functions there.
    """
    if device_type not in ("cpu", "cuda"):  # meta (fake tensors), or a device swin_ext has no kernels for
        return None
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # pragma: no cover - torch < 2.4
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def composite_call(fn: Callable, *args):
    """``fn(*args)``, a differentiable reference composite, with autocast off: the forward-mode path.

    The composites compute in the accumulation dtype as the kernels do; under
    autocast their matmuls would otherwise run in the autocast dtype.
    """
    dev = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    if autocast_dtype(dev) is None:
        return fn(*args)
    with torch.autocast(device_type=dev, enabled=False):
        return fn(*args)


def vjp(
    fn: Callable[..., torch.Tensor],
    primals: Sequence[Optional[torch.Tensor]],
    cotangent: torch.Tensor,
    needs: Sequence[bool],
) -> Tuple[Optional[torch.Tensor], ...]:
    """``cotangent``-vector-Jacobian product of ``fn`` at ``primals`` for the inputs in ``needs``.

    Through ``torch.func.vjp``, so the result is differentiable again: by
    autograd (a backward with ``create_graph=True``) and by enclosing
    torch.func transforms (``grad`` of ``grad``, ``jacrev``, ``vmap``).
    Inputs that do not reach the output get zeros; inputs not needed (or
    ``None``) get ``None``.
    """
    idx = [i for i, (p, n) in enumerate(zip(primals, needs)) if n and p is not None]
    grads: List[Optional[torch.Tensor]] = [None] * len(primals)
    if not idx:
        return tuple(grads)

    def g(*sel):
        full = list(primals)
        for i, t in zip(idx, sel):
            full[i] = t
        return fn(*full)

    _, vjp_fn = torch.func.vjp(g, *[primals[i] for i in idx])
    for i, t in zip(idx, vjp_fn(cotangent)):
        grads[i] = t
    return tuple(grads)


def vmap_loop(op: Callable, info, in_dims, *args):
    """Batch rule of last resort: the op once per batch element, results stacked along dim 0.

    ``in_dims`` holds an int for each batched tensor; an ``int[]`` argument (the window
    and shift of the 3-D schema) gets a list of ``None`` there, and passes through."""
    outs = []
    for i in range(info.batch_size):
        a = [x.select(d, i) if isinstance(d, int) else x for x, d in zip(args, in_dims)]
        outs.append(op(*a))
    res = tuple(torch.stack(o) for o in zip(*outs))
    return res, (0,) * len(res)


_LIB: Optional[torch.library.Library] = None  # the autograd kernels of register_autograd


def register_autograd(name: str, backward: Callable, setup_context: Callable) -> None:
    """``torch.library.register_autograd`` of ``swin_ext::<name>``, refusing forward-mode tangents.

    ``register_autograd`` has no forward-mode rule: for a dual input that does
    not require grad its kernel runs the op below autograd and the tangent is
    dropped (read as zero downstream).  The same kernel
    (``torch._library.autograd.make_autograd_impl``, what ``register_autograd``
    registers) goes behind a check that raises on a tangent instead; the
    public wrappers never pass one (their forward-mode path is the reference
    composite).  A torch whose private helper differs gets the plain
    ``register_autograd`` (the wrappers are right there too).
    """
    global _LIB
    op = getattr(torch.ops.swin_ext, name).default
    try:
        from torch._library.autograd import Info, make_autograd_impl

        impl = make_autograd_impl(op, Info(backward, setup_context))
    except (ImportError, TypeError, AttributeError):  # pragma: no cover - another torch
        torch.library.register_autograd(f"swin_ext::{name}", backward, setup_context=setup_context)
        return
    public = name[: -len("_fwd")] if name.endswith("_fwd") else name[: -len("_bwd")]
    if name.endswith("_fwd"):
        advice = (f"call swin_ext.{public} eagerly (not under torch.compile), which computes forward-mode "
                  "derivatives through the reference composite")
    else:
        advice = f"a backward operator has no forward-mode derivative; differentiate swin_ext.{public} instead"

    def autograd_kernel(keyset, *args):
        if has_tangent(args):
            raise RuntimeError(
                f"torch.ops.swin_ext.{name} does not propagate forward-mode AD tangents "
                f"(torch.autograd.forward_ad dual tensors, torch.func.jvp): {advice}"
            )
        return impl(keyset, *args)

    if _LIB is None:
        _LIB = torch.library.Library("swin_ext", "FRAGMENT")
    _LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)


def register_backward_op(name: str) -> None:
    """Register ``swin_ext::<name>_bwd`` as not differentiable, with a per-element vmap rule.

    Differentiating through the raw backward raises a ``RuntimeError`` that
    points to the public wrapper, whose own backward supports
    ``create_graph=True`` and ``torch.func``.
    """
    op = getattr(torch.ops.swin_ext, f"{name}_bwd")

    def setup_context(ctx, inputs, output):
        raise RuntimeError(
            f"swin_ext::{name}_bwd is not differentiable; differentiate swin_ext.{name} instead "
            "(its backward supports create_graph=True and torch.func)"
        )

    def backward(ctx, *grads):  # pragma: no cover - setup_context raises first
        raise RuntimeError("unreachable")

    def rule(info, in_dims, *args):
        return vmap_loop(op, info, in_dims, *args)

    register_autograd(f"{name}_bwd", backward, setup_context)
    torch.library.register_vmap(f"swin_ext::{name}_bwd", rule)

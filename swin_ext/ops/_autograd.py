"""What every op module wires the same way: first- and higher-order autograd, vmap, the raw backward ops.

The contract each op module follows (see any of them top to bottom):

* the autograd kernels of the raw ops are C++ (``csrc/autograd/``, the
  contract in ``autograd_common.h``), so an eager training step pays no
  Python autograd per call; the first-order backward runs the op's fused
  backward kernel;
* when a second-order graph is being built (``create_graph=True``,
  ``gradgradcheck``) the backward is instead :func:`vjp` of the op's
  plain-PyTorch composite (:mod:`.reference`), which is differentiable to
  any order: the C++ backward calls the op's ``<op>_vjp`` operator, whose
  kernel each op module registers here (:func:`register_vjp`);
* under a ``torch.func`` transform the wrapper calls the op through an
  ``autograd.Function`` with ``setup_context`` and a generated vmap rule
  (:func:`functorch_active` decides), because an autograd kernel alone
  does not compose with functorch; its Python backward follows the same
  two paths;
* forward-mode AD (``torch.autograd.forward_ad`` dual tensors,
  ``torch.func.jvp``, ``jacfwd``, ``hessian``, forward-over-forward): the
  wrappers compute the call through the op's reference composite
  (:func:`forward_mode`, :func:`composite_call`; the same math, in the
  accumulation dtype like the kernels, autocast off), which is
  differentiable in both modes to any order.  A ``jvp`` staticmethod on an
  ``autograd.Function`` would keep the fused forward, but torch drops the
  outer tangent of forward-over-forward through it (the jvp rule runs with
  forward grad disabled), a silently wrong second derivative.  The raw ops
  refuse tangents with an error naming the wrapper (the C++ kernels);
* the raw ``*_bwd`` ops are not differentiable themselves: building a graph
  through one raises (the C++ kernels), as torchvision's
  ``autograd/roi_align_kernel.cpp`` does; :func:`register_backward_op`
  gives them a vmap rule.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.autograd import forward_ad as _fwad

__all__ = ["functorch_active", "has_tangent", "forward_mode", "autocast_dtype", "composite_call", "vjp", "vjp_list",
           "vmap_loop", "register_vjp", "register_backward_op"]


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


_LIB: Optional[torch.library.Library] = None  # the Python kernels of register_vjp


def vjp_list(
    fn: Callable[..., torch.Tensor],
    primals: Sequence[Optional[torch.Tensor]],
    cotangent: torch.Tensor,
    needs: Sequence[bool],
) -> List[torch.Tensor]:
    """:func:`vjp` as an ``<op>_vjp`` operator returns it: one tensor per primal, an empty
    placeholder where ``needs`` is false (an operator's ``Tensor[]`` holds no ``None``)."""
    grads = vjp(fn, primals, cotangent, needs)
    return [g if g is not None else cotangent.new_empty((0,)) for g in grads]


def register_vjp(name: str, kernel: Callable[..., List[torch.Tensor]]) -> None:
    """The CompositeImplicitAutograd kernel of ``swin_ext::<name>_vjp``, the op's higher-order backward.

    The autograd kernels of the forward operators are C++ (``csrc/autograd/``); when a
    backward builds a graph (``create_graph=True``) or a cotangent carries a
    forward-mode tangent they call ``<name>_vjp``, whose kernel is this Python
    function: :func:`vjp_list` of the op's differentiable composite.
    """
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library("swin_ext", "FRAGMENT")
    _LIB.impl(f"{name}_vjp", kernel, "CompositeImplicitAutograd")


def register_backward_op(name: str) -> None:
    """A per-element vmap rule for ``swin_ext::<name>_bwd``.

    Its autograd kernel (C++, ``csrc/autograd/``) refuses to build a graph
    through it: a ``RuntimeError`` points to the public wrapper, whose own
    backward supports ``create_graph=True`` and ``torch.func``.
    """
    op = getattr(torch.ops.swin_ext, f"{name}_bwd")

    def rule(info, in_dims, *args):
        return vmap_loop(op, info, in_dims, *args)

    torch.library.register_vmap(f"swin_ext::{name}_bwd", rule)

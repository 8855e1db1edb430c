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
* the raw ``*_bwd`` ops are not differentiable themselves: building a graph
  through one raises (:func:`register_backward_op`), as torchvision's
  ``autograd/roi_align_kernel.cpp`` does.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ["functorch_active", "vjp", "vmap_loop", "register_backward_op"]


def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is running (never while compiling)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


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
    """Batch rule of last resort: the op once per batch element, results stacked along dim 0."""
    outs = []
    for i in range(info.batch_size):
        a = [x.select(d, i) if d is not None else x for x, d in zip(args, in_dims)]
        outs.append(op(*a))
    res = tuple(torch.stack(o) for o in zip(*outs))
    return res, (0,) * len(res)


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

    torch.library.register_autograd(f"swin_ext::{name}_bwd", backward, setup_context=setup_context)
    torch.library.register_vmap(f"swin_ext::{name}_bwd", rule)

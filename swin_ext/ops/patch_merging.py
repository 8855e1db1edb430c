"""``patch_merging``: the 2x2 gather of Swin V1's patch merging fused with its LayerNorm over ``4C``.

Raw ops ``swin_ext::patch_merging_{fwd,bwd}``: schemas in ``csrc/op_schemas.h``,
CPU kernel in ``csrc/cpu/patch_merging_cpu.cpp``, CUDA kernels in
``csrc/cuda/patch_merging.cuh``.  The forward returns ``(y, mean, rstd)``;
the row statistics (non-differentiable outputs) are what the backward (the
LayerNorm backward and the scatter, one kernel) needs besides ``x``.

This file reads top to bottom: wrapper, fakes, autograd, the
``autograd.Function`` used under ``torch.func``, vmap rule, registration.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._ext import HAS_OPS, require_ops
from ._autograd import (
    composite_call,
    forward_mode,
    functorch_active,
    has_tangent,
    register_autograd,
    register_backward_op,
    vjp,
    vmap_loop,
)
from ._validate import acc_dtype, check_merging, real_arg
from .reference import layer_norm_composite, patch_gather

__all__ = ["patch_merging"]

#: the public ops of this module; ``swin_ext::<name>_fwd`` / ``_bwd`` are their raw ops
OPS = ("patch_merging",)


# --------------------------------------------------------------------------- wrapper


def patch_merging(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """2x2 patch gather fused with LayerNorm over the gathered ``4C`` channels.

    The LayerNorm statistics are right for every finite input, also where
    torch's float32 LayerNorm overflows (``|x| >~ 1e19``): see
    ``csrc/cpu/patch_merging_cpu.cpp``.

    Args:
        x: ``(B, H, W, C)``; odd ``H``/``W`` are zero-padded at bottom/right.
        weight: ``(4C,)`` LayerNorm scale.
        bias: ``(4C,)`` LayerNorm shift.
        eps: LayerNorm epsilon, a finite real number ``>= 0``.
    Returns:
        ``(B, ceil(H/2), ceil(W/2), 4C)`` in ``x``'s dtype, channel order
        x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1) (row, col) as the official code.
    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the
        message names it.
    """
    check_merging(x, weight, bias)
    eps = real_arg(eps, "eps", where="swin_ext.patch_merging")
    if eps < 0:
        raise ValueError(f"swin_ext.patch_merging: eps must be >= 0, got {eps}")
    require_ops(x.device)
    acc = acc_dtype(x.dtype)
    args = (x, weight.to(acc), bias.to(acc), eps)
    if forward_mode(args):
        return composite_call(_composite(eps), *args[:3])
    if functorch_active():
        return _PatchMergingFn.apply(*args)[0]
    return torch.ops.swin_ext.patch_merging_fwd(*args)[0]


# --------------------------------------------------------------------------- fakes


def _fwd_fake(x, weight, bias, eps):
    check_merging(x, weight, bias, raw=True, exact_dtypes=True)
    eps = real_arg(eps, "eps", raw=True, where="swin_ext.patch_merging")
    torch._check(eps >= 0, lambda: f"swin_ext.patch_merging: eps must be finite and >= 0, got {eps}")
    B, H, W, C = x.shape
    H2, W2 = (H + 1) // 2, (W + 1) // 2
    y = x.new_empty((B, H2, W2, 4 * C))
    mean = weight.new_empty((B, H2, W2))
    rstd = weight.new_empty((B, H2, W2))
    return y, mean, rstd


def _bwd_fake(grad_out, x, weight, mean, rstd):
    check_merging(x, weight, weight, raw=True, exact_dtypes=True, where="swin_ext.patch_merging_bwd")
    B, H, W, C = x.shape
    H2, W2 = (H + 1) // 2, (W + 1) // 2
    torch._check(
        tuple(grad_out.shape) == (B, H2, W2, 4 * C) and grad_out.dtype == x.dtype,
        lambda: f"swin_ext.patch_merging_bwd: grad_out must be {x.dtype} {(B, H2, W2, 4 * C)}, "
        f"got {grad_out.dtype} {tuple(grad_out.shape)}",
    )
    for name, t in (("mean", mean), ("rstd", rstd)):
        torch._check(
            tuple(t.shape) == (B, H2, W2) and t.dtype == acc_dtype(x.dtype),
            lambda: f"swin_ext.patch_merging_bwd: {name} must be {acc_dtype(x.dtype)} {(B, H2, W2)}, "
            f"got {t.dtype} {tuple(t.shape)}",
        )
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        weight.new_empty(weight.shape),
        weight.new_empty(weight.shape),
    )


# --------------------------------------------------------------------------- autograd


def _composite(eps: float) -> Callable:
    """``patch_merging_fwd``'s output as the differentiable reference composite ``f(x, weight, bias)``,
    in the accumulation dtype like the kernels; its LayerNorm from elementary ops
    (:func:`~swin_ext.ops.reference.layer_norm_composite`: torch's is wrong at second order under torch.func)."""

    def f(x_, w_, b_):
        return layer_norm_composite(patch_gather(x_.to(acc_dtype(x_.dtype))), w_, b_, eps).to(x_.dtype)

    return f


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.eps = eps


def _backward(ctx, grad_y, grad_mean, grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    if torch.is_grad_enabled() or has_tangent((grad_y,)):
        # Second-order graph or a dual cotangent: through the differentiable composite.
        dx, dw, db = vjp(_composite(ctx.eps), (x, weight, bias), grad_y, ctx.needs_input_grad[:3])
        return dx, dw, db, None
    dx, dw, db = torch.ops.swin_ext.patch_merging_bwd(grad_y, x, weight, mean, rstd)
    return dx, dw, db, None


class _PatchMergingFn(torch.autograd.Function):
    """The patch-merging op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps):
        return torch.ops.swin_ext.patch_merging_fwd(x, weight, bias, eps)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


# --------------------------------------------------------------------------- vmap


def _fwd_vmap(info, in_dims, x, weight, bias, eps):
    xd, wd, bd = in_dims[:3]
    if xd is not None and wd is None and bd is None:
        xx = x.movedim(xd, 0)
        V, B = xx.shape[:2]
        y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(xx.reshape(V * B, *xx.shape[2:]), weight, bias, eps)
        return tuple(t.view(V, B, *t.shape[1:]) for t in (y, mean, rstd)), (0, 0, 0)
    return vmap_loop(torch.ops.swin_ext.patch_merging_fwd, info, in_dims, x, weight, bias, eps)


# --------------------------------------------------------------------------- registration

if HAS_OPS:
    torch.library.register_fake("swin_ext::patch_merging_fwd", _fwd_fake)
    torch.library.register_fake("swin_ext::patch_merging_bwd", _bwd_fake)
    register_autograd("patch_merging_fwd", _backward, _setup_context)
    torch.library.register_vmap("swin_ext::patch_merging_fwd", _fwd_vmap)
    register_backward_op("patch_merging")

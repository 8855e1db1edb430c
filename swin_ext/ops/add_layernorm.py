"""``add_layernorm``: a block's residual add fused with the LayerNorm that follows it.

Raw ops ``swin_ext::add_layernorm_{fwd,bwd}``: schemas in ``csrc/op_schemas.h``,
CPU kernel in ``csrc/cpu/add_layernorm_cpu.cpp``, CUDA kernels in
``csrc/cuda/add_layernorm.cuh``.  The forward returns ``(h, y, mean, rstd)``
with ``h = x + branch`` and ``y = LayerNorm(h)``; the backward takes the
gradients reaching both ``h`` (the residual stream's other uses) and ``y``.

Under ``torch.autocast`` the residual stream keeps its own dtype and ``y``
comes out in the autocast dtype (:func:`autocast_dtype`, which
``torch.compile`` traces and guards on), so the Linear after it needs no cast.

This file reads top to bottom: wrapper, fakes, autograd, the
``autograd.Function`` used under ``torch.func``, vmap rule, registration.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch

from .._ext import HAS_OPS, require_ops
from ._autograd import (
    autocast_dtype,
    composite_call,
    forward_mode,
    functorch_active,
    has_tangent,
    register_backward_op,
    register_vjp,
    vjp,
    vjp_list,
    vmap_loop,
)
from ._validate import acc_dtype, check_add_layernorm, check_add_layernorm_bwd, dtype_arg, in_dtype, real_arg
from .reference import layer_norm_composite, residual_sum

__all__ = ["add_layernorm", "add_layernorm_unchecked", "autocast_dtype"]

#: the public ops of this module; ``swin_ext::<name>_fwd`` / ``_bwd`` are their raw ops
OPS = ("add_layernorm",)


# --------------------------------------------------------------------------- wrapper


def add_layernorm(
    x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with LayerNorm: ``h = x + branch``, ``y = LayerNorm(h)``.

    One pass over the rows forward (``x`` and ``branch`` read once, ``h`` and
    ``y`` written once) and one backward (the gradients reaching ``h`` and
    ``y`` in, those of ``x``, ``branch``, ``weight`` and ``bias`` out; the
    last two bitwise deterministic).  The LayerNorm statistics are float32
    (float64 for float64 ``x``) and right for every finite input, as
    :func:`~swin_ext.patch_merging`'s.

    Under ``torch.autocast`` (CPU or CUDA) the residual stream keeps ``x``'s
    dtype and ``y`` comes out in the autocast dtype, ready for the next
    Linear without a cast.

    Args:
        x: ``(..., C)`` the residual stream (float32/64/16, bfloat16).
        branch: ``(..., C)`` the branch added to it, any of those dtypes
            (under autocast typically the bf16/fp16 output of a Linear).
        weight: ``(C,)`` LayerNorm scale.
        bias: ``(C,)`` LayerNorm shift.
        eps: LayerNorm epsilon, a finite real number ``>= 0``.
    Returns:
        ``(h, y)``: ``h = x + branch`` (summed in float32, float64 if either
        is float64) in ``x``'s dtype, and ``LayerNorm(h)`` in ``x``'s dtype
        (the autocast dtype under autocast).
    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the
        message names it.
    """
    check_add_layernorm(x, branch, weight, bias)
    eps = real_arg(eps, "eps", where="swin_ext.add_layernorm")
    if eps < 0:
        raise ValueError(f"swin_ext.add_layernorm: eps must be >= 0, got {eps}")
    require_ops(x.device)
    return add_layernorm_unchecked(x, branch, weight, bias, eps)


def add_layernorm_unchecked(
    x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`add_layernorm` without its Python argument checks: for callers whose arguments are valid
    by construction (:func:`swin_ext.layers.add_layernorm`, which takes ``weight``, ``bias`` and ``eps``
    from an ``nn.LayerNorm`` over ``x``'s last dim and ``branch`` of ``x``'s shape).

    Why: the checks cost the host ~10 us a call, 21 calls in a Swin-T forward, which a host-bound GPU
    step waits on.  A bad argument is still refused, as a ``RuntimeError`` from the raw op's own
    checks (``csrc/checks.h``, the same rules).
    """
    acc = acc_dtype(x.dtype)
    args = (x, branch, in_dtype(weight, acc), in_dtype(bias, acc), eps, autocast_dtype(x.device.type))
    if forward_mode(args):
        return composite_call(_composite(eps, args[5] or x.dtype), *args[:4])
    if functorch_active():
        h, y, _, _ = _AddLayerNormFn.apply(*args)
    else:
        h, y, _, _ = torch.ops.swin_ext.add_layernorm_fwd(*args)
    return h, y


# --------------------------------------------------------------------------- fakes


def _fwd_fake(x, branch, weight, bias, eps, y_dtype):
    where = "swin_ext.add_layernorm"
    check_add_layernorm(x, branch, weight, bias, raw=True, exact_dtypes=True, where=where)
    eps = real_arg(eps, "eps", raw=True, where=where)
    torch._check(eps >= 0, lambda: f"{where}: eps must be finite and >= 0, got {eps}")
    y_dtype = dtype_arg(y_dtype, "y_dtype", raw=True, where=where)
    h = x.new_empty(x.shape)
    y = x.new_empty(x.shape, dtype=y_dtype or x.dtype)
    return h, y, weight.new_empty(x.shape[:-1]), weight.new_empty(x.shape[:-1])


def _bwd_fake(grad_h, grad_y, h, weight, mean, rstd, branch_dtype):
    check_add_layernorm_bwd(grad_h, grad_y, h, weight, mean, rstd, branch_dtype)
    dbranch = h.new_empty(h.shape, dtype=branch_dtype) if branch_dtype is not None else h.new_empty((0,))
    return h.new_empty(h.shape), dbranch, weight.new_empty(weight.shape), weight.new_empty(weight.shape)


# --------------------------------------------------------------------------- autograd


def _ln_composite(eps: float, y_dtype: torch.dtype) -> Callable:
    """``y = LayerNorm(h)`` of ``add_layernorm_fwd`` as a differentiable composite ``f(h, weight, bias)``:
    in the accumulation dtype, returned in ``y_dtype``, the LayerNorm from elementary ops
    (:func:`~swin_ext.ops.reference.layer_norm_composite`: torch's is wrong at second order under torch.func)."""

    def f(h, w, b):
        return layer_norm_composite(h.to(acc_dtype(h.dtype)), w, b, eps).to(y_dtype)

    return f


def _composite(eps: float, y_dtype: torch.dtype) -> Callable:
    """``add_layernorm_fwd``'s ``(h, y)`` as a differentiable composite ``f(x, branch, weight, bias)``
    (the sum in float32, float64 if either input is, stored in ``x``'s dtype, as the kernels)."""
    ln = _ln_composite(eps, y_dtype)

    def f(x, branch, w, b):
        h = residual_sum(x, branch)
        return h, ln(h, w, b)

    return f


def _setup_context(ctx, inputs, output):
    x, branch, weight, bias, eps, y_dtype = inputs
    h, y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # An unused h (the final norm) or y gives None, not a zero tensor to read.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, weight, bias, mean, rstd)
    ctx.eps = eps
    ctx.branch_dtype = branch.dtype
    ctx.y_dtype = y.dtype


def _backward(ctx, grad_h, grad_y, grad_mean, grad_rstd):
    h, weight, bias, mean, rstd = ctx.saved_tensors
    need_x, need_branch, need_w, need_b = ctx.needs_input_grad[:4]
    need_h = need_x or need_branch
    if grad_y is None:
        # y is unused: h's gradient passes through unchanged.
        dh, dw, db = (grad_h if need_h else None), None, None
    elif torch.is_grad_enabled() or has_tangent((grad_h, grad_y)):
        # A second-order graph is being built (create_graph=True, torch.func),
        # or a cotangent is a dual tensor (forward-over-reverse): differentiate
        # the composite LayerNorm, whose backward is itself differentiable.  h is
        # a saved output, so this graph reaches x and branch through this node again.
        f = _ln_composite(ctx.eps, ctx.y_dtype)
        dh, dw, db = vjp(f, (h, weight, bias), grad_y, (need_h, need_w, need_b))
        if need_h and grad_h is not None:
            dh = dh + grad_h
    else:
        branch_dtype = ctx.branch_dtype if need_branch and ctx.branch_dtype != h.dtype else None
        dh, dbranch, dw, db = torch.ops.swin_ext.add_layernorm_bwd(
            grad_h, grad_y, h, weight, mean, rstd, branch_dtype
        )
        if branch_dtype is not None:
            return (dh if need_x else None), dbranch, dw, db, None, None
    if dh is None:
        return None, None, dw, db, None, None
    # x and branch get the same gradient (h = x + branch), in their own dtypes.
    dbranch = dh.to(ctx.branch_dtype) if need_branch else None
    return (dh if need_x else None), dbranch, dw, db, None, None


def _vjp(h, weight, bias, grad_y, eps, y_dtype, needs):
    """``swin_ext::add_layernorm_vjp``, the higher-order backward of the C++ autograd kernel: the
    LayerNorm part, ``[dh, dweight, dbias]``, through the composite (the kernel adds ``grad_h``)."""
    return vjp_list(_ln_composite(eps, y_dtype), (h, weight, bias), grad_y, needs)


class _AddLayerNormFn(torch.autograd.Function):
    """The add + LayerNorm op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, branch, weight, bias, eps, y_dtype):
        return torch.ops.swin_ext.add_layernorm_fwd(x, branch, weight, bias, eps, y_dtype)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


# --------------------------------------------------------------------------- vmap


def _fwd_vmap(info, in_dims, x, branch, weight, bias, eps, y_dtype):
    xd, bd, wd, bbd = in_dims[:4]
    if wd is None and bbd is None:
        # The op is row-wise over the leading dims: the vmapped dim is one more of them.
        V = info.batch_size
        xx = x.movedim(xd, 0) if xd is not None else x.expand(V, *x.shape)
        br = branch.movedim(bd, 0) if bd is not None else branch.expand(V, *branch.shape)
        out = torch.ops.swin_ext.add_layernorm_fwd(xx, br, weight, bias, eps, y_dtype)
        return out, (0, 0, 0, 0)
    return vmap_loop(torch.ops.swin_ext.add_layernorm_fwd, info, in_dims, x, branch, weight, bias, eps, y_dtype)


# --------------------------------------------------------------------------- registration

if HAS_OPS:
    torch.library.register_fake("swin_ext::add_layernorm_fwd", _fwd_fake)
    torch.library.register_fake("swin_ext::add_layernorm_bwd", _bwd_fake)
    register_vjp("add_layernorm", _vjp)
    torch.library.register_vmap("swin_ext::add_layernorm_fwd", _fwd_vmap)
    register_backward_op("add_layernorm")

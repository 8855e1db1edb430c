"""``patch_merging``: the stage's pending residual add, the 2x2 gather of Swin V1's patch merging and its LayerNorm
over ``4C``, fused.

Raw ops ``swin_ext::patch_merging_{fwd,bwd}``: schemas in ``csrc/op_schemas.h``,
CPU kernel in ``csrc/cpu/patch_merging_cpu.cpp``, CUDA kernels in
``csrc/cuda/patch_merging.cuh``.  The forward takes an optional ``branch``
(the stage's last residual branch, still to be added to ``x``) and an
optional ``y_dtype`` (autocast's), and returns ``(y, mean, rstd)``; the row
statistics (non-differentiable outputs) are what the backward (the LayerNorm
backward and the scatter, one kernel) needs besides ``x`` and ``branch``
(``h = x + branch`` is never stored: the backward recomputes it).  The
backward returns ``(dx, dbranch, dweight, dbias)``, ``dbranch`` in
``branch_dtype`` or an empty ``(0,)`` tensor when that is ``None`` (the
wrapper then passes ``dx`` on for the branch), as ``add_layernorm_bwd``.

This file reads top to bottom: wrapper, fakes, autograd, the
``autograd.Function`` used under ``torch.func``, vmap rule, registration.
"""
from __future__ import annotations

from typing import Callable, Optional

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
from ._validate import FLOAT_DTYPES, acc_dtype, check_merging, dtype_arg, in_dtype, real_arg
from .reference import layer_norm_composite, patch_gather, residual_sum

__all__ = ["patch_merging", "patch_merging_unchecked"]

#: the public ops of this module; ``swin_ext::<name>_fwd`` / ``_bwd`` are their raw ops
OPS = ("patch_merging",)


# --------------------------------------------------------------------------- wrapper


def patch_merging(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    branch: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The stage's pending residual add, the 2x2 patch gather and LayerNorm over the ``4C`` channels, fused.

    One pass forward (``x`` and ``branch`` read once, ``y`` written once; the
    sum ``x + branch`` is never stored) and one backward (``h`` recomputed
    from ``x`` and ``branch``; the gradients of ``x``, ``branch``, ``weight``
    and ``bias`` out, the last two bitwise deterministic).  The LayerNorm
    statistics are right for every finite input, also where torch's float32
    LayerNorm overflows (``|x| >~ 1e19``): see ``csrc/cpu/patch_merging_cpu.cpp``.

    Under ``torch.autocast`` (CPU or CUDA) the output comes out in the
    autocast dtype, ready for the reduction Linear without a cast, as
    :func:`~swin_ext.add_layernorm`'s does.

    Args:
        x: ``(B, H, W, C)`` (the residual stream); odd ``H``/``W`` are
            zero-padded at bottom/right.
        weight: ``(4C,)`` LayerNorm scale.
        bias: ``(4C,)`` LayerNorm shift.
        eps: LayerNorm epsilon, a finite real number ``>= 0``.
        branch: ``None``, or the ``(B, H, W, C)`` branch still to be added to
            ``x`` (any floating dtype; under autocast typically the bf16/fp16
            output of the stage's last Linear): ``h = x + branch`` summed in
            float32 (float64 if either is float64) and rounded to ``x``'s
            dtype, as :func:`~swin_ext.add_layernorm` forms it.  Its gradient
            comes back in its own dtype.
    Returns:
        ``(B, ceil(H/2), ceil(W/2), 4C)`` in ``x``'s dtype (the autocast dtype
        under autocast), channel order x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1)
        (row, col) as the official code.
    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the
        message names it.
    """
    check_merging(x, weight, bias, branch=branch)
    eps = real_arg(eps, "eps", where="swin_ext.patch_merging")
    if eps < 0:
        raise ValueError(f"swin_ext.patch_merging: eps must be >= 0, got {eps}")
    require_ops(x.device)
    return patch_merging_unchecked(x, weight, bias, eps, branch)


def patch_merging_unchecked(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, branch: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """:func:`patch_merging` without its Python argument checks: for callers whose arguments are valid
    by construction (:func:`swin_ext.layers.patch_merging`, from a model's stage).  A bad argument is
    still refused, as a ``RuntimeError`` from the raw op's own checks (``csrc/checks.h``)."""
    acc = acc_dtype(x.dtype)
    args = (x, in_dtype(weight, acc), in_dtype(bias, acc), eps, branch, autocast_dtype(x.device.type))
    if forward_mode(args):
        return composite_call(_composite(eps, args[5] or x.dtype), x, args[1], args[2], branch)
    if functorch_active():
        return _PatchMergingFn.apply(*args)[0]
    return torch.ops.swin_ext.patch_merging_fwd(*args)[0]


# --------------------------------------------------------------------------- fakes


def _fwd_fake(x, weight, bias, eps, branch=None, y_dtype=None):
    where = "swin_ext.patch_merging"
    check_merging(x, weight, bias, raw=True, exact_dtypes=True, branch=branch)
    eps = real_arg(eps, "eps", raw=True, where=where)
    torch._check(eps >= 0, lambda: f"{where}: eps must be finite and >= 0, got {eps}")
    y_dtype = dtype_arg(y_dtype, "y_dtype", raw=True, where=where)
    B, H, W, C = x.shape
    H2, W2 = (H + 1) // 2, (W + 1) // 2
    y = x.new_empty((B, H2, W2, 4 * C), dtype=y_dtype or x.dtype)
    mean = weight.new_empty((B, H2, W2))
    rstd = weight.new_empty((B, H2, W2))
    return y, mean, rstd


def _bwd_fake(grad_out, x, weight, mean, rstd, branch=None, branch_dtype=None):
    where = "swin_ext.patch_merging_bwd"
    check_merging(x, weight, weight, raw=True, exact_dtypes=True, where=where, branch=branch)
    B, H, W, C = x.shape
    H2, W2 = (H + 1) // 2, (W + 1) // 2
    torch._check(
        isinstance(grad_out, torch.Tensor)
        and grad_out.dtype in FLOAT_DTYPES
        and tuple(grad_out.shape) == (B, H2, W2, 4 * C),
        lambda: f"{where}: grad_out must be a floating (B, H2, W2, 4C) = {(B, H2, W2, 4 * C)} tensor, "
        f"got {grad_out.dtype} {tuple(grad_out.shape)}",
    )
    for name, t in (("mean", mean), ("rstd", rstd)):
        torch._check(
            tuple(t.shape) == (B, H2, W2) and t.dtype == acc_dtype(x.dtype),
            lambda: f"{where}: {name} must be {acc_dtype(x.dtype)} {(B, H2, W2)}, got {t.dtype} {tuple(t.shape)}",
        )
    branch_dtype = dtype_arg(branch_dtype, "branch_dtype", raw=True, where=where)
    dbranch = x.new_empty(x.shape, dtype=branch_dtype) if branch_dtype is not None else x.new_empty((0,))
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        dbranch,
        weight.new_empty(weight.shape),
        weight.new_empty(weight.shape),
    )


# --------------------------------------------------------------------------- autograd


def _composite(eps: float, y_dtype: torch.dtype) -> Callable:
    """``patch_merging_fwd``'s output as the differentiable reference composite ``f(x, weight, bias, branch)``:
    the residual sum as the kernels form it (:func:`~swin_ext.ops.reference.residual_sum`), the rest in the
    accumulation dtype like the kernels, returned in ``y_dtype``; its LayerNorm from elementary ops
    (:func:`~swin_ext.ops.reference.layer_norm_composite`: torch's is wrong at second order under torch.func)."""

    def f(x_, w_, b_, br=None):
        h = residual_sum(x_, br)
        return layer_norm_composite(patch_gather(h.to(acc_dtype(h.dtype))), w_, b_, eps).to(y_dtype)

    return f


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, branch, _ = (tuple(inputs) + (None, None))[:6]  # trailing defaults may be left off
    y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # h = x + branch is not stored: the backward recomputes it from x and the branch.
    ctx.save_for_backward(x, weight, bias, mean, rstd, branch)
    ctx.eps = eps
    ctx.y_dtype = y.dtype
    ctx.n_inputs = len(inputs)


def _backward(ctx, grad_y, grad_mean, grad_rstd):
    x, weight, bias, mean, rstd, branch = ctx.saved_tensors
    need_x, need_w, need_b, _, need_branch = (tuple(ctx.needs_input_grad) + (False,))[:5]
    need_branch = need_branch and branch is not None
    if torch.is_grad_enabled() or has_tangent((grad_y,)):
        # Second-order graph or a dual cotangent: through the differentiable composite.
        dx, dw, db, dbranch = vjp(
            _composite(ctx.eps, ctx.y_dtype), (x, weight, bias, branch), grad_y, (need_x, need_w, need_b, need_branch)
        )
        return (dx, dw, db, None, dbranch, None)[: ctx.n_inputs]
    branch_dtype = branch.dtype if need_branch and branch.dtype != x.dtype else None
    dx, dbranch, dw, db = torch.ops.swin_ext.patch_merging_bwd(grad_y, x, weight, mean, rstd, branch, branch_dtype)
    if need_branch and branch_dtype is None:
        dbranch = dx  # x and branch get the same gradient (h = x + branch)
    return ((dx if need_x else None), dw, db, None, (dbranch if need_branch else None), None)[: ctx.n_inputs]


def _vjp(x, weight, bias, branch, grad_y, eps, y_dtype, needs):
    """``swin_ext::patch_merging_vjp``, the higher-order backward of the C++ autograd kernel,
    ``[dx, dweight, dbias, dbranch]``."""
    return vjp_list(_composite(eps, y_dtype), (x, weight, bias, branch), grad_y, needs)


class _PatchMergingFn(torch.autograd.Function):
    """The patch-merging op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps, branch, y_dtype):
        return torch.ops.swin_ext.patch_merging_fwd(x, weight, bias, eps, branch, y_dtype)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


# --------------------------------------------------------------------------- vmap


def _fwd_vmap(info, in_dims, x, weight, bias, eps, branch=None, y_dtype=None):
    xd, wd, bd, _, brd = (tuple(in_dims) + (None,) * 5)[:5]
    if wd is None and bd is None and (xd is not None or brd is not None):
        # Only the maps are batched: the vmapped dim folds into B.
        V = info.batch_size
        xx = x.movedim(xd, 0) if xd is not None else x.expand(V, *x.shape)
        br = None
        if branch is not None:
            br = branch.movedim(brd, 0) if brd is not None else branch.expand(V, *branch.shape)
            br = br.reshape(-1, *br.shape[2:])
        B = xx.shape[1]
        y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(
            xx.reshape(V * B, *xx.shape[2:]), weight, bias, eps, br, y_dtype
        )
        return tuple(t.view(V, B, *t.shape[1:]) for t in (y, mean, rstd)), (0, 0, 0)
    return vmap_loop(torch.ops.swin_ext.patch_merging_fwd, info, in_dims, x, weight, bias, eps, branch, y_dtype)


# --------------------------------------------------------------------------- registration

if HAS_OPS:
    torch.library.register_fake("swin_ext::patch_merging_fwd", _fwd_fake)
    torch.library.register_fake("swin_ext::patch_merging_bwd", _bwd_fake)
    register_vjp("patch_merging", _vjp)
    torch.library.register_vmap("swin_ext::patch_merging_fwd", _fwd_vmap)
    register_backward_op("patch_merging")

"""``bias_gelu``: fc1's epilogue, ``GELU(z + bias)`` with the exact (erf) GELU.

Raw ops ``swin_ext::bias_gelu_{fwd,bwd}``: schemas in ``csrc/op_schemas.h``,
CPU kernel in ``csrc/cpu/bias_gelu_cpu.cpp``, CUDA kernels in
``csrc/cuda/bias_gelu.cuh``.  The backward writes ``dz`` and the bias
gradient (the column sums of ``dz``) in one pass;
``swin_ext::bias_gelu_bwd_inplace`` writes ``dz`` over ``grad_y`` instead, and
the autograd kernel (``csrc/autograd/bias_gelu_autograd.cpp``) calls it on
the CPU when nothing else holds the incoming gradient.

This file reads top to bottom: wrapper, fakes, autograd, the
``autograd.Function`` used under ``torch.func``, vmap rule, registration.
"""
from __future__ import annotations

import torch

from .._ext import HAS_OPS, require_ops
from ._autograd import (
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
from ._validate import acc_dtype, check_bias_gelu, in_dtype
from .reference import bias_gelu_reference

__all__ = ["bias_gelu", "bias_gelu_unchecked"]

#: the public ops of this module; ``swin_ext::<name>_fwd`` / ``_bwd`` are their raw ops
OPS = ("bias_gelu",)


# --------------------------------------------------------------------------- wrapper


def bias_gelu(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """fc1's epilogue: ``GELU(z + bias)``, the exact (erf) GELU of ``nn.GELU()``.

    ``z`` is the output of fc1's GEMM *without* its bias (``F.linear(x,
    weight)``), so the bias add, the GELU and, in the backward, the GELU's
    derivative and the bias gradient (the column sums of ``dz``) each take
    one pass: the forward reads ``z`` and writes ``y``, the backward reads
    ``dy`` and ``z`` and writes ``dz`` and ``dbias`` (deterministic
    fixed-order partials) -- torch's GELU backward followed by the bias
    gradient reads ``dz`` once more.  Statistics in float32 (float64).

    Args:
        z: ``(..., K)`` float32/64/16 or bfloat16 (under autocast, the
            low-precision GEMM output).
        bias: ``(K,)``, any floating dtype (used in the accumulation dtype).
    Returns:
        ``(..., K)`` in ``z``'s dtype.
    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the
        message names it.
    """
    check_bias_gelu(z, bias)
    require_ops(z.device)
    return bias_gelu_unchecked(z, bias)


def bias_gelu_unchecked(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """:func:`bias_gelu` without its Python argument checks: for callers whose arguments are valid by
    construction (:func:`swin_ext.layers.linear_gelu`: ``z`` the bias-free output of fc1, ``bias``
    fc1's).  A bad argument is still refused, as a ``RuntimeError`` from the raw op's own checks."""
    args = (z, in_dtype(bias, acc_dtype(z.dtype)))
    if forward_mode(args):
        return composite_call(bias_gelu_reference, *args)
    if functorch_active():
        return _BiasGeluFn.apply(*args)
    return torch.ops.swin_ext.bias_gelu_fwd(*args)


# --------------------------------------------------------------------------- fakes


def _fwd_fake(z, bias):
    check_bias_gelu(z, bias, raw=True, exact_dtypes=True)
    return z.new_empty(z.shape)


def _bwd_fake(grad_y, z, bias):
    where = "swin_ext.bias_gelu_bwd"
    check_bias_gelu(z, bias, raw=True, exact_dtypes=True, where=where)
    torch._check(
        tuple(grad_y.shape) == tuple(z.shape) and grad_y.dtype == z.dtype,
        lambda: f"{where}: grad_y must be {z.dtype} {tuple(z.shape)}, got {grad_y.dtype} {tuple(grad_y.shape)}",
    )
    return z.new_empty(z.shape), bias.new_empty(bias.shape)


def _bwd_inplace_fake(grad_y, z, bias):
    _bwd_fake(grad_y, z, bias)
    return bias.new_empty(bias.shape)


# --------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    z, bias = inputs
    ctx.save_for_backward(z, bias)


def _backward(ctx, grad_y):
    z, bias = ctx.saved_tensors
    if torch.is_grad_enabled() or has_tangent((grad_y,)):
        # Second-order graph or a dual cotangent: through the differentiable reference composite.
        return vjp(bias_gelu_reference, (z, bias), grad_y, ctx.needs_input_grad[:2])
    dz, dbias = torch.ops.swin_ext.bias_gelu_bwd(grad_y.contiguous(), z, bias)
    return dz, dbias


def _vjp(z, bias, grad_y, needs):
    """``swin_ext::bias_gelu_vjp``, the higher-order backward of the C++ autograd kernel, ``[dz, dbias]``."""
    return vjp_list(bias_gelu_reference, (z, bias), grad_y, needs)


class _BiasGeluFn(torch.autograd.Function):
    """The bias + GELU op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, bias):
        return torch.ops.swin_ext.bias_gelu_fwd(z, bias)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


# --------------------------------------------------------------------------- vmap


def _fwd_vmap(info, in_dims, z, bias):
    zd, bd = in_dims
    if bd is None:
        # The op is row-wise over the leading dims: the vmapped dim is one more of them.
        return torch.ops.swin_ext.bias_gelu_fwd(z, bias), zd
    return vmap_loop(lambda *a: (torch.ops.swin_ext.bias_gelu_fwd(*a),), info, in_dims, z, bias)[0][0], 0


# --------------------------------------------------------------------------- registration

if HAS_OPS:
    torch.library.register_fake("swin_ext::bias_gelu_fwd", _fwd_fake)
    torch.library.register_fake("swin_ext::bias_gelu_bwd", _bwd_fake)
    torch.library.register_fake("swin_ext::bias_gelu_bwd_inplace", _bwd_inplace_fake)
    register_vjp("bias_gelu", _vjp)
    torch.library.register_vmap("swin_ext::bias_gelu_fwd", _fwd_vmap)
    register_backward_op("bias_gelu")

"""``window_attention`` (Swin V1) and ``window_attention_v2`` (Swin V2's cosine attention).

Raw ops ``swin_ext::window_attention{,_v2}_{fwd,bwd}``: schemas in
``csrc/op_schemas.h``, CPU kernels in ``csrc/cpu/window_attention{,_v2}_cpu.cpp``,
CUDA kernels in ``csrc/cuda/attention/``.  The forward returns ``(out, lse)``:
``lse`` (the per-row log-sum-exp, shape ``(B, windows, heads, N)``, in the
accumulation dtype) is all the backward needs besides the inputs, which
recomputes the probabilities (flash-attention's scheme) -- so ``lse`` is a
non-differentiable output.

This file reads top to bottom: wrappers, fakes, autograd, the
``autograd.Function`` used under ``torch.func``, vmap rules, registration.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

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
from ._validate import acc_dtype, attention_scale, check_attention, check_attention_v2, in_dtype, num_windows, real_arg
from .reference import window_attention_reference, window_attention_v2_reference

__all__ = ["window_attention", "window_attention_v2", "window_attention_unchecked", "window_attention_v2_unchecked"]

#: the public ops of this module; ``swin_ext::<name>_fwd`` / ``_bwd`` are their raw ops
OPS = ("window_attention", "window_attention_v2")


# --------------------------------------------------------------------------- wrappers


def window_attention(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window_size: Union[int, Sequence[int]],
    shift: Union[int, Sequence[int]] = 0,
    scale: Optional[float] = None,
    qkv_pad: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused (shifted-)window multi-head self-attention on a 2-D map or a 3-D clip (Video Swin).

    The map is padded at the end of each axis to a multiple of the window,
    rolled by ``-shift``, cut into windows, attended with the relative-position
    ``bias`` and the shift mask (up to 27 shift regions in 3-D), and put back;
    all by index math in the kernel.  The window is taken as given (one larger
    than the map pads it); the video model's rule that shrinks it to a smaller
    map is :func:`swin_ext.ops.reference.clamp_window`.

    Args:
        qkv: ``(B, H, W, 3C)`` or ``(B, T, H, W, 3C)``, the output of the qkv
            ``Linear`` (float32/64/16, bfloat16).
        bias: ``(heads, N, N)`` relative-position bias, ``N`` the window's
            token count (``ws**2``; ``wt * wh * ww``, 392 for Video Swin's
            ``(8, 7, 7)``; at most ``MAX_WINDOW_TOKENS``); or the
            relative-position table itself, ``(rows, heads)`` with ``rows =
            (2wh-1)(2ww-1)`` (``(2wt-1)(2wh-1)(2ww-1)`` in 3-D), read through
            the standard index :func:`swin_ext.layers.pos_bias.relative_position_index`
            (the one of every official / timm / torchvision / transformers
            checkpoint): the kernels gather the bias themselves and the
            gradient is the table's, each row summed in a fixed order, so no
            ``(heads, N, N)`` bias or gradient is built per call.  A model with
            another lookup passes the gathered bias.
        window_size: an int in ``[1, 2**15]`` (the same on every axis) or one
            per map axis: ``(wh, ww)`` / ``(wt, wh, ww)``.
        shift: an int or one per map axis, ``0 <= s < window`` on every axis
            (floats and bools are refused, never truncated).
        scale: logit scale, a finite real number (not a tensor); default
            ``(C / heads) ** -0.5``.
        qkv_pad: ``(3C,)`` qkv value of padding tokens (the ``Linear``'s bias,
            as the map is zero-padded before it); ``None`` means zeros.
    Returns:
        ``(B, [T,] H, W, C)``, same dtype as ``qkv``.
    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the
        message names it.
    """
    window, shifts, heads = check_attention(qkv, bias, qkv_pad, window_size, shift)
    scale = attention_scale(scale, qkv, heads, "swin_ext.window_attention")
    require_ops(qkv.device)
    return window_attention_unchecked(qkv, bias, window, shifts, scale, qkv_pad)


def window_attention_unchecked(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window: Sequence[int],
    shift: Sequence[int],
    scale: float,
    qkv_pad: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`window_attention` without its Python argument checks: for callers whose arguments are
    valid by construction (the layers of :mod:`swin_ext.layers`, fed by a model's own modules).

    ``window`` and ``shift`` hold one int per map axis, ``scale`` is a float; the rest as
    :func:`window_attention`.  Why: the checks cost the host ~25 us a call, a tenth of an eager
    Swin-T forward's host time (``benchmarks/host_overhead.py``), which a host-bound GPU step waits
    on.  A bad argument is still refused, as a ``RuntimeError`` from the raw op's own checks
    (``csrc/checks.h``, the same rules) rather than the ``TypeError`` / ``ValueError`` naming it here.
    """
    args = (qkv, in_dtype(bias, acc_dtype(qkv.dtype)), in_dtype(qkv_pad, qkv.dtype), list(window), list(shift), scale)
    if forward_mode(args):
        return composite_call(_composite(tuple(window), tuple(shift), scale), *args[:3])
    if functorch_active():
        return _WindowAttentionFn.apply(*args)[0]
    return torch.ops.swin_ext.window_attention_fwd(*args)[0]


def window_attention_v2(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    head_scale: torch.Tensor,
    window_size: int,
    shift: Union[int, Sequence[int]] = 0,
    qkv_pad: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused Swin V2 scaled cosine attention in (shifted) windows.

    As :func:`window_attention`, except that q and k are L2-normalized per
    head (``F.normalize``) and the logits of head ``h`` are multiplied by
    ``head_scale[h]`` instead of a scalar scale.  The normalization runs
    inside the attention kernels, on the gathered rows (no normalized copy of
    ``qkv`` on CUDA); its backward is chained in the backward kernels, which
    also return the gradient of ``head_scale``.

    Args:
        qkv: ``(B, H, W, 3C)`` output of the qkv ``Linear`` (float32/64/16, bfloat16).
        bias: ``(heads, N, N)`` continuous position bias (``16 * sigmoid(cpb)``),
            ``N = window_size**2``, or its ``((2ws-1)**2, heads)`` table (as
            :func:`window_attention`'s); differentiable.
        head_scale: ``(heads,)`` per-head logit scale, the model's
            ``exp(clamp(logit_scale, max=log(100)))``; differentiable.
        window_size: window side, an int in ``[1, 2**15]``.
        shift: ``s`` or ``(s_h, s_w)`` ints with ``0 <= s < ws``.
        qkv_pad: ``(3C,)`` qkv value of padding tokens (the ``Linear``'s bias);
            ``None`` means zeros.
    Returns:
        ``(B, H, W, C)``, same dtype as ``qkv``.
    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the
        message names it.
    """
    ws, sh, sw, _ = check_attention_v2(qkv, bias, head_scale, qkv_pad, window_size, shift)
    require_ops(qkv.device)
    return window_attention_v2_unchecked(qkv, bias, head_scale, ws, (sh, sw), qkv_pad)


def window_attention_v2_unchecked(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    head_scale: torch.Tensor,
    window_size: int,
    shift: Sequence[int],
    qkv_pad: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`window_attention_v2` without its Python argument checks, as
    :func:`window_attention_unchecked` (``window_size`` an int, ``shift`` a pair of ints)."""
    ws, (sh, sw) = window_size, shift
    acc = acc_dtype(qkv.dtype)
    args = (qkv, in_dtype(bias, acc), in_dtype(qkv_pad, qkv.dtype), in_dtype(head_scale, acc), ws, sh, sw)
    if forward_mode(args):
        return composite_call(_v2_composite(ws, sh, sw), *args[:4])
    if functorch_active():
        return _WindowAttentionV2Fn.apply(*args)[0]
    return torch.ops.swin_ext.window_attention_v2_fwd(*args)[0]


# --------------------------------------------------------------------------- fakes


def _fwd_outputs(qkv, window, heads):
    """The fake ``(out, lse)`` of both attention forwards (``window``: one entry per map axis)."""
    nW = num_windows(qkv.shape[1:-1], window)
    out = qkv.new_empty((*qkv.shape[:-1], qkv.shape[-1] // 3))
    lse = qkv.new_empty((qkv.shape[0], nW, heads, math.prod(window)), dtype=acc_dtype(qkv.dtype))
    return out, lse


def _bwd_outputs(grad_out, qkv, bias, lse, window, heads, where):
    """Checks grad_out and lse of both attention backwards; the fake ``(dqkv, dbias, dpad)``."""
    want = (*qkv.shape[:-1], qkv.shape[-1] // 3)
    torch._check(
        tuple(grad_out.shape) == want and grad_out.dtype == qkv.dtype,
        lambda: f"{where}: grad_out must be {qkv.dtype} {want}, got {grad_out.dtype} {tuple(grad_out.shape)}",
    )
    lse_shape = (qkv.shape[0], num_windows(qkv.shape[1:-1], window), heads, math.prod(window))
    torch._check(
        tuple(lse.shape) == lse_shape and lse.dtype == acc_dtype(qkv.dtype),
        lambda: f"{where}: lse must be {acc_dtype(qkv.dtype)} {lse_shape}, got {lse.dtype} {tuple(lse.shape)}",
    )
    return (
        torch.empty_like(qkv, memory_format=torch.contiguous_format),
        bias.new_empty(bias.shape),
        bias.new_empty((qkv.shape[-1],)),
    )


def _fwd_fake(qkv, bias, qkv_pad, window_size, shift, scale):
    window, _, heads = check_attention(qkv, bias, qkv_pad, window_size, shift, raw=True, exact_dtypes=True)
    real_arg(scale, "scale", raw=True, where="swin_ext.window_attention")
    return _fwd_outputs(qkv, window, heads)


def _bwd_fake(grad_out, qkv, bias, qkv_pad, lse, window_size, shift, scale):
    where = "swin_ext.window_attention_bwd"
    window, _, heads = check_attention(qkv, bias, qkv_pad, window_size, shift, raw=True, exact_dtypes=True,
                                       where=where)
    return _bwd_outputs(grad_out, qkv, bias, lse, window, heads, where)


def _v2_fwd_fake(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w):
    ws, _, _, heads = check_attention_v2(
        qkv, bias, head_scale, qkv_pad, window_size, (shift_h, shift_w), raw=True, exact_dtypes=True
    )
    return _fwd_outputs(qkv, (ws, ws), heads)


def _v2_bwd_fake(grad_out, qkv, bias, qkv_pad, head_scale, lse, window_size, shift_h, shift_w):
    where = "swin_ext.window_attention_v2_bwd"
    ws, _, _, heads = check_attention_v2(
        qkv, bias, head_scale, qkv_pad, window_size, (shift_h, shift_w), raw=True, exact_dtypes=True, where=where
    )
    return _bwd_outputs(grad_out, qkv, bias, lse, (ws, ws), heads, where) + (head_scale.new_empty(head_scale.shape),)


# --------------------------------------------------------------------------- autograd


def _composite(window: Sequence[int], shift: Sequence[int], scale: float) -> Callable:
    """``window_attention_fwd``'s output as the differentiable reference composite ``f(qkv, bias, qkv_pad)``,
    in the accumulation dtype like the kernels: the second-order backward and the forward-mode path.
    ``window`` and ``shift`` have one entry per map axis."""

    def f(q, b, p):
        acc = acc_dtype(q.dtype)
        out = window_attention_reference(q.to(acc), b, tuple(window), tuple(shift), scale,
                                         None if p is None else p.to(acc))
        return out.to(q.dtype)

    return f


def _v2_composite(window_size: int, shift_h: int, shift_w: int) -> Callable:
    """``window_attention_v2_fwd``'s output as the differentiable reference composite
    ``f(qkv, bias, qkv_pad, head_scale)``, in the accumulation dtype like the kernels."""

    def f(q, b, p, s):
        acc = acc_dtype(q.dtype)
        out = window_attention_v2_reference(
            q.to(acc), b, s, window_size, (shift_h, shift_w), None if p is None else p.to(acc)
        )
        return out.to(q.dtype)

    return f


def _setup_context(ctx, inputs, output):
    qkv, bias, qkv_pad, window_size, shift, scale = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, bias, qkv_pad, lse)
    ctx.geometry = (tuple(window_size), tuple(shift), scale)
    ctx.has_pad = qkv_pad is not None


def _backward(ctx, grad_out, grad_lse):
    qkv, bias, qkv_pad, lse = ctx.saved_tensors
    window, shift, scale = ctx.geometry
    if torch.is_grad_enabled() or has_tangent((grad_out,)):
        # A second-order graph is being built (create_graph=True, torch.func), or the
        # cotangent is a dual tensor (forward-over-reverse): differentiate the composite.
        f = _composite(window, shift, scale)
        dqkv, dbias, dpad = vjp(f, (qkv, bias, qkv_pad), grad_out, ctx.needs_input_grad[:3])
        return dqkv, dbias, dpad, None, None, None
    dqkv, dbias, dpad = torch.ops.swin_ext.window_attention_bwd(
        grad_out, qkv, bias, qkv_pad, lse, list(window), list(shift), scale
    )
    dpad = dpad.to(qkv.dtype) if ctx.has_pad else None
    return dqkv, dbias, dpad, None, None, None


def _v2_setup_context(ctx, inputs, output):
    qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, bias, qkv_pad, head_scale, lse)
    ctx.geometry = (window_size, shift_h, shift_w)
    ctx.has_pad = qkv_pad is not None


def _v2_backward(ctx, grad_out, grad_lse):
    qkv, bias, qkv_pad, head_scale, lse = ctx.saved_tensors
    window_size, shift_h, shift_w = ctx.geometry
    if torch.is_grad_enabled() or has_tangent((grad_out,)):
        # Second-order graph or a dual cotangent: through the differentiable composite.
        f = _v2_composite(window_size, shift_h, shift_w)
        dqkv, dbias, dpad, dscale = vjp(f, (qkv, bias, qkv_pad, head_scale), grad_out, ctx.needs_input_grad[:4])
        return dqkv, dbias, dpad, dscale, None, None, None
    dqkv, dbias, dpad, dscale = torch.ops.swin_ext.window_attention_v2_bwd(
        grad_out, qkv, bias, qkv_pad, head_scale, lse, window_size, shift_h, shift_w
    )
    dpad = dpad.to(qkv.dtype) if ctx.has_pad else None
    return dqkv, dbias, dpad, dscale, None, None, None


def _vjp(qkv, bias, qkv_pad, grad_out, window_size, shift, scale, needs):
    """``swin_ext::window_attention_vjp``, the higher-order backward of the C++ autograd kernel,
    ``[dqkv, dbias, dqkv_pad]``."""
    return vjp_list(_composite(window_size, shift, scale), (qkv, bias, qkv_pad), grad_out, needs)


def _v2_vjp(qkv, bias, qkv_pad, head_scale, grad_out, window_size, shift_h, shift_w, needs):
    """``swin_ext::window_attention_v2_vjp``, the higher-order backward of the C++ autograd kernel,
    ``[dqkv, dbias, dqkv_pad, dhead_scale]``."""
    return vjp_list(_v2_composite(window_size, shift_h, shift_w), (qkv, bias, qkv_pad, head_scale), grad_out, needs)


class _WindowAttentionFn(torch.autograd.Function):
    """The attention op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(qkv, bias, qkv_pad, window_size, shift, scale):
        return torch.ops.swin_ext.window_attention_fwd(qkv, bias, qkv_pad, window_size, shift, scale)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


class _WindowAttentionV2Fn(torch.autograd.Function):
    """The V2 attention op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w):
        return torch.ops.swin_ext.window_attention_v2_fwd(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w)

    setup_context = staticmethod(_v2_setup_context)
    backward = staticmethod(_v2_backward)


# --------------------------------------------------------------------------- vmap


def _fwd_vmap(info, in_dims, qkv, bias, qkv_pad, window_size, shift, scale):
    qd, bd, pd = in_dims[:3]
    if qd is not None and bd is None and pd is None:
        # Only the input map is batched: the batch folds into B.
        q = qkv.movedim(qd, 0)
        V, B = q.shape[:2]
        out, lse = torch.ops.swin_ext.window_attention_fwd(
            q.reshape(V * B, *q.shape[2:]), bias, qkv_pad, window_size, shift, scale
        )
        return (out.view(V, B, *out.shape[1:]), lse.view(V, B, *lse.shape[1:])), (0, 0)
    return vmap_loop(torch.ops.swin_ext.window_attention_fwd, info, in_dims,
                     qkv, bias, qkv_pad, window_size, shift, scale)


def _v2_fwd_vmap(info, in_dims, qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w):
    if in_dims[0] is not None and all(d is None for d in in_dims[1:4]):
        q = qkv.movedim(in_dims[0], 0)
        V, B = q.shape[:2]
        out, lse = torch.ops.swin_ext.window_attention_v2_fwd(
            q.reshape(V * B, *q.shape[2:]), bias, qkv_pad, head_scale, window_size, shift_h, shift_w
        )
        return (out.view(V, B, *out.shape[1:]), lse.view(V, B, *lse.shape[1:])), (0, 0)
    return vmap_loop(torch.ops.swin_ext.window_attention_v2_fwd, info, in_dims,
                     qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w)


# --------------------------------------------------------------------------- registration

if HAS_OPS:
    torch.library.register_fake("swin_ext::window_attention_fwd", _fwd_fake)
    torch.library.register_fake("swin_ext::window_attention_bwd", _bwd_fake)
    register_vjp("window_attention", _vjp)
    torch.library.register_vmap("swin_ext::window_attention_fwd", _fwd_vmap)
    register_backward_op("window_attention")

    torch.library.register_fake("swin_ext::window_attention_v2_fwd", _v2_fwd_fake)
    torch.library.register_fake("swin_ext::window_attention_v2_bwd", _v2_bwd_fake)
    register_vjp("window_attention_v2", _v2_vjp)
    torch.library.register_vmap("swin_ext::window_attention_v2_fwd", _v2_fwd_vmap)
    register_backward_op("window_attention_v2")

"""Python entry points of swin_ext's compiled operators.

``window_attention``, ``window_attention_v2``, ``patch_merging`` and ``add_layernorm`` validate their arguments, call the
``torch.ops.swin_ext`` operators and are differentiable: autograd is wired
with ``torch.library.register_autograd`` (the backward is itself a custom
op) and every op has a ``register_fake`` kernel that runs the same checks as
the compiled kernels, so the model runs under ``torch.compile(fullgraph=True)``
without graph breaks and a bad argument is refused under the meta device,
``torch.compile`` and ``torch.export`` as it is eagerly.

Higher-order autograd: the first-order backward runs the fused backward
kernel; when a second-order graph is requested (``create_graph=True``,
``torch.autograd.gradgradcheck``, gradient penalties) the backward is instead
computed through the plain-PyTorch composite of :mod:`swin_ext.reference`,
which is differentiable to any order.  ``torch.func`` transforms (``grad``,
``vjp``, ``jacrev``, ``vmap`` and their compositions, e.g. per-sample
gradients) go through an ``autograd.Function`` with ``setup_context`` and a
generated vmap rule; the operators have vmap rules of their own.

The auxiliary outputs of the forward ops (``lse``; ``mean`` and ``rstd``) are
marked non-differentiable.  Under ``torch.autocast`` ``add_layernorm`` keeps
the residual stream in its own dtype and returns the normalized output in the
autocast dtype (read with ``torch.get_autocast_dtype``, which ``torch.compile``
traces), so the Linear after it needs no cast.  The backward ops are not differentiable
themselves: building a graph through them directly raises.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ._ext import HAS_OPS, require_ops
from ._validate import (
    acc_dtype,
    attention_scale,
    check_add_layernorm,
    check_add_layernorm_bwd,
    check_attention,
    check_attention_v2,
    check_bias_gelu,
    check_merging,
    dtype_arg,
    FLOAT_DTYPES,
    real_arg,
)

__all__ = ["window_attention", "window_attention_v2", "patch_merging", "add_layernorm", "bias_gelu", "acc_dtype", "autocast_dtype"]


def _functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is running (never while compiling)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


# --------------------------------------------------------------------------- attention


def window_attention(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window_size: int,
    shift: Union[int, Sequence[int]] = 0,
    scale: Optional[float] = None,
    qkv_pad: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused (shifted-)window multi-head self-attention.

    The map is padded at bottom/right to a multiple of ``window_size``, rolled
    by ``-shift``, cut into windows, attended with the relative-position
    ``bias`` and the shift mask, and put back; all by index math in the kernel.

    Args:
        qkv: ``(B, H, W, 3C)`` output of the qkv ``Linear`` (float32/64/16, bfloat16).
        bias: ``(heads, N, N)`` relative-position bias, ``N = window_size**2``.
        window_size: window side, an int in ``[1, 2**15]``.
        shift: ``s`` or ``(s_h, s_w)`` ints with ``0 <= s < ws`` (floats and
            bools are refused, never truncated).
        scale: logit scale, a finite real number (not a tensor); default
            ``(C / heads) ** -0.5``.
        qkv_pad: ``(3C,)`` qkv value of padding tokens (the ``Linear``'s bias,
            as the map is zero-padded before it); ``None`` means zeros.
    Returns:
        ``(B, H, W, C)``, same dtype as ``qkv``.
    Raises:
        TypeError, ValueError: an argument of the wrong type or value; the
        message names it.
    """
    ws, sh, sw, heads = check_attention(qkv, bias, qkv_pad, window_size, shift)
    scale = attention_scale(scale, qkv, heads, "swin_ext.window_attention")
    if qkv_pad is not None:
        qkv_pad = qkv_pad.to(qkv.dtype)
    require_ops(qkv.device)
    args = (qkv, bias.to(acc_dtype(qkv.dtype)), qkv_pad, ws, sh, sw, scale)
    if _functorch_active():
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
            ``N = window_size**2``; differentiable.
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
    if qkv_pad is not None:
        qkv_pad = qkv_pad.to(qkv.dtype)
    require_ops(qkv.device)
    acc = acc_dtype(qkv.dtype)
    args = (qkv, bias.to(acc), qkv_pad, head_scale.to(acc), ws, sh, sw)
    if _functorch_active():
        return _WindowAttentionV2Fn.apply(*args)[0]
    return torch.ops.swin_ext.window_attention_v2_fwd(*args)[0]


# --------------------------------------------------------------------------- patch merging


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
    :func:`add_layernorm`'s does.

    Args:
        x: ``(B, H, W, C)`` (the residual stream); odd ``H``/``W`` are
            zero-padded at bottom/right.
        weight, bias: ``(4C,)`` LayerNorm affine parameters.
        eps: LayerNorm epsilon, a finite real number ``>= 0``.
        branch: ``None``, or the ``(B, H, W, C)`` branch still to be added to
            ``x`` (any floating dtype; under autocast typically the bf16/fp16
            output of the stage's last Linear): ``h = x + branch`` summed in
            float32 (float64 if either is float64) and rounded to ``x``'s
            dtype, as :func:`add_layernorm` forms it.  Its gradient comes back
            in its own dtype.
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
    acc = acc_dtype(x.dtype)
    args = (x, weight.to(acc), bias.to(acc), eps, branch, autocast_dtype(x.device.type))
    if _functorch_active():
        return _PatchMergingFn.apply(*args)[0]
    return torch.ops.swin_ext.patch_merging_fwd(*args)[0]


# --------------------------------------------------------------------------- add + LayerNorm


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


def add_layernorm(
    x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with LayerNorm: ``h = x + branch``, ``y = LayerNorm(h)``.

    One pass over the rows forward (``x`` and ``branch`` read once, ``h`` and
    ``y`` written once) and one backward (the gradients reaching ``h`` and
    ``y`` in, those of ``x``, ``branch``, ``weight`` and ``bias`` out; the
    last two bitwise deterministic).  The LayerNorm statistics are float32
    (float64 for float64 ``x``) and right for every finite input, as
    :func:`patch_merging`'s.

    Under ``torch.autocast`` (CPU or CUDA) the residual stream keeps ``x``'s
    dtype and ``y`` comes out in the autocast dtype, ready for the next
    Linear without a cast.

    Args:
        x: ``(..., C)`` the residual stream (float32/64/16, bfloat16).
        branch: ``(..., C)`` the branch added to it, any of those dtypes
            (under autocast typically the bf16/fp16 output of a Linear).
        weight, bias: ``(C,)`` LayerNorm affine parameters.
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
    acc = acc_dtype(x.dtype)
    args = (x, branch, weight.to(acc), bias.to(acc), eps, autocast_dtype(x.device.type))
    if _functorch_active():
        h, y, _, _ = _AddLayerNormFn.apply(*args)
    else:
        h, y, _, _ = torch.ops.swin_ext.add_layernorm_fwd(*args)
    return h, y


# --------------------------------------------------------------------------- bias + GELU


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
    """
    check_bias_gelu(z, bias)
    require_ops(z.device)
    args = (z, bias.to(acc_dtype(z.dtype)))
    if _functorch_active():
        return _BiasGeluFn.apply(*args)
    return torch.ops.swin_ext.bias_gelu_fwd(*args)


# --------------------------------------------------------------------------- autograd


def _vjp(
    fn: Callable[..., torch.Tensor],
    primals: Sequence[Optional[torch.Tensor]],
    cotangent: torch.Tensor,
    needs: Sequence[bool],
) -> Tuple[Optional[torch.Tensor], ...]:
    """``cotangent``-vector-Jacobian product of ``fn`` at ``primals`` for the inputs in ``needs``.

    Through ``torch.func.vjp``, so the result is differentiable again: by
    autograd (a backward with ``create_graph=True``) and by enclosing
    torch.func transforms (``grad`` of ``grad``, ``jacrev``, ``vmap``).
    Inputs that do not reach the output get zeros.
    """
    idx = [i for i, (p, n) in enumerate(zip(primals, needs)) if n and p is not None]
    grads: list = [None] * len(primals)
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


def _attention_setup_context(ctx, inputs, output):
    qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, bias, qkv_pad, lse)
    ctx.geometry = (window_size, shift_h, shift_w, scale)
    ctx.has_pad = qkv_pad is not None


def _attention_backward(ctx, grad_out, grad_lse):
    qkv, bias, qkv_pad, lse = ctx.saved_tensors
    window_size, shift_h, shift_w, scale = ctx.geometry
    if torch.is_grad_enabled():
        # A second-order graph is being built (create_graph=True, torch.func):
        # differentiate the reference composite, whose backward is itself
        # differentiable.  Computed in the accumulation dtype, like the kernels.
        from .reference import window_attention_reference

        acc = acc_dtype(qkv.dtype)

        def f(q, b, p):
            out = window_attention_reference(
                q.to(acc), b, window_size, (shift_h, shift_w), scale, None if p is None else p.to(acc)
            )
            return out.to(q.dtype)

        dqkv, dbias, dpad = _vjp(f, (qkv, bias, qkv_pad), grad_out, ctx.needs_input_grad[:3])
        return dqkv, dbias, dpad, None, None, None, None
    dqkv, dbias, dpad = torch.ops.swin_ext.window_attention_bwd(
        grad_out, qkv, bias, qkv_pad, lse, window_size, shift_h, shift_w, scale
    )
    dpad = dpad.to(qkv.dtype) if ctx.has_pad else None
    return dqkv, dbias, dpad, None, None, None, None


def _attention_v2_setup_context(ctx, inputs, output):
    qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, bias, qkv_pad, head_scale, lse)
    ctx.geometry = (window_size, shift_h, shift_w)
    ctx.has_pad = qkv_pad is not None


def _attention_v2_backward(ctx, grad_out, grad_lse):
    qkv, bias, qkv_pad, head_scale, lse = ctx.saved_tensors
    window_size, shift_h, shift_w = ctx.geometry
    if torch.is_grad_enabled():
        # Second-order graph: through the differentiable reference composite,
        # in the accumulation dtype like the kernels.
        from .reference import window_attention_v2_reference

        acc = acc_dtype(qkv.dtype)

        def f(q, b, p, s):
            out = window_attention_v2_reference(
                q.to(acc), b, s, window_size, (shift_h, shift_w), None if p is None else p.to(acc)
            )
            return out.to(q.dtype)

        dqkv, dbias, dpad, dscale = _vjp(f, (qkv, bias, qkv_pad, head_scale), grad_out, ctx.needs_input_grad[:4])
        return dqkv, dbias, dpad, dscale, None, None, None
    dqkv, dbias, dpad, dscale = torch.ops.swin_ext.window_attention_v2_bwd(
        grad_out, qkv, bias, qkv_pad, head_scale, lse, window_size, shift_h, shift_w
    )
    dpad = dpad.to(qkv.dtype) if ctx.has_pad else None
    return dqkv, dbias, dpad, dscale, None, None, None


def _bias_gelu_setup_context(ctx, inputs, output):
    z, bias = inputs
    ctx.save_for_backward(z, bias)


def _bias_gelu_backward(ctx, grad_y):
    z, bias = ctx.saved_tensors
    if torch.is_grad_enabled():
        # Second-order graph: through the differentiable reference composite.
        from .reference import bias_gelu_reference

        return _vjp(bias_gelu_reference, (z, bias), grad_y, ctx.needs_input_grad[:2])
    dz, dbias = torch.ops.swin_ext.bias_gelu_bwd(grad_y.contiguous(), z, bias)
    return dz, dbias


def _merging_setup_context(ctx, inputs, output):
    x, weight, bias, eps, branch, _ = (tuple(inputs) + (None, None))[:6]  # trailing defaults may be left off
    y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # h = x + branch is not stored: the backward recomputes it from x and the branch.
    ctx.save_for_backward(x, weight, bias, mean, rstd, branch)
    ctx.eps = eps
    ctx.y_dtype = y.dtype
    ctx.n_inputs = len(inputs)


def _merging_backward(ctx, grad_y, grad_mean, grad_rstd):
    x, weight, bias, mean, rstd, branch = ctx.saved_tensors
    need_x, need_w, need_b, _, need_branch = (tuple(ctx.needs_input_grad) + (False,))[:5]
    need_branch = need_branch and branch is not None
    if torch.is_grad_enabled():
        # Second-order graph: through the differentiable reference composite,
        # in the accumulation dtype like the kernels.
        from .reference import patch_merging_reference, residual_sum

        acc, eps, y_dtype = acc_dtype(x.dtype), ctx.eps, ctx.y_dtype

        def f(x_, w_, b_, br):
            return patch_merging_reference(residual_sum(x_, br).to(acc), w_, b_, eps).to(y_dtype)

        dx, dw, db, dbranch = _vjp(f, (x, weight, bias, branch), grad_y, (need_x, need_w, need_b, need_branch))
        return (dx, dw, db, None, dbranch, None)[: ctx.n_inputs]
    branch_dtype = branch.dtype if need_branch and branch.dtype != x.dtype else None
    dx, dbranch, dw, db = torch.ops.swin_ext.patch_merging_bwd(grad_y, x, weight, mean, rstd, branch, branch_dtype)
    if need_branch and branch_dtype is None:
        dbranch = dx  # x and branch get the same gradient (h = x + branch)
    return ((dx if need_x else None), dw, db, None, (dbranch if need_branch else None), None)[: ctx.n_inputs]


def _add_ln_setup_context(ctx, inputs, output):
    x, branch, weight, bias, eps, y_dtype = inputs
    h, y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # An unused h (the final norm) or y gives None, not a zero tensor to read.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, weight, bias, mean, rstd)
    ctx.eps = eps
    ctx.branch_dtype = branch.dtype
    ctx.y_dtype = y.dtype


def _add_ln_backward(ctx, grad_h, grad_y, grad_mean, grad_rstd):
    h, weight, bias, mean, rstd = ctx.saved_tensors
    need_x, need_branch, need_w, need_b = ctx.needs_input_grad[:4]
    need_h = need_x or need_branch
    if grad_y is None:
        # y is unused: h's gradient passes through unchanged.
        dh, dw, db = (grad_h if need_h else None), None, None
    elif torch.is_grad_enabled():
        # A second-order graph is being built (create_graph=True, torch.func):
        # differentiate the reference LayerNorm, whose backward is itself
        # differentiable.  h is a saved output, so this graph reaches x and
        # branch through this node again.
        acc, eps, C, y_dtype = acc_dtype(h.dtype), ctx.eps, h.shape[-1], ctx.y_dtype

        def f(h_, w_, b_):
            return F.layer_norm(h_.to(acc), (C,), w_, b_, eps).to(y_dtype)

        dh, dw, db = _vjp(f, (h, weight, bias), grad_y, (need_h, need_w, need_b))
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


class _WindowAttentionFn(torch.autograd.Function):
    """The attention op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale):
        return torch.ops.swin_ext.window_attention_fwd(qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale)

    setup_context = staticmethod(_attention_setup_context)
    backward = staticmethod(_attention_backward)


class _WindowAttentionV2Fn(torch.autograd.Function):
    """The V2 attention op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w):
        return torch.ops.swin_ext.window_attention_v2_fwd(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w)

    setup_context = staticmethod(_attention_v2_setup_context)
    backward = staticmethod(_attention_v2_backward)


class _BiasGeluFn(torch.autograd.Function):
    """The bias + GELU op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, bias):
        return torch.ops.swin_ext.bias_gelu_fwd(z, bias)

    setup_context = staticmethod(_bias_gelu_setup_context)
    backward = staticmethod(_bias_gelu_backward)


class _PatchMergingFn(torch.autograd.Function):
    """The patch-merging op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps, branch, y_dtype):
        return torch.ops.swin_ext.patch_merging_fwd(x, weight, bias, eps, branch, y_dtype)

    setup_context = staticmethod(_merging_setup_context)
    backward = staticmethod(_merging_backward)


class _AddLayerNormFn(torch.autograd.Function):
    """The add + LayerNorm op as an ``autograd.Function`` for torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, branch, weight, bias, eps, y_dtype):
        return torch.ops.swin_ext.add_layernorm_fwd(x, branch, weight, bias, eps, y_dtype)

    setup_context = staticmethod(_add_ln_setup_context)
    backward = staticmethod(_add_ln_backward)


def _not_differentiable(op: str) -> Callable:
    def setup_context(ctx, inputs, output):
        raise RuntimeError(
            f"swin_ext::{op} is not differentiable; differentiate swin_ext.{op.replace('_bwd', '')} instead "
            "(its backward supports create_graph=True and torch.func)"
        )

    return setup_context


def _no_backward(ctx, *grads):  # pragma: no cover - setup_context raises first
    raise RuntimeError("unreachable")


# --------------------------------------------------------------------------- vmap rules


def _vmap_loop(op, info, in_dims, *args):
    """Batch rule of last resort: the op once per batch element, results stacked."""
    outs = []
    for i in range(info.batch_size):
        a = [x.select(d, i) if d is not None else x for x, d in zip(args, in_dims)]
        outs.append(op(*a))
    res = tuple(torch.stack(o) for o in zip(*outs))
    return res, (0,) * len(res)


def _attention_fwd_vmap(info, in_dims, qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale):
    qd, bd, pd = in_dims[:3]
    if qd is not None and bd is None and pd is None:
        # Only the input map is batched: the batch folds into B.
        q = qkv.movedim(qd, 0)
        V, B = q.shape[:2]
        out, lse = torch.ops.swin_ext.window_attention_fwd(
            q.reshape(V * B, *q.shape[2:]), bias, qkv_pad, window_size, shift_h, shift_w, scale
        )
        return (out.view(V, B, *out.shape[1:]), lse.view(V, B, *lse.shape[1:])), (0, 0)
    return _vmap_loop(torch.ops.swin_ext.window_attention_fwd, info, in_dims,
                      qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale)


def _attention_v2_fwd_vmap(info, in_dims, qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w):
    if in_dims[0] is not None and all(d is None for d in in_dims[1:4]):
        q = qkv.movedim(in_dims[0], 0)
        V, B = q.shape[:2]
        out, lse = torch.ops.swin_ext.window_attention_v2_fwd(
            q.reshape(V * B, *q.shape[2:]), bias, qkv_pad, head_scale, window_size, shift_h, shift_w
        )
        return (out.view(V, B, *out.shape[1:]), lse.view(V, B, *lse.shape[1:])), (0, 0)
    return _vmap_loop(torch.ops.swin_ext.window_attention_v2_fwd, info, in_dims,
                      qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w)


def _bias_gelu_fwd_vmap(info, in_dims, z, bias):
    zd, bd = in_dims
    if bd is None:
        # The op is row-wise over the leading dims: the vmapped dim is one more of them.
        return torch.ops.swin_ext.bias_gelu_fwd(z, bias), zd
    return _vmap_loop(lambda *a: (torch.ops.swin_ext.bias_gelu_fwd(*a),), info, in_dims, z, bias)[0][0], 0


def _merging_fwd_vmap(info, in_dims, x, weight, bias, eps, branch=None, y_dtype=None):
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
        y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(xx.reshape(V * B, *xx.shape[2:]), weight, bias, eps, br,
                                                             y_dtype)
        return tuple(t.view(V, B, *t.shape[1:]) for t in (y, mean, rstd)), (0, 0, 0)
    return _vmap_loop(torch.ops.swin_ext.patch_merging_fwd, info, in_dims, x, weight, bias, eps, branch, y_dtype)


def _add_ln_fwd_vmap(info, in_dims, x, branch, weight, bias, eps, y_dtype):
    xd, bd, wd, bbd = in_dims[:4]
    if wd is None and bbd is None:
        # The op is row-wise over the leading dims: the vmapped dim is one more of them.
        V = info.batch_size
        xx = x.movedim(xd, 0) if xd is not None else x.expand(V, *x.shape)
        br = branch.movedim(bd, 0) if bd is not None else branch.expand(V, *branch.shape)
        out = torch.ops.swin_ext.add_layernorm_fwd(xx, br, weight, bias, eps, y_dtype)
        return out, (0, 0, 0, 0)
    return _vmap_loop(torch.ops.swin_ext.add_layernorm_fwd, info, in_dims, x, branch, weight, bias, eps, y_dtype)


def _loop_rule(op):
    def rule(info, in_dims, *args):
        return _vmap_loop(op, info, in_dims, *args)

    return rule


# --------------------------------------------------------------------------- registrations

if HAS_OPS:

    def _attention_fwd_outputs(qkv, ws, heads):
        """The fake ``(out, lse)`` of both attention forwards."""
        B, H, W, C3 = qkv.shape
        nW = ((H + ws - 1) // ws) * ((W + ws - 1) // ws)
        out = qkv.new_empty((B, H, W, C3 // 3))
        lse = qkv.new_empty((B, nW, heads, ws * ws), dtype=acc_dtype(qkv.dtype))
        return out, lse

    def _attention_bwd_outputs(grad_out, qkv, bias, lse, ws, heads, where):
        """Checks grad_out and lse of both attention backwards; the fake ``(dqkv, dbias, dpad)``."""
        B, H, W, C3 = qkv.shape
        torch._check(
            tuple(grad_out.shape) == (B, H, W, C3 // 3) and grad_out.dtype == qkv.dtype,
            lambda: f"{where}: grad_out must be {qkv.dtype} {(B, H, W, C3 // 3)}, "
            f"got {grad_out.dtype} {tuple(grad_out.shape)}",
        )
        nW = ((H + ws - 1) // ws) * ((W + ws - 1) // ws)
        torch._check(
            tuple(lse.shape) == (B, nW, heads, ws * ws) and lse.dtype == acc_dtype(qkv.dtype),
            lambda: f"{where}: lse must be {acc_dtype(qkv.dtype)} {(B, nW, heads, ws * ws)}, "
            f"got {lse.dtype} {tuple(lse.shape)}",
        )
        return (
            torch.empty_like(qkv, memory_format=torch.contiguous_format),
            bias.new_empty(bias.shape),
            bias.new_empty((qkv.shape[-1],)),
        )

    @torch.library.register_fake("swin_ext::window_attention_fwd")
    def _attention_fwd_fake(qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale):
        ws, _, _, heads = check_attention(
            qkv, bias, qkv_pad, window_size, (shift_h, shift_w), raw=True, exact_dtypes=True
        )
        real_arg(scale, "scale", raw=True, where="swin_ext.window_attention")
        return _attention_fwd_outputs(qkv, ws, heads)

    @torch.library.register_fake("swin_ext::window_attention_bwd")
    def _attention_bwd_fake(grad_out, qkv, bias, qkv_pad, lse, window_size, shift_h, shift_w, scale):
        where = "swin_ext.window_attention_bwd"
        ws, _, _, heads = check_attention(
            qkv, bias, qkv_pad, window_size, (shift_h, shift_w), raw=True, exact_dtypes=True, where=where
        )
        return _attention_bwd_outputs(grad_out, qkv, bias, lse, ws, heads, where)

    torch.library.register_autograd(
        "swin_ext::window_attention_fwd", _attention_backward, setup_context=_attention_setup_context
    )

    @torch.library.register_fake("swin_ext::window_attention_v2_fwd")
    def _attention_v2_fwd_fake(qkv, bias, qkv_pad, head_scale, window_size, shift_h, shift_w):
        ws, _, _, heads = check_attention_v2(
            qkv, bias, head_scale, qkv_pad, window_size, (shift_h, shift_w), raw=True, exact_dtypes=True
        )
        return _attention_fwd_outputs(qkv, ws, heads)

    @torch.library.register_fake("swin_ext::window_attention_v2_bwd")
    def _attention_v2_bwd_fake(grad_out, qkv, bias, qkv_pad, head_scale, lse, window_size, shift_h, shift_w):
        where = "swin_ext.window_attention_v2_bwd"
        ws, _, _, heads = check_attention_v2(
            qkv, bias, head_scale, qkv_pad, window_size, (shift_h, shift_w), raw=True, exact_dtypes=True,
            where=where,
        )
        return _attention_bwd_outputs(grad_out, qkv, bias, lse, ws, heads, where) + (
            head_scale.new_empty(head_scale.shape),
        )

    torch.library.register_autograd(
        "swin_ext::window_attention_v2_fwd", _attention_v2_backward, setup_context=_attention_v2_setup_context
    )

    @torch.library.register_fake("swin_ext::bias_gelu_fwd")
    def _bias_gelu_fwd_fake(z, bias):
        check_bias_gelu(z, bias, raw=True, exact_dtypes=True)
        return z.new_empty(z.shape)

    @torch.library.register_fake("swin_ext::bias_gelu_bwd")
    def _bias_gelu_bwd_fake(grad_y, z, bias):
        where = "swin_ext.bias_gelu_bwd"
        check_bias_gelu(z, bias, raw=True, exact_dtypes=True, where=where)
        torch._check(
            tuple(grad_y.shape) == tuple(z.shape) and grad_y.dtype == z.dtype,
            lambda: f"{where}: grad_y must be {z.dtype} {tuple(z.shape)}, got {grad_y.dtype} {tuple(grad_y.shape)}",
        )
        return z.new_empty(z.shape), bias.new_empty(bias.shape)

    torch.library.register_autograd(
        "swin_ext::bias_gelu_fwd", _bias_gelu_backward, setup_context=_bias_gelu_setup_context
    )

    @torch.library.register_fake("swin_ext::patch_merging_fwd")
    def _merging_fwd_fake(x, weight, bias, eps, branch=None, y_dtype=None):
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

    @torch.library.register_fake("swin_ext::patch_merging_bwd")
    def _merging_bwd_fake(grad_out, x, weight, mean, rstd, branch=None, branch_dtype=None):
        where = "swin_ext.patch_merging_bwd"
        check_merging(x, weight, weight, raw=True, exact_dtypes=True, where=where, branch=branch)
        B, H, W, C = x.shape
        H2, W2 = (H + 1) // 2, (W + 1) // 2
        torch._check(
            isinstance(grad_out, torch.Tensor) and grad_out.dtype in FLOAT_DTYPES
            and tuple(grad_out.shape) == (B, H2, W2, 4 * C),
            lambda: f"{where}: grad_out must be a floating (B, H2, W2, 4C) = {(B, H2, W2, 4 * C)} tensor, "
            f"got {grad_out.dtype} {tuple(grad_out.shape)}",
        )
        for name, t in (("mean", mean), ("rstd", rstd)):
            torch._check(
                tuple(t.shape) == (B, H2, W2) and t.dtype == acc_dtype(x.dtype),
                lambda: f"{where}: {name} must be {acc_dtype(x.dtype)} {(B, H2, W2)}, "
                f"got {t.dtype} {tuple(t.shape)}",
            )
        branch_dtype = dtype_arg(branch_dtype, "branch_dtype", raw=True, where=where)
        dbranch = x.new_empty(x.shape, dtype=branch_dtype) if branch_dtype is not None else x.new_empty((0,))
        return (
            torch.empty_like(x, memory_format=torch.contiguous_format),
            dbranch,
            weight.new_empty(weight.shape),
            weight.new_empty(weight.shape),
        )

    torch.library.register_autograd(
        "swin_ext::patch_merging_fwd", _merging_backward, setup_context=_merging_setup_context
    )
    @torch.library.register_fake("swin_ext::add_layernorm_fwd")
    def _add_ln_fwd_fake(x, branch, weight, bias, eps, y_dtype):
        where = "swin_ext.add_layernorm"
        check_add_layernorm(x, branch, weight, bias, raw=True, exact_dtypes=True, where=where)
        eps = real_arg(eps, "eps", raw=True, where=where)
        torch._check(eps >= 0, lambda: f"{where}: eps must be finite and >= 0, got {eps}")
        y_dtype = dtype_arg(y_dtype, "y_dtype", raw=True, where=where)
        h = x.new_empty(x.shape)
        y = x.new_empty(x.shape, dtype=y_dtype or x.dtype)
        return h, y, weight.new_empty(x.shape[:-1]), weight.new_empty(x.shape[:-1])

    @torch.library.register_fake("swin_ext::add_layernorm_bwd")
    def _add_ln_bwd_fake(grad_h, grad_y, h, weight, mean, rstd, branch_dtype):
        check_add_layernorm_bwd(grad_h, grad_y, h, weight, mean, rstd, branch_dtype)
        dbranch = h.new_empty(h.shape, dtype=branch_dtype) if branch_dtype is not None else h.new_empty((0,))
        return h.new_empty(h.shape), dbranch, weight.new_empty(weight.shape), weight.new_empty(weight.shape)

    torch.library.register_autograd(
        "swin_ext::add_layernorm_fwd", _add_ln_backward, setup_context=_add_ln_setup_context
    )
    for _name in ("window_attention_bwd", "window_attention_v2_bwd", "patch_merging_bwd", "add_layernorm_bwd",
                  "bias_gelu_bwd"):
        torch.library.register_autograd(f"swin_ext::{_name}", _no_backward, setup_context=_not_differentiable(_name))

    torch.library.register_vmap("swin_ext::window_attention_fwd", _attention_fwd_vmap)
    torch.library.register_vmap("swin_ext::window_attention_v2_fwd", _attention_v2_fwd_vmap)
    torch.library.register_vmap("swin_ext::window_attention_v2_bwd",
                                _loop_rule(torch.ops.swin_ext.window_attention_v2_bwd))
    torch.library.register_vmap("swin_ext::bias_gelu_fwd", _bias_gelu_fwd_vmap)
    torch.library.register_vmap("swin_ext::bias_gelu_bwd", _loop_rule(torch.ops.swin_ext.bias_gelu_bwd))
    torch.library.register_vmap("swin_ext::patch_merging_fwd", _merging_fwd_vmap)
    torch.library.register_vmap("swin_ext::window_attention_bwd", _loop_rule(torch.ops.swin_ext.window_attention_bwd))
    torch.library.register_vmap("swin_ext::patch_merging_bwd", _loop_rule(torch.ops.swin_ext.patch_merging_bwd))
    torch.library.register_vmap("swin_ext::add_layernorm_fwd", _add_ln_fwd_vmap)
    torch.library.register_vmap("swin_ext::add_layernorm_bwd", _loop_rule(torch.ops.swin_ext.add_layernorm_bwd))

"""Python entry points of swin_ext's compiled operators.

``window_attention`` and ``patch_merging`` validate their arguments, call the
``torch.ops.swin_ext`` operators and are differentiable: autograd is wired
with ``torch.library.register_autograd`` (the backward is itself a custom
op) and every op has a ``register_fake`` kernel, so the model runs under
``torch.compile(fullgraph=True)`` without graph breaks.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from ._ext import HAS_OPS, require_ops

__all__ = ["window_attention", "patch_merging", "acc_dtype"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_tensor(t, name: str, ndim: Optional[int] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")


def _check_same_device(a: torch.Tensor, b: torch.Tensor, an: str, bn: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{an} is on {a.device} but {bn} is on {b.device}")


def _pair(v: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        return v, v
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None


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
        window_size: window side ``ws >= 1``.
        shift: ``s`` or ``(s_h, s_w)`` with ``0 <= s < ws``.
        scale: logit scale; default ``(C / heads) ** -0.5``.
        qkv_pad: ``(3C,)`` qkv value of padding tokens (the ``Linear``'s bias,
            as the map is zero-padded before it); ``None`` means zeros.
    Returns:
        ``(B, H, W, C)``, same dtype as ``qkv``.
    """
    _check_tensor(qkv, "qkv", 4)
    _check_tensor(bias, "bias", 3)
    if isinstance(window_size, bool) or not isinstance(window_size, int):
        raise TypeError(f"window_size must be an int, got {window_size!r}")
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    sh, sw = _pair(shift, "shift")
    if not (0 <= sh < window_size and 0 <= sw < window_size):
        raise ValueError(f"shift must satisfy 0 <= shift < window_size ({window_size}), got {(sh, sw)}")
    C3 = qkv.shape[-1]
    if C3 % 3 != 0:
        raise ValueError(f"last dim of qkv must be 3*C, got {C3}")
    N = window_size * window_size
    heads = bias.shape[0]
    if tuple(bias.shape[1:]) != (N, N):
        raise ValueError(f"bias must be (heads, {N}, {N}) for window_size {window_size}, got {tuple(bias.shape)}")
    if heads < 1 or (C3 // 3) % heads != 0:
        raise ValueError(f"channels C={C3 // 3} are not divisible by heads={heads}")
    _check_same_device(qkv, bias, "qkv", "bias")
    if qkv_pad is not None:
        _check_tensor(qkv_pad, "qkv_pad", 1)
        if qkv_pad.shape[0] != C3:
            raise ValueError(f"qkv_pad must be ({C3},), got {tuple(qkv_pad.shape)}")
        _check_same_device(qkv, qkv_pad, "qkv", "qkv_pad")
        qkv_pad = qkv_pad.to(qkv.dtype)
    if scale is None:
        scale = (C3 // 3 // heads) ** -0.5
    require_ops(qkv.device)
    out, _ = torch.ops.swin_ext.window_attention_fwd(
        qkv, bias.to(acc_dtype(qkv.dtype)), qkv_pad, window_size, sh, sw, float(scale)
    )
    return out


# --------------------------------------------------------------------------- patch merging


def patch_merging(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """2x2 patch gather fused with LayerNorm over the gathered ``4C`` channels.

    Args:
        x: ``(B, H, W, C)``; odd ``H``/``W`` are zero-padded at bottom/right.
        weight, bias: ``(4C,)`` LayerNorm affine parameters.
        eps: LayerNorm epsilon.
    Returns:
        ``(B, ceil(H/2), ceil(W/2), 4C)`` in ``x``'s dtype, channel order
        x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1) (row, col) as the official code.
    """
    _check_tensor(x, "x", 4)
    _check_tensor(weight, "weight", 1)
    _check_tensor(bias, "bias", 1)
    C4 = 4 * x.shape[-1]
    if weight.shape[0] != C4 or bias.shape[0] != C4:
        raise ValueError(
            f"weight and bias must be ({C4},) for x with C={x.shape[-1]}, got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    _check_same_device(x, weight, "x", "weight")
    _check_same_device(x, bias, "x", "bias")
    require_ops(x.device)
    acc = acc_dtype(x.dtype)
    y, _, _ = torch.ops.swin_ext.patch_merging_fwd(x, weight.to(acc), bias.to(acc), float(eps))
    return y


# --------------------------------------------------------------------------- registrations

if HAS_OPS:

    @torch.library.register_fake("swin_ext::window_attention_fwd")
    def _attention_fwd_fake(qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale):
        torch._check(qkv.dim() == 4, lambda: "qkv must be (B, H, W, 3C)")
        B, H, W, C3 = qkv.shape
        heads, N = bias.shape[0], bias.shape[1]
        nW = ((H + window_size - 1) // window_size) * ((W + window_size - 1) // window_size)
        out = qkv.new_empty((B, H, W, C3 // 3))
        lse = qkv.new_empty((B, nW, heads, N), dtype=acc_dtype(qkv.dtype))
        return out, lse

    @torch.library.register_fake("swin_ext::window_attention_bwd")
    def _attention_bwd_fake(grad_out, qkv, bias, qkv_pad, lse, window_size, shift_h, shift_w, scale):
        return (
            torch.empty_like(qkv, memory_format=torch.contiguous_format),
            bias.new_empty(bias.shape),
            bias.new_empty((qkv.shape[-1],)),
        )

    def _attention_setup_context(ctx, inputs, output):
        qkv, bias, qkv_pad, window_size, shift_h, shift_w, scale = inputs
        _, lse = output
        ctx.save_for_backward(qkv, bias, qkv_pad, lse)
        ctx.geometry = (window_size, shift_h, shift_w, scale)
        ctx.has_pad = qkv_pad is not None

    def _attention_backward(ctx, grad_out, grad_lse):
        qkv, bias, qkv_pad, lse = ctx.saved_tensors
        window_size, shift_h, shift_w, scale = ctx.geometry
        dqkv, dbias, dpad = torch.ops.swin_ext.window_attention_bwd(
            grad_out, qkv, bias, qkv_pad, lse, window_size, shift_h, shift_w, scale
        )
        dpad = dpad.to(qkv.dtype) if ctx.has_pad else None
        return dqkv, dbias, dpad, None, None, None, None

    torch.library.register_autograd(
        "swin_ext::window_attention_fwd", _attention_backward, setup_context=_attention_setup_context
    )

    @torch.library.register_fake("swin_ext::patch_merging_fwd")
    def _merging_fwd_fake(x, weight, bias, eps):
        torch._check(x.dim() == 4, lambda: "x must be (B, H, W, C)")
        B, H, W, C = x.shape
        H2, W2 = (H + 1) // 2, (W + 1) // 2
        y = x.new_empty((B, H2, W2, 4 * C))
        mean = weight.new_empty((B, H2, W2))
        rstd = weight.new_empty((B, H2, W2))
        return y, mean, rstd

    @torch.library.register_fake("swin_ext::patch_merging_bwd")
    def _merging_bwd_fake(grad_out, x, weight, mean, rstd):
        return (
            torch.empty_like(x, memory_format=torch.contiguous_format),
            weight.new_empty(weight.shape),
            weight.new_empty(weight.shape),
        )

    def _merging_setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, weight, mean, rstd)

    def _merging_backward(ctx, grad_y, grad_mean, grad_rstd):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = torch.ops.swin_ext.patch_merging_bwd(grad_y, x, weight, mean, rstd)
        return dx, dw, db, None

    torch.library.register_autograd(
        "swin_ext::patch_merging_fwd", _merging_backward, setup_context=_merging_setup_context
    )

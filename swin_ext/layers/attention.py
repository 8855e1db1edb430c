"""Shifted-window attention: the fused kernel or the reference composite.

What runs where (``fused=True``, the fused backend's setting): the fused op
:func:`swin_ext.window_attention` (CPU kernel; CUDA kernel in a CUDA build;
called as :func:`swin_ext.ops.window_attention_unchecked`, since the model's
modules build valid arguments and the raw op checks them again in C++),
except with attention dropout active (``dropout_p > 0`` while training: the
kernel has no dropout) or on a device without a kernel, which run
:func:`swin_ext.reference.window_attention_reference` (plain PyTorch, also the
``fused=False`` path).  2-D windows (square or not) and Video Swin's 3-D
windows run the same kernels.

:func:`window_attention_v2` is Swin V2's cosine attention with the same
dispatch (q and k rows L2-normalised, the logits scaled per head by
``head_scale`` instead of one scalar): the fused op
:func:`swin_ext.window_attention_v2`, or
:func:`swin_ext.reference.window_attention_v2_reference`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from ..ops import window_attention_unchecked as _window_attention_op
from ..ops import window_attention_v2_unchecked as _window_attention_v2_op
from ..ops.reference import window_attention_reference, window_attention_v2_reference
from . import config
from .pos_bias import gather_bias

__all__ = ["window_attention", "window_attention_v2"]


def window_attention(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window_size: Union[int, Sequence[int]],
    shift: Sequence[int],
    scale: float,
    qkv_pad: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    training: bool = False,
    fused: bool = True,
    bias_index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``qkv (B, [T,] H, W, 3C)``, ``bias (heads, N, N)`` -> ``(B, [T,] H, W, C)`` (see
    :func:`swin_ext.window_attention`; ``window_size`` and ``shift``: one entry per map axis).

    With ``bias_index`` (``(N, N)`` int64), ``bias`` is the relative-position
    table ``(rows, heads)``: the fused op takes the table itself (it reads the
    standard index of the window, so ``bias_index`` must be
    ``relative_position_index(window_size)``, as the models guarantee) and
    returns the table's gradient; the composite gathers through ``bias_index``.
    """
    if fused and not (training and dropout_p > 0) and config.has_kernel("window_attention", qkv.device.type):
        window = (window_size,) * (qkv.dim() - 2) if isinstance(window_size, int) else window_size
        return _window_attention_op(qkv, bias, window, shift, scale, qkv_pad)
    bias = _gathered(bias, bias_index)
    return window_attention_reference(qkv, bias, window_size, shift, scale, qkv_pad, dropout_p, training)


def _gathered(bias: torch.Tensor, bias_index: Optional[torch.Tensor]) -> torch.Tensor:
    """The ``(heads, N, N)`` bias: ``bias`` itself, or the table ``bias`` gathered through ``bias_index``."""
    if bias_index is None:
        return bias
    return gather_bias(bias, bias_index.reshape(-1), bias_index.shape[-1])


def window_attention_v2(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    head_scale: torch.Tensor,
    window_size: int,
    shift: Tuple[int, int],
    qkv_pad: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    training: bool = False,
    fused: bool = True,
    bias_index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Swin V2 cosine window attention: ``qkv (B, H, W, 3C)``, ``bias (heads, N, N)``,
    ``head_scale (heads,)`` -> ``(B, H, W, C)`` (see :func:`swin_ext.window_attention_v2`).

    ``head_scale`` is ``exp(clamp(logit_scale, max=log(100)))`` and ``bias``
    ``16 * sigmoid(cpb)`` gathered, both computed by the caller (differentiable);
    under autocast the model keeps both in float32.  With ``bias_index``,
    ``bias`` is the ``((2ws-1)^2, heads)`` table, as in :func:`window_attention`.
    """
    if fused and not (training and dropout_p > 0) and config.has_kernel("window_attention_v2", qkv.device.type):
        return _window_attention_v2_op(qkv, bias, head_scale, window_size, shift, qkv_pad)
    bias = _gathered(bias, bias_index)
    return window_attention_v2_reference(qkv, bias, head_scale, window_size, shift, qkv_pad, dropout_p, training)

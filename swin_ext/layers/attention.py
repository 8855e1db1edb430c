"""Shifted-window attention: the fused kernel or the reference composite.

What runs where (``fused=True``, the fused backend's setting): the fused op
:func:`swin_ext.window_attention` (CPU kernel; CUDA kernel in a CUDA build),
except with attention dropout active (``dropout_p > 0`` while training: the
kernel has no dropout) or on a device without a kernel, which run
:func:`swin_ext.reference.window_attention_reference` (plain PyTorch, also the
``fused=False`` path).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops import window_attention as _window_attention_op
from ..reference import window_attention_reference
from . import config

__all__ = ["window_attention"]


def window_attention(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window_size: int,
    shift: Tuple[int, int],
    scale: float,
    qkv_pad: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    training: bool = False,
    fused: bool = True,
) -> torch.Tensor:
    """``qkv (B, H, W, 3C)``, ``bias (heads, N, N)`` -> ``(B, H, W, C)`` (see :func:`swin_ext.window_attention`)."""
    if fused and not (training and dropout_p > 0) and config.has_kernel("window_attention", qkv.device.type):
        return _window_attention_op(qkv, bias, window_size, shift, scale, qkv_pad)
    return window_attention_reference(qkv, bias, window_size, shift, scale, qkv_pad, dropout_p, training)

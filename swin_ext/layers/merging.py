"""Patch merging's 2x2 gather: V1's fused gather + LayerNorm kernel or its composite, V2's plain gather.

What runs where for :func:`patch_merging` (``fused=True``, the fused
backend's setting): the fused op :func:`swin_ext.patch_merging` on a device
with its kernel -- the stage's pending ``x + branch``, the 2x2 gather and the
LayerNorm in one op (the sum is never stored; under autocast the output is in
the autocast dtype); else (``fused=False``, or no kernel for the device)
``x + branch`` and :func:`swin_ext.ops.reference.patch_merging_reference`,
plain PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import patch_merging_unchecked as _patch_merging_op
from ..ops.reference import patch_merging_reference
from . import config
from .norm import residual_add

__all__ = ["patch_merging", "merge_gather"]


def patch_merging(
    x: torch.Tensor, norm: nn.LayerNorm, fused: bool = True, branch: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``norm(gather(x + branch))``: ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 4C)``, ``norm`` a LayerNorm
    over ``4C``; ``branch`` ``(B, H, W, C)``, the stage's pending residual branch, or ``None``.

    The gather order is the official x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1)
    (row, col); odd sizes are zero-padded at bottom/right.
    """
    if (
        fused
        and norm.weight is not None
        and norm.bias is not None
        and config.has_kernel("patch_merging", x.device.type)
    ):
        return _patch_merging_op(x, norm.weight, norm.bias, norm.eps, branch)
    return patch_merging_reference(residual_add(x, branch), norm.weight, norm.bias, norm.eps)


def merge_gather(x: torch.Tensor) -> torch.Tensor:
    """The 2x2 gather alone, ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 4C)``, in the official order
    x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1); odd sizes zero-padded at bottom/right.

    Swin V2 normalises after its reduction, so no LayerNorm follows the
    gather and the fused kernel does not apply: this is one reshape.
    """
    B, H, W, C = x.shape
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    H2, W2 = x.shape[1] // 2, x.shape[2] // 2
    return x.reshape(B, H2, 2, W2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H2, W2, 4 * C)

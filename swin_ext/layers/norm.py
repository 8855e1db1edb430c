"""Residual add + LayerNorm (as timm's ``layers/fast_norm.py``: the fast function and its fallback).

What runs where (``fused=True``, the fused backend's setting):

* **a device with an ``add_layernorm`` kernel** (CPU; CUDA in a CUDA build:
  :func:`config.has_kernel`), an affine ``nn.LayerNorm`` over the last dim: the fused op
  :func:`swin_ext.add_layernorm` (called as :func:`swin_ext.ops.add_layernorm_unchecked`:
  :func:`_fusable` has checked the shapes) -- ``h = x + branch`` and ``y = LN(h)`` in
  one pass forward and one backward, which also adds the gradient reaching
  ``h`` from the residual stream.  Under autocast ``h`` stays in ``x``'s
  dtype (float32) and ``y`` comes out in the autocast dtype.
* **anything else** (``fused=False``, the reference backend; other devices;
  a LayerNorm without affine parameters): ``h = x + branch``, ``y = norm(h)``
  in plain PyTorch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..ops import add_layernorm_unchecked as _add_layernorm_op
from . import config

__all__ = ["add_layernorm", "residual_add"]


def residual_add(x: torch.Tensor, branch: Optional[torch.Tensor]) -> torch.Tensor:
    """``x + branch`` (``x`` when there is no pending branch)."""
    return x if branch is None else x + branch


def _fusable(x: torch.Tensor, branch: torch.Tensor, norm: nn.LayerNorm) -> bool:
    return (
        norm.weight is not None
        and norm.bias is not None
        and len(norm.normalized_shape) == 1
        and x.dim() >= 1
        and x.shape[-1] == norm.normalized_shape[0]
        and branch.shape == x.shape
        and branch.device == x.device
        and config.has_kernel("add_layernorm", x.device.type)
    )


def add_layernorm(
    x: torch.Tensor, branch: Optional[torch.Tensor], norm: nn.LayerNorm, fused: bool = True
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(h, norm(h))`` with ``h = x + branch`` (``h = x`` when ``branch`` is ``None``).

    ``x``, ``branch`` ``(..., C)``; ``norm`` a LayerNorm over ``C``.  Fused into
    one kernel forward and backward when ``fused`` and the device has it (see
    the module docstring).
    """
    if branch is None:
        return x, norm(x)
    if fused and _fusable(x, branch, norm):
        return _add_layernorm_op(x, branch, norm.weight, norm.bias, norm.eps)
    h = x + branch
    return h, norm(h)

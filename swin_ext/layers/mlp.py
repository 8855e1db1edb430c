"""The transformer MLP (as timm's ``layers/mlp.py``), on :mod:`swin_ext.layers.linear`."""
from __future__ import annotations

import torch
import torch.nn as nn

from .drop import drop_active, maybe_drop
from .fast_linear import Linear, linear_gelu, mlp_inference

__all__ = ["Mlp", "SequentialMlp"]


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout on ``(..., dim)`` (keys ``fc1``, ``fc2``).

    ``fast`` sets the fc layers' :attr:`Linear.fast`: on the CPU (float32, no
    autocast) both GEMMs run on oneDNN and, in inference, the exact GELU in
    fc1's epilogue, a large token map in row chunks (:func:`mlp_inference`;
    see :mod:`swin_ext.layers.fast_linear`); elsewhere plain PyTorch.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, fast: bool = True) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden, fast=fast)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim, fast=fast)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., dim)``."""
        if not drop_active(self.drop):
            y = mlp_inference(x, self.fc1, self.fc2, self.act.approximate)
            if y is not None:
                return y
        x = maybe_drop(self.drop, linear_gelu(x, self.fc1, self.act.approximate))
        return maybe_drop(self.drop, self.fc2(x))


class SequentialMlp(nn.Sequential):
    """The MLP in torchvision's layout (``torchvision.ops.MLP``: keys ``0`` and ``3``): Linear,
    GELU, Dropout, Linear, Dropout on ``(..., dim)``, with :class:`Mlp`'s fast paths (``fast``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, fast: bool = True) -> None:
        super().__init__(Linear(dim, hidden, fast=fast), nn.GELU(), nn.Dropout(drop), Linear(hidden, dim, fast=fast),
                         nn.Dropout(drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., dim)``."""
        fc1, act, drop1, fc2, drop2 = self
        if not (drop_active(drop1) or drop_active(drop2)):
            y = mlp_inference(x, fc1, fc2, act.approximate)
            if y is not None:
                return y
        return maybe_drop(drop2, fc2(maybe_drop(drop1, linear_gelu(x, fc1, act.approximate))))

"""The transformer MLP (as timm's ``layers/mlp.py``), on :mod:`swin_ext.layers.linear`."""
from __future__ import annotations

import torch
import torch.nn as nn

from .fast_linear import Linear, linear_gelu

__all__ = ["Mlp", "SequentialMlp"]


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout on ``(..., dim)`` (keys ``fc1``, ``fc2``).

    ``fast`` sets the fc layers' :attr:`Linear.fast`: on the CPU (float32, no
    autocast) both GEMMs run on oneDNN and, in inference, the exact GELU in
    fc1's epilogue (see :mod:`swin_ext.layers.fast_linear`); elsewhere plain PyTorch.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, fast: bool = True) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden, fast=fast)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim, fast=fast)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., dim)``."""
        x = self.drop(linear_gelu(x, self.fc1, self.act.approximate))
        return self.drop(self.fc2(x))


class SequentialMlp(nn.Sequential):
    """The MLP in torchvision's layout (``torchvision.ops.MLP``: keys ``0`` and ``3``): Linear,
    GELU, Dropout, Linear, Dropout on ``(..., dim)``, with :class:`Mlp`'s fast paths (``fast``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, fast: bool = True) -> None:
        super().__init__(Linear(dim, hidden, fast=fast), nn.GELU(), nn.Dropout(drop), Linear(hidden, dim, fast=fast),
                         nn.Dropout(drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., dim)``."""
        fc1, act, drop1, fc2, drop2 = self
        return drop2(fc2(drop1(linear_gelu(x, fc1, act.approximate))))

"""Patch embedding: the non-overlapping patch projection that starts every Swin model."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection + LayerNorm.

    ``(B, in_chans, H, W)`` -> ``(B, ceil(H/p), ceil(W/p), embed_dim)`` (token-major,
    the layout every later module takes); sizes that ``patch_size`` does not
    divide are zero-padded at bottom/right, so any input size works.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        if H % p or W % p:
            x = F.pad(x, (0, (-W) % p, 0, (-H) % p))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x)

    def flops(self, H: int, W: int) -> int:
        """Multiply-accumulates at an ``H x W`` input (the official count)."""
        Ho, Wo = H // self.patch_size, W // self.patch_size
        return Ho * Wo * self.embed_dim * self.in_chans * self.patch_size**2 + Ho * Wo * self.embed_dim

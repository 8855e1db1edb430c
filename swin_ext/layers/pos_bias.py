"""Relative-position tables of the window attention: V1's bias index, V2's coordinates.

Both depend on the window size only; the models keep them as non-persistent
buffers (recomputed, never loaded from a checkpoint).
"""
from __future__ import annotations

import math

import torch

__all__ = ["relative_position_index", "relative_coords_table"]


def relative_position_index(window_size: int) -> torch.Tensor:
    """``(N, N)`` index into the ``((2ws-1)^2, heads)`` bias table, ``N = ws**2`` (the official recipe).

    Entry ``(i, j)`` is the row of the relative offset of token ``j`` from
    token ``i``: ``(dh + ws - 1) * (2ws - 1) + (dw + ws - 1)``.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window_size - 1
    rel[:, :, 1] += window_size - 1
    rel[:, :, 0] *= 2 * window_size - 1
    return rel.sum(-1)


def relative_coords_table(window_size: int, pretrained_window_size: int = 0) -> torch.Tensor:
    """Swin V2's CPB input ``((2w - 1)**2, 2)``: log-spaced relative coordinates (official / timm recipe).

    Normalised by ``pretrained_window_size - 1`` when it is set, else by
    ``window_size - 1``; times 8; ``sign(x) * log2(|x| + 1) / log2(8)``.
    Computed in float32 as timm and transformers do (the caller casts to the
    MLP's dtype); row ``(dh + w - 1) * (2w - 1) + (dw + w - 1)``, the rows
    :func:`relative_position_index` indexes.
    """
    w = window_size
    rel = torch.arange(-(w - 1), w, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(rel, rel, indexing="ij"), dim=-1)  # 2w-1, 2w-1, 2
    norm = pretrained_window_size if pretrained_window_size > 0 else w
    table = table / max(norm - 1, 1)
    table = table * 8
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
    return table.reshape(-1, 2)

"""Stochastic depth (as timm's ``layers/drop.py``)."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

__all__ = ["DropPath", "drop_path_rates", "drop_active", "maybe_drop"]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``drop_prob``.

    ``(B, ...)`` -> ``(B, ...)``; kept samples are scaled by ``1 / (1 - drop_prob)``
    so the expectation is unchanged (at rate 1 every sample is dropped, unscaled).  The identity
    in eval mode and at rate 0.

    As timm's ``drop_path``: the ``(B, 1, ...)`` mask is drawn in ``x``'s dtype and scaled, then
    multiplies ``x`` -- the same random draws and the same bits as timm (in bfloat16 / float16 the
    scale is rounded to that dtype, as there), and one pass over ``x`` forward and one backward.
    ``x * mask / keep`` took two each: ~2.3 GB more memory traffic in a Swin-T bf16 training step at
    batch 128 (22 branches with a rate above 0), ~0.55 ms of an H200's bandwidth.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        if keep > 0.0:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def drop_active(module: nn.Module) -> bool:
    """Whether ``module`` may change its input: an ``nn.Dropout`` or a :class:`DropPath` training at
    a rate > 0, or any other module (a user's replacement, which is always called)."""
    if isinstance(module, nn.Dropout):
        return module.training and module.p > 0
    if isinstance(module, DropPath):
        return module.training and module.drop_prob > 0
    return True


def maybe_drop(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` where :func:`drop_active`, else ``x`` itself without calling the module.

    Why: the layers call their dropouts and stochastic depth 5 times a block, at rate 0 or in
    eval mode nearly always, and each module call costs the host microseconds for nothing: ~6% of
    a Swin-T-shaped eager inference forward's host time (``benchmarks/host_overhead.py --step``),
    which is what a GPU waits on when the model is host-bound.
    """
    return module(x) if drop_active(module) else x


def drop_path_rates(rate: float, depths: Sequence[int]) -> List[List[float]]:
    """The linear stochastic-depth schedule, per stage: block ``k`` of all blocks gets ``rate * k / (n - 1)``.

    Computed as the official code and timm do (``torch.linspace(0, rate, n)``,
    float32), so a model and its timm twin drop with the same probabilities.
    """
    rates = [x.item() for x in torch.linspace(0, rate, sum(depths), device="cpu")]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out

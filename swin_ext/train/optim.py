"""AdamW parameter groups (weight decay, layer-wise lr decay) and the learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

__all__ = ["param_groups", "lr_factor"]


def _layer_id(name: str, depths: List[int]) -> int:
    """Depth of a parameter for layer-wise lr decay (the official Swin/SimMIM rule):
    patch_embed 0, block j of stage i ``sum(depths[:i]) + j + 1``, stage i's
    downsample ``sum(depths[:i+1])``, final norm and head ``sum(depths) + 1``."""
    if name.startswith("patch_embed"):
        return 0
    if name.startswith("layers."):
        parts = name.split(".")
        i = int(parts[1])
        if parts[2] == "downsample":
            return sum(depths[: i + 1])
        return sum(depths[:i]) + int(parts[3]) + 1
    return sum(depths) + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None) -> List[Dict[str, Any]]:
    """AdamW groups: no weight decay for biases, norms (1-d tensors) and the
    relative-position bias tables; with ``layer_decay`` each group's
    ``lr_scale`` is ``layer_decay ** (num_layers - 1 - layer_id)``."""
    skip_kw = set(model.no_weight_decay_keywords()) if hasattr(model, "no_weight_decay_keywords") else set()
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    depths = list(getattr(model, "depths", [0]))
    num_layers = sum(depths) + 2
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip_names or any(k in name for k in skip_kw)
        lid = _layer_id(name, depths) if layer_decay is not None else 0
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - 1 - lid) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale, "layer_id": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

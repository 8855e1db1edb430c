"""AdamW parameter groups (weight decay, layer-wise lr decay) and the learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["param_groups", "layer_ids", "lr_factor", "adamw_kwargs"]


def adamw_kwargs(device: torch.device) -> Dict[str, Any]:
    """``{"fused": True}`` where torch has a fused AdamW for ``device``'s type (CUDA; the CPU from
    torch 2.4), else ``{}`` (torch's default implementation).

    Why: the whole update in one kernel per parameter group and dtype, instead of the default's
    handful of elementwise passes (and, on a GPU, launches) per parameter.  Swin-T's 173 parameters
    on a 2-core AVX2 CPU: 53-71 ms a step with the default, 56 with ``foreach``, 14-15 fused -- about
    4% of a training step at batch 4.  Elementwise, so its bits do not depend on the thread count.
    """
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        fused_devices = set(_get_fused_kernels_supported_devices())
    except Exception:  # a torch without the private helper: CUDA has had it the longest
        fused_devices = {"cuda"}
    return {"fused": True} if device.type in fused_devices else {}


def layer_ids(model: nn.Module) -> Dict[str, int]:
    """Each parameter's depth for layer-wise lr decay, as timm's ``param_groups_layer_decay`` finds it:
    ``timm.models.group_parameters(model, model.group_matcher(), reverse=True)`` -- the patch
    embedding 0, then one id per block (a stage's patch merging with the next stage's first block,
    the final norm with the last block), the head last.  So ``--layer-decay`` gives every parameter
    the lr scale timm's ``create_optimizer_v2(model, layer_decay=...)`` gives it."""
    try:
        from timm.models import group_parameters
    except ImportError as e:  # pragma: no cover - dependency missing
        raise ImportError("--layer-decay needs timm (pip install 'swin_ext[train]' or pip install timm)") from e
    return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None) -> List[Dict[str, Any]]:
    """AdamW groups of the parameters that train (``requires_grad``): no weight decay for biases, norms
    (1-d tensors) and :meth:`no_weight_decay`'s names (the relative-position bias tables; V2's CPB MLPs
    and logit scales), as timm; with ``layer_decay`` each group's ``lr_scale`` is ``layer_decay **
    (num_layers - 1 - layer_id)`` (:func:`layer_ids`, timm's).  Each group holds its parameters'
    ``names``, in ``named_parameters`` order; the groups are sorted by ``(layer_id, no decay)``."""
    skip_kw = set(model.no_weight_decay_keywords()) if hasattr(model, "no_weight_decay_keywords") else set()
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    ids = layer_ids(model) if layer_decay is not None else {}
    num_layers = max(ids.values()) + 1 if ids else 1
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip_names or any(k in name for k in skip_kw)
        lid = ids.get(name, num_layers - 1) if layer_decay is not None else 0
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

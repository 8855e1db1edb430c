"""The models ``--model`` names: every preset is a :func:`swin_ext.create_model` name.

A preset's keywords are its variant's (:mod:`swin_ext.models.variants`)
without the head and input channels, which the data decide, and with the
official training stochastic depth of its size (timm's V2 names default to
0.1).  A run's model configuration is the preset with the command line's
overrides; it is stored in every checkpoint and a resume must match it.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from ..factory import create_model, model_config
from ..models.variants import ALIASES, COMPACT, SIZES, size_of, v2_table

__all__ = ["PRESETS", "RECIPES", "DEFAULTS", "resolve_recipe", "arch_overrides", "recipe_drop_path",
           "default_in_chans", "run_config", "build_model"]


def _preset(name: str) -> Dict[str, Any]:
    cfg = {k: v for k, v in model_config(name).items() if k not in ("num_classes", "in_chans")}
    if name.startswith("swinv2_"):
        cfg["drop_path_rate"] = SIZES[size_of(name)]["drop_path_rate"]
    return cfg


#: preset name -> constructor keywords: ``swin_t`` ... ``swin_l``, ``swin_digits`` (the demo's
#: 0.3M-parameter model) and timm's twelve ``swinv2_*`` names
PRESETS: Dict[str, Dict[str, Any]] = {
    name: _preset(name) for name in [f"swin_{s}" for s in ALIASES] + list(COMPACT) + list(v2_table())
}

# command-line flag -> constructor keyword
_OVERRIDES = (("img_size", "img_size"), ("patch_size", "patch_size"), ("embed_dim", "embed_dim"),
              ("depths", "depths"), ("num_heads", "num_heads"), ("window_size", "window_size"),
              ("mlp_ratio", "mlp_ratio"), ("drop_path", "drop_path_rate"),
              ("pretrained_window_sizes", "pretrained_window_sizes"))

#: the CLI's defaults of the flags a recipe may set (the model's default is swin_digits, unless a
#: --pretrained swin_ext.train checkpoint names its own)
DEFAULTS: Dict[str, Any] = dict(epochs=40, lr=2e-3, min_lr=1e-5, warmup_epochs=2.0, weight_decay=0.05,
                                layer_decay=None, label_smoothing=0.1, aa=None, reprob=0.0, mixup=0.0, cutmix=0.0)

#: ``--recipe`` name -> its defaults.  ``finetune``: the official Swin fine-tuning configs
#: (``configs/swin/*_22kto1k_finetune.yaml``: 30 epochs, 5 of warm-up, weight decay 1e-8, lr 2e-5 and
#: final lr 2e-7 per 512 images of global batch -- the official code scales both linearly with the
#: batch --, stochastic depth 0.1 for tiny models and 0.2 for the others) with the official training
#: augmentation (RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup 0.8, CutMix 1.0, label
#: smoothing 0.1) and layer-wise lr decay 0.9.  ``lr`` / ``min_lr`` are per 512 images here.
RECIPES: Dict[str, Dict[str, Any]] = {
    "finetune": dict(epochs=30, lr=2e-5, min_lr=2e-7, warmup_epochs=5.0, weight_decay=1e-8, layer_decay=0.9,
                     label_smoothing=0.1, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0),
}
_RECIPE_PER_512 = ("lr", "min_lr")  # scaled with the global batch
_AUGMENTATION = ("aa", "reprob", "mixup", "cutmix")
_IMAGE_ONLY = ("aa", "reprob")  # PIL-image augmentations: not for the digits


def arch_overrides() -> Tuple[Tuple[str, str], ...]:
    """``(flag, constructor keyword)`` of the command line's architecture overrides (not the stochastic depth)."""
    return tuple(o for o in _OVERRIDES if o[0] != "drop_path")


def recipe_drop_path(recipe: Optional[str], model: str) -> Optional[float]:
    """The recipe's stochastic depth for ``model`` (``None``: the preset's own)."""
    if recipe != "finetune":
        return None
    return 0.1 if model in COMPACT or size_of(model) == "tiny" else 0.2


def resolve_recipe(args: argparse.Namespace) -> None:
    """Fill every flag of :data:`DEFAULTS` left unset (``None``): from ``--recipe`` if it sets the
    flag, else the CLI's default.  A recipe's augmentation is left out with ``--no-augment``, and its
    image augmentations (``--aa``, ``--reprob``) on the digits; its lr and final lr are per 512
    images, scaled to ``--batch-size`` x the processes (``WORLD_SIZE``).  Idempotent."""
    recipe = RECIPES.get(args.recipe or "", {})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for key, default in DEFAULTS.items():
        if getattr(args, key) is not None:
            continue
        value = recipe.get(key, default)
        if key in recipe and key in _AUGMENTATION and (args.no_augment or (args.data == "digits"
                                                                             and key in _IMAGE_ONLY)):
            value = default
        if key in recipe and key in _RECIPE_PER_512:
            value = value * args.batch_size * world / 512
        setattr(args, key, value)


def default_in_chans(args: argparse.Namespace) -> int:
    """``--in-chans``, else 1 for the digits (grey) and 3 for an image folder."""
    return args.in_chans if args.in_chans is not None else (1 if args.data == "digits" else 3)


def run_config(args: argparse.Namespace, num_classes: int) -> Dict[str, Any]:
    """The run's model: ``{"model": preset name, **constructor keywords}`` (lists, not tuples, so
    that it compares equal to its copy in a checkpoint)."""
    cfg: Dict[str, Any] = {"model": args.model, **PRESETS[args.model]}
    drop_path = recipe_drop_path(getattr(args, "recipe", None), args.model)
    if drop_path is not None:
        cfg["drop_path_rate"] = drop_path
    for flag, key in _OVERRIDES:
        v = getattr(args, flag, None)
        if v is not None:
            cfg[key] = v
    for key in ("depths", "num_heads", "pretrained_window_sizes"):
        if isinstance(cfg.get(key), (tuple, list)):
            cfg[key] = list(cfg[key])
    cfg["in_chans"] = default_in_chans(args)
    cfg["num_classes"] = num_classes
    return cfg


def build_model(cfg: Dict[str, Any], backend: str = "fused", use_checkpoint: bool = False) -> nn.Module:
    """The model of a :func:`run_config` (or of a checkpoint's ``model_config``), by :func:`swin_ext.create_model`."""
    kw = {k: v for k, v in cfg.items() if k != "model"}
    return create_model(cfg["model"], backend=backend, use_checkpoint=use_checkpoint, **kw)

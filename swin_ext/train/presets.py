"""The models ``--model`` names: every preset is a :func:`swin_ext.create_model` name.

A preset's keywords are its variant's (:mod:`swin_ext.models.variants`)
without the head and input channels, which the data decide, and with the
official training stochastic depth of its size (timm's V2 names default to
0.1).  A run's model configuration is the preset with the command line's
overrides; it is stored in every checkpoint and a resume must match it.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

import torch.nn as nn

from ..factory import create_model, model_config
from ..models.variants import ALIASES, COMPACT, SIZES, size_of, v2_table

__all__ = ["PRESETS", "default_in_chans", "run_config", "build_model"]


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
              ("mlp_ratio", "mlp_ratio"), ("drop_path", "drop_path_rate"))


def default_in_chans(args: argparse.Namespace) -> int:
    """``--in-chans``, else 1 for the digits (grey) and 3 for an image folder."""
    return args.in_chans if args.in_chans is not None else (1 if args.data == "digits" else 3)


def run_config(args: argparse.Namespace, num_classes: int) -> Dict[str, Any]:
    """The run's model: ``{"model": preset name, **constructor keywords}`` (lists, not tuples, so
    that it compares equal to its copy in a checkpoint)."""
    cfg: Dict[str, Any] = {"model": args.model, **PRESETS[args.model]}
    for flag, key in _OVERRIDES:
        v = getattr(args, flag)
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

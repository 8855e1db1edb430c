"""Starting a run from pretrained weights (``--pretrained``), and the ``--eval-only`` report.

* :func:`adopt_checkpoint_model` -- a swin_ext.train checkpoint names its
  model: without ``--model`` the run takes that architecture.
* :func:`pretrained_windows` -- a Swin V2 checkpoint trained at another window
  normalises its continuous-position-bias coordinates by that window (the
  official fine-tuning's ``PRETRAINED_WINDOW_SIZES``); official V2 files
  record it in their coordinate tables.
* :func:`load_into` -- :func:`swin_ext.load_pretrained` with what it did said
  line by line: the layout, a new head (another class count), the bias
  tables resized bicubically to the run's window, missing and unexpected
  keys; a checkpoint of another architecture is a :class:`~swin_ext.CheckpointError`
  that names the differences.
* :func:`eval_report` -- top-1, top-5 and per-class accuracy as text.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..weights import CheckpointError, LoadResult, load_pretrained
from ..weights.layouts import v2_checkpoint_windows
from .errors import TrainError
from .presets import PRESETS, arch_overrides

__all__ = ["adopt_checkpoint_model", "pretrained_windows", "load_into", "eval_report"]


def adopt_checkpoint_model(args: argparse.Namespace, meta: Mapping[str, Any]) -> Optional[str]:
    """Without ``--model``, take the model of a swin_ext.train checkpoint's ``model_config`` (its
    architecture flags that are not given on the command line); returns a line saying so, or ``None``."""
    cfg = meta.get("model_config")
    if args.model is not None or not isinstance(cfg, dict) or cfg.get("model") not in PRESETS:
        return None
    args.model = cfg["model"]
    for flag, key in arch_overrides():
        if getattr(args, flag, None) is None and key in cfg:
            value = cfg[key]
            setattr(args, flag, tuple(value) if isinstance(value, list) else value)
    if args.in_chans is None and "in_chans" in cfg:
        args.in_chans = cfg["in_chans"]
    return f"--model {args.model} and its configuration from the checkpoint's model_config"


def pretrained_windows(cfg: Dict[str, Any], sd: Mapping[str, torch.Tensor]) -> Optional[List[int]]:
    """The ``pretrained_window_sizes`` a Swin V2 run config should have for checkpoint ``sd``: the
    checkpoint's per-stage windows when it records them (official V2 files: their coordinate
    tables) and they differ from the run's; else ``None`` (nothing to change, or not known)."""
    if not cfg["model"].startswith("swinv2_") or cfg.get("pretrained_window_sizes") not in (None, 0, [0] * 4):
        return None
    windows = v2_checkpoint_windows(sd)
    n = len(cfg["depths"])
    if windows is None or len(windows) != n:
        return None
    ws = cfg["window_size"]
    mine = list(ws) if isinstance(ws, (list, tuple)) else [ws] * n
    return None if windows == mine else windows


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str, log: Callable[[str], None],
              eval_only: bool = False) -> LoadResult:
    """Load ``sd`` (from ``path``) into ``model`` as ``--pretrained`` does and say what happened.

    Training: a head of another class count (or none) is left out and the
    model keeps its freshly initialised one; missing and unexpected keys are
    listed, not fatal (a checkpoint of which nothing loads is).  ``eval_only``:
    the checkpoint must hold this model's every tensor, its head included.
    A checkpoint of another architecture raises :class:`~swin_ext.CheckpointError`
    naming each difference; the model is then unchanged.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # load_pretrained's warning about the head: said below
            res = load_pretrained(model, sd, strict=False, allow_new_head=True)
    except CheckpointError as e:
        raise CheckpointError(f"--pretrained {path}: {e} (the --model and its options must give the "
                              "checkpoint's architecture)") from None
    if not res.loaded:
        raise CheckpointError(f"--pretrained {path}: none of its tensors fits the model")
    if eval_only and (res.new_head or res.missing_keys):
        why = res.new_head or f"the checkpoint lacks {res.missing_keys[:8]}"
        raise TrainError(f"--eval-only --pretrained {path}: the checkpoint is not a classifier of this data's "
                         f"{getattr(model, 'num_classes', '?')} classes ({why})")
    log(f"pretrained: loaded {len(res.loaded)} tensors of {path} ({res.format} layout)")
    if res.new_head:
        log(f"pretrained: a new head of {model.num_classes} classes, initialised afresh ({res.new_head})")
    if res.resized_keys:
        log(f"pretrained: resized {len(res.resized_keys)} relative-position bias tables to the window of this "
            f"model (bicubic, as the official fine-tuning): {_short(res.resized_keys)}")
    if res.missing_keys:
        log(f"pretrained: missing from the checkpoint, left as initialised: {_short(res.missing_keys)}")
    if res.unexpected_keys:
        log(f"pretrained: in the checkpoint but not used: {_short(res.unexpected_keys)}")
    return res


def _short(keys: Sequence[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" ... and {len(keys) - n} more" if len(keys) > n else "")


def eval_report(ev: Dict[str, Any], classes: Sequence[str]) -> List[str]:
    """Lines of the ``--eval-only`` report: top-1 / top-5 over every image, then each class's accuracy."""
    lines = [f"top-1 {100 * ev['test_acc']:.2f}%  top-5 {100 * ev['test_top5']:.2f}%  loss {ev['test_loss']:.4f}  "
             f"({ev['test_count']} images, {len(classes)} classes)"]
    width = max([len(c) for c in classes] + [5])
    lines.append(f"  {'class':<{width}}  correct  images  accuracy")
    for c, ok, n in zip(classes, ev["per_class_correct"], ev["per_class_count"]):
        acc = f"{100 * ok / n:7.2f}%" if n else "      -"
        lines.append(f"  {c:<{width}}  {ok:7d}  {n:6d}  {acc}")
    return lines

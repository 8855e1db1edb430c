"""Loading Video Swin checkpoints into :class:`~swin_ext.SwinTransformer3d` (torchvision's key layout).

:func:`load_pretrained` sends a video model here.  Three kinds of checkpoint load:

=================  ==========================================================
layout             recognised by (after any ``module.`` / ``backbone.`` prefix)
=================  ==========================================================
torchvision        ``features.0.0.attn.qkv.weight``, a 5-D ``patch_embed.proj.weight``:
                   the model's own keys
official video     ``layers.i.blocks.j...`` with a 5-D ``patch_embed.proj.weight``:
                   the official Video-Swin-Transformer (``backbone.norm``) and
                   mmaction2 (``backbone.norm3``) releases; the recognizer's
                   ``cls_head.fc_cls`` is the head
2-D image          a 4-D patch embedding: a Swin V1 ImageNet checkpoint of any
                   layout :func:`swin_ext.load_pretrained` reads, *inflated*
                   as the Video Swin paper initialises: the patch projection
                   repeated over ``pt`` frames and divided by ``pt``, each
                   bias table resized bicubically to the model's
                   ``(2wh-1, 2ww-1)`` and repeated ``2wt-1`` times (the
                   official ``inflate_weights``); the image head is not loaded
=================  ==========================================================

As for the 2-D models: buffers are recomputed (``relative_position_index``,
``attn_mask``), everything is checked before anything is copied (a failed load
leaves the model as it was), a head of another size is an error under
``strict=True`` unless ``allow_new_head``, and a ``features_only`` backbone
ignores the head and final norm and keeps output norms the checkpoint lacks.
A 3-D bias table of another window size is refused (the official code does
not resize them).
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from .checkpoint import LoadResult, accept_value, finish_load, read_state_dict, settle_head
from .layouts import CheckpointError, check_index_buffer, checkpoint_version, convert_state_dict

__all__ = ["load_video_pretrained", "video_layout", "inflate_2d"]

_BUFFERS = ("relative_position_index", "attn_mask")
_PATCH = "patch_embed.proj.weight"


def _prefix(sd: Mapping[str, torch.Tensor], suffix: str) -> Optional[str]:
    cands = [k[: -len(suffix)] for k in sd if k.endswith(suffix) and (k == suffix or k[-len(suffix) - 1] == ".")]
    return min(cands, key=len) if cands else None


def video_layout(sd: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """``(layout, prefix)`` of a state dict: ``"torchvision"``, ``"official"`` (video) or ``"2d"``."""
    prefix = _prefix(sd, _PATCH)
    if prefix is not None and sd[prefix + _PATCH].dim() == 5:
        if prefix + "features.0.0.attn.qkv.weight" in sd:
            return "torchvision", prefix
        if any(k.startswith(prefix + "layers.") for k in sd):
            return "official", prefix
        raise CheckpointError(f"a 3-D patch embedding ({prefix}{_PATCH}) but neither torchvision's "
                              "features.* nor the official layers.* blocks")
    return "2d", ""


def _official_key(k: str, features_only: bool, last: int) -> str:
    """An official / mmaction2 video key in torchvision's layout (unknown keys unchanged)."""
    m = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", k)
    if m:
        rest = m.group(3).replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
        return f"features.{2 * int(m.group(1))}.{m.group(2)}.{rest}"
    m = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", k)
    if m:
        return f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}"
    if k.startswith("cls_head.fc_cls."):
        return "head." + k[len("cls_head.fc_cls."):]
    m = re.fullmatch(r"norm(\d+)\.(weight|bias)", k)
    if m and not features_only and int(m.group(1)) == last:
        return f"norm.{m.group(2)}"  # mmaction2's norm3 is the classifier's final norm
    m = re.fullmatch(r"norm\.(weight|bias)", k)
    if m and features_only:
        return f"norm{last}.{m.group(1)}"  # ... and a backbone's last output norm (mmaction2's inflation)
    return k


def inflate_2d(converted: Dict[str, Tuple[str, torch.Tensor]], window: Tuple[int, int, int], patch_t: int,
               resized: List[str]) -> Dict[str, Tuple[str, torch.Tensor]]:
    """Official 2-D Swin keys -> inflated video values under the same keys (the official
    ``inflate_weights``): patch projection repeated over ``patch_t`` frames / ``patch_t``, each bias
    table bicubic-resized to ``(2wh-1)(2ww-1)`` rows if it differs, then repeated ``2wt-1`` times."""
    wt, wh, ww = window
    out = dict(converted)
    if _PATCH in out:
        orig, w = out[_PATCH]
        if w.dim() == 4:
            out[_PATCH] = (orig, w.unsqueeze(2).repeat(1, 1, patch_t, 1, 1) / patch_t)
    L2 = (2 * wh - 1) * (2 * ww - 1)
    for k, (orig, t) in converted.items():
        if not k.endswith("relative_position_bias_table") or t.dim() != 2:
            continue
        L1, nH = t.shape
        if L1 != L2:
            S1 = math.isqrt(L1)
            if S1 * S1 != L1:
                raise CheckpointError(f"{orig!r}: its length {L1} is not (2 * window - 1) ** 2 for any 2-D window")
            dtype = t.dtype if t.dtype == torch.float64 else torch.float32
            t = F.interpolate(t.to(dtype).permute(1, 0).reshape(1, nH, S1, S1), size=(2 * wh - 1, 2 * ww - 1),
                              mode="bicubic").reshape(nH, L2).permute(1, 0)
            resized.append(k)
        out[k] = (orig, t.repeat(2 * wt - 1, 1))
    return out


def load_video_pretrained(model, source, strict: bool = True, *, allow_new_head: bool = False) -> LoadResult:
    """:func:`swin_ext.load_pretrained` for a :class:`~swin_ext.SwinTransformer3d` (see the module docstring)."""
    sd = read_state_dict(source)
    if checkpoint_version(sd) == 2:
        raise CheckpointError("this is a Swin V2 checkpoint (logit_scale / cpb_mlp keys); Video Swin inflates "
                              "Swin V1 image checkpoints only")
    layout, prefix = video_layout(sd)
    features_only = model.features_only
    last = model.num_layers - 1
    ignored: Dict[str, str] = {}
    unexpected: List[str] = []
    resized: List[str] = []
    head_why: Optional[str] = None
    if layout == "2d":
        fmt2d, conv2d, unexpected, ignored = convert_state_dict(sd)
        fmt = f"{fmt2d} 2-D (inflated)"
        conv2d = inflate_2d(conv2d, model.window_size, model.patch_size[0], resized)
        converted = {}
        for k, (orig, v) in conv2d.items():
            if k.startswith("head."):
                head_why = "an inflated image checkpoint's head is not a video classifier"
                ignored[orig] = head_why
                continue
            converted[_official_key(k, features_only, last)] = (orig, v)
    else:
        fmt = layout if layout == "torchvision" else "official video"
        converted = {}
        # mmaction2's recognizer: backbone.* and, beside it, cls_head.*
        outer = prefix[: -len("backbone.")] if prefix.endswith("backbone.") else None
        for k, v in sd.items():
            if k.startswith(prefix):
                short = k[len(prefix):]
            elif outer is not None and k.startswith(outer + "cls_head."):
                short = k[len(outer):]
            else:
                ignored[k] = f"outside the checkpoint's {prefix!r}"
                continue
            converted[short if layout == "torchvision" else _official_key(short, features_only, last)] = (k, v)
    result = LoadResult(format=fmt, ignored_keys=ignored, resized_keys=resized)
    n2 = math.prod(model.window_size) ** 2
    for k in [k for k in converted if k.rsplit(".", 1)[-1] in _BUFFERS]:
        orig, v = converted.pop(k)
        if k.endswith("relative_position_index") and v.numel() == n2:  # another window: its tables mismatch anyway
            check_index_buffer(orig, v, model.window_size)
        result.ignored_keys[orig] = "a buffer the model computes"

    target = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] not in _BUFFERS}
    if features_only:
        for k in [k for k in converted if k.startswith(("head.", "norm.")) or (
                re.match(r"norm\d+\.", k) and k not in target)]:
            result.ignored_keys[converted.pop(k)[0]] = "not used by this features_only backbone"

    problems: List[str] = []
    # The head: another size (or none) is the one tolerated mismatch; an inflated image head never loads.
    head_keys = [k for k in target if k.startswith("head.")]
    ck_head = converted.get("head.weight")
    if head_keys and head_why is None and (ck_head is None or ck_head[1].shape != target["head.weight"].shape):
        head_why = (f"num_classes differs: checkpoint {ck_head[1].shape[0]}, model {model.num_classes}"
                    if ck_head is not None
                    else f"the checkpoint has no classification head, model num_classes {model.num_classes}")
    if head_keys and head_why is not None:
        settle_head(result, converted, head_keys, head_why, refuse=strict and not allow_new_head and layout != "2d")

    values: Dict[str, torch.Tensor] = {}
    for k, (orig, v) in converted.items():
        if k not in target:
            unexpected.append(orig)
            continue
        table = k.endswith("relative_position_bias_table")
        accept_value(k, orig, v, target, values, problems,
                     " (another window size: 3-D bias tables are not resized)" if table else "")
    finish_load(target, values, problems, unexpected, result, features_only, strict, fmt)
    if result.new_head is not None and layout != "2d":
        warnings.warn(f"load_pretrained: the checkpoint's head was not loaded ({result.new_head}); the model keeps "
                      "its own head", stacklevel=3)
    return result

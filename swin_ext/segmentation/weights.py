"""UperNet checkpoints (swin_ext's, transformers' and mmseg's layouts) and transformers' live UperNet.

:func:`~swin_ext.load_pretrained` hands a :class:`~swin_ext.segmentation.UperNet`
to :func:`load_upernet`, which reads:

===============  ==============================================================
layout           keys
===============  ==============================================================
swin_ext, mmseg  ``backbone.`` (a Swin in any layout :func:`~swin_ext.load_pretrained`
                 reads: the official one as in Microsoft's Swin segmentation
                 repository, or OpenMMLab's), ``decode_head.`` (mmseg's
                 ``UPerHead``: ``psp_modules.i.1.{conv,bn}``, ``bottleneck``,
                 ``lateral_convs.i``, ``fpn_convs.i``, ``fpn_bottleneck``,
                 ``conv_seg``) and ``auxiliary_head.`` (``FCNHead``:
                 ``convs.j``, ``conv_cat``, ``conv_seg``); mmcv's
                 ``ConvModule`` keys ``conv`` / ``bn``
transformers     ``UperNetForSemanticSegmentation`` with a ``SwinBackbone``
                 (``backbone.[swin.]embeddings...``, ``hidden_states_norms.stageN``)
                 or ``Swinv2Backbone``; heads as mmseg's but ``batch_norm`` and
                 ``classifier``
backbone only    a Swin classification or detection checkpoint (any layout):
                 the backbone is loaded, the heads keep their initialisation
===============  ==============================================================

OpenMMLab's Swin keys (``stages.i``, ``attn.w_msa``, ...) are a layout of
:mod:`swin_ext.weights.layouts` like the others: every Swin loader reads them,
so ``create_model`` / ``fpn_backbone`` read mmdet's Mask R-CNN checkpoints too
(their ``backbone.``; the ``neck.`` and heads are not read).

A load is validated as a whole (backbone and heads) before anything is
copied; a failed load leaves the model as it was.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
import torch.nn as nn

from ..models import SwinTransformerV2
from ..weights import CheckpointError, LoadResult, convert_state_dict, load_pretrained, read_state_dict, to_openmmlab
from ..weights.checkpoint import raise_key_mismatch, raise_problems, tensor_problem
from ..weights.convert import ConversionError, transformers_backbone
from .upernet import UperNet, has_output_norms, without_output_norms

__all__ = ["load_upernet", "from_transformers_upernet", "to_mmseg_state_dict"]

# ----------------------------------------------------------------------------- mmseg's layout


def to_mmseg_state_dict(model: UperNet, openmmlab_backbone: bool = True) -> Dict[str, torch.Tensor]:
    """The model's state dict in mmseg's layout: the heads' keys are already mmseg's; the backbone's are
    OpenMMLab's Swin (``openmmlab_backbone``, the layout of mmseg's own Swin checkpoints:
    :func:`swin_ext.weights.to_openmmlab`) or the official ones (Microsoft's Swin segmentation repository)."""
    sd = model.state_dict()
    if not openmmlab_backbone:
        return dict(sd)
    backbone = to_openmmlab({k: v for k, v in sd.items() if k.startswith("backbone.")})
    return {**backbone, **{k: v for k, v in sd.items() if not k.startswith("backbone.")}}


# ----------------------------------------------------------------------------- UperNet checkpoints

_HEADS = ("decode_head.", "auxiliary_head.")
_HF_HEAD_NAMES = {"batch_norm": "bn", "classifier": "conv_seg"}
_BN_COUNTER = "num_batches_tracked"


_StateDict = Dict[str, torch.Tensor]


def _split(sd: Mapping[str, torch.Tensor]) -> Tuple[_StateDict, _StateDict, _StateDict]:
    """``(backbone, heads, other)``: the ``backbone.`` keys without the prefix, the head keys, the rest."""
    backbone, heads, other = {}, {}, {}
    for k, v in sd.items():
        if k.startswith("backbone."):
            backbone[k[len("backbone."):]] = v
        elif k.startswith(_HEADS):
            heads[k] = v
        else:
            other[k] = v
    return backbone, heads, other


def _strip_module(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix every key has (a DistributedDataParallel state dict)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _head_layout(heads: Mapping[str, torch.Tensor]) -> str:
    hf = any(seg in _HF_HEAD_NAMES for k in heads for seg in k.split("."))
    return "transformers" if hf else "mmseg"


def _rename_head(k: str) -> str:
    return ".".join(_HF_HEAD_NAMES.get(seg, seg) for seg in k.split("."))


def _prefixed(keys, prefix: str) -> List[str]:
    return [prefix + k for k in keys]


def load_upernet(
    model: UperNet,
    source: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
    allow_new_classes: bool = False,
) -> LoadResult:
    """Load a UperNet checkpoint (swin_ext, transformers or mmseg layout) or a backbone checkpoint into ``model``.

    ``strict``: missing or unexpected keys are an error (with ``strict=False``
    they are reported in the result).  A checkpoint of another class count is
    an error unless ``allow_new_classes`` or ``strict=False``: the model then
    keeps its own classifiers (``conv_seg`` of both heads) and a warning says
    so.  A checkpoint's auxiliary head is ignored by a model without one.  The
    backbone's output norms must match the checkpoint's (transformers'
    ``Swinv2Backbone`` has none: build with ``output_norms=False``).
    Everything is checked before anything is copied.
    """
    if not isinstance(model, UperNet):
        raise TypeError(f"load_upernet: model must be a swin_ext.segmentation.UperNet, got {type(model).__name__}")
    sd = _strip_module(read_state_dict(source))
    backbone_sd, heads, other = _split(sd)
    if not heads:  # a classification / detection checkpoint: the backbone only
        res = load_pretrained(model.backbone, sd, strict=strict)
        return _merge(model, res, f"{res.format} (backbone only)", loaded={}, head_result=LoadResult(
            format="", initialized_keys={k: "not in the checkpoint (a backbone checkpoint)"
                                         for k in model.state_dict() if k.startswith(_HEADS)}), prefix="")
    if not backbone_sd:
        raise CheckpointError(f"the checkpoint has head keys ({sorted(heads)[:3]} ...) but no 'backbone.' keys; "
                              "a UperNet checkpoint holds both")
    layout = _head_layout(heads)
    head_res = LoadResult(format=layout, unexpected_keys=sorted(other))
    values, problems = _plan_heads(model, heads, layout, strict, allow_new_classes, head_res)
    problems += _norm_problems(model, backbone_sd, strict, head_res)
    raise_problems(f"the {layout} UperNet checkpoint does not match the model", problems)
    if strict:
        raise_key_mismatch(f"the {layout} UperNet checkpoint's keys do not match the model (strict=True)", head_res)
    # the heads are checked; the backbone load checks its part, then copies it; then the heads are copied
    res = load_pretrained(model.backbone, backbone_sd, strict=strict)
    target = model.state_dict()
    with torch.no_grad():
        for k, v in values.items():
            target[k].copy_(v)
    if head_res.new_head:
        warnings.warn(f"load_pretrained: the checkpoint's classifiers were not loaded ({head_res.new_head}); the "
                      "model keeps its own", stacklevel=3)
    return _merge(model, res, f"{layout} UperNet ({res.format} backbone)", loaded=values, head_result=head_res,
                  prefix="backbone.")


def _plan_heads(model: UperNet, heads: Dict[str, torch.Tensor], layout: str, strict: bool,
                allow_new_classes: bool, res: LoadResult) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The head tensors to copy (model key -> value) and the problems; fills ``res``'s key lists."""
    target = {k: v for k, v in model.state_dict().items() if k.startswith(_HEADS)}
    renamed: Dict[str, Tuple[str, torch.Tensor]] = {}
    for k, v in heads.items():
        new = _rename_head(k) if layout == "transformers" else k
        if model.auxiliary_head is None and new.startswith("auxiliary_head."):
            res.ignored_keys[k] = "the model has no auxiliary head"
            continue
        renamed[new] = (k, v)
    problems: List[str] = []
    ck = renamed.get("decode_head.conv_seg.weight")
    if ck is not None and ck[1].dim() >= 1 and ck[1].shape[0] != model.num_classes:
        what = f"num_classes differs: checkpoint {ck[1].shape[0]}, model {model.num_classes}"
        if strict and not allow_new_classes:
            problems.append(f"{what}. Pass strict=False to load everything else and keep the model's own "
                            "(newly initialised) classifiers")
        res.new_head = what
        for k in [k for k in renamed if re.match(r"(decode|auxiliary)_head\.conv_seg\.", k)]:
            res.ignored_keys[renamed.pop(k)[0]] = what
        for k in target:
            if re.match(r"(decode|auxiliary)_head\.conv_seg\.", k):
                res.initialized_keys[k] = what
    values: Dict[str, torch.Tensor] = {}
    for k, (orig, v) in renamed.items():
        if k not in target:
            res.unexpected_keys.append(orig)
            continue
        problem = tensor_problem(k, orig, v, target[k])
        if problem:
            problems.append(problem)
            continue
        values[k] = v
    for k in target:
        if k in values or k in res.initialized_keys:
            continue
        if k.endswith(_BN_COUNTER):  # older checkpoints have no BatchNorm counters; nothing computes with them
            res.initialized_keys[k] = "BatchNorm counter, not in the checkpoint"
        else:
            res.missing_keys.append(k)
    res.unexpected_keys.sort()
    return values, problems


def _norm_problems(model: UperNet, backbone_sd: Dict[str, torch.Tensor], strict: bool, res: LoadResult) -> List[str]:
    """The backbone's output norms against the checkpoint's: the heads were trained on (un)normed maps."""
    _, converted, _, _ = convert_state_dict(backbone_sd)
    outs = model.backbone.out_indices
    ck = {i for i in outs if f"norm{i}.weight" in converted}
    mine = has_output_norms(model.backbone)
    if mine and len(ck) < len(outs):
        missing = sorted(set(outs) - ck)
        msg = (f"the checkpoint's backbone has no output norms for stages {missing} (transformers' Swinv2Backbone "
               "has none): build the model with output_norms=False")
        if strict:
            return [msg]
        res.initialized_keys.update({f"backbone.norm{i}.{p}": msg for i in missing for p in ("weight", "bias")})
    elif not mine and ck:
        msg = "the checkpoint's backbone has output norms, the model's (output_norms=False) none"
        if strict:
            return [msg + ": build it with output_norms=True"]
        for i in ck:
            res.ignored_keys.update({f"backbone.{converted[f'norm{i}.{p}'][0]}": msg for p in ("weight", "bias")})
    return []


def _merge(model: UperNet, backbone: LoadResult, fmt: str, loaded: Mapping[str, torch.Tensor],
           head_result: LoadResult, prefix: str) -> LoadResult:
    """One result for the model: the backbone's (model keys under ``backbone.``, checkpoint keys under
    ``prefix``) and the heads'."""
    init = {"backbone." + k: why for k, why in backbone.initialized_keys.items()}
    init.update(head_result.initialized_keys)
    ignored = {prefix + k: why for k, why in backbone.ignored_keys.items()}
    ignored.update(head_result.ignored_keys)
    return LoadResult(
        format=fmt,
        loaded=sorted(_prefixed(backbone.loaded, "backbone.") + list(loaded)),
        missing_keys=_prefixed(backbone.missing_keys, "backbone.") + head_result.missing_keys,
        initialized_keys=init,
        unexpected_keys=sorted(_prefixed(backbone.unexpected_keys, prefix) + head_result.unexpected_keys),
        ignored_keys=ignored,
        resized_keys=_prefixed(backbone.resized_keys, "backbone."),
        new_head=head_result.new_head,
    )


# ----------------------------------------------------------------------------- transformers' live model


def from_transformers_upernet(model: nn.Module) -> UperNet:
    """A swin_ext :class:`UperNet` computing what a transformers ``UperNetForSemanticSegmentation`` with a
    ``SwinBackbone`` or ``Swinv2Backbone`` computes (same weights, mode, dtype and device).

    The backbone is :func:`swin_ext.weights.convert.transformers_backbone`'s
    copy: V1 with ``always_partition=True`` (``SwinBackbone`` pads every map
    to the window and shifts), V2 with the per-stage windows
    ``Swinv2Backbone`` fixes at ``config.image_size`` and no output norms.
    The heads get dropout 0 (transformers has none); stochastic depth is
    dropped (0), as in every swin_ext conversion.  Every LayerNorm and
    BatchNorm keeps its source module's eps (and BatchNorm its momentum).
    """
    what = f"from_transformers({type(model).__name__})"
    c = model.config
    bb = getattr(model, "backbone", None)
    bname = type(bb).__name__
    if type(model).__name__ != "UperNetForSemanticSegmentation" or bname not in ("SwinBackbone", "Swinv2Backbone"):
        raise ConversionError(f"{what}: supported is UperNetForSemanticSegmentation with a SwinBackbone or "
                              f"Swinv2Backbone, got {type(model).__name__} with {bname}")
    body = transformers_backbone(bb, what)
    if isinstance(body, SwinTransformerV2):
        without_output_norms(body)
    in_ch = body.out_channels
    if c.use_auxiliary_head and len(in_ch) < 3:
        raise ConversionError(f"{what}: the auxiliary head reads the third backbone output; out_features "
                              f"{list(bb.out_features)}")
    if c.use_auxiliary_head and c.auxiliary_in_channels not in (None, in_ch[2]):
        raise ConversionError(f"{what}: auxiliary_in_channels={c.auxiliary_in_channels} is not the third output's "
                              f"{in_ch[2]} channels (transformers' model would not run)")
    try:
        ours = UperNet(body, c.num_labels, channels=c.hidden_size, pool_scales=tuple(c.pool_scales),
                       aux=c.use_auxiliary_head, aux_channels=c.auxiliary_channels, aux_in_index=2,
                       aux_num_convs=c.auxiliary_num_convs, aux_concat_input=c.auxiliary_concat_input,
                       aux_weight=c.auxiliary_loss_weight, dropout=0.0, ignore_index=c.loss_ignore_index)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{what}: its configuration is not a swin_ext UperNet: {e}") from e
    sd = model.state_dict()
    load_upernet(ours, sd, strict=True)
    _copy_bn(ours, model, sd)
    return ours.train(model.training)


def _copy_bn(ours: UperNet, source: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Each of the heads' BatchNorms gets the eps and momentum of the source module its weight came from (the
    backbone's LayerNorms have theirs from :func:`~swin_ext.weights.convert.transformers_backbone`)."""
    src_modules = dict(source.named_modules())
    origin = {_rename_head(k): k for k in sd if k.startswith(_HEADS)}
    for name, m in ours.named_modules():
        if not isinstance(m, nn.BatchNorm2d):
            continue
        src = origin.get(name + ".weight")
        sm = src_modules.get(src[: -len(".weight")]) if src else None
        if sm is None or not hasattr(sm, "eps"):
            raise ConversionError(f"from_transformers: no source module for {name} ({src})")
        m.eps, m.momentum = sm.eps, sm.momentum

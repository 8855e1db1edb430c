"""Drop-in conversion of live Swin models from timm, torchvision and transformers.

``swin_ext.from_timm(m)``, ``from_torchvision(m)`` and ``from_transformers(m)``
read the source's configuration (embed dim, depths, heads, window, classes,
patch size, MLP ratio, qkv bias, LayerNorm eps, input channels, image size)
and weights, and return a swin_ext :class:`~swin_ext.SwinTransformer` that
computes the same outputs (its ``state_dict`` through the same layout
conversion as :func:`~swin_ext.load_pretrained`).  timm's
``SwinTransformerV2`` and transformers' ``Swinv2ForImageClassification`` /
``Swinv2Model`` become a :class:`~swin_ext.SwinTransformerV2` (with their
pretrained window sizes), torchvision's ``SwinTransformer3d`` (``swin3d_*``) a
:class:`~swin_ext.SwinTransformer3d`.  The copy has the source's mode (train / eval),
dtype and device.  Other model families, and torchvision's Swin V2, get a
:class:`ConversionError`.

    model = swin_ext.from_timm(timm.create_model("swin_tiny_patch4_window7_224", pretrained=True))
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict

import torch.nn as nn

from ..models import SwinTransformer, SwinTransformer3d, SwinTransformerV2
from .checkpoint import load_pretrained

__all__ = ["from_timm", "from_torchvision", "from_transformers", "ConversionError"]


class ConversionError(ValueError):
    """The source model cannot be converted (the message says why)."""


def _ln_eps(mod: nn.Module, what: str) -> float:
    eps = {m.eps for m in mod.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) > 1:
        raise ConversionError(f"{what}: LayerNorms with different eps {sorted(eps)} are not supported")
    return eps.pop() if eps else 1e-5


def _build(cfg: Dict[str, Any], eps: float, source: nn.Module, state_dict, what: str, cls: type = SwinTransformer):
    try:
        model = cls(drop_path_rate=0.0, **cfg)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{what}: its configuration {cfg} is not a swin_ext {cls.__name__}: {e}") from e
    for m in model.modules():  # the source's LayerNorm eps (every swin_ext norm reads its module's eps)
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    # to the source's dtype first: float64 weights loaded into float32 parameters would be rounded
    p = next(source.parameters(), None)
    if p is not None:
        model = model.to(device=p.device, dtype=p.dtype)
    load_pretrained(model, state_dict, strict=True)
    return model.train(source.training)


def _first(seq, what):
    try:
        return seq[0]
    except (IndexError, TypeError, KeyError):
        raise ConversionError(f"{what}: no blocks found") from None


# ----------------------------------------------------------------------------- timm


def _square(v, what: str, name: str) -> int:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(set(v)) != 1:
        raise ConversionError(f"{what}: non-square {name} {v} are not supported")
    return int(v[0])


def _from_timm_v2(model: nn.Module, what: str) -> SwinTransformerV2:
    """timm's ``SwinTransformerV2`` (``swinv2_*``, not the ``swinv2_cr_*`` family)."""
    if getattr(model, "global_pool", "avg") != "avg":
        raise ConversionError(f"{what}: global_pool={model.global_pool!r} is not supported (only 'avg')")
    proj = model.patch_embed.proj
    layers = list(model.layers)
    blocks = [_first(list(layer.blocks), what) for layer in layers]
    if any(getattr(b, "always_partition", False) for b in blocks):
        raise ConversionError(f"{what}: always_partition=True is not supported (swin_ext shrinks the window "
                              "to a smaller map, as timm's default)")
    dim0 = model.embed_dim
    head_fc = getattr(getattr(model, "head", None), "fc", None)
    cfg = dict(
        img_size=tuple(getattr(model.patch_embed, "img_size", None) or (224, 224)),
        patch_size=proj.kernel_size[0],
        in_chans=proj.in_channels,
        num_classes=head_fc.out_features if isinstance(head_fc, nn.Linear) else 0,
        embed_dim=dim0,
        depths=[len(layer.blocks) for layer in layers],
        num_heads=[b.attn.num_heads for b in blocks],
        # timm's window per stage after its shrink to a smaller map at img_size (the same at img_size)
        window_size=[_square(b.window_size, what, "windows") for b in blocks],
        pretrained_window_sizes=[_square(b.attn.pretrained_window_size, what, "pretrained windows") for b in blocks],
        mlp_ratio=blocks[0].mlp.fc1.out_features / dim0,
        qkv_bias=blocks[0].attn.q_bias is not None,
    )
    return _build(cfg, _ln_eps(model, what), model, model.state_dict(), what, SwinTransformerV2)


def from_timm(model: nn.Module):
    """A swin_ext copy of a timm ``SwinTransformer`` (``swin_*_patch4_window*``) or
    ``SwinTransformerV2`` (``swinv2_*``; a :class:`~swin_ext.SwinTransformerV2`)."""
    what = f"from_timm({type(model).__name__})"
    cls = type(model)
    if cls.__name__ == "SwinTransformerV2" and cls.__module__ == "timm.models.swin_transformer_v2":
        return _from_timm_v2(model, what)
    if cls.__module__.startswith("timm.models.swin_transformer_v2"):
        raise ConversionError(f"{what}: timm's {cls.__module__}.{cls.__name__} (the swinv2_cr_* family) is not "
                              "supported; timm's SwinTransformerV2 (swinv2_*) is")
    if cls.__name__ != "SwinTransformer" or not cls.__module__.startswith("timm.models.swin_transformer"):
        raise ConversionError(
            f"{what}: expects timm.models.swin_transformer.SwinTransformer, got {cls.__module__}.{cls.__name__}"
        )
    pe = model.patch_embed
    proj = pe.proj
    layers = list(model.layers)
    blocks0 = _first(list(layers[0].blocks), what)
    ws = blocks0.window_size
    ws = ws[0] if isinstance(ws, (tuple, list)) else ws
    if isinstance(blocks0.window_size, (tuple, list)) and len(set(blocks0.window_size)) != 1:
        raise ConversionError(f"{what}: non-square windows {blocks0.window_size} are not supported")
    dims = [int(model.embed_dim * 2**i) for i in range(len(layers))]
    head_fc = getattr(getattr(model, "head", None), "fc", None)
    num_classes = head_fc.out_features if isinstance(head_fc, nn.Linear) else 0
    img = getattr(pe, "img_size", None) or (224, 224)
    cfg = dict(
        img_size=tuple(img) if img is not None else 224,
        patch_size=proj.kernel_size[0],
        in_chans=proj.in_channels,
        num_classes=num_classes,
        embed_dim=model.embed_dim,
        depths=[len(layer.blocks) for layer in layers],
        num_heads=[_first(list(layer.blocks), what).attn.num_heads for layer in layers],
        window_size=ws,
        mlp_ratio=blocks0.mlp.fc1.out_features / dims[0],
        qkv_bias=blocks0.attn.qkv.bias is not None,
    )
    return _build(cfg, _ln_eps(model, what), model, model.state_dict(), what)


# ----------------------------------------------------------------------------- torchvision


def from_torchvision(model: nn.Module):
    """A swin_ext copy of a torchvision ``SwinTransformer`` (``swin_t`` / ``swin_s`` / ``swin_b``), or of
    a torchvision ``SwinTransformer3d`` (``swin3d_t`` / ``_s`` / ``_b``: a :class:`~swin_ext.SwinTransformer3d`)."""
    what = f"from_torchvision({type(model).__name__})"
    cls = type(model)
    if cls.__name__ == "SwinTransformer3d" and cls.__module__ == "torchvision.models.video.swin_transformer":
        return _from_torchvision_3d(model, what)
    if cls.__name__ != "SwinTransformer" or not cls.__module__.startswith("torchvision.models.swin_transformer"):
        raise ConversionError(
            f"{what}: expects torchvision.models.swin_transformer.SwinTransformer, got {cls.__module__}.{cls.__name__}"
        )
    from torchvision.models import swin_transformer as tv

    stages = [
        m for m in model.features[1:] if isinstance(m, nn.Sequential) and len(m) and not isinstance(m[0], nn.Conv2d)
    ]
    blocks = [list(s) for s in stages]
    if any(isinstance(b, tv.SwinTransformerBlockV2) for s in blocks for b in s):
        raise ConversionError(
            f"{what}: torchvision's Swin V2 models (swin_v2_*) are not supported (timm's and "
            "transformers' Swin V2 are: swin_ext.from_timm / from_transformers)"
        )
    conv = model.features[0][0]
    b0 = _first(blocks[0], what)
    ws = b0.attn.window_size
    if len(set(ws)) != 1:
        raise ConversionError(f"{what}: non-square windows {ws} are not supported")
    dim0 = conv.out_channels
    cfg = dict(
        patch_size=conv.kernel_size[0],
        in_chans=conv.in_channels,
        num_classes=model.head.out_features,
        embed_dim=dim0,
        depths=[len(s) for s in blocks],
        num_heads=[_first(s, what).attn.num_heads for s in blocks],
        window_size=ws[0],
        mlp_ratio=b0.mlp[0].out_features / dim0,
        qkv_bias=b0.attn.qkv.bias is not None,
    )
    return _build(cfg, _ln_eps(model, what), model, model.state_dict(), what)


def _from_torchvision_3d(model: nn.Module, what: str) -> SwinTransformer3d:
    """torchvision's Video Swin: its configuration read off the modules, every option it has that
    swin_ext's model does not reproduce refused by name."""
    from torchvision.models import swin_transformer as tv2
    from torchvision.models.video import swin_transformer as tv3

    pe = model.patch_embed
    if type(pe) is not tv3.PatchEmbed3d or not isinstance(pe.norm, nn.LayerNorm):
        norm = type(getattr(pe, "norm", None)).__name__
        raise ConversionError(f"{what}: a patch embedding other than torchvision's PatchEmbed3d with a LayerNorm "
                              f"({type(pe).__name__}, norm {norm}) is not supported")
    stages = [m for m in model.features if isinstance(m, nn.Sequential)]
    merges = [m for m in model.features if not isinstance(m, nn.Sequential)]
    blocks = [b for s in stages for b in s]
    if not blocks:
        raise ConversionError(f"{what}: no blocks found")
    for b in blocks:
        if type(b) is not tv2.SwinTransformerBlock or type(b.attn) is not tv3.ShiftedWindowAttention3d:
            raise ConversionError(f"{what}: block {type(b).__name__} with attention {type(b.attn).__name__} is not "
                                  "torchvision's SwinTransformerBlock with ShiftedWindowAttention3d")
    if any(type(m) is not tv2.PatchMerging for m in merges) or len(merges) != len(stages) - 1:
        raise ConversionError(f"{what}: only torchvision's PatchMerging between the stages is supported")
    b0 = blocks[0]
    dim0, window = pe.proj.out_channels, tuple(b0.attn.window_size)
    total = len(blocks)
    sd_prob = blocks[-1].stochastic_depth.p
    dropout, attn_dropout = b0.attn.dropout, b0.attn.attention_dropout
    for k, b in enumerate(blocks):
        j = next(j for s in stages for j, x in enumerate(s) if x is b)
        want_shift = [0 if j % 2 == 0 else w // 2 for w in window]
        checks = (
            ("window_size", tuple(b.attn.window_size), window),
            ("shift_size", list(b.attn.shift_size), want_shift),
            ("stochastic depth", b.stochastic_depth.p, sd_prob * k / (total - 1) if total > 1 else 0.0),
            ("dropout", (b.attn.dropout, b.mlp[2].p, b.mlp[4].p), (dropout,) * 3),
            ("attention_dropout", b.attn.attention_dropout, attn_dropout),
            ("qkv / proj bias", (b.attn.qkv.bias is not None, b.attn.proj.bias is not None), (True, True)),
            ("MLP activation", type(b.mlp[1]), nn.GELU),
        )
        for name, got, want in checks:
            same = math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15) if isinstance(got, float) else got == want
            if not same:
                raise ConversionError(f"{what}: block {k} has {name} {got}, swin_ext's model would have {want} "
                                      "(torchvision's per-block rule); not supported")
    if model.pos_drop.p != dropout:
        raise ConversionError(f"{what}: pos_drop {model.pos_drop.p} differs from the blocks' dropout {dropout}")
    eps = _ln_eps(model, what)
    cfg = dict(
        patch_size=pe.tuple_patch_size,
        embed_dim=dim0,
        depths=[len(s) for s in stages],
        num_heads=[s[0].attn.num_heads for s in stages],
        window_size=window,
        mlp_ratio=b0.mlp[0].out_features / dim0,
        dropout=dropout,
        attention_dropout=attn_dropout,
        stochastic_depth_prob=sd_prob,
        num_classes=model.head.out_features,
        norm_layer=functools.partial(nn.LayerNorm, eps=eps),
        in_channels=pe.proj.in_channels,
    )
    try:
        out = SwinTransformer3d(**cfg)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{what}: its configuration {cfg} is not a swin_ext SwinTransformer3d: {e}") from e
    p = next(model.parameters(), None)
    if p is not None:
        out = out.to(device=p.device, dtype=p.dtype)
    load_pretrained(out, model.state_dict(), strict=True)
    return out.train(model.training)


# ----------------------------------------------------------------------------- transformers


def from_transformers(model: nn.Module):
    """A swin_ext copy of a transformers ``SwinForImageClassification`` or ``SwinModel``, or of a
    ``Swinv2ForImageClassification`` or ``Swinv2Model`` (a :class:`~swin_ext.SwinTransformerV2`)."""
    what = f"from_transformers({type(model).__name__})"
    cfg_src = getattr(model, "config", None)
    mtype = getattr(cfg_src, "model_type", None)
    if mtype not in ("swin", "swinv2"):
        raise ConversionError(
            f"{what}: expects a transformers Swin or Swin V2 model (config.model_type 'swin' "
            f"or 'swinv2'), got {mtype!r}"
        )
    v2 = mtype == "swinv2"
    name = type(model).__name__
    supported = ("Swinv2ForImageClassification", "Swinv2Model") if v2 else ("SwinForImageClassification", "SwinModel")
    if name not in supported:
        raise ConversionError(f"{what}: supported are {' and '.join(supported)}, got {name}")
    c = cfg_src
    img = c.image_size if isinstance(c.image_size, (tuple, list)) else (c.image_size, c.image_size)
    patch = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
    num_classes = getattr(model, "classifier", None)
    num_classes = num_classes.out_features if isinstance(num_classes, nn.Linear) else 0
    cfg = dict(
        img_size=tuple(img),
        patch_size=patch,
        in_chans=c.num_channels,
        num_classes=num_classes,
        embed_dim=c.embed_dim,
        depths=list(c.depths),
        num_heads=list(c.num_heads),
        window_size=c.window_size,
        mlp_ratio=c.mlp_ratio,
        qkv_bias=c.qkv_bias,
    )
    if getattr(c, "use_absolute_embeddings", False):
        raise ConversionError(f"{what}: absolute position embeddings (use_absolute_embeddings=True) are not supported")
    eps = float(c.layer_norm_eps)
    if v2:
        cfg["pretrained_window_sizes"] = list(c.pretrained_window_sizes or [0] * len(c.depths))
        return _build(cfg, eps, model, model.state_dict(), what, SwinTransformerV2)
    return _build(cfg, eps, model, model.state_dict(), what)

"""Drop-in conversion of live Swin models from timm, torchvision and transformers.

``swin_ext.from_timm(m)``, ``from_torchvision(m)`` and ``from_transformers(m)``
read the source's configuration (embed dim, depths, heads, window, classes,
patch size, MLP ratio, qkv bias, LayerNorm eps, input channels, image size)
and weights, and return a swin_ext :class:`~swin_ext.SwinTransformer` that
computes the same outputs (its ``state_dict`` through the same layout
conversion as :func:`~swin_ext.load_pretrained`).  The copy has the source's
mode (train / eval), dtype and device.  Other model families, and Swin V2
(not supported yet), get a :class:`ConversionError`.

    model = swin_ext.from_timm(timm.create_model("swin_tiny_patch4_window7_224", pretrained=True))
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from .checkpoint import load_pretrained
from .model import SwinTransformer

__all__ = ["from_timm", "from_torchvision", "from_transformers", "ConversionError"]


class ConversionError(ValueError):
    """The source model cannot be converted (the message says why)."""


def _ln_eps(mod: nn.Module, what: str) -> float:
    eps = {m.eps for m in mod.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) > 1:
        raise ConversionError(f"{what}: LayerNorms with different eps {sorted(eps)} are not supported")
    return eps.pop() if eps else 1e-5


def _build(cfg: Dict[str, Any], eps: float, source: nn.Module, state_dict, what: str) -> SwinTransformer:
    try:
        model = SwinTransformer(drop_path_rate=0.0, **cfg)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{what}: its configuration {cfg} is not a swin_ext SwinTransformer: {e}") from e
    for m in model.modules():  # the source's LayerNorm eps (every swin_ext norm reads its module's eps)
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    load_pretrained(model, state_dict, strict=True)
    p = next(source.parameters(), None)
    if p is not None:
        model = model.to(device=p.device, dtype=p.dtype)
    return model.train(source.training)


def _first(seq, what):
    try:
        return seq[0]
    except (IndexError, TypeError, KeyError):
        raise ConversionError(f"{what}: no blocks found") from None


# ----------------------------------------------------------------------------- timm


def from_timm(model: nn.Module) -> SwinTransformer:
    """A swin_ext copy of a timm ``SwinTransformer`` (``swin_*_patch4_window*``)."""
    what = f"from_timm({type(model).__name__})"
    cls = type(model)
    if cls.__module__.startswith("timm.models.swin_transformer_v2") or "V2" in cls.__name__:
        raise ConversionError(f"{what}: Swin V2 models are not supported yet (swin_ext implements Swin V1)")
    if cls.__name__ != "SwinTransformer" or not cls.__module__.startswith("timm.models.swin_transformer"):
        raise ConversionError(f"{what}: expects timm.models.swin_transformer.SwinTransformer, got {cls.__module__}.{cls.__name__}")
    pe = model.patch_embed
    proj = pe.proj
    layers = list(model.layers)
    blocks0 = _first(list(layers[0].blocks), what)
    ws = blocks0.window_size
    ws = ws[0] if isinstance(ws, (tuple, list)) else ws
    if isinstance(blocks0.window_size, (tuple, list)) and len(set(blocks0.window_size)) != 1:
        raise ConversionError(f"{what}: non-square windows {blocks0.window_size} are not supported")
    dims = [int(model.embed_dim * 2 ** i) for i in range(len(layers))]
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


def from_torchvision(model: nn.Module) -> SwinTransformer:
    """A swin_ext copy of a torchvision ``SwinTransformer`` (``swin_t`` / ``swin_s`` / ``swin_b``)."""
    what = f"from_torchvision({type(model).__name__})"
    cls = type(model)
    if cls.__name__ != "SwinTransformer" or not cls.__module__.startswith("torchvision.models.swin_transformer"):
        raise ConversionError(f"{what}: expects torchvision.models.swin_transformer.SwinTransformer, got "
                              f"{cls.__module__}.{cls.__name__}")
    from torchvision.models import swin_transformer as tv

    stages = [m for m in model.features[1:] if isinstance(m, nn.Sequential) and len(m) and not isinstance(m[0], nn.Conv2d)]
    blocks = [list(s) for s in stages]
    if any(isinstance(b, tv.SwinTransformerBlockV2) for s in blocks for b in s):
        raise ConversionError(f"{what}: Swin V2 models (swin_v2_*) are not supported yet (swin_ext implements Swin V1)")
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


# ----------------------------------------------------------------------------- transformers


def from_transformers(model: nn.Module) -> SwinTransformer:
    """A swin_ext copy of a transformers ``SwinForImageClassification`` or ``SwinModel``."""
    what = f"from_transformers({type(model).__name__})"
    cfg_src = getattr(model, "config", None)
    mtype = getattr(cfg_src, "model_type", None)
    if mtype == "swinv2":
        raise ConversionError(f"{what}: Swin V2 models are not supported yet (swin_ext implements Swin V1)")
    if mtype != "swin":
        raise ConversionError(f"{what}: expects a transformers Swin model (config.model_type 'swin'), got {mtype!r}")
    name = type(model).__name__
    if name not in ("SwinForImageClassification", "SwinModel"):
        raise ConversionError(f"{what}: supported are SwinForImageClassification and SwinModel, got {name}")
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
    return _build(cfg, eps, model, model.state_dict(), what)

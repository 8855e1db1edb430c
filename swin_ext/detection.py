"""Swin as a detection backbone for torchvision's detectors.

:func:`fpn_backbone` puts torchvision's ``FeaturePyramidNetwork`` (with a
max-pool level on top, as torchvision's ResNet-FPN backbones have) over a
``features_only`` swin_ext Swin, giving the module torchvision's
``FasterRCNN``, ``MaskRCNN`` and ``RetinaNet`` expect: an int
``out_channels`` and a forward that returns an ``OrderedDict`` of feature
maps (``"0"`` ... ``"3"`` at strides 4 ... 32, and ``"pool"``).

    backbone = swin_ext.fpn_backbone("swin_tiny_patch4_window7_224", pretrained="swin_tiny.pth")
    detector = torchvision.models.detection.FasterRCNN(backbone, num_classes=91)
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn

from .models import SwinTransformer, SwinTransformerV2
from .weights import load_pretrained
from .weights.convert import copy_norm_eps

_SWIN = (SwinTransformer, SwinTransformerV2)

__all__ = ["SwinFPN", "fpn_backbone"]


class SwinFPN(nn.Module):
    """``features_only`` Swin + FPN: ``(B, 3, H, W)`` -> ``OrderedDict`` of ``(B, out_channels, H/s, W/s)``."""

    def __init__(self, body: SwinTransformer, out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        if not (isinstance(body, _SWIN) and body.features_only):
            raise TypeError("SwinFPN needs a features_only swin_ext SwinTransformer or SwinTransformerV2")
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        self.body = body
        in_channels = [body.feature_info[i]["num_chs"] for i in body.out_indices]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        p = next(body.parameters(), None)
        if p is not None:  # on the body's device and in its dtype (a float64 body gets a float64 FPN)
            self.fpn.to(device=p.device, dtype=p.dtype)
        #: what torchvision's detectors read
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(k), f) for k, f in enumerate(feats)))


def _features_only_copy(model, out_indices: Sequence[int]):
    """A features_only model with ``model``'s configuration, LayerNorm eps and weights (its head and final norm
    left out; the new per-stage norms ``norm{i}`` take the final norm's eps)."""
    common = dict(img_size=model.img_size, patch_size=model.patch_size, in_chans=model.in_chans,
                  embed_dim=model.embed_dim, depths=model.depths, num_heads=model.num_heads,
                  mlp_ratio=model.mlp_ratio, drop_path_rate=0.0, backend=model.backend, features_only=True,
                  out_indices=out_indices)
    if isinstance(model, SwinTransformerV2):
        body = SwinTransformerV2(window_size=list(model.window_sizes), qkv_bias=model.qkv_bias,
                                 pretrained_window_sizes=list(model.pretrained_window_sizes), **common)
    else:
        qkv_bias = model.layers[0].blocks[0].attn.qkv.bias is not None
        body = SwinTransformer(window_size=list(model.window_sizes), qkv_bias=qkv_bias,
                               always_partition=model.always_partition, **common)
    copy_norm_eps(model, body, "fpn_backbone")
    for i in body.out_indices:
        getattr(body, f"norm{i}").eps = model.norm.eps
    # to the source's dtype first: loading a float64 model into a float32 body would round its weights
    p = next(model.parameters())
    body = body.to(device=p.device, dtype=p.dtype)
    load_pretrained(body, model.state_dict(), strict=False)
    return body


def fpn_backbone(
    name_or_model: Union[str, SwinTransformer, SwinTransformerV2] = "swin_tiny_patch4_window7_224",
    out_channels: int = 256,
    pretrained: Optional[Any] = None,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    **kw: Any,
) -> SwinFPN:
    """A torchvision-detector backbone: a features_only Swin with an FPN on top.

    Args:
        name_or_model: a :func:`~swin_ext.create_model` name (``swinv2_*`` too), or a swin_ext
            ``SwinTransformer`` / ``SwinTransformerV2`` (a classification model is copied into a
            features_only one with its weights; a features_only one is used
            as it is and must have these ``out_indices``).
        out_channels: channels of every FPN level.
        pretrained: a checkpoint path or state dict for a named model
            (official / timm / torchvision / transformers / detection layouts).
        out_indices: the stages fed to the FPN.
        **kw: more :func:`~swin_ext.create_model` keywords (e.g. ``drop_path_rate``).
    """
    from .factory import create_model

    if isinstance(name_or_model, str):
        body = create_model(name_or_model, pretrained=pretrained, features_only=True, out_indices=out_indices, **kw)
    elif isinstance(name_or_model, _SWIN):
        if pretrained is not None or kw:
            raise ValueError("fpn_backbone: pretrained= and model keywords apply to a model name, not to a model")
        if name_or_model.features_only:
            if tuple(name_or_model.out_indices) != tuple(out_indices):
                raise ValueError(f"fpn_backbone: the model's out_indices {tuple(name_or_model.out_indices)} differ "
                                 f"from out_indices {tuple(out_indices)}")
            body = name_or_model
        else:
            body = _features_only_copy(name_or_model, out_indices)
    else:
        raise TypeError(f"fpn_backbone: name_or_model must be a model name or a swin_ext SwinTransformer(V2), got "
                        f"{type(name_or_model).__name__}")
    return SwinFPN(body, out_channels)

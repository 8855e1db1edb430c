"""UperNet (Xiao et al., ECCV 2018) on a swin_ext Swin: the seed's ADE20K segmentation model.

The decoder is mmsegmentation's ``UPerHead`` and the auxiliary head its
``FCNHead`` (the heads the official Swin segmentation results use), computed
as transformers' ``UperNetForSemanticSegmentation`` computes them:

* **pyramid pooling (PPM)** on the last stage: adaptive average pools at
  ``pool_scales`` (1, 2, 3, 6), each a 1x1 ConvBNReLU, bilinearly resized
  back, concatenated with the stage map and fused by a 3x3 ConvBNReLU
  (``bottleneck``);
* **FPN**: a 1x1 ``lateral_convs`` per other stage, the top-down path (each
  level plus the bilinear upsampling of the one above), a 3x3 ``fpn_convs``
  per level;
* **fusion**: every level bilinearly resized to stride 4, concatenated, a 3x3
  ConvBNReLU (``fpn_bottleneck``), dropout, the 1x1 classifier ``conv_seg``;
* **auxiliary FCN head** on stage ``aux_in_index`` (2: stride 16): ``aux_num_convs``
  3x3 ConvBNReLUs, dropout, ``conv_seg``.

Module names follow mmseg (``psp_modules.i.1.conv`` / ``.bn``, ``bottleneck``,
``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``), so an
mmseg checkpoint's ``decode_head.`` / ``auxiliary_head.`` keys are this
model's own; transformers' (``batch_norm``, ``classifier``) are renamed by
:mod:`swin_ext.segmentation.weights`.  Every resize is bilinear with
``align_corners=False``; logits come back at the input resolution.

Differences to the peers, on purpose: mmseg and this model apply
``Dropout2d(dropout)`` before each classifier (0.1 in the official configs;
transformers has none: :func:`~swin_ext.from_transformers` sets 0); the loss
averages over the non-ignored pixels (transformers' ``CrossEntropyLoss``;
mmseg's default ``avg_non_ignore=False`` divides by all pixels).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..factory import create_model, model_class
from ..models import SwinTransformer, SwinTransformerV2

__all__ = [
    "ConvBNReLU",
    "PPM",
    "UperNetHead",
    "FCNHead",
    "UperNet",
    "upernet",
    "upernet_swin_t",
    "upernet_swin_s",
    "upernet_swin_b",
    "upernet_swin_l",
    "without_output_norms",
    "has_output_norms",
    "AUX_WEIGHT",
]

_SWIN = (SwinTransformer, SwinTransformerV2)

#: weight of the auxiliary head's loss (transformers' ``auxiliary_loss_weight``, mmseg's Swin configs)
AUX_WEIGHT = 0.4


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, ``align_corners=False`` (mmseg's ``resize`` and transformers' ``interpolate``)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Module):
    """``relu(bn(conv(x)))``: mmcv's ``ConvModule`` with BN (keys ``conv.weight``, ``bn.*``; the conv has no bias).

    ``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')``; the ReLU is in place.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


# ----------------------------------------------------------------------------- heads


class PPM(nn.ModuleList):
    """Pyramid pooling: ``(B, C, H, W)`` -> ``len(pool_scales)`` maps ``(B, channels, H, W)``.

    Entry ``i`` is ``Sequential(AdaptiveAvgPool2d(scale_i), ConvBNReLU 1x1)``
    (mmseg's ``PPM``: keys ``i.1.conv``, ``i.1.bn``), bilinearly resized back.
    """

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int) -> None:
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1))
                         for s in pool_scales)
        self.pool_scales = tuple(pool_scales)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [_resize(ppm(x), x.shape[2:]) for ppm in self]


class UperNetHead(nn.Module):
    """UperNet decoder: the stage maps ``[(B, in_channels[i], H_i, W_i)]`` (strides increasing) ->
    logits ``(B, num_classes, H_0, W_0)`` at the first map's resolution.

    mmseg's ``UPerHead`` (transformers' ``UperNetHead``), with mmseg's dropout
    before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.in_channels = in_channels
        self.channels = channels
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map through the pyramid pooling and the bottleneck."""
        return self.bottleneck(torch.cat([x] + self.psp_modules(x), dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"UperNetHead: expected {len(self.in_channels)} feature maps, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [_resize(o, size) for o in outs[1:]]
        x = self.fpn_bottleneck(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(x))


class FCNHead(nn.Module):
    """The auxiliary head: stage map ``in_index`` ``(B, in_channels, H, W)`` -> ``(B, num_classes, H, W)``.

    mmseg's ``FCNHead`` (transformers' ``UperNetFCNHead``): ``num_convs``
    3x3 ConvBNReLUs (``convs.j``; none: identity), optionally ``conv_cat``
    over the input and their output, dropout, ``conv_seg``.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int = 2, num_convs: int = 1,
                 concat_input: bool = False, kernel_size: int = 3, dilation: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        if num_convs < 0:
            raise ValueError(f"FCNHead: num_convs must be >= 0, got {num_convs}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(f"FCNHead: with num_convs=0 the classifier reads the input: channels ({channels}) must "
                             f"equal in_channels ({in_channels})")
        self.in_index = in_index
        self.in_channels = in_channels
        self.channels = channels
        pad = (kernel_size // 2) * dilation
        convs = [ConvBNReLU(in_channels if j == 0 else channels, channels, kernel_size, pad, dilation)
                 for j in range(num_convs)]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        self.conv_cat = (ConvBNReLU(in_channels + channels, channels, kernel_size, kernel_size // 2)
                         if concat_input else None)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


# ----------------------------------------------------------------------------- the model


def _check_positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class UperNet(nn.Module):
    """UperNet semantic segmentation over a ``features_only`` swin_ext Swin (V1 or V2).

    ``forward(images (B, in_chans, H, W))`` -> logits ``(B, num_classes, H, W)``
    (any ``H``, ``W``: the backbone pads); ``forward(images, return_aux=True)``
    -> ``(logits, aux_logits)`` (``aux_logits`` ``None`` without an auxiliary
    head), both at the input resolution.  :meth:`loss` is the training loss.

    Args:
        backbone: a ``features_only`` :class:`~swin_ext.SwinTransformer` or
            :class:`~swin_ext.SwinTransformerV2`; its ``out_indices`` stages
            feed the decoder (the last one the pyramid pooling).
        num_classes: classes (150 for ADE20K).
        channels: the decoder's width (512, mmseg's and transformers' ``hidden_size``).
        pool_scales: the pyramid pooling's output sizes.
        aux_channels: the auxiliary head's width (256); ``aux=False`` for none.
        aux_in_index: which of the backbone's outputs the auxiliary head reads (2).
        aux_num_convs / aux_concat_input: the auxiliary head's convs (1, False).
        aux_weight: the auxiliary loss weight (0.4, transformers' default).
        dropout: ``Dropout2d`` before both classifiers (0.1 as mmseg; 0 as transformers).
        ignore_index: the label :meth:`loss` ignores by default (255).

    The heads are created on the backbone's device and in its dtype.
    """

    def __init__(
        self,
        backbone: Union[SwinTransformer, SwinTransformerV2],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        aux: bool = True,
        aux_channels: int = 256,
        aux_in_index: int = 2,
        aux_num_convs: int = 1,
        aux_concat_input: bool = False,
        aux_weight: float = AUX_WEIGHT,
        dropout: float = 0.1,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if not (isinstance(backbone, _SWIN) and backbone.features_only):
            raise TypeError("UperNet needs a features_only swin_ext SwinTransformer or SwinTransformerV2 "
                            f"(e.g. create_model(name, features_only=True)), got {type(backbone).__name__}"
                            + ("" if not isinstance(backbone, _SWIN) else " without features_only"))
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(channels, "channels")
        if not pool_scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pool_scales):
            raise ValueError(f"pool_scales must be positive ints, got {pool_scales!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        in_channels = backbone.out_channels
        self.backbone = backbone
        self.num_classes = num_classes
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)
        self.decode_head = UperNetHead(in_channels, channels, num_classes, pool_scales, dropout)
        self.auxiliary_head: Optional[FCNHead] = None
        if aux:
            if not -len(in_channels) <= aux_in_index < len(in_channels):
                raise ValueError(f"aux_in_index {aux_in_index} is out of range for the backbone's "
                                 f"{len(in_channels)} outputs (out_indices {tuple(backbone.out_indices)})")
            _check_positive_int(aux_channels, "aux_channels")
            self.auxiliary_head = FCNHead(in_channels[aux_in_index], aux_channels, num_classes, aux_in_index,
                                          aux_num_convs, aux_concat_input, dropout=dropout)
        self._init_heads()
        p = next(backbone.parameters(), None)
        if p is not None:  # the heads on the backbone's device, in its dtype
            for head in (self.decode_head, self.auxiliary_head):
                if head is not None:
                    head.to(device=p.device, dtype=p.dtype)

    def _init_heads(self) -> None:
        """mmseg's init: convs Kaiming (fan-out, ReLU), BN weight 1 bias 0, classifiers normal(0, 0.01)."""
        for head in (self.decode_head, self.auxiliary_head):
            if head is None:
                continue
            for m in head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            nn.init.normal_(head.conv_seg.weight, std=0.01)
            nn.init.zeros_(head.conv_seg.bias)

    def forward(self, images: torch.Tensor, return_aux: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        feats = self.backbone(images)
        size = images.shape[2:]
        logits = _resize(self.decode_head(feats), size).contiguous()
        if not return_aux:
            return logits
        aux = None if self.auxiliary_head is None else _resize(self.auxiliary_head(feats), size).contiguous()
        return logits, aux

    def loss(self, logits: torch.Tensor, target: torch.Tensor, ignore_index: Optional[int] = None,
             aux_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pixel-wise cross-entropy, plus ``aux_weight`` times the auxiliary logits' (when given).

        ``logits`` / ``aux_logits`` ``(B, num_classes, H, W)``, ``target`` ``(B, H, W)``
        integer labels in ``[0, num_classes)`` or ``ignore_index`` (default the
        model's, 255).  The mean runs over the non-ignored pixels, as
        transformers' ``UperNetForSemanticSegmentation``; a batch without
        any is a loss of 0 (transformers: NaN).
        """
        ignore = self.ignore_index if ignore_index is None else int(ignore_index)
        loss = self._ce(logits, target, ignore, "logits")
        if aux_logits is not None:
            loss = loss + self.aux_weight * self._ce(aux_logits, target, ignore, "aux_logits")
        return loss

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, ignore: int, what: str) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != self.num_classes:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"loss: {what} must be (B, num_classes={self.num_classes}, H, W), got {shape}")
        if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex() \
                or target.dtype == torch.bool:
            raise TypeError("loss: target must be an integer tensor of class labels (B, H, W), got "
                            + (str(target.dtype) if isinstance(target, torch.Tensor) else type(target).__name__))
        want = (logits.shape[0],) + tuple(logits.shape[2:])
        if target.shape != want:
            raise ValueError(f"loss: target shape {tuple(target.shape)} does not match {what} "
                             f"{tuple(logits.shape)} (expected (B, H, W) = {want})")
        target = target.long()
        valid = target != ignore
        if bool(((target < 0) | (target >= self.num_classes))[valid].any()):
            bad = target[valid & ((target < 0) | (target >= self.num_classes))]
            raise ValueError(f"loss: target holds labels {sorted(set(bad.unique().tolist()))[:8]} outside "
                             f"[0, {self.num_classes}) that are not ignore_index={ignore}")
        if not bool(valid.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=ignore)


# ----------------------------------------------------------------------------- builders


def without_output_norms(backbone: SwinTransformerV2) -> SwinTransformerV2:
    """Replace a features_only Swin V2's output norms ``norm{i}`` by identities (in place).

    transformers' ``Swinv2Backbone`` returns the stage maps without a norm;
    this is the same backbone.  (Swin V1 keeps its norms: its
    ``SwinBackbone`` and the official / mmseg backbones all have them.)
    """
    if not (isinstance(backbone, SwinTransformerV2) and backbone.features_only):
        raise TypeError("without_output_norms applies to a features_only swin_ext SwinTransformerV2 "
                        f"(got {type(backbone).__name__}); a Swin V1 backbone always has its output norms")
    for i in backbone.out_indices:
        setattr(backbone, f"norm{i}", nn.Identity())
    return backbone


def has_output_norms(backbone: nn.Module) -> bool:
    """Whether the backbone's outputs go through LayerNorms ``norm{i}``."""
    return all(isinstance(getattr(backbone, f"norm{i}", None), nn.LayerNorm) for i in backbone.out_indices)


def upernet(
    backbone: Union[str, SwinTransformer, SwinTransformerV2] = "swin_tiny_patch4_window7_224",
    num_classes: int = 150,
    pretrained: Any = None,
    *,
    channels: int = 512,
    aux_channels: int = 256,
    aux: bool = True,
    dropout: float = 0.1,
    output_norms: bool = True,
    strict: bool = True,
    **backbone_kw: Any,
) -> UperNet:
    """UperNet over a Swin named as :func:`~swin_ext.create_model` names it (``swinv2_*`` too), or over a model.

    Args:
        backbone: a model name, or a ``features_only`` swin_ext Swin.
        num_classes: classes of the new model.
        channels: the decoder's width (see :class:`UperNet`).
        aux_channels: the auxiliary head's width.
        aux: build the auxiliary head.
        dropout: ``Dropout2d`` before the classifiers.
        pretrained: a checkpoint path or state dict: a UperNet checkpoint
            (swin_ext's, transformers' ``UperNetForSemanticSegmentation`` or
            mmseg's layout) loads everything; a Swin classification or
            detection checkpoint (any layout :func:`~swin_ext.load_pretrained`
            reads) only the backbone, the heads keeping their initialisation.
            A checkpoint of another class count keeps this model's classifiers
            (``conv_seg``), with a warning; ``model.pretrained_result`` says
            what was loaded.
        output_norms: ``False`` makes a Swin V2 backbone without output norms,
            as transformers' ``Swinv2Backbone``.
        strict: refuse missing / unexpected keys (see :func:`~swin_ext.load_pretrained`).
        **backbone_kw: more :func:`~swin_ext.create_model` keywords.  The
            defaults here are the official segmentation backbone's:
            ``drop_path_rate=0.3`` and, for Swin V1, ``always_partition=True``
            (every block shifts on every map, as the official / mmseg /
            transformers segmentation backbones do).
    """
    if isinstance(backbone, str):
        kw = dict(drop_path_rate=0.3, features_only=True)
        if model_class(backbone) is SwinTransformer:
            kw["always_partition"] = True
        kw.update(backbone_kw)
        body = create_model(backbone, **kw)
    elif isinstance(backbone, _SWIN):
        if backbone_kw:
            raise ValueError(f"upernet: backbone keywords {sorted(backbone_kw)} apply to a model name, not to a model")
        body = backbone
    else:
        raise TypeError(f"upernet: backbone must be a model name or a features_only swin_ext Swin, got "
                        f"{type(backbone).__name__}")
    if not output_norms:
        without_output_norms(body)
    model = UperNet(body, num_classes, channels=channels, aux=aux, aux_channels=aux_channels, dropout=dropout)
    if pretrained is not None and pretrained is not False:
        from .weights import load_upernet

        if pretrained is True:
            raise ValueError("pretrained must be a local checkpoint path or a state dict; swin_ext downloads nothing")
        model.pretrained_result = load_upernet(model, pretrained, strict=strict, allow_new_classes=True)
    return model


def upernet_swin_t(num_classes: int = 150, pretrained: Any = None, **kw: Any) -> UperNet:
    """UperNet-Swin-T (window 7; 60M parameters at 150 classes; 44.5 mIoU on ADE20K in the paper)."""
    return upernet("swin_tiny_patch4_window7_224", num_classes, pretrained, **kw)


def upernet_swin_s(num_classes: int = 150, pretrained: Any = None, **kw: Any) -> UperNet:
    """UperNet-Swin-S (window 7; 81M parameters; 47.6 mIoU)."""
    return upernet("swin_small_patch4_window7_224", num_classes, pretrained, **kw)


def upernet_swin_b(num_classes: int = 150, pretrained: Any = None, **kw: Any) -> UperNet:
    """UperNet-Swin-B (window 7; 121M parameters; 48.1 mIoU)."""
    return upernet("swin_base_patch4_window7_224", num_classes, pretrained, **kw)


def upernet_swin_l(num_classes: int = 150, pretrained: Any = None, **kw: Any) -> UperNet:
    """UperNet-Swin-L (window 12, ImageNet-22k pre-trained; 234M parameters; 52.1 mIoU)."""
    return upernet("swin_large_patch4_window12_384", num_classes, pretrained, **kw)


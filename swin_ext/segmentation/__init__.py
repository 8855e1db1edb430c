"""Semantic segmentation with a swin_ext Swin backbone: UperNet, its checkpoints, and the metrics.

    >>> from swin_ext import segmentation
    >>> model = segmentation.upernet_swin_t(num_classes=150, pretrained="swin_tiny_patch4_window7_224.pth")
    >>> logits, aux = model(images, return_aux=True)          # (B, 150, H, W) each
    >>> loss = model.loss(logits, labels, aux_logits=aux)      # ignore_index 255, aux weight 0.4
    >>> segmentation.miou(logits.argmax(1), labels, num_classes=150).miou

* :mod:`.upernet` -- :class:`UperNet` (mmseg's ``UPerHead`` + ``FCNHead``) and
  the ``upernet_swin_t/s/b/l`` builders;
* :mod:`.weights` -- the UperNet checkpoint layouts (swin_ext, transformers,
  mmseg; OpenMMLab's Swin keys are :mod:`swin_ext.weights.layouts`'s) and
  the conversion of a live transformers
  ``UperNetForSemanticSegmentation`` (:func:`swin_ext.from_transformers`);
* :mod:`.metrics` -- per-class IoU, mIoU, pixel accuracy.
"""
from .metrics import SegmentationMetric, SegmentationMetrics, confusion_matrix, metrics_from_confusion, miou
from .upernet import (
    AUX_WEIGHT,
    PPM,
    ConvBNReLU,
    FCNHead,
    UperNet,
    UperNetHead,
    has_output_norms,
    upernet,
    upernet_swin_b,
    upernet_swin_l,
    upernet_swin_s,
    upernet_swin_t,
    without_output_norms,
)
from .weights import from_transformers_upernet, load_upernet, to_mmseg_state_dict

__all__ = [
    "UperNet",
    "UperNetHead",
    "FCNHead",
    "PPM",
    "ConvBNReLU",
    "AUX_WEIGHT",
    "upernet",
    "upernet_swin_t",
    "upernet_swin_s",
    "upernet_swin_b",
    "upernet_swin_l",
    "without_output_norms",
    "has_output_norms",
    "load_upernet",
    "from_transformers_upernet",
    "to_mmseg_state_dict",
    "miou",
    "confusion_matrix",
    "metrics_from_confusion",
    "SegmentationMetrics",
    "SegmentationMetric",
]

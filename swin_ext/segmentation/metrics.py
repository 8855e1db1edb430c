"""Semantic segmentation metrics: per-class IoU, mean IoU and pixel accuracy (mmseg's definitions).

``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` over the pixels whose label is not
``ignore_index``; a class absent from both prediction and target (union 0)
has IoU NaN and is left out of the mean (mmseg's ``nanmean``).  Pixel
accuracy is the fraction of non-ignored pixels predicted right.

For a data set, accumulate :func:`confusion_matrix` over the batches (or use
:class:`SegmentationMetric`) and call :func:`metrics_from_confusion` once:
the mean of per-batch mIoUs is not the data set's mIoU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["SegmentationMetrics", "confusion_matrix", "metrics_from_confusion", "miou", "SegmentationMetric"]


@dataclass
class SegmentationMetrics:
    """``iou``: ``(num_classes,)`` float64, NaN for a class absent from prediction and target;
    ``miou``: the mean of the non-NaN entries (NaN if none); ``pixel_accuracy``: in [0, 1]
    (NaN without a non-ignored pixel); ``confusion``: ``(num_classes, num_classes)`` int64,
    rows the target class, columns the predicted one."""

    iou: torch.Tensor
    miou: float
    pixel_accuracy: float
    confusion: torch.Tensor


def _labels(x: torch.Tensor, num_classes: int, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer class labels, got {x.dtype}")
    if x.is_floating_point():
        raise TypeError(f"{what} must hold integer class labels, got {x.dtype} (for logits pass "
                        "logits.argmax(1))")
    return x.long()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: Optional[int] = 255) -> torch.Tensor:
    """``(num_classes, num_classes)`` int64 counts (row: target class, column: predicted class) over the
    pixels whose target is not ``ignore_index``.

    ``pred``, ``target``: integer label maps of the same shape (e.g. ``(B, H, W)``);
    ``pred`` in ``[0, num_classes)``, ``target`` too or ``ignore_index``.
    Anything else is a ``ValueError`` naming the labels.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred = _labels(pred, num_classes, "pred")
    target = _labels(target, num_classes, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    t, p = target[valid], pred[valid]
    for name, v in (("target", t), ("pred", p)):
        bad = (v < 0) | (v >= num_classes)
        if bool(bad.any()):
            labels = sorted(set(v[bad].unique().tolist()))[:8]
            hint = f" that are not ignore_index={ignore_index}" if name == "target" else ""
            raise ValueError(f"{name} holds labels {labels} outside [0, {num_classes}){hint}")
    idx = t * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def metrics_from_confusion(confusion: torch.Tensor) -> SegmentationMetrics:
    """Per-class IoU, mIoU and pixel accuracy of a confusion matrix (rows target, columns prediction)."""
    cm = confusion.to(torch.float64)
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {tuple(confusion.shape)}")
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    miou = float(iou[present].mean()) if bool(present.any()) else float("nan")
    total = float(cm.sum())
    acc = float(tp.sum()) / total if total > 0 else float("nan")
    return SegmentationMetrics(iou=iou, miou=miou, pixel_accuracy=acc, confusion=confusion.to(torch.int64))


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
         ignore_index: Optional[int] = 255) -> SegmentationMetrics:
    """Per-class IoU, mean IoU and pixel accuracy of one prediction (see the module docstring).

        >>> m = miou(logits.argmax(1), labels, num_classes=150)
        >>> m.miou, m.pixel_accuracy, m.iou
    """
    return metrics_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


class SegmentationMetric:
    """Accumulates the confusion matrix over batches: ``update(pred, target)``, then ``compute()``."""

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> SegmentationMetrics:
        return metrics_from_confusion(self.confusion)

    def reset(self) -> None:
        self.confusion.zero_()

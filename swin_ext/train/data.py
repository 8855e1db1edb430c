"""Data sets for the training CLI.

* ``digits``: the 1,797 handwritten 8x8 digits that ship with scikit-learn
  (``sklearn.datasets.load_digits``), upscaled bilinearly to ``img_size`` and
  split train/test deterministically (stratified, seeded).  The whole set is a
  few MB and lives in memory; no download.
* an ImageFolder directory (torchvision): ``root/train`` and ``root/val`` (or
  ``root/test``) if present, else one class-per-folder tree split
  deterministically.

``build_datasets(data, img_size, in_chans, ...)`` returns
``(train_set, test_set, num_classes)``.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

__all__ = ["DataError", "DigitsDataset", "load_digits_split", "build_datasets", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A data set that cannot be trained on (one class, no images) or an image that cannot be read.

    The message names the directory or file.
    """


def read_image(path: str):
    """torchvision's default image loader, with a :class:`DataError` naming the file when it fails.

    A corrupt or truncated file raises inside PIL (``UnidentifiedImageError``,
    ``OSError: image file is truncated``); that becomes one line saying which
    file and why.
    """
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as e:  # PIL raises many types for damaged files
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {' '.join(str(e).split())})") from None


class DigitsDataset(Dataset):
    """In-memory image tensors ``(N, C, S, S)`` with labels.

    ``augment=True`` applies a random translation of up to ``max_shift``
    pixels (zero fill) per sample, drawn from torch's global RNG (so a run is
    reproducible from its seed and a resumed run continues the same stream).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False, max_shift: int = 0) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels
        self.augment = augment
        self.max_shift = int(max_shift)
        self.classes = [str(i) for i in range(int(labels.max()) + 1)] if labels.numel() else []

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment and self.max_shift > 0:
            s = self.max_shift
            dy, dx = (torch.randint(-s, s + 1, (2,))).tolist()
            if dy or dx:
                x = F.pad(x, (s, s, s, s))
                S_h, S_w = self.images.shape[-2:]
                x = x[:, s + dy : s + dy + S_h, s + dx : s + dx + S_w]
        return x, int(self.labels[i])


def load_digits_split(
    img_size: int = 32,
    in_chans: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: scikit-learn's digits, upscaled and split.

    Pixels (0..16) are scaled to [0, 1], upscaled bilinearly (align_corners=False)
    to ``img_size`` and normalized to mean 0 / std 1 with the training split's
    statistics; ``in_chans > 1`` repeats the gray channel.  The split is
    stratified by class and depends only on ``seed``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - dependency missing
        raise ImportError("the digits data set needs scikit-learn (pip install scikit-learn)") from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = torch.from_numpy(d.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(d.target).long()
    if img_size != x.shape[-1]:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    # Stratified split: a seeded permutation within each class, the first
    # test_fraction of each class goes to test.
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(int(y.max()) + 1):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = int(round(idx.numel() * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = torch.cat(train_idx).sort().values
    test_idx = torch.cat(test_idx).sort().values
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    if in_chans > 1:
        x_train = x_train.repeat(1, in_chans, 1, 1)
        x_test = x_test.repeat(1, in_chans, 1, 1)
    return x_train.contiguous(), y[train_idx], x_test.contiguous(), y[test_idx]


def _imagefolder(root: str, img_size: int, in_chans: int, test_fraction: float, seed: int):
    try:
        from torchvision import datasets, transforms
    except ImportError as e:  # pragma: no cover - dependency missing
        raise ImportError("training on an image folder needs torchvision (pip install torchvision)") from e
    if in_chans == 1:
        mean, std, gray = (0.5,), (0.5,), [transforms.Grayscale(1)]
    elif in_chans == 3:
        mean, std, gray = IMAGENET_MEAN, IMAGENET_STD, []
    else:
        raise ValueError(f"ImageFolder data supports in_chans 1 or 3, got {in_chans}")
    train_tf = transforms.Compose(
        gray
        + [
            transforms.RandomResizedCrop(img_size, scale=(0.5, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    test_tf = transforms.Compose(
        gray
        + [
            transforms.Resize(int(round(img_size / 0.875))),
            transforms.CenterCrop(img_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    def folder(d: str, tf, min_classes: int = 2):
        try:
            ds = datasets.ImageFolder(d, transform=tf, loader=read_image)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{d}: not a usable ImageFolder directory ({' '.join(str(e).split())})") from None
        if len(ds.classes) < min_classes:
            raise DataError(
                f"{d}: an ImageFolder needs at least 2 class folders to train a classifier, found "
                f"{len(ds.classes)} ({ds.classes})"
            )
        return ds

    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, s) for s in ("val", "test") if os.path.isdir(os.path.join(root, s))), None)
    if os.path.isdir(train_dir) and test_dir is not None:
        train = folder(train_dir, train_tf)
        test = folder(test_dir, test_tf, min_classes=1)
        if train.classes != test.classes:
            raise DataError(f"class folders differ between {train_dir} and {test_dir}")
        return train, test, len(train.classes)
    # One tree: deterministic split into two views with their own transforms.
    full_train = folder(root, train_tf)
    full_test = folder(root, test_tf)
    n = len(full_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, int(round(n * test_fraction)))
    return Subset(full_train, sorted(perm[n_test:])), Subset(full_test, sorted(perm[:n_test])), len(full_train.classes)


def build_datasets(
    data: str,
    img_size: int,
    in_chans: int,
    test_fraction: float = 0.2,
    seed: int = 0,
    augment: bool = True,
    limit: Optional[int] = None,
):
    """``(train_set, test_set, num_classes)`` for ``data`` = ``"digits"`` or an ImageFolder path.

    ``limit`` keeps only the first ``limit`` samples of each split (for smoke tests).
    """
    if data == "digits":
        x_tr, y_tr, x_te, y_te = load_digits_split(img_size, in_chans, test_fraction, seed)
        if limit is not None:
            x_tr, y_tr, x_te, y_te = x_tr[:limit], y_tr[:limit], x_te[:limit], y_te[:limit]
        # Random translation by up to 1/16 of the side (half an original pixel).
        train = DigitsDataset(x_tr, y_tr, augment=augment, max_shift=max(0, img_size // 16))
        test = DigitsDataset(x_te, y_te)
        return train, test, 10
    if not os.path.isdir(data):
        raise DataError(f"--data must be 'digits' or an ImageFolder directory; {data!r} is neither")
    train, test, num_classes = _imagefolder(data, img_size, in_chans, test_fraction, seed)
    if limit is not None:
        train = Subset(train, range(min(limit, len(train))))
        test = Subset(test, range(min(limit, len(test))))
    return train, test, num_classes

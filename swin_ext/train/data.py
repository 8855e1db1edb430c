"""Data sets for the training CLI.

* ``digits``: the 1,797 handwritten 8x8 digits that ship with scikit-learn
  (``sklearn.datasets.load_digits``), upscaled bilinearly to ``img_size`` and
  split train/test deterministically (stratified, seeded).  The whole set is a
  few MB and lives in memory; no download.
* an ImageFolder directory (torchvision's layout): split folders recognised
  by name (``train``/``training`` and ``val``/``valid``/``validation``, else
  ``test``), else one class-per-folder tree split deterministically
  (stratified by class, seeded, as the digits).  The
  scan follows directory links but skips, with a warning, loops, links into
  another class or split of the same data set, folders reached twice, and
  anything that is not a regular file (a FIFO named ``*.png`` would block
  the reader forever).

``build_datasets(data, img_size, in_chans, ...)`` returns
``(train_set, test_set, num_classes)``.  An image folder's transforms are
timm's (:func:`image_transforms`): the training ones from
``timm.data.create_transform`` with the :class:`Augment` options
(RandAugment, random erasing, colour jitter; none with ``augment=False``),
the evaluation ones from the model's ``pretrained_cfg``.

Random augmentation is reproducible sample by sample: :class:`SeededDataset`
draws every sample under its own seed, derived from the run's seed, the
epoch and the sample's position in the epoch (:func:`sample_seed`), never
from a process's random stream.  So a sample is augmented alike whichever
DataLoader worker reads it, however many workers there are, and whether
the run was interrupted and resumed.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..models._base import IMAGENET_MEAN, IMAGENET_STD, default_pretrained_cfg
from .errors import TrainArgumentError

__all__ = ["DataError", "DataWarning", "DigitsDataset", "ImageFolderDataset", "load_digits_split", "build_datasets",
           "split_folders", "IMAGENET_MEAN", "IMAGENET_STD", "TRAIN_SPLITS", "EVAL_SPLITS", "Augment",
           "image_transforms", "eval_transform", "SeededDataset", "sample_seed", "seeded_rng", "class_names"]

#: Folder names of the training split and of the evaluation split (case-insensitive), in order of preference.
TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("val", "valid", "validation", "test")


class DataError(ValueError):
    """A data set that cannot be trained on (one class, no images) or an image that cannot be read.

    The message names the directory or file.
    """


class DataWarning(UserWarning):
    """Entries of an image folder that were skipped (not regular files, loops, links across classes)."""


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


# --------------------------------------------------------------------------- per-sample random streams


def sample_seed(*parts: int) -> int:
    """A 64-bit seed from integers (the run's seed, the epoch, a position, a rank ...): their
    BLAKE2b hash, so that nearby inputs give unrelated seeds."""
    data = b"".join(int(p).to_bytes(8, "little", signed=True) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU, Python's and numpy's global random streams seeded from ``seed``
    (timm's and torchvision's transforms and timm's ``Mixup`` draw from these three).

    torch's stream is given back as it was afterwards: drop path draws from
    it in the training process, and a resumed run restores it.  Python's and
    numpy's are left as the block leaves them: in a run nothing else draws
    from them, and saving and restoring them would cost more than most
    samples' augmentation (about 0.4 ms per sample, measured; the digits
    take 0.2 ms).
    """
    import numpy as np

    t_state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)  # torch.manual_seed also seeds every device: 100x slower
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    try:
        yield
    finally:
        torch.set_rng_state(t_state)


class SeededDataset(Dataset):
    """A data set read with keys ``(index, seed)``: the sample ``index`` of ``dataset``, drawn under
    :func:`seeded_rng` (``seed``) -- its random augmentation depends on the key alone, not on the
    worker process or on what was read before.  ``ShardedSampler(..., sample_seeds=True)`` gives
    the keys; a plain index reads the sample unseeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any):
        if isinstance(key, tuple):
            index, seed = key
            with seeded_rng(seed):
                return self.dataset[index]
        return self.dataset[key]


def class_names(dataset: Dataset) -> List[str]:
    """The class names of a data set of this module, through :class:`SeededDataset` and ``Subset`` wrappers."""
    while not hasattr(dataset, "classes") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return [str(c) for c in dataset.classes]


# --------------------------------------------------------------------------- digits


class DigitsDataset(Dataset):
    """In-memory image tensors ``(N, C, S, S)`` with labels.

    ``augment=True`` applies a random translation of up to ``max_shift``
    pixels (zero fill) per sample, drawn from torch's global RNG (the
    training loop reads it through :class:`SeededDataset`: a seed per sample).
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


def _available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_digits_split(
    img_size: int = 32,
    in_chans: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: scikit-learn's digits, upscaled and split.

    Pixels (0..16) are scaled to [0, 1], upscaled bilinearly (align_corners=False)
    to ``img_size`` and normalized to mean 0 / std 1 with the statistics of the
    training images returned; ``in_chans > 1`` repeats the gray channel.  The
    split is stratified by class and depends only on ``seed``.  ``limit`` keeps
    the first ``limit`` images of each split, chosen before anything is
    upscaled (memory and time scale with what is kept); a set that would not
    fit in the available memory is a :class:`DataError`.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - dependency missing
        raise ImportError("the digits data set needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    x = torch.from_numpy(d.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(d.target).long()
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    train_idx, test_idx = train_idx[:limit], test_idx[:limit]
    n = train_idx.numel() + test_idx.numel()
    need = 3 * n * max(in_chans, 1) * img_size * img_size * 4  # float32 upscaled, normalized and repeated copies
    avail = _available_memory()
    if avail is not None and need > avail:
        raise DataError(
            f"--data digits at --img-size {img_size}: {n} images of {in_chans}x{img_size}x{img_size} float32 "
            f"need about {need / 2**30:.1f} GiB of memory, more than the {avail / 2**30:.1f} GiB available; "
            "use --limit or a smaller --img-size"
        )

    def upscale(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(img_size, img_size), mode="bilinear", align_corners=False) \
            if img_size != t.shape[-1] else t

    x_train, x_test = upscale(x[train_idx]), upscale(x[test_idx])
    mean, std = x_train.mean(), x_train.std()
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    if in_chans > 1:
        x_train = x_train.repeat(1, in_chans, 1, 1)
        x_test = x_test.repeat(1, in_chans, 1, 1)
    return x_train.contiguous(), y[train_idx], x_test.contiguous(), y[test_idx]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _kind(path: str) -> str:
    """What a non-regular directory entry is, for the warning."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken link" if os.path.islink(path) else "unreadable"
    return ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def scan_class_folder(top: str, data_root: str, is_valid: Callable[[str], bool],
                      skipped: List[Tuple[str, str]]) -> List[str]:
    """The image files under ``top`` in ``os.walk(top, followlinks=True)`` order (directories sorted, then
    names), as torchvision's ImageFolder lists them, minus what cannot be trained on.

    Directory links are followed, except a link back to a folder that
    contains it (a loop: ``os.walk`` would descend ~40 times, counting the
    same images again), a link to a folder already included, and a link
    (to a directory or a file) into another class or split of ``data_root``
    (those images would leak across classes or splits).  Entries that are
    not regular files -- FIFOs (opening one blocks forever), sockets,
    devices, broken links -- are skipped.  Each skip is appended to
    ``skipped`` as ``(path, why)``; only entries ``is_valid`` accepts by
    name are reported.
    """
    top_real, root_real = os.path.realpath(top), os.path.realpath(data_root)
    visited = set()
    listed: List[Tuple[str, List[str]]] = []
    stack = [top]
    while stack:
        d = stack.pop()
        d_real = os.path.realpath(d)
        try:
            st = os.stat(d)
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            skipped.append((d, f"cannot be listed ({e.strerror or e})"))
            continue
        if (st.st_dev, st.st_ino) in visited:
            skipped.append((d, "a folder already included, reached again through a link"))
            continue
        visited.add((st.st_dev, st.st_ino))
        names = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=True):
                    real = os.path.realpath(e.path) if e.is_symlink() else None
                    if real is not None and _inside(d_real, real):
                        skipped.append((e.path, "a link back to a folder that contains it, a loop"))
                    elif real is not None and _inside(real, root_real) and not _inside(real, top_real):
                        skipped.append((e.path, f"a link into another class or split of {data_root}"))
                    else:
                        stack.append(e.path)
                elif not is_valid(e.path):
                    continue
                elif not e.is_file(follow_symlinks=True):
                    skipped.append((e.path, _kind(e.path)))
                elif e.is_symlink() and _inside(os.path.realpath(e.path), root_real) and not _inside(
                        os.path.realpath(e.path), top_real):
                    skipped.append((e.path, f"a link to an image of another class or split of {data_root}"))
                else:
                    names.append(e.name)
            except OSError as err:
                skipped.append((e.path, f"cannot be read ({err.strerror or err})"))
        listed.append((d, names))
    return [os.path.join(d, n) for d, names in sorted(listed) for n in names]


class ImageFolderDataset(Dataset):
    """torchvision's ImageFolder layout (``root/<class>/**/<image>``, classes sorted, the same sample
    order), scanned by :func:`scan_class_folder`: loops, links across classes or splits of
    ``data_root`` and non-regular files are skipped with one :class:`DataWarning`.

    ``samples``: ``[(path, class index)]``; ``classes``; ``targets``.  Images
    are read with :func:`read_image` (a :class:`DataError` naming a damaged file).
    """

    def __init__(self, root: str, transform: Optional[Callable] = None, data_root: Optional[str] = None) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

        self.root, self.transform = root, transform
        try:
            self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        except OSError as e:
            raise DataError(f"{root}: not a usable ImageFolder directory ({e.strerror or e})") from None
        if not self.classes:
            raise DataError(f"{root}: not a usable ImageFolder directory (it has no class folders)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        skipped: List[Tuple[str, str]] = []
        self.samples = []
        empty = []
        for c in self.classes:
            files = scan_class_folder(os.path.join(root, c), data_root or root,
                                      lambda p: has_file_allowed_extension(p, IMG_EXTENSIONS), skipped)
            self.samples += [(f, self.class_to_idx[c]) for f in files]
            if not files:
                empty.append(c)
        if skipped:
            shown = "; ".join(f"{p}: {why}" for p, why in skipped[:5])
            warnings.warn(f"{root}: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'}: {shown}"
                          + (f"; ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""), DataWarning,
                          stacklevel=2)
        if empty:
            raise DataError(f"{root}: no images (files ending in {', '.join(IMG_EXTENSIONS)}) in the class "
                            f"folder{'s' if len(empty) > 1 else ''} {empty}")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        img = read_image(path)
        return (self.transform(img) if self.transform is not None else img), target


def split_folders(root: str) -> Optional[Tuple[str, str]]:
    """``(train folder, evaluation folder)`` of an image-folder root with split folders, else ``None``.

    Split folders are recognised by name, case-insensitively: :data:`TRAIN_SPLITS`
    and :data:`EVAL_SPLITS` (``val``/``valid``/``validation`` preferred to
    ``test``, which is then held out).  A root that has split folders but not
    exactly one of each kind, two validation folders, or split folders next
    to other folders is a :class:`DataError` -- never a classifier trained
    on the split names.  ``None``: no split folder, one class-per-folder tree.
    """
    try:
        subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except OSError as e:
        raise DataError(f"{root}: not a usable ImageFolder directory ({e.strerror or e})") from None
    train = [d for d in subdirs if d.lower() in TRAIN_SPLITS]
    evals = sorted((d for d in subdirs if d.lower() in EVAL_SPLITS), key=lambda d: EVAL_SPLITS.index(d.lower()))
    if not train and not evals:
        return None
    others = [d for d in subdirs if d not in train and d not in evals]
    if others:
        raise DataError(f"{root} mixes split folders {train + evals} ({'/'.join(TRAIN_SPLITS)} for training, "
                        f"{'/'.join(EVAL_SPLITS)} for evaluation) with other folders {others[:5]}: put the class "
                        "folders inside the split folders, or rename them")
    if not train:
        raise DataError(f"{root} has the evaluation split folder{'s' if len(evals) > 1 else ''} {evals} but no "
                        f"training split folder ({' or '.join(TRAIN_SPLITS)})")
    if len(train) > 1:
        raise DataError(f"{root} has {len(train)} training split folders {train}: keep one")
    if not evals:
        raise DataError(f"{root}/{train[0]} is a training split folder with no evaluation folder "
                        f"({'/'.join(EVAL_SPLITS)}) next to it: add one, or pass --data {os.path.join(root, train[0])} "
                        "to split its classes deterministically")
    validation = [d for d in evals if d.lower() != "test"]
    if len(validation) > 1:
        raise DataError(f"{root} has {len(validation)} validation folders {validation}: keep one")
    return train[0], evals[0]


# --------------------------------------------------------------------------- image folders


@dataclass
class Augment:
    """The training augmentation of an image folder, timm's options (``timm.data.create_transform``).

    Args:
        aa: timm's auto-augment policy, e.g. ``"rand-m9-mstd0.5-inc1"`` (RandAugment, the official
            recipe's); ``None`` for none.
        reprob: probability of random erasing.
        remode: random erasing's fill: ``"pixel"`` (per-pixel noise, the official recipe's),
            ``"rand"`` (per channel) or ``"const"`` (zeros).
        color_jitter: colour jitter strength (timm applies it only without ``aa``).
        scale: the random-resized crop's area range.
    """

    aa: Optional[str] = None
    reprob: float = 0.0
    remode: str = "pixel"
    color_jitter: float = 0.4
    scale: Tuple[float, float] = (0.08, 1.0)


def _timm_data():
    try:
        import timm.data
    except ImportError as e:  # pragma: no cover - dependency missing
        raise ImportError("image-folder data needs timm (pip install 'swin_ext[train]' or pip install timm)") from e
    return timm.data


def _channels(transform: Callable, in_chans: int) -> Callable:
    """``transform`` after a conversion of the PIL image to grey for a 1-channel model."""
    if in_chans == 1:
        from torchvision import transforms

        return transforms.Compose([transforms.Grayscale(1), transform])
    if in_chans != 3:
        raise ValueError(f"ImageFolder data supports in_chans 1 or 3, got {in_chans}")
    return transform


def eval_transform(pretrained_cfg: Dict[str, Any]) -> Callable:
    """The evaluation transform of a model's ``pretrained_cfg`` (timm's: resize, centre crop, normalise);
    PIL image -> ``(in_chans, H, W)`` tensor."""
    td = _timm_data()
    cfg = td.resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
    return _channels(td.create_transform(**cfg), cfg["input_size"][0])


def image_transforms(pretrained_cfg: Dict[str, Any], augment: bool = True,
                     aug: Optional[Augment] = None) -> Tuple[Callable, Callable]:
    """``(train, eval)`` transforms of an image folder for a model's ``pretrained_cfg``, timm's.

    The training transform is ``timm.data.create_transform(is_training=True)``
    with ``aug``'s options: a random-resized crop, a horizontal flip, colour
    jitter or the auto-augment policy, random erasing; ``augment=False``
    (``--no-augment``) gives timm's no-augmentation training transform
    (resize, centre crop).  The evaluation transform is :func:`eval_transform`.
    A bad ``aug.aa`` policy is a :class:`~swin_ext.train.TrainArgumentError` naming it.
    """
    td = _timm_data()
    aug = aug or Augment()
    cfg = td.resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
    in_chans = cfg["input_size"][0]
    try:
        train = td.create_transform(
            cfg["input_size"], is_training=True, no_aug=not augment, scale=tuple(aug.scale),
            color_jitter=aug.color_jitter, auto_augment=aug.aa if augment else None,
            interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"],
            re_prob=aug.reprob if augment else 0.0, re_mode=aug.remode, re_count=1,
        )
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise TrainArgumentError(f"--aa {aug.aa!r} is not a timm augmentation policy (e.g. rand-m9-mstd0.5-inc1): "
                                 f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    return _channels(train, in_chans), eval_transform(pretrained_cfg)


def stratified_split(targets: torch.Tensor, test_fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(train indices, test indices)``, each sorted: per class a seeded permutation, whose first
    ``round(n_c * test_fraction)`` samples are held out, so every class keeps its share on both sides
    (a class of one sample stays in training).  Depends only on ``targets`` and ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = min(int(round(idx.numel() * test_fraction)), idx.numel() - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values


def _imagefolder(root: str, train_tf: Callable, test_tf: Callable, test_fraction: float, seed: int):
    def folder(d: str, tf, min_classes: int = 2):
        ds = ImageFolderDataset(d, transform=tf, data_root=root)
        if len(ds.classes) < min_classes:
            raise DataError(
                f"{d}: an ImageFolder needs at least 2 class folders to train a classifier, found "
                f"{len(ds.classes)} ({ds.classes})"
            )
        return ds

    splits = split_folders(root)
    if splits is not None:
        train_dir, test_dir = (os.path.join(root, s) for s in splits)
        train = folder(train_dir, train_tf)
        test = folder(test_dir, test_tf, min_classes=1)
        if train.classes != test.classes:
            raise DataError(f"class folders differ between {train_dir} and {test_dir}")
        return train, test, len(train.classes)
    # One tree: deterministic split into two views with their own transforms.
    full_train = folder(root, train_tf)
    full_test = copy.copy(full_train)  # the same samples (scanned once), the test transform
    full_test.transform = test_tf
    train_idx, test_idx = stratified_split(torch.tensor(full_train.targets, dtype=torch.long), test_fraction, seed)
    if test_idx.numel() == 0:
        raise DataError(f"{root}: {len(full_train)} images are too few to hold out a test fraction of "
                        f"{test_fraction} of any class; add images or use split folders (train/ and val/)")
    return Subset(full_train, train_idx.tolist()), Subset(full_test, test_idx.tolist()), len(full_train.classes)


def build_datasets(
    data: str,
    img_size: int,
    in_chans: int,
    test_fraction: float = 0.2,
    seed: int = 0,
    augment: bool = True,
    limit: Optional[int] = None,
    aug: Optional[Augment] = None,
    pretrained_cfg: Optional[Dict[str, Any]] = None,
):
    """``(train_set, test_set, num_classes)`` for ``data`` = ``"digits"`` or an ImageFolder path.

    ``augment=False`` turns off every training augmentation (the digits'
    translation; an image folder's random crop, flip, jitter, ``aug``).
    ``aug``: an image folder's augmentation options (:class:`Augment`); the
    digits take none of them.  ``pretrained_cfg``: the model's data
    configuration (input size, resizing, crop, mean and std), by default
    :func:`~swin_ext.models._base.default_pretrained_cfg` of ``img_size``.
    ``limit`` keeps only the first ``limit`` samples of each split (for smoke tests).
    """
    if data == "digits":
        x_tr, y_tr, x_te, y_te = load_digits_split(img_size, in_chans, test_fraction, seed, limit=limit)
        # Random translation by up to 1/16 of the side (half an original pixel).
        train = DigitsDataset(x_tr, y_tr, augment=augment, max_shift=max(0, img_size // 16))
        test = DigitsDataset(x_te, y_te)
        return train, test, 10
    if not os.path.isdir(data):
        raise DataError(f"--data must be 'digits' or an ImageFolder directory; {data!r} is neither")
    if pretrained_cfg is None:
        pretrained_cfg = default_pretrained_cfg((img_size, img_size), in_chans, 0)
    train_tf, test_tf = image_transforms(pretrained_cfg, augment, aug)
    train, test, num_classes = _imagefolder(data, train_tf, test_tf, test_fraction, seed)
    if limit is not None:
        train = Subset(train, range(min(limit, len(train))))
        test = Subset(test, range(min(limit, len(test))))
    return train, test, num_classes

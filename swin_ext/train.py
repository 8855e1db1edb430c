"""Train a swin_ext Swin Transformer on an ImageFolder directory or the built-in digits set.

One process:

    python -m swin_ext.train --data digits --model swin_digits --epochs 40

Many processes / nodes (DistributedDataParallel; gloo on CPU, nccl on GPU),
the same command under torchrun:

    torchrun --nproc-per-node 2 -m swin_ext.train --data digits --model swin_digits
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 -m swin_ext.train --data /imagenet --model swin_t

AdamW with linear warm-up and cosine decay (per step), optional layer-wise lr
decay, label smoothing, AMP (bf16/fp16), gradient checkpointing, gradient
clipping, atomic checkpoints with exact resume (model, optimizer, scheduler,
grad scaler, step, data position and every rank's RNG state), tqdm progress
bars, a final ``FINAL_METRICS {json}`` line, ``metrics.json`` and a PNG of the
loss / accuracy curves in ``--output-dir``.

``--batch-size`` is per process; the global batch is ``batch_size * world_size``.
``--lr`` is used as given (no automatic scaling with the global batch).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

__all__ = [
    "PRESETS",
    "TrainError",
    "TrainArgumentError",
    "build_parser",
    "validate_args",
    "build_model",
    "param_groups",
    "save_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "train",
    "main",
]

CHECKPOINT_FORMAT = "swin_ext.train/2"  # /2: loads with weights_only=True

# Model presets: the variant table's models, and ``swin_digits``, the compact
# model of the main job: 32x32 digits, patch 4 (one token per original 8x8
# pixel), 8x8 tokens in 2x2 windows of 4 (shifted) then 4x4 tokens in one
# window; 0.3M parameters.
def _v1_presets() -> Dict[str, Dict[str, Any]]:
    """``swin_t`` ... ``swin_l``: the variant table's models (:mod:`swin_ext.variants`), their
    official stochastic depth; the head is sized from the data."""
    from .variants import ALIASES, v1_table

    return {f"swin_{s}": {k: v for k, v in v1_table()[f"swin_{s}"].items() if k != "num_classes"} for s in ALIASES}


PRESETS: Dict[str, Dict[str, Any]] = {
    **_v1_presets(),
    "swin_digits": dict(img_size=32, patch_size=4, embed_dim=48, depths=(2, 2), num_heads=(3, 6),
                        window_size=4, drop_path_rate=0.1),
}


def _v2_presets() -> Dict[str, Dict[str, Any]]:
    """Swin V2 presets: timm's ``swinv2_*`` names (a :class:`~swin_ext.SwinTransformerV2`, ``arch="swinv2"``)
    with the official training stochastic depth of their size (as the V1 presets)."""
    from .variants import SIZES, size_of, v2_table

    out = {}
    for name, cfg in v2_table().items():
        cfg = {k: v for k, v in cfg.items() if k != "num_classes"}
        cfg["drop_path_rate"] = SIZES[size_of(name)]["drop_path_rate"]
        out[name] = dict(cfg, arch="swinv2")
    return out


PRESETS.update(_v2_presets())


# --------------------------------------------------------------------------- CLI


class TrainError(ValueError):
    """A problem with the run's arguments, data, checkpoint or progress (a diverged loss).

    The CLI reports it as one line naming what is wrong and exits non-zero.
    """


class TrainArgumentError(TrainError):
    """A command-line argument that cannot be used (found after parsing: the device, the model
    configuration, the output directory). The CLI prints it as one line and exits with status 2."""


def _int_list(s: str) -> Tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in s.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list of ints like '2,2,6,2', got {s!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected a list of positive ints like '2,2,6,2', got {s!r}")
    return vals


def _int_at_least(lo: int):
    """argparse type: an int >= ``lo``."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


def _real(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite float in the interval given (open ends where asked)."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be finite, got {s}")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}, got {v:g}"
            )
        return v

    parse.__name__ = "float"
    return parse


def _int_in(lo: int, hi: int):
    """argparse type: an int in ``[lo, hi]``."""

    def parse(s: str) -> int:
        v = _int_at_least(lo)(s)
        if v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


_POS_INT, _NONNEG_INT = _int_at_least(1), _int_at_least(0)
_NONNEG = _real(0.0)
_POS = _real(0.0, lo_open=True)
_UNIT_OPEN = _real(0.0, 1.0, hi_open=True)  # [0, 1)


class _Parser(argparse.ArgumentParser):
    """argparse with every argument error on one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="swin-ext-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="digits", help="'digits' (scikit-learn's digits, built in) or an ImageFolder "
                   "directory (root/train + root/val|test, or one class-per-folder tree split deterministically)")
    g.add_argument("--test-fraction", type=_real(0.0, 1.0, True, True), default=0.2, help="test split when the data has none (default 0.2)")
    g.add_argument("--no-augment", action="store_true", help="no training augmentation")
    g.add_argument("--limit", type=_POS_INT, default=None, help="use only the first N samples of each split (smoke tests)")
    g.add_argument("--workers", type=_NONNEG_INT, default=None, help="DataLoader workers per process (default 0 for digits, 4 otherwise)")

    g = ap.add_argument_group("model")
    g.add_argument("--model", default="swin_digits", choices=sorted(PRESETS), help="preset (default swin_digits)")
    g.add_argument("--img-size", type=_POS_INT, default=None)
    g.add_argument("--patch-size", type=_POS_INT, default=None)
    g.add_argument("--in-chans", type=_POS_INT, default=None, help="default 1 for digits, 3 for image folders")
    g.add_argument("--embed-dim", type=_POS_INT, default=None)
    g.add_argument("--depths", type=_int_list, default=None, help="e.g. 2,2,6,2")
    g.add_argument("--num-heads", type=_int_list, default=None, help="e.g. 3,6,12,24")
    g.add_argument("--window-size", type=_POS_INT, default=None)
    g.add_argument("--mlp-ratio", type=_POS, default=None)
    g.add_argument("--drop-path", type=_UNIT_OPEN, default=None, help="stochastic depth rate (preset default)")
    g.add_argument("--backend", default="fused", choices=["fused", "reference"])
    g.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing of every block")

    g = ap.add_argument_group("optimization")
    g.add_argument("--epochs", type=_POS_INT, default=40, help="(default 40)")
    g.add_argument("--max-steps", type=_POS_INT, default=None, help="total optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=_POS_INT, default=32, help="per process (default 32)")
    g.add_argument("--lr", type=_POS, default=2e-3, help="peak learning rate (default 2e-3)")
    g.add_argument("--min-lr", type=_NONNEG, default=1e-5, help="final learning rate of the cosine (<= --lr)")
    g.add_argument("--warmup-epochs", type=_NONNEG, default=2.0)
    g.add_argument("--warmup-steps", type=_NONNEG_INT, default=None, help="overrides --warmup-epochs")
    g.add_argument("--weight-decay", type=_NONNEG, default=0.05)
    g.add_argument("--layer-decay", type=_real(0.0, 1.0, lo_open=True), default=None,
                   help="layer-wise lr decay factor (e.g. 0.9): lr * decay**(depth from the head)")
    g.add_argument("--label-smoothing", type=_UNIT_OPEN, default=0.1)
    g.add_argument("--clip-grad", type=_NONNEG, default=5.0, help="max gradient norm (0 disables)")
    g.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                   help="autocast dtype; auto = bf16 on a GPU that supports it, else none")

    g = ap.add_argument_group("run")
    g.add_argument("--output-dir", default=None, help="default runs/<data>-<model>")
    g.add_argument("--resume", default=None, help="checkpoint path, or 'auto' (output-dir/last.pt if present)")
    g.add_argument("--save-every", type=_NONNEG_INT, default=0, help="also checkpoint every N steps (0: epoch ends only)")
    g.add_argument("--no-save", action="store_true", help="write no checkpoints")
    g.add_argument("--stop-after-steps", type=_POS_INT, default=None,
                   help="checkpoint and stop after N steps in this invocation (time-boxed jobs; resume later)")
    g.add_argument("--eval-every", type=_POS_INT, default=1, help="evaluate every N epochs (and always at the end)")
    g.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0, help="in [0, 2**32)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--threads", type=_POS_INT, default=None, help="torch CPU threads per process")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--no-plot", action="store_true", help="no PNG of the curves")
    g.add_argument("--min-acc", type=_real(), default=None, help="exit with status 1 if the final test accuracy is lower")
    return ap


def validate_args(args: argparse.Namespace) -> None:
    """Checks across arguments (each one alone is checked by its argparse type); raises :class:`TrainError`."""
    if args.min_lr > args.lr:
        raise TrainError(f"--min-lr {args.min_lr:g} is above --lr {args.lr:g}; the cosine decays from --lr to --min-lr")
    if args.resume not in (None, "auto") and not args.resume:
        raise TrainError("--resume needs a checkpoint path or 'auto'")
    _check_device(args.device)


def _check_device(arg: str) -> None:
    """``--device``: auto, cpu, or cuda[:N] with that GPU present (:class:`TrainArgumentError` otherwise)."""
    if arg == "auto":
        return
    try:
        dev = torch.device(arg)
    except (RuntimeError, ValueError, TypeError):
        raise TrainArgumentError(f"--device {arg!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise TrainArgumentError(f"--device {arg}: training runs on cpu or cuda (swin_ext's kernels), not {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainArgumentError(f"--device {arg}: no GPU is available (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainArgumentError(f"--device {arg}: there {'is' if torch.cuda.device_count() == 1 else 'are'} "
                                     f"{torch.cuda.device_count()} GPU(s), numbered from 0")


# --------------------------------------------------------------------------- distributed


class DistEnv:
    """Rank / world size / device from the torchrun environment (or a single process)."""

    def __init__(self, device_arg: str = "auto") -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_arg == "auto":
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device_arg)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise TrainArgumentError("--device cuda but no GPU is available")
            dev = torch.device("cuda", self.local_rank if dev.index is None else dev.index)
            torch.cuda.set_device(dev)
        self.device = dev
        self.distributed = self.world_size > 1
        self._owns_group = False
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            self._owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            # gloo and nccl both reduce float64 on their device
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def all_gather_object(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


class ShardedSampler(Sampler[int]):
    """Deterministic per-epoch shuffle, sharded over ranks, resumable mid-epoch.

    Every rank gets ``ceil(n / world)`` indices (the permutation is padded by
    wrapping, as ``DistributedSampler`` does), so all ranks take the same
    number of steps.  ``set_epoch(epoch, skip)`` drops the first ``skip``
    indices of this rank's share: the samples a resumed run already consumed.
    """

    def __init__(self, n: int, world_size: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0) -> None:
        if n < 1:
            raise TrainError("empty data set")
        self.n, self.world_size, self.rank, self.shuffle, self.seed = n, world_size, rank, shuffle, seed
        self.per_rank = math.ceil(n / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world_size
        perm = (perm * math.ceil(total / self.n))[:total]
        return iter(perm[self.rank : total : self.world_size][self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip


class ShardSampler(Sampler[int]):
    """Evaluation: rank r takes indices r, r + world, ... (no padding, no duplicates)."""

    def __init__(self, n: int, world_size: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------- model / optimizer


def model_config(args: argparse.Namespace, num_classes: int) -> Dict[str, Any]:
    cfg = dict(PRESETS[args.model])
    for key, attr in (("img_size", "img_size"), ("patch_size", "patch_size"), ("embed_dim", "embed_dim"),
                      ("depths", "depths"), ("num_heads", "num_heads"), ("window_size", "window_size"),
                      ("mlp_ratio", "mlp_ratio"), ("drop_path_rate", "drop_path")):
        v = getattr(args, attr)
        if v is not None:
            cfg[key] = v
    cfg["depths"], cfg["num_heads"] = list(cfg["depths"]), list(cfg["num_heads"])
    if isinstance(cfg.get("pretrained_window_sizes"), (tuple, list)):
        cfg["pretrained_window_sizes"] = list(cfg["pretrained_window_sizes"])
    cfg["in_chans"] = args.in_chans if args.in_chans is not None else (1 if args.data == "digits" else 3)
    cfg["num_classes"] = num_classes
    return cfg


def build_model(cfg: Dict[str, Any], backend: str = "fused", use_checkpoint: bool = False) -> nn.Module:
    """A :class:`~swin_ext.SwinTransformer`, or a :class:`~swin_ext.SwinTransformerV2` for ``arch="swinv2"``."""
    from .model import SwinTransformer
    from .model_v2 import SwinTransformerV2

    kw = {k: v for k, v in cfg.items() if k != "arch"}
    cls = SwinTransformerV2 if cfg.get("arch") == "swinv2" else SwinTransformer
    return cls(**kw, backend=backend, use_checkpoint=use_checkpoint)


def _layer_id(name: str, depths: List[int]) -> int:
    """Depth of a parameter for layer-wise lr decay (the official Swin/SimMIM rule):
    patch_embed 0, block j of stage i ``sum(depths[:i]) + j + 1``, stage i's
    downsample ``sum(depths[:i+1])``, final norm and head ``sum(depths) + 1``."""
    if name.startswith("patch_embed"):
        return 0
    if name.startswith("layers."):
        parts = name.split(".")
        i = int(parts[1])
        if parts[2] == "downsample":
            return sum(depths[: i + 1])
        return sum(depths[:i]) + int(parts[3]) + 1
    return sum(depths) + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None) -> List[Dict[str, Any]]:
    """AdamW groups: no weight decay for biases, norms (1-d tensors) and the
    relative-position bias tables; with ``layer_decay`` each group's
    ``lr_scale`` is ``layer_decay ** (num_layers - 1 - layer_id)``."""
    skip_kw = set(model.no_weight_decay_keywords()) if hasattr(model, "no_weight_decay_keywords") else set()
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    depths = list(getattr(model, "depths", [0]))
    num_layers = sum(depths) + 2
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip_names or any(k in name for k in skip_kw)
        lid = _layer_id(name, depths) if layer_decay is not None else 0
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - 1 - lid) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale, "layer_id": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are flushed and
    fsync'ed, and the file is renamed over ``path`` with ``os.replace`` (atomic
    on POSIX and Windows); the directory is fsync'ed too.  A crash at any point
    leaves either the previous checkpoint or the new one, never a torn file.
    """
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


# Fields of a training checkpoint and their types (checked on load; :func:`checkpoint_problems` checks inside them).
_CHECKPOINT_FIELDS = {
    "model": dict, "model_config": dict, "optimizer": dict, "scheduler": dict, "step": int, "epoch": int,
    "step_in_epoch": int, "rng": list, "world_size": int, "history": dict, "args": dict,
}


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (CPU tensors).

    Read with ``torch.load(weights_only=True)`` after the checks of
    :func:`swin_ext.checkpoint.safe_torch_load` (a regular file, its zip
    checksums intact): a training checkpoint holds only tensors and plain
    containers (RNG states included), so nothing in the file is ever
    executed; a file that needs anything else is refused.  Raises
    :class:`~swin_ext.checkpoint.CheckpointError` (a ``ValueError``) naming
    the file; the file is never modified.
    """
    from .checkpoint import CheckpointError, safe_torch_load

    try:
        state = safe_torch_load(path, what="swin_ext.train checkpoint")
    except CheckpointError as e:
        if "numpy" in str(e) and "needs the Python globals" in str(e):
            raise CheckpointError(
                f"{e} (a checkpoint of format swin_ext.train/1 stored numpy's RNG state as an array; this "
                "version cannot resume it without executing pickled code: start a new run)"
            ) from e
        raise
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a swin_ext.train checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    return state


def _int(v: Any, lo: int = 0, hi: Optional[int] = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _num(v: Any, lo: float = 0.0) -> bool:
    """A finite real number >= ``lo`` (a 0-d tensor counts: torch keeps some hyper-parameters as tensors)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and (v.is_floating_point() or not v.dtype.is_complex):
        v = v.item()
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo


def _tensor(v: Any, dtype: Optional[torch.dtype] = None, dim: Optional[int] = None) -> bool:
    return (isinstance(v, torch.Tensor) and v.layout == torch.strided and not v.is_meta
            and (dtype is None or v.dtype == dtype) and (dim is None or v.dim() == dim))


def _rng_problems(st: Any, where: str) -> List[str]:
    """What is wrong with one rank's RNG states (the layout :func:`_rng_state` writes)."""
    if not isinstance(st, dict):
        return [f"{where} is a {type(st).__name__}, not a dict"]
    out = []
    if not _tensor(st.get("torch"), torch.uint8, 1):
        out.append(f"{where}['torch'] is not a 1-d uint8 tensor")
    py = st.get("python")
    if not (isinstance(py, (list, tuple)) and len(py) == 3 and _int(py[0]) and isinstance(py[1], (list, tuple))
            and len(py[1]) == 625 and all(_int(v, 0, 2**32 - 1) for v in py[1][:624]) and _int(py[1][624], 0, 624)
            and (py[2] is None or isinstance(py[2], float))):
        out.append(f"{where}['python'] is not a Python random state")
    n = st.get("numpy")
    if n is not None and not (isinstance(n, dict) and n.get("kind") == "MT19937"
                              and _tensor(n.get("keys"), torch.int64, 1) and n["keys"].numel() == 624
                              and _int(n.get("pos"), 0, 624)
                              and _int(n.get("has_gauss"), 0, 1) and isinstance(n.get("cached_gaussian"), float)):
        out.append(f"{where}['numpy'] is not a numpy MT19937 state")
    if "cuda" in st and not _tensor(st["cuda"], torch.uint8, 1):
        out.append(f"{where}['cuda'] is not a 1-d uint8 tensor")
    return out


def _optimizer_problems(opt: Dict[str, Any]) -> List[str]:
    groups, state = opt.get("param_groups"), opt.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups) or not groups:
        return ["optimizer['param_groups'] is not a list of dicts"]
    if not isinstance(state, dict):
        return ["optimizer['state'] is not a dict"]
    out, ids = [], []
    for i, g in enumerate(groups):
        if not (isinstance(g.get("params"), list) and all(_int(p) for p in g["params"])):
            out.append(f"optimizer param group {i}: 'params' is not a list of parameter indices")
            continue
        ids += g["params"]
        for k in ("lr", "weight_decay", "eps", "initial_lr", "lr_scale"):
            if k in g and not _num(g[k]):
                out.append(f"optimizer param group {i}: {k} {g[k]!r} is not a finite number >= 0")
        flags = [f for f in _ADAMW_FLAGS if f in g and not (g[f] is None or isinstance(g[f], bool))]
        if flags:
            out.append(f"optimizer param group {i}: {flags} are not booleans")
        betas = g.get("betas")
        if betas is not None and not (isinstance(betas, (list, tuple)) and len(betas) == 2
                                      and all(_num(b) and float(b) < 1 for b in betas)):
            out.append(f"optimizer param group {i}: betas {betas!r} are not two numbers in [0, 1)")
    if sorted(ids) != list(range(len(ids))):
        out.append("optimizer param groups do not hold each parameter index exactly once")
    for k, v in state.items():
        if k not in ids or not isinstance(v, dict):
            out.append(f"optimizer state {k!r} belongs to no parameter or is not a dict")
            continue
        if not (_num(v.get("step")) and float(v["step"]) == int(float(v["step"]))):
            out.append(f"optimizer state {k}: step {v.get('step')!r} is not a count")
        for name in ("exp_avg", "exp_avg_sq"):
            if not (_tensor(v.get(name)) and v[name].is_floating_point()):
                out.append(f"optimizer state {k}: {name} is not a floating-point tensor")
        if len(out) > 20:
            break
    return out


_SCHEDULER_KEYS = {"base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr",
                   "lr_lambdas", "verbose"}
_ADAMW_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay", "foreach", "fused")


def _scheduler_problems(sched: Dict[str, Any], n_groups: int) -> List[str]:
    out = []
    if not _int(sched.get("last_epoch")):
        out.append(f"scheduler last_epoch {sched.get('last_epoch')!r} is not a step count >= 0")
    for k in ("base_lrs", "_last_lr"):
        v = sched.get(k)
        if k in sched or k == "base_lrs":
            if not (isinstance(v, list) and len(v) == n_groups and all(_num(x) for x in v)):
                out.append(f"scheduler {k} is not a list of {n_groups} finite learning rates")
    lambdas = sched.get("lr_lambdas")
    if lambdas is not None and not (isinstance(lambdas, list) and all(x is None for x in lambdas)):
        out.append("scheduler lr_lambdas hold objects (this scheduler stores none)")
    if "_step_count" in sched and not _int(sched["_step_count"]):
        out.append(f"scheduler _step_count {sched['_step_count']!r} is not a count")
    unknown = sorted(map(str, set(sched) - _SCHEDULER_KEYS))
    if unknown:  # LambdaLR.load_state_dict sets every key as an attribute of the scheduler
        out.append(f"scheduler has unknown fields {unknown[:5]}")
    return out


def _scaler_problems(sc: Any) -> List[str]:
    if sc is None:
        return []
    if not (isinstance(sc, dict) and _num(sc.get("scale")) and float(sc["scale"]) > 0 and _num(sc.get("growth_factor"))
            and _num(sc.get("backoff_factor")) and _int(sc.get("growth_interval"), 1)
            and _int(sc.get("_growth_tracker"))):
        return ["scaler is not a GradScaler state (scale > 0, factors, growth interval, tracker)"]
    return []


def _history_problems(h: Dict[str, Any]) -> List[str]:
    out = []
    epochs, steps = h.get("epochs"), h.get("steps")
    keys = ("epoch", "step", "train_loss", "lr", "img_s", "test_loss", "test_acc", "test_count")
    if not (isinstance(epochs, list) and all(isinstance(e, dict) and all(_num(e.get(k)) for k in keys) for e in epochs)):
        out.append(f"history['epochs'] is not a list of epoch records with finite {list(keys)}")
    if not (isinstance(steps, list) and all(isinstance(s, (list, tuple)) and len(s) == 2 and _int(s[0])
                                            and _num(s[1], -math.inf) for s in steps)):
        out.append("history['steps'] is not a list of (step, loss) pairs")
    return out


def checkpoint_problems(state: Dict[str, Any]) -> List[str]:
    """Every field of a training checkpoint checked, as a list of what is wrong (empty: resumable).

    Types and ranges of every field and of what is inside them -- model
    tensors, optimizer groups and state, scheduler, grad scaler, counters
    (``step >= 0``, ``world_size >= 1``, the scheduler at ``step``), each
    rank's RNG states, the history -- so that a damaged or crafted file is
    one clear error before anything is restored, not a traceback mid-run.
    """
    wrong = [f"{k} is missing" if k not in state else f"{k} is a {type(state[k]).__name__}, not a {t.__name__}"
             for k, t in _CHECKPOINT_FIELDS.items() if not isinstance(state.get(k), t) or isinstance(state.get(k), bool)]
    if wrong:
        return wrong
    out = []
    for k in ("step", "epoch", "step_in_epoch"):
        if state[k] < 0:
            out.append(f"{k} is {state[k]}, negative")
    if state["world_size"] < 1:
        out.append(f"world_size is {state['world_size']}, not >= 1")
    if not all(isinstance(k, str) and _tensor(v) for k, v in state["model"].items()):
        out.append("model is not a dict of dense tensors")
    if not all(isinstance(k, str) for k in state["args"]):
        out.append("args has keys that are not strings")
    out += _optimizer_problems(state["optimizer"])
    groups = state["optimizer"].get("param_groups")
    out += _scheduler_problems(state["scheduler"], len(groups) if isinstance(groups, list) else 0)
    if not out and state["scheduler"]["last_epoch"] != state["step"]:
        out.append(f"the scheduler is at step {state['scheduler']['last_epoch']}, "
                   f"the checkpoint at step {state['step']}")
    out += _scaler_problems(state.get("scaler"))
    for r, st in enumerate(state["rng"]):
        out += _rng_problems(st, f"rng[{r}]")
    out += _history_problems(state["history"])
    return out


def _damaged(path: str, problems: List[str]) -> TrainError:
    shown = "; ".join(problems[:6]) + (f"; ... and {len(problems) - 6} more" if len(problems) > 6 else "")
    return TrainError(f"{path}: damaged or incompatible swin_ext.train checkpoint: {shown}")


def _check_resumable(state: Dict[str, Any], path: str) -> None:
    """Every field a resume needs, checked (:func:`checkpoint_problems`); a :class:`TrainError` naming what is wrong."""
    problems = checkpoint_problems(state)
    if problems:
        raise _damaged(path, problems)


# How --resume treats an argument that differs from the one the checkpoint's run had.  Refused: the
# run would not continue the same training.  Applied (and said): the rest of the run uses the new
# value.  The model's fields are compared through the model config, --batch-size on its own; run
# settings (workers, output, saving, logging, device, threads) are applied without a word.
_RESUME_REFUSED = {
    "data": "the data set (its split, order and the position in the epoch are the checkpoint's)",
    "test_fraction": "the train/test split (images the checkpoint trained on could land in the test split)",
    "limit": "the samples of each split",
    "seed": "the train/test split and the data order",
    "layer_decay": "the optimizer's parameter groups",
}
_RESUME_APPLIED = {
    "lr": "the schedule continues from this step with the new peak learning rate",
    "min_lr": "the cosine continues from this step towards the new final learning rate",
    "warmup_epochs": "the schedule continues from this step with the new warm-up",
    "warmup_steps": "the schedule continues from this step with the new warm-up",
    "weight_decay": "the decaying parameter groups use it from the next step",
    "epochs": "the schedule is re-planned for the new length from this step",
    "max_steps": "the schedule is re-planned for the new length from this step",
}
_RESUME_SILENT = {
    "model", "img_size", "patch_size", "in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
    "drop_path", "batch_size", "workers", "output_dir", "resume", "save_every", "no_save", "stop_after_steps",
    "eval_every", "device", "threads", "no_progress", "no_plot", "min_acc",
}


def _same_arg(name: str, old: Any, new: Any) -> bool:
    norm = (lambda v: list(v) if isinstance(v, (tuple, list)) else v)
    if name == "data" and isinstance(old, str) and isinstance(new, str) and "digits" not in (old, new):
        return os.path.realpath(old) == os.path.realpath(new)
    return norm(old) == norm(new)


def resume_differences(saved: Dict[str, Any], args: argparse.Namespace) -> Tuple[List[str], List[str]]:
    """``(applied, refused)``: one line per argument of this run that differs from the checkpoint's
    (arguments the checkpoint does not record are not compared)."""
    applied, refused = [], []
    for name, new in vars(args).items():
        if name in _RESUME_SILENT or name not in saved or _same_arg(name, saved[name], new):
            continue
        flag = "--" + name.replace("_", "-")
        what = f"{flag} {new} (the checkpoint's run: {saved[name]})"
        if name in _RESUME_REFUSED:
            refused.append(f"{what} would change {_RESUME_REFUSED[name]}")
        else:
            applied.append(f"{what}: applied; {_RESUME_APPLIED.get(name, 'used from this step on')}")
    return applied, refused


def _rng_state(device: torch.device) -> Dict[str, Any]:
    """Every RNG stream of this process as tensors and plain Python values (``weights_only``-loadable)."""
    st: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        st["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in st:
        import numpy as np

        n = st["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _weights_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one pass, one sync)."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all().item()) if flags else True


def _kept(ckpt_path: str) -> str:
    return (f"{ckpt_path} keeps the last good checkpoint" if os.path.isfile(ckpt_path)
            else "no checkpoint was written")


def _finite_state(sd: Dict[str, Any]) -> bool:
    return all(torch.isfinite(v).all().item() for v in sd.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def check_output_dir(out_dir: str, need_bytes: int = 0) -> None:
    """Create ``out_dir`` and prove it usable before training: a probe file is written, fsync'ed and
    deleted, and the file system must have ``need_bytes`` free.  :class:`TrainArgumentError` naming
    the problem (unwritable, not a directory, full) -- at the start, not after the training."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise TrainArgumentError(f"--output-dir {out_dir}: cannot be created ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(bytes(1 << 16))
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(probe)
    except OSError as e:
        raise TrainArgumentError(f"--output-dir {out_dir}: cannot be written ({e.strerror or e})") from None
    free = shutil.disk_usage(out_dir).free
    if free < need_bytes:
        raise TrainArgumentError(f"--output-dir {out_dir}: {free / 2**20:.1f} MiB free, but a checkpoint of this run "
                                 f"needs about {need_bytes / 2**20:.1f} MiB (the model and AdamW's two moments)")


def _on_main(env: "DistEnv", check) -> None:
    """Run ``check`` on rank 0 and raise its :class:`TrainError` on every rank (no rank left waiting)."""
    problem = None
    if env.is_main:
        try:
            check()
        except TrainError as e:
            problem = (type(e).__name__, str(e))
    problem = env.broadcast_object(problem)
    if problem:
        raise (TrainArgumentError if problem[0] == "TrainArgumentError" else TrainError)(problem[1])


def remove_stale_temporaries(ckpt_path: str) -> List[str]:
    """Delete the temporary files a killed :func:`save_checkpoint` left next to ``ckpt_path``."""
    d, base = os.path.split(os.path.abspath(ckpt_path))
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name.startswith("." + base + ".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, name))
                    removed.append(os.path.join(d, name))
    return removed


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of every tensor of ``model.state_dict()`` (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- plotting


def plot_curves(history: Dict[str, Any], path: str, title: str = "") -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    steps = history.get("steps", [])
    if steps:
        s, l = zip(*steps)
        ax_l.plot(s, l, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (step, label-smoothed)")
    ep = history.get("epochs", [])
    if ep:
        ax_l.plot([e["step"] for e in ep], [e["train_loss"] for e in ep], "o-", color="tab:blue", label="train loss (epoch mean)")
        ax_l.plot([e["step"] for e in ep], [e["test_loss"] for e in ep], "s-", color="tab:orange", label="test loss")
        ax_a.plot([e["step"] for e in ep], [100 * e["test_acc"] for e in ep], "s-", color="tab:green", label="test accuracy")
        best = max(ep, key=lambda e: e["test_acc"])
        ax_a.annotate(f"{100 * best['test_acc']:.2f}%", (best["step"], 100 * best["test_acc"]),
                      textcoords="offset points", xytext=(0, -14), ha="center")
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("cross-entropy")
    ax_l.set_yscale("log")
    if steps or ep:
        ax_l.legend()
    ax_l.grid(alpha=0.3)
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("test accuracy (%)")
    ax_a.grid(alpha=0.3)
    if ep:
        ax_a.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- training


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, env: DistEnv, amp_dtype: Optional[torch.dtype]) -> Dict[str, float]:
    was_training = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    for x, y in loader:
        x = x.to(env.device, non_blocking=True)
        y = y.to(env.device, non_blocking=True)
        with torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        tot[0] += F.cross_entropy(logits.float(), y, reduction="sum").item()
        tot[1] += (logits.argmax(-1) == y).sum().item()
        tot[2] += y.numel()
    tot = env.all_reduce_sum(tot)
    model.train(was_training)
    n = max(tot[2].item(), 1.0)
    return {"test_loss": tot[0].item() / n, "test_acc": tot[1].item() / n, "test_count": int(tot[2].item())}


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run training as configured by ``args`` (see :func:`build_parser`); returns the final metrics."""
    from .data import build_datasets

    validate_args(args)
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    env = DistEnv(args.device)
    try:
        return _train(args, env, build_datasets, t_start)
    finally:
        env.close()
        torch.set_num_threads(threads)  # train() may run inside a bigger program


def _log(env: DistEnv, *a) -> None:
    if env.is_main:
        print(*a, flush=True)


def _train(args, env: DistEnv, build_datasets, t_start: float) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    device = env.device
    out_dir = args.output_dir or os.path.join("runs", f"{'digits' if args.data == 'digits' else os.path.basename(os.path.normpath(args.data))}-{args.model}")
    _on_main(env, lambda: check_output_dir(out_dir))
    ckpt_path = os.path.join(out_dir, "last.pt")
    if env.is_main and not args.no_save:
        for tmp in remove_stale_temporaries(ckpt_path):
            _log(env, f"removed {tmp}, the temporary file of a checkpoint save that was interrupted")

    # ---- data
    in_chans = args.in_chans if args.in_chans is not None else (1 if args.data == "digits" else 3)
    img_size = args.img_size or PRESETS[args.model]["img_size"]
    train_set, test_set, num_classes = build_datasets(
        args.data, img_size, in_chans, args.test_fraction, args.seed, augment=not args.no_augment, limit=args.limit
    )
    workers = args.workers if args.workers is not None else (0 if args.data == "digits" else min(4, os.cpu_count() or 1))
    sampler = ShardedSampler(len(train_set), env.world_size, env.rank, shuffle=True, seed=args.seed)
    if args.batch_size > sampler.per_rank:
        raise TrainError(f"--batch-size {args.batch_size} is larger than the {sampler.per_rank} training samples per process")
    loader_gen = torch.Generator()
    pin = device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                              drop_last=True, pin_memory=pin, generator=loader_gen, persistent_workers=False)
    test_loader = DataLoader(test_set, batch_size=args.batch_size * 2, sampler=ShardSampler(len(test_set), env.world_size, env.rank),
                             num_workers=workers, pin_memory=pin)
    steps_per_epoch = sampler.per_rank // args.batch_size
    if args.max_steps is not None:
        total_steps = args.max_steps
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs = args.epochs
        total_steps = epochs * steps_per_epoch
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else int(round(args.warmup_epochs * steps_per_epoch))

    # ---- model (identical init on every rank; DDP also broadcasts rank 0's)
    cfg = model_config(args, num_classes)
    torch.manual_seed(args.seed)
    try:
        model = build_model(cfg, args.backend, args.grad_checkpoint)
    except (ValueError, TypeError) as e:
        raise TrainArgumentError(f"--model {args.model} with these options: {' '.join(str(e).split())}") from None
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    if not args.no_save:  # a checkpoint: the model and AdamW's two moments (the old file's space is already used)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        _on_main(env, lambda: check_output_dir(out_dir, 3 * size + (1 << 20)))
    groups = param_groups(model, args.weight_decay, args.layer_decay)
    for g in groups:
        g["lr"] = args.lr * g["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  **({"fused": True} if device.type == "cuda" else {}))
    min_ratio = args.min_lr / args.lr if args.lr > 0 else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, min_ratio)
    )
    amp_dtype = _amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ddp_model: nn.Module = model
    if env.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    # ---- resume
    step, epoch, step_in_epoch = 0, 0, 0
    history: Dict[str, Any] = {"epochs": [], "steps": []}
    torch.manual_seed(args.seed * 1000 + env.rank)  # per-rank stream: augmentation, drop path
    random.seed(args.seed * 1000 + env.rank)
    resume_path = args.resume
    if resume_path == "auto":
        # lexists: a FIFO or directory named last.pt is refused by name, not skipped or opened.
        resume_path = ckpt_path if os.path.lexists(ckpt_path) else None
    resumed_from = None
    if resume_path:
        if not os.path.lexists(resume_path):
            raise TrainError(f"--resume {resume_path}: no such checkpoint")
        state = load_checkpoint(resume_path)
        _check_resumable(state, resume_path)
        if state.get("model_config") != cfg:
            raise TrainError(f"{resume_path}: checkpoint model config {state.get('model_config')} differs from this run's {cfg}")
        old_bs = state["args"].get("batch_size")
        if old_bs is not None and old_bs != args.batch_size:
            raise TrainError(
                f"{resume_path} was written with --batch-size {old_bs} (per process), this run has --batch-size "
                f"{args.batch_size}: its step count, schedule and data position would not carry over; resume with "
                f"--batch-size {old_bs}, or start a new run"
            )
        applied, refused = resume_differences(state["args"], args)
        if refused:
            raise TrainError(f"{resume_path}: cannot resume with {'; '.join(refused)}: resume with the checkpoint's "
                             "values, or start a new run")
        if not _finite_state(state["model"]):
            raise TrainError(f"{resume_path}: its model weights are not all finite (the run that wrote it diverged)")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise _damaged(resume_path, [f"cannot restore the training state: {' '.join(str(e).split())}"]) from e
        step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        problems = [f"optimizer state of {name}: {k} has shape {tuple(st[k].shape)}, the parameter {tuple(p.shape)}"
                    for g in optimizer.param_groups for name, p in zip(g["names"], g["params"])
                    for st in [optimizer.state.get(p, {})] for k in ("exp_avg", "exp_avg_sq")
                    if k in st and st[k].shape != p.shape]
        if state["world_size"] == env.world_size and step_in_epoch > steps_per_epoch:
            problems.append(f"its position in the epoch (batch {step_in_epoch}) is beyond this data's "
                            f"{steps_per_epoch} batches per epoch (other data than the run that wrote it?)")
        if problems:
            raise _damaged(resume_path, problems)
        # This run's hyper-parameters (the optimizer and scheduler states carry the checkpoint's): the
        # learning rate and weight decay of every group, and the schedule's base, recomputed as at the start
        # (bitwise the checkpoint's values when nothing changed).
        for g, fresh in zip(optimizer.param_groups, param_groups(model, args.weight_decay, args.layer_decay)):
            g["weight_decay"], g["lr_scale"], g["initial_lr"] = fresh["weight_decay"], fresh["lr_scale"], \
                args.lr * fresh["lr_scale"]
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
            g["lr"] = base * lr_factor(scheduler.last_epoch, total_steps, warmup_steps, min_ratio)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        for line in applied:
            _log(env, f"resume: {line}")
        history = state.get("history", history)
        rng = state.get("rng") or []
        if len(rng) == env.world_size:
            try:
                _set_rng_state(rng[env.rank], device)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise _damaged(resume_path, [f"rng[{env.rank}] cannot be restored: {' '.join(str(e).split())}"]) from e
        else:
            _log(env, f"warning: checkpoint has RNG states of {len(rng)} ranks, this run has {env.world_size}; "
                      "the data position and random streams are not restored exactly")
            if state.get("world_size") and state["world_size"] != env.world_size:
                step_in_epoch = int(step_in_epoch * state["world_size"] / env.world_size)
        resumed_from = {"path": resume_path, "step": step}
        _log(env, f"resumed from {resume_path} at step {step} (epoch {epoch + 1}, batch {step_in_epoch})")
    start_step = step

    _log(env, f"swin_ext.train: {args.model} {json.dumps(cfg)}")
    _log(env, f"  {n_params:,} parameters, backend={args.backend}, device={device}, world_size={env.world_size}, "
              f"amp={amp_dtype and str(amp_dtype).replace('torch.', '')}, grad_checkpoint={args.grad_checkpoint}, "
              f"threads/process={torch.get_num_threads()}")
    _log(env, f"  data={args.data}: {len(train_set)} train / {len(test_set)} test, {num_classes} classes; "
              f"batch {args.batch_size}x{env.world_size}, {steps_per_epoch} steps/epoch, {total_steps} steps, "
              f"warm-up {warmup_steps}, output {out_dir}")

    def checkpoint_state() -> Dict[str, Any]:
        rng = env.all_gather_object(_rng_state(device))  # collective: every rank calls it
        ep, sie = (epoch + 1, 0) if step_in_epoch >= steps_per_epoch else (epoch, step_in_epoch)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "model_config": cfg,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step,
            "epoch": ep,
            "step_in_epoch": sie,
            "rng": rng,
            "world_size": env.world_size,
            "history": history,
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        }

    def save() -> None:
        if args.no_save:
            return
        # Never write non-finite weights over the last good checkpoint (every
        # rank holds the same weights, so every rank decides alike).
        if not _weights_finite(model):
            raise TrainError(f"the model weights are not finite at step {step}: training diverged; not saving, "
                             f"{_kept(ckpt_path)} (try a lower --lr)")
        st = checkpoint_state()
        if env.is_main:
            save_checkpoint(st, ckpt_path)
        env.barrier()

    # ---- loop
    show = env.is_main and not args.no_progress
    record_every = max(1, steps_per_epoch // 100)  # step losses kept for the plot (<= ~100 per epoch)
    ddp_model.train()
    last_eval_step = -1
    metrics: Dict[str, Any] = {}
    steps_this_run = 0
    stopped_early = False
    train_time = 0.0
    samples_this_run = 0
    while epoch < epochs and step < total_steps and not stopped_early:
        skip = step_in_epoch * args.batch_size
        sampler.set_epoch(epoch, skip)
        loader_gen.manual_seed(args.seed * 100_003 + epoch)
        n_batches = min(steps_per_epoch - step_in_epoch, total_steps - step)
        bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not show, dynamic_ncols=True, leave=True, file=sys.stdout,
                   mininterval=0.1 if sys.stdout.isatty() else 2.0)
        loss_sum = torch.zeros((), dtype=torch.float64)
        n_loss = 0
        t_epoch = time.perf_counter()
        pause = 0.0  # time spent saving mid-epoch, excluded from img/s
        seen = 0
        for i, (x, y) in enumerate(train_loader):
            if i >= n_batches:
                break
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = ddp_model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad and args.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            step_in_epoch += 1
            steps_this_run += 1
            lv = loss.detach().item()
            # A non-finite loss on any rank stops every rank at the same step.
            diverged = not math.isfinite(lv)
            if env.distributed:
                diverged = env.all_reduce_sum(torch.tensor([float(diverged)], dtype=torch.float64)).item() > 0
            if diverged:
                raise TrainError(
                    f"the training loss is {lv} at step {step} (epoch {epoch + 1}): training diverged; stopped without "
                    f"saving, {_kept(ckpt_path)} (try a lower --lr or --clip-grad)"
                )
            loss_sum += lv
            n_loss += 1
            seen += x.shape[0] * env.world_size
            if env.is_main and step % record_every == 0:
                history["steps"].append((step, lv))
            elapsed = time.perf_counter() - t_epoch - pause
            if show:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
                                img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
            if args.save_every and step % args.save_every == 0 and step < total_steps:
                t_save = time.perf_counter()
                save()
                pause += time.perf_counter() - t_save
            if args.stop_after_steps is not None and steps_this_run >= args.stop_after_steps and step < total_steps:
                stopped_early = True
                break
        bar.close()
        epoch_time = time.perf_counter() - t_epoch - pause
        train_time += epoch_time
        samples_this_run += seen
        mean_loss = env.all_reduce_sum(torch.tensor([loss_sum.item(), float(n_loss)], dtype=torch.float64))
        train_loss = (mean_loss[0] / mean_loss[1].clamp_min(1)).item()
        epoch_done = step_in_epoch >= steps_per_epoch
        if epoch_done:
            is_last = epoch + 1 >= epochs or step >= total_steps
            if (epoch + 1) % max(1, args.eval_every) == 0 or is_last:
                ev = evaluate(model, test_loader, env, amp_dtype)
                last_eval_step = step
                rec = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "lr": optimizer.param_groups[-1]["lr"],
                       "img_s": seen / max(epoch_time, 1e-9), **ev}
                history["epochs"].append(rec)
                _log(env, f"epoch {epoch + 1}/{epochs}  step {step}  train_loss {train_loss:.4f}  "
                          f"test_loss {ev['test_loss']:.4f}  test_acc {100 * ev['test_acc']:.2f}%  "
                          f"{rec['img_s']:.0f} img/s")
            save()
            epoch += 1
            step_in_epoch = 0
        elif stopped_early or step >= total_steps:
            save()

    if stopped_early:
        _log(env, f"stopped after {steps_this_run} steps at step {step} (--stop-after-steps); resume with --resume {ckpt_path}")

    # ---- final evaluation and metrics
    if last_eval_step != step:
        ev = evaluate(model, test_loader, env, amp_dtype)
    else:
        ev = {k: history["epochs"][-1][k] for k in ("test_loss", "test_acc", "test_count")}
    hashes = env.all_gather_object(state_dict_sha256(model))
    if len(set(hashes)) != 1:
        _log(env, f"error: model weights differ across ranks: {hashes}")
    wall = time.perf_counter() - t_start
    train_losses = [e["train_loss"] for e in history["epochs"]]
    metrics = {
        "model": args.model,
        "data": args.data,
        "test_acc": ev["test_acc"],
        "test_loss": ev["test_loss"],
        "test_count": ev["test_count"],
        "best_test_acc": max([e["test_acc"] for e in history["epochs"]] + [ev["test_acc"]]),
        "train_loss": train_losses[-1] if train_losses else None,
        "step": step,
        "start_step": start_step,
        "total_steps": total_steps,
        "epoch": epoch,
        "epochs": epochs,
        "stopped_early": stopped_early,
        "world_size": env.world_size,
        "device": str(device),
        "backend": args.backend,
        "params": n_params,
        "train_img_s": samples_this_run / max(train_time, 1e-9),
        "train_time_s": train_time,
        "wall_s": wall,
        "replica_sha256": hashes,
        "resumed_from": resumed_from,
        "output_dir": out_dir,
    }
    if env.is_main:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({**metrics, "history": history["epochs"]}, f, indent=1)
        if not args.no_plot:
            png = plot_curves(history, os.path.join(out_dir, "curves.png"),
                              f"{args.model} on {args.data} ({n_params / 1e6:.2f}M params, {args.backend})")
            if png:
                metrics["plot"] = png
        print(f"final: test_acc {100 * ev['test_acc']:.2f}%  test_loss {ev['test_loss']:.4f}  "
              f"step {step}/{total_steps}  {metrics['train_img_s']:.0f} img/s  wall {wall:.1f}s  "
              f"({env.world_size} process{'es' if env.world_size > 1 else ''}, {device})", flush=True)
        print("FINAL_METRICS " + json.dumps(metrics), flush=True)
    env.barrier()
    return metrics


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; for an error re-raised from a DataLoader worker, the original one."""
    msg = str(e)
    if "Original Traceback" in msg:  # torch's ExceptionWrapper: the worker's traceback, its last line the error
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1].strip()
        name = type(e).__module__ + "." + type(e).__qualname__
        for prefix in (name + ": ", type(e).__qualname__ + ": "):
            if last.startswith(prefix):
                last = last[len(prefix):]
        msg = last
    return " ".join(msg.split())


def main(argv: Optional[List[str]] = None) -> int:
    """The CLI: returns the exit status (0 ok, 1 an error or --min-acc missed, 2 bad arguments or replicas differ).

    Bad arguments exit through argparse (status 2, one line: no usage block); an
    argument found unusable later (:class:`TrainArgumentError`: the model
    configuration, the output directory) prints one ``error:`` line and
    returns 2; a bad data set, checkpoint or a diverged run print one
    ``error:`` line naming the cause and return 1.  Never a traceback.
    """
    from .checkpoint import CheckpointError
    from .data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_args(args)
    except TrainError as e:
        parser.error(str(e))
    try:
        metrics = train(args)
    except (TrainError, CheckpointError, DataError, FileNotFoundError) as e:
        rank = os.environ.get("RANK")
        where = f" (rank {rank})" if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"swin-ext-train: error{where}: {_one_line(e)}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, TrainArgumentError) else 1
    if args.min_acc is not None and not metrics["stopped_early"] and metrics["test_acc"] < args.min_acc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: test accuracy {100 * metrics['test_acc']:.2f}% < --min-acc {100 * args.min_acc:.2f}%",
                  file=sys.stderr, flush=True)
        return 1
    if len(set(metrics["replica_sha256"])) != 1:
        return 2
    return 0


def _exit_without_finalizing(code: int) -> None:
    """Leave a distributed run without Python's interpreter finalization.

    Once DistributedDataParallel has been built on a gloo process group, the
    group's C++ worker threads outlive ``destroy_process_group`` (torch keeps a
    reference). After the last collective such a thread still frees its Work
    object, which drops references to tensors that have Python objects; that
    needs the GIL, and if the main thread is already finalizing the
    interpreter, the worker thread is killed inside a C++ destructor and the
    process aborts ("terminate called without an active exception", SIGABRT)
    after all work is done (4 of about 200 two-process CPU runs here; 0 of 120
    with this exit).
    Everything the run writes is closed by now, so flush and exit directly.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> int:
    """Command-line entry (``python -m swin_ext.train`` and ``swin-ext-train``)."""
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_finalizing(rc)
    return rc


if __name__ == "__main__":
    sys.exit(cli())

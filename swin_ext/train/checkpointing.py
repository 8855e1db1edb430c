"""Training checkpoints: atomic saves, checked loads, RNG state, integrity of the weights.

A checkpoint (``<output-dir>/last.pt``) holds only tensors and plain
containers, so it loads with ``torch.load(weights_only=True)`` and nothing
in it is ever executed; every rank's RNG states are in it, so a resumed run
continues the same random streams.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
from typing import Any, Dict, List

import torch
import torch.nn as nn

from ..weights.checkpoint import CheckpointError, safe_torch_load
from .errors import TrainError

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "check_resumable", "rng_state",
           "set_rng_state", "weights_finite", "finite_state", "kept_message", "remove_stale_temporaries",
           "state_dict_sha256"]

CHECKPOINT_FORMAT = "swin_ext.train/2"  # /2: loads with weights_only=True


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


# Fields of a training checkpoint and their types (checked on load).
_CHECKPOINT_FIELDS = {
    "model": dict, "model_config": dict, "optimizer": dict, "scheduler": dict, "step": int, "epoch": int,
    "step_in_epoch": int, "rng": list, "world_size": int, "history": dict, "args": dict,
}


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (CPU tensors).

    Read with ``torch.load(weights_only=True)`` after the checks of
    :func:`swin_ext.weights.checkpoint.safe_torch_load` (a regular file, its zip
    checksums intact): a training checkpoint holds only tensors and plain
    containers (RNG states included), so nothing in the file is ever
    executed; a file that needs anything else is refused.  Raises
    :class:`~swin_ext.CheckpointError` (a ``ValueError``) naming
    the file; the file is never modified.
    """
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
        raise CheckpointError(
            f"{path} is not a swin_ext.train checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    return state


def check_resumable(state: Dict[str, Any], path: str) -> None:
    """The fields a resume needs, with their types (:class:`TrainError` naming what is wrong)."""
    wrong = [
        f"{k} (missing)" if k not in state else f"{k} ({type(state[k]).__name__}, expected {t.__name__})"
        for k, t in _CHECKPOINT_FIELDS.items()
        if not isinstance(state.get(k), t) or isinstance(state.get(k), bool)
    ]
    if wrong:
        raise TrainError(f"{path}: an incomplete swin_ext.train checkpoint: bad fields {wrong}")


def rng_state(device: torch.device) -> Dict[str, Any]:
    """Every RNG stream of this process as tensors and plain Python values (``weights_only``-loadable)."""
    st: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        st["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in st:
        import numpy as np

        n = st["numpy"]
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one pass, one sync)."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all().item()) if flags else True


def kept_message(ckpt_path: str) -> str:
    return f"{ckpt_path} keeps the last good checkpoint" if os.path.isfile(ckpt_path) else "no checkpoint was written"


def finite_state(sd: Dict[str, Any]) -> bool:
    return all(
        torch.isfinite(v).all().item() for v in sd.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
    )


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

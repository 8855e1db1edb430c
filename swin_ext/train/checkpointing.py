"""Training checkpoints: atomic saves, checked loads, RNG state, integrity of the weights.

A checkpoint (``<output-dir>/last.pt``) holds only tensors and plain
containers, so it loads with ``torch.load(weights_only=True)`` and nothing
in it is ever executed; every rank's RNG states are in it, so a resumed run
continues the same random streams.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import random
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..weights.checkpoint import CheckpointError, read_state_dict, safe_torch_load
from .errors import TrainArgumentError, TrainError

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "checkpoint_problems", "check_resumable",
           "damaged", "resume_differences", "check_output_dir", "rng_state",
           "set_rng_state", "weights_finite", "finite_state", "kept_message", "remove_stale_temporaries",
           "state_dict_sha256", "read_pretrained"]

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


# Fields of a training checkpoint and their types (checked on load; :func:`checkpoint_problems` checks inside them).
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
    """What is wrong with one rank's RNG states (the layout :func:`rng_state` writes)."""
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
    records = isinstance(epochs, list) and all(
        isinstance(e, dict) and all(_num(e.get(k)) for k in keys) for e in epochs)
    if not records:
        out.append(f"history['epochs'] is not a list of epoch records with finite {list(keys)}")
    if not (
        isinstance(steps, list)
        and all(isinstance(s, (list, tuple)) and len(s) == 2 and _int(s[0]) and _num(s[1], -math.inf) for s in steps)
    ):
        out.append("history['steps'] is not a list of (step, loss) pairs")
    return out


def _optional_problems(state: Dict[str, Any]) -> List[str]:
    """The optional fields: the EMA weights, the class names, the data configuration."""
    out = []
    ema = state.get("model_ema")
    if ema is not None and not (isinstance(ema, dict) and all(isinstance(k, str) and _tensor(v)
                                                                  for k, v in ema.items())):
        out.append("model_ema is not a dict of dense tensors")
    classes = state.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        out.append("classes is not a list of class names")
    dc = state.get("data_config")
    if dc is not None and not (isinstance(dc, dict) and all(isinstance(k, str) for k in dc)):
        out.append("data_config is not a dict")
    return out


def checkpoint_problems(state: Dict[str, Any]) -> List[str]:
    """Every field of a training checkpoint checked, as a list of what is wrong (empty: resumable).

    Types and ranges of every field and of what is inside them -- model
    tensors, optimizer groups and state, scheduler, grad scaler, counters
    (``step >= 0``, ``world_size >= 1``, the scheduler at ``step``), each
    rank's RNG states, the history -- so that a damaged or crafted file is
    one clear error before anything is restored, not a traceback mid-run.
    """
    wrong = [
        f"{k} is missing" if k not in state else f"{k} is a {type(state[k]).__name__}, not a {t.__name__}"
        for k, t in _CHECKPOINT_FIELDS.items()
        if not isinstance(state.get(k), t) or isinstance(state.get(k), bool)
    ]
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
        out.append(
            f"the scheduler is at step {state['scheduler']['last_epoch']}, the checkpoint at step {state['step']}"
        )
    out += _scaler_problems(state.get("scaler"))
    for r, st in enumerate(state["rng"]):
        out += _rng_problems(st, f"rng[{r}]")
    out += _history_problems(state["history"])
    out += _optional_problems(state)
    return out


def read_pretrained(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state dict, metadata)`` of a ``--pretrained`` / ``predict --checkpoint`` file, read without
    executing anything (:func:`swin_ext.weights.read_state_dict`: every layout, ``.safetensors`` too).

    For a swin_ext.train checkpoint the state dict is its ``model`` and the
    metadata its ``model_config``, ``classes``, ``data_config`` and
    ``model_ema`` (the EMA weights) where present; for any other file the
    metadata is empty.  Raises :class:`~swin_ext.CheckpointError` naming the file.
    """
    if str(path).endswith(".safetensors"):
        return read_state_dict(path), {}
    obj = safe_torch_load(path)
    meta: Dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        problems = _optional_problems(obj)
        if not isinstance(obj.get("model"), dict):
            problems.append("model is missing or not a dict")
        if not isinstance(obj.get("model_config"), dict):
            problems.append("model_config is missing or not a dict")
        if problems:
            raise CheckpointError(f"{path}: damaged swin_ext.train checkpoint: {'; '.join(problems)}")
        meta = {k: obj[k] for k in ("model_config", "classes", "data_config", "model_ema") if obj.get(k) is not None}
        obj = obj["model"]
    try:
        return read_state_dict(obj), meta
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def damaged(path: str, problems: List[str]) -> TrainError:
    shown = "; ".join(problems[:6]) + (f"; ... and {len(problems) - 6} more" if len(problems) > 6 else "")
    return TrainError(f"{path}: damaged or incompatible swin_ext.train checkpoint: {shown}")


def check_resumable(state: Dict[str, Any], path: str) -> None:
    """Every field a resume needs, checked (:func:`checkpoint_problems`); a :class:`TrainError` naming what is wrong."""
    problems = checkpoint_problems(state)
    if problems:
        raise damaged(path, problems)


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
    "freeze_stages": "the parameters that train (the optimizer's parameter groups)",
    "head_only": "the parameters that train (the optimizer's parameter groups)",
}


_RESUME_APPLIED = {
    "lr": "the schedule continues from this step with the new peak learning rate",
    "min_lr": "the cosine continues from this step towards the new final learning rate",
    "warmup_epochs": "the schedule continues from this step with the new warm-up",
    "warmup_steps": "the schedule continues from this step with the new warm-up",
    "weight_decay": "the decaying parameter groups use it from the next step",
    "epochs": "the schedule is re-planned for the new length from this step",
    "max_steps": "the schedule is re-planned for the new length from this step",
    "model_ema": "the weight average is kept from this step (starting from the current weights) or no longer",
}


_RESUME_SILENT = {
    "model",
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depths",
    "num_heads",
    "window_size",
    "mlp_ratio",
    "drop_path",
    "batch_size",
    "workers",
    "output_dir",
    "resume",
    "save_every",
    "no_save",
    "stop_after_steps",
    "eval_every",
    "device",
    "threads",
    "no_progress",
    "no_plot",
    "min_acc",
    "pretrained",  # only where a run starts: a resumed run continues from its checkpoint
    "pretrained_window_sizes",  # part of the model config, compared there
    "recipe",  # its values are compared flag by flag
    "compile",
    "eval_only",
}


def _same_arg(name: str, old: Any, new: Any) -> bool:
    def norm(v):
        return list(v) if isinstance(v, (tuple, list)) else v

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
        raise TrainArgumentError(
            f"--output-dir {out_dir}: {free / 2**20:.1f} MiB free, but a checkpoint of this run "
            f"needs about {need_bytes / 2**20:.1f} MiB (the model and AdamW's two moments)"
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

"""Loading Swin Transformer (V1 and V2) checkpoints of every common layout.

``load_pretrained(model, source, strict=True)`` reads a file (``.pth`` /
``.pt`` / ``.bin`` through ``torch.load(weights_only=True)``, or
``.safetensors``) or takes a state dict, recognises its layout (official,
timm, torchvision, transformers, V1 and V2; OpenMMLab V1: :mod:`.layouts`),
converts it to the model's own (the official Microsoft layout) and copies it
in (a segmentation UperNet: :mod:`swin_ext.segmentation.weights`).  A V1
checkpoint into a V2 model, or the reverse, is an error that says so.  The
CPB MLP evaluates any window, so a V2 checkpoint of another window size
needs no resizing.

Buffers (``relative_position_index``, ``attn_mask``, ``relative_coords_table``)
are dropped: the model computes them.  A ``relative_position_bias_table``
of another window size is resized by bicubic interpolation, as the official
fine-tuning code does; one whose length is not ``(2 * window - 1) ** 2`` for
any window is refused.

Nothing in a file is executed (``weights_only=True``), only regular files are
opened (a FIFO or device is refused before ``open``), a file of zero bytes or
a tar archive is said to be no checkpoint, and a zip archive's layout is
bounded (entry count, declared sizes against the file size, no overlapping
entries, stored or deflated only: a zip bomb is refused in milliseconds)
before its CRC-32 checksums are verified and it is unpickled, so flipped
bytes inside tensor data are an error naming the damaged entry, not a
silently changed model.  Everything is checked before anything is copied -- storage and layout
(no meta, sparse, nested or quantized tensors), shapes, dtypes, and that every
value is finite and fits the model's dtype -- so a load that fails leaves the
model bitwise as it was.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..models import SwinTransformer, SwinTransformerV2
from .layouts import BUFFER_SUFFIXES, FORMATS, CheckpointError, checkpoint_version, convert_state_dict

__all__ = [
    "FORMATS",
    "BUFFER_SUFFIXES",
    "CheckpointError",
    "LoadResult",
    "load_pretrained",
    "read_state_dict",
    "convert_state_dict",
    "checkpoint_version",
    "safe_torch_load",
    "check_regular_file",
    "verify_archive",
    "tensor_problem",
    "raise_problems",
    "raise_key_mismatch",
]

# Wrappers a training script puts around the state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


@dataclass
class LoadResult:
    """What ``load_pretrained`` did.

    ``loaded``: model keys copied from the checkpoint.
    ``missing_keys``: model keys the checkpoint lacks (left as they were; only
    possible with ``strict=False``).
    ``initialized_keys``: model keys left as they were by design, with why
    (the new head when ``num_classes`` differs, the output norms of a
    ``features_only`` backbone loaded from a classification checkpoint).
    ``unexpected_keys``: checkpoint keys (their own names) the model has no
    place for (only possible with ``strict=False``).
    ``ignored_keys``: checkpoint keys dropped on purpose, with why (buffers,
    the head and final norm for a ``features_only`` backbone, keys outside a
    detector's ``backbone.``).
    ``resized_keys``: relative-position bias tables resized to the model's window.
    ``new_head``: why the checkpoint's head was not loaded (``None`` when it was,
    or when the model has none to load into: ``features_only``).
    """

    format: str
    loaded: List[str] = field(default_factory=list)
    missing_keys: List[str] = field(default_factory=list)
    initialized_keys: Dict[str, str] = field(default_factory=dict)
    unexpected_keys: List[str] = field(default_factory=list)
    ignored_keys: Dict[str, str] = field(default_factory=dict)
    resized_keys: List[str] = field(default_factory=list)
    new_head: Optional[str] = None

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from a {self.format} checkpoint"]
        if self.resized_keys:
            parts.append(f"resized {len(self.resized_keys)} relative-position tables")
        if self.new_head:
            parts.append(f"kept the model's own head ({self.new_head})")
        other = sorted(k for k in self.initialized_keys if not k.startswith("head."))
        if other:
            parts.append(f"kept the model's own {other}")
        if self.missing_keys:
            parts.append(f"missing {self.missing_keys}")
        if self.unexpected_keys:
            parts.append(f"unexpected {self.unexpected_keys}")
        return "; ".join(parts)


# --------------------------------------------------------------------------- reading


def check_regular_file(path: str) -> os.stat_result:
    """``os.stat(path)`` of a regular file; anything else is refused before it is opened.

    A FIFO would block the reader forever, a device would be read without
    end; a directory is a common slip.  Symbolic links are followed.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file itself")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise CheckpointError(f"{path} is {kind}, not a regular file; refusing to open it")
    return st


# Bounds on a zip archive, checked from its central directory and local headers before
# any entry is decompressed (the CRC pass below reads every entry once).
MAX_ZIP_ENTRIES = 1_000_000  # torch.save writes one entry per storage, plus five; big models have thousands
MAX_EXPANSION = 16  # compressed entries may declare at most 16x the file's size in all (weights barely compress)
EXPANSION_FLOOR = 64 << 20  # ... or 64 MiB, for small files
_STORED, _DEFLATED = 0, 8
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length (30 bytes)


def _check_zip_layout(path: str, zf: zipfile.ZipFile, size: int) -> None:
    """Refuse, from the directory alone, an archive whose CRC pass could do unbounded work.

    A zip bomb lists many entries whose data are one shared (deflate) stream,
    or declares far more data than the file holds.  ``torch.save`` writes
    stored (uncompressed) entries, one after the other.  So: at most
    :data:`MAX_ZIP_ENTRIES` entries; only stored or deflated, unencrypted
    entries; a stored entry's size equal to its stored bytes; all declared
    sizes together at most ``MAX_EXPANSION`` times the file size (or
    ``EXPANSION_FLOOR``); and every entry's local header and data inside the
    file, before the central directory, overlapping no other entry.  Then
    reading every entry once costs at most that bound.
    """
    infos = zf.infolist()
    refused = f"{path}: not a valid PyTorch checkpoint archive (refused before decompressing anything): "
    if len(infos) > MAX_ZIP_ENTRIES:
        raise CheckpointError(refused + f"its zip directory lists {len(infos):,} entries, more than the "
                              f"{MAX_ZIP_ENTRIES:,} any checkpoint has")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise CheckpointError(refused + f"its entry {info.filename!r} is encrypted")
        if info.compress_type not in (_STORED, _DEFLATED):
            raise CheckpointError(refused + f"its entry {info.filename!r} uses zip compression method "
                                  f"{info.compress_type}; torch.save stores entries uncompressed (method 0)")
        if info.compress_type == _STORED and info.compress_size != info.file_size:
            raise CheckpointError(refused + f"its uncompressed entry {info.filename!r} declares {info.file_size} "
                                  f"bytes but stores {info.compress_size}")
        total += info.file_size
    limit = max(MAX_EXPANSION * size, EXPANSION_FLOOR)
    if total > limit:
        raise CheckpointError(refused + f"its entries declare {total:,} bytes in all, more than {MAX_EXPANSION}x "
                              f"the file's {size:,} bytes (a zip bomb; model weights barely compress)")
    end_of_data, previous = 0, None
    with open(path, "rb") as f:
        for info in sorted(infos, key=lambda i: i.header_offset):
            if info.header_offset < end_of_data:
                raise CheckpointError(refused + f"its entries {previous!r} and {info.filename!r} overlap (they share "
                                      "bytes: the construction of a zip bomb; torch.save never writes this)")
            f.seek(info.header_offset)
            head = f.read(_LOCAL_HEADER.size)
            if len(head) < _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(head)[0] != b"PK\x03\x04":
                raise CheckpointError(refused + f"its entry {info.filename!r} has no local header at offset "
                                      f"{info.header_offset}")
            _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
            end_of_data = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
            previous = info.filename
    if end_of_data > zf.start_dir:
        raise CheckpointError(refused + f"the data of its entry {previous!r} runs into the zip directory")


def verify_archive(path: str) -> None:
    """Check the CRC-32 of every entry of a zip archive (``torch.save``'s format).

    ``torch.load`` itself does not: flipped bytes inside tensor data load
    silently.  Non-zip files (torch's legacy format, anything else) pass
    untouched; ``torch.load`` judges them.  The archive's layout is bounded
    first (:func:`_check_zip_layout`: a zip bomb is refused in milliseconds,
    before anything is decompressed); then the whole file is read once.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            _check_zip_layout(path, zf, os.path.getsize(path))
            for info in zf.infolist():
                try:
                    with zf.open(info) as f:
                        while f.read(1 << 22):
                            pass
                except zipfile.BadZipFile as e:
                    if "CRC" in str(e):
                        raise CheckpointError(
                            f"{path}: damaged: the stored checksum (CRC-32) of its entry {info.filename!r} does "
                            "not match its data; the file is corrupt (download or save it again)"
                        ) from None
                    raise CheckpointError(f"{path}: damaged zip archive: entry {info.filename!r}: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: damaged zip archive ({type(e).__name__}: {e})") from None


# torch.load's advice to turn weights_only off ("will likely succeed"), never passed on: a file
# that is not a checkpoint must not be met with it, and a checkpoint is never loaded that way here.
_ADVICE = re.compile(r"weights_only`? (set to|=) ?`?False|weights_only=False|In PyTorch 2\.6|arbitrary code"
                     r"|trusted source|Check the documentation of torch\.load|add_safe_globals|safe_globals",
                     re.IGNORECASE)


def _torch_reason(e: BaseException) -> str:
    """torch.load's own reason, without its advice to turn off ``weights_only``."""
    msg = str(e)
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1]
    msg = msg.split("Check the documentation of torch.load", 1)[0]
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z`])", " ".join(msg.split()))
    msg = " ".join(t for t in sentences if not _ADVICE.search(t) and t != "Weights only load failed.")
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _not_a_checkpoint(path: str, size: int) -> Optional[str]:
    """Why ``path`` is plainly not a PyTorch checkpoint (all zero bytes, a tar archive), or ``None``.

    torch.load answers both with its legacy-tar error and the advice that
    ``weights_only=False`` "will likely succeed"; neither file holds a
    checkpoint.  Reads until the first non-zero byte.
    """
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        while True:
            block = f.read(1 << 20)
            if not block:
                return f"the file holds only zero bytes ({size:,} of them)"
            if block.count(0) != len(block):
                break
    with contextlib.suppress(Exception):  # a zip (torch.save) starts with its first entry; a tar may hold one
        if head != b"PK\x03\x04" and tarfile.is_tarfile(path):
            return ("it is a tar archive (torch.save writes a zip archive); if the archive holds a checkpoint, "
                    "extract it and load that file")
    return None


def safe_torch_load(path: Union[str, os.PathLike], what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, checked first.

    The path must be a regular file (:func:`check_regular_file`), non-empty,
    not plainly something else (all zero bytes, a tar archive), and a zip
    archive must pass its layout bounds and checksums (:func:`verify_archive`).
    Nothing in the file is ever executed: a file that needs Python globals
    other than tensors and plain containers is refused, naming them.  Every
    failure is a :class:`CheckpointError` that names the file and says what
    is wrong (damaged, not a checkpoint, holding foreign objects); none
    suggests ``weights_only=False``; the file is not touched.
    """
    path = os.fspath(path)
    st = check_regular_file(path)
    if st.st_size == 0:
        raise CheckpointError(f"{path}: not a readable {what}: the file is empty (0 bytes)")
    other = _not_a_checkpoint(path, st.st_size)
    if other:
        raise CheckpointError(f"{path}: not a {what}: {other}")
    verify_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = _torch_reason(e)
        needed = re.findall(r"GLOBAL ([\w.]+)", str(e))
        if not needed and isinstance(e, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            with contextlib.suppress(Exception):
                needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if needed:
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refused it: it holds objects other than tensors and "
                f"plain containers (it needs the Python globals {sorted(set(needed))}), which are never "
                f"executed when loading a {what}; save the weights alone (torch.save(model.state_dict(), path)) "
                "to get a file that loads"
            ) from e
        raise CheckpointError(f"{path}: not a readable {what}: damaged or not written by torch.save ({reason})") from e


def _is_safetensors_file(path: str) -> bool:
    """safetensors: little-endian u64 header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n <= size - 8


def _read_file(path: str) -> Any:
    check_regular_file(path)
    if path.endswith(".safetensors") or _is_safetensors_file(path):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors is a torch-ecosystem staple
            raise ImportError(f"reading {path} needs the `safetensors` package") from e
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    return safe_torch_load(path)


def _check_values(sd: Mapping[str, torch.Tensor], name: str) -> None:
    """Storage and layout of every tensor, before anything is converted or copied."""
    bad = []
    for k, v in sd.items():
        if v.is_meta:
            bad.append(f"{k!r} is a meta tensor (it has no data)")
        elif v.layout != torch.strided or v.is_nested:
            bad.append(f"{k!r} has layout {v.layout}{' (nested)' if v.is_nested else ''}; only dense tensors load")
        elif v.is_quantized:
            bad.append(f"{k!r} is a quantized tensor ({v.dtype})")
    if bad:
        shown = bad[:20] + ([f"... and {len(bad) - 20} more"] if len(bad) > 20 else [])
        raise CheckpointError(f"{name}: cannot be loaded:\n  " + "\n  ".join(shown))


def _holds_tensors(obj: Any, depth: int = 3) -> bool:
    """Whether a mapping holds a tensor, directly or in mappings nested up to ``depth`` deep."""
    return isinstance(obj, Mapping) and depth > 0 and any(
        isinstance(v, torch.Tensor) or _holds_tensors(v, depth - 1) for v in obj.values())


def _unwrap(obj: Any) -> Any:
    """The state dict inside a training script's wrapper dict, or ``obj`` itself.

    A wrapper is a dict with a ``state_dict`` / ``model`` / ``model_state_dict``
    / ``module`` entry that is itself a dict holding tensors, next to any
    metadata (``epoch`` -- often a 0-d tensor --, ``optimizer``, ``config``,
    ...).  A state dict never has such an entry: its values are tensors.
    """
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if _holds_tensors(obj.get(k))), None)
        if inner is None:
            break
        obj = inner
    return obj


def read_state_dict(source: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict of a file or (possibly wrapped) state dict.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` (and
    ``model_state_dict``, ``module``) wrappers, whatever metadata sits next to
    them (:func:`_unwrap`); non-tensor entries are dropped.
    """
    name = "state dict"
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        obj = _read_file(name)
    elif isinstance(source, Mapping):
        obj = source
    else:
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: not a checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(
            f"{name}: not a checkpoint: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    _check_values(sd, name)
    return sd


# --------------------------------------------------------------------------- conversion

# --------------------------------------------------------------------------- architecture


_BLOCK_RE = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.")


def _describe(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Any]:
    """Architecture hyper-parameters read off a state dict's shapes (official keys)."""
    d: Dict[str, Any] = {}
    w = shapes.get("patch_embed.proj.weight")
    if w is not None and len(w) == 4:
        d["embed_dim"], d["in_chans"], d["patch_size"] = w[0], w[1], (w[2] if w[2] == w[3] else tuple(w[2:]))
    blocks: Dict[int, set] = {}
    for k in shapes:
        m = _BLOCK_RE.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if blocks:
        n = max(blocks) + 1
        d["depths"] = tuple(len(blocks.get(i, ())) for i in range(n))
        heads = []
        for i in range(n):
            t = shapes.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table")
            s = shapes.get(f"layers.{i}.blocks.0.attn.logit_scale")  # V2: (heads, 1, 1)
            heads.append(t[1] if t is not None and len(t) == 2 else s[0] if s is not None and len(s) >= 1 else None)
        d["num_heads"] = tuple(heads)
        fc1 = shapes.get("layers.0.blocks.0.mlp.fc1.weight")
        if fc1 is not None and len(fc1) == 2:
            d["mlp_hidden"] = fc1[0]
        d["qkv_bias"] = any(f"layers.0.blocks.0.attn.{b}" in shapes for b in ("qkv.bias", "q_bias"))
    t = shapes.get("layers.0.blocks.0.attn.relative_position_bias_table")
    if t is not None and len(t) == 2:
        s = math.isqrt(t[0])
        d["window_size"] = (s + 1) // 2 if s * s == t[0] and s % 2 == 1 else None
    h = shapes.get("head.weight")
    d["num_classes"] = h[0] if h is not None else 0
    return d


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Bicubic resize of a ``((2w-1)^2, heads)`` table to ``(length, heads)`` (official fine-tuning code)."""
    L1, nH = table.shape
    S1, S2 = math.isqrt(L1), math.isqrt(length)
    dtype = table.dtype if table.dtype == torch.float64 else torch.float32
    t = table.to(dtype).permute(1, 0).reshape(1, nH, S1, S1)
    t = F.interpolate(t, size=(S2, S2), mode="bicubic", align_corners=False)
    return t.reshape(nH, S2 * S2).permute(1, 0).contiguous()


# --------------------------------------------------------------------------- loading


def load_pretrained(
    model: torch.nn.Module,
    source: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
    *,
    allow_new_head: bool = False,
) -> LoadResult:
    """Load a Swin checkpoint of any supported layout into ``model``.

    ``source``: a path (``.pth`` / ``.pt`` / ``.bin`` read with
    ``torch.load(weights_only=True)``, with or without a ``model`` /
    ``state_dict`` wrapper; or ``.safetensors``) or a state dict.

    A checkpoint of another architecture (embed_dim, depths, heads, patch
    size, channels, MLP width) raises :class:`CheckpointError` listing every
    mismatch.  A different window size is not a mismatch: the bias tables are
    resized bicubically.  A different ``num_classes`` (or a checkpoint without
    a head) raises with ``strict=True``; with ``strict=False`` the model keeps
    its own head and the result (and a warning) says so.  ``strict=False``
    also tolerates missing and unexpected keys, reporting them.  For a
    ``features_only`` backbone, the checkpoint's head and final norm are
    unused, and output norms ``norm{i}`` it does not have keep their
    initialisation; neither is an error.

    ``allow_new_head=True`` (what ``create_model(..., num_classes=n)`` asks
    for) tolerates a head of another size even with ``strict=True``.

    A :class:`swin_ext.segmentation.UperNet` is loaded by
    :func:`swin_ext.segmentation.load_upernet` (UperNet layouts of swin_ext,
    transformers and mmseg, or a backbone checkpoint; ``allow_new_head``
    there tolerates another class count).

    Everything is validated before anything is copied: a failed load leaves
    the model unchanged.  Returns a :class:`LoadResult`.
    """
    from ..segmentation import UperNet, load_upernet  # the segmentation package builds on this one

    if isinstance(model, UperNet):
        return load_upernet(model, source, strict=strict, allow_new_classes=allow_new_head)
    if not isinstance(model, (SwinTransformer, SwinTransformerV2)):
        raise TypeError(f"model must be a swin_ext.SwinTransformer, SwinTransformerV2 or segmentation.UperNet, got "
                        f"{type(model).__name__}")
    sd = read_state_dict(source)
    version, want_version = checkpoint_version(sd), 2 if isinstance(model, SwinTransformerV2) else 1
    if version != want_version:
        if version == 2:
            raise CheckpointError(
                "this is a Swin V2 checkpoint (cosine attention / continuous position bias keys such as "
                "'logit_scale', 'cpb_mlp'); the model is a Swin V1 swin_ext.SwinTransformer: load it into a "
                "swin_ext.SwinTransformerV2 (e.g. create_model('swinv2_tiny_window8_256'))"
            )
        raise CheckpointError(
            "this is a Swin V1 checkpoint (relative_position_bias_table, no logit_scale / cpb_mlp); the model "
            "is a swin_ext.SwinTransformerV2: load it into a swin_ext.SwinTransformer"
        )
    fmt, converted, unexpected, ignored = convert_state_dict(sd)
    if version == 2 and fmt == "torchvision":
        raise CheckpointError("torchvision's Swin V2 checkpoints (swin_v2_t/s/b) are not supported; the official, "
                              "timm and transformers Swin V2 layouts are")
    result = LoadResult(format=fmt, ignored_keys=ignored)

    target = model.state_dict()
    features_only = getattr(model, "features_only", False)

    # Keys a features_only backbone does not use.
    if features_only:
        for k in [k for k in converted if k.startswith(("head.", "norm.")) or (
                re.match(r"norm\d+\.", k) and k not in target)]:
            result.ignored_keys[converted.pop(k)[0]] = "not used by this features_only backbone"

    # Architecture: compare hyper-parameters first, so the error names them.
    ck = _describe({k: tuple(v.shape) for k, (_, v) in converted.items()})
    mine = _describe({k: tuple(v.shape) for k, v in target.items()})
    problems = [
        f"{name}: checkpoint {ck[name]}, model {mine[name]}"
        for name in ("embed_dim", "in_chans", "patch_size", "depths", "num_heads", "mlp_hidden", "qkv_bias")
        if name in ck and name in mine and ck[name] != mine[name]
    ]
    if "window_size" in ck and ck["window_size"] is None:
        problems.append("relative_position_bias_table: its length is not (2 * window - 1) ** 2")
    arch_problems = list(problems)

    # Head: a different num_classes is the one tolerated mismatch.
    head_keys = [k for k in target if k.startswith("head.")]
    if not features_only and ck["num_classes"] != mine["num_classes"]:
        what = (
            f"num_classes differs: checkpoint {ck['num_classes']}, model {mine['num_classes']}"
            if ck["num_classes"]
            else f"the checkpoint has no classification head, model num_classes {mine['num_classes']}"
        )
        if strict and not allow_new_head and not problems:
            raise CheckpointError(
                f"{what}. Pass strict=False to load everything else and keep the model's own (newly initialised) head."
            )
        result.new_head = what
        for k in [k for k in converted if k.startswith("head.")]:
            result.ignored_keys[converted.pop(k)[0]] = what
        for k in head_keys:
            result.initialized_keys[k] = what

    # Tensor by tensor: resize tables, check shapes, find missing / unexpected.
    values: Dict[str, torch.Tensor] = {}
    for k, (orig, v) in converted.items():
        if k not in target:
            unexpected.append(orig)
            continue
        want = tuple(target[k].shape)
        if k.endswith("relative_position_bias_table") and v.dim() == 2:
            side = math.isqrt(v.shape[0])
            if side * side != v.shape[0] or side % 2 == 0:
                problems.append(
                    f"{k} (from {orig!r}): its length {v.shape[0]} is not (2 * window - 1) ** 2 for any window size"
                )
                continue
            if len(want) == 2 and v.shape[1] == want[1] and tuple(v.shape) != want:
                v = _resize_table(v, want[0])
                result.resized_keys.append(k)
        problem = tensor_problem(k, orig, v, target[k])
        if problem:
            problems.append(problem)
            continue
        values[k] = v

    if problems and arch_problems:  # the tensors' shapes follow from the hyper-parameters: name those alone
        follow = len(problems) - len(arch_problems)
        problems = arch_problems + ([f"(so {follow} tensors have other shapes)"] if follow else [])
    raise_problems(f"the {fmt} checkpoint does not match the model's architecture", problems)

    for k in target:
        if k in values or k in result.initialized_keys:
            continue
        if features_only and re.fullmatch(r"norm\d+\.(weight|bias)", k):
            result.initialized_keys[k] = "output norm of a features_only backbone, not in the checkpoint"
        else:
            result.missing_keys.append(k)
    result.unexpected_keys = sorted(unexpected)

    if strict:
        raise_key_mismatch(f"the {fmt} checkpoint's keys do not match the model (strict=True)", result)

    # All checked: copy.
    with torch.no_grad():
        for k, v in values.items():
            target[k].copy_(v)
    result.loaded = sorted(values)

    if result.new_head is not None:
        warnings.warn(
            f"load_pretrained: the checkpoint's head was not loaded ({result.new_head}); the model keeps its own head",
            stacklevel=2,
        )
    return result


def raise_problems(what: str, problems: List[str]) -> None:
    """A :class:`CheckpointError` ``what:`` followed by the problems (the first 20), one a line; none for none."""
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise CheckpointError(f"{what}:\n  " + "\n  ".join(shown))


def raise_key_mismatch(what: str, result: LoadResult) -> None:
    """A :class:`CheckpointError` ``what:`` naming ``result``'s missing and unexpected keys, if it has any."""
    lines = []
    if result.missing_keys:
        lines.append(f"missing from the checkpoint: {_short(result.missing_keys)}")
    if result.unexpected_keys:
        lines.append(f"not used by the model: {_short(result.unexpected_keys)}")
    if lines:
        raise CheckpointError(f"{what}:\n  " + "\n  ".join(lines))


def tensor_problem(key: str, orig: str, v: torch.Tensor, target: torch.Tensor) -> Optional[str]:
    """Why the checkpoint's tensor ``orig`` (the model's ``key``) cannot be copied into ``target`` -- its
    shape, then its dtype kind, finiteness and range -- as one line naming both keys; ``None`` if it can."""
    if tuple(v.shape) != tuple(target.shape):
        return f"{key} (from {orig!r}): checkpoint shape {tuple(v.shape)}, model {tuple(target.shape)}"
    problem = _value_problem(v, target)
    return f"{key} (from {orig!r}): {problem}" if problem else None


def _value_problem(v: torch.Tensor, target: torch.Tensor) -> Optional[str]:
    """Why ``v`` cannot be copied into ``target`` (dtype kind, finiteness, range), or ``None``.

    The policy: floating-point parameters take floating-point values only,
    every value must be finite, and must stay finite in the model's dtype
    (no silent overflow to inf when a float32 value goes into float16).
    """
    if v.is_complex() or v.is_floating_point() != target.is_floating_point() or v.dtype == torch.bool:
        return f"checkpoint dtype {v.dtype}, model {target.dtype}"
    if not v.is_floating_point() or v.numel() == 0:
        return None
    bad = (~torch.isfinite(v)).sum().item()
    if bad:
        return f"{bad} of its {v.numel()} values are NaN or infinite"
    if torch.finfo(target.dtype).max < torch.finfo(v.dtype).max:
        big = v.abs().max().item()
        if big > torch.finfo(target.dtype).max:
            return f"holds {big:.3g}, beyond the range of the model's {target.dtype}"
    return None


def _short(keys: List[str], n: int = 12) -> str:
    return str(keys[:n]) + (f" ... and {len(keys) - n} more" if len(keys) > n else "")

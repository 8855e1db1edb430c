"""Loading Swin Transformer (V1 and V2) checkpoints of every common layout.

``load_pretrained(model, source, strict=True)`` reads a file (``.pth`` /
``.pt`` / ``.bin`` through ``torch.load(weights_only=True)``, or
``.safetensors``) or takes a state dict, recognises its layout, converts it to
the model's own (the official Microsoft layout) and copies it in:

=============  ===========================================================
layout         recognised by
=============  ===========================================================
official       ``patch_embed.proj.weight``, ``layers.i.downsample`` at the
               end of stage i, ``head.*`` (also the official detection
               backbone: ``norm0..norm3``, optionally under ``backbone.``)
timm           as official, but the merging sits at the start of the next
               stage (``layers.i+1.downsample``) and the head is ``head.fc``
torchvision    ``features.N...``: ``features.0.{0,2}`` patch embedding,
               ``features.{2i+1}.j`` blocks (``mlp.0`` / ``mlp.3``),
               ``features.{2i+2}`` merging
openmmlab      ``patch_embed.projection``, ``stages.i.blocks.j.attn.w_msa``
               (mmseg's / mmdet's / mmpretrain's ``SwinTransformer``; renamed
               by :mod:`swin_ext.segmentation.weights`, merging weights
               permuted from ``nn.Unfold``'s channel order)
transformers   ``[swin.]embeddings.patch_embeddings.projection``; attention
               as ``attention.self.{query,key,value}`` +
               ``attention.output.dense`` +
               ``intermediate.dense`` / ``output.dense`` (the hub's files) or
               as ``attention.{q,k,v,o}_proj`` + ``mlp.fc1/fc2`` (current
               transformers); ``classifier`` head,
               ``hidden_states_norms.stageN`` (``SwinBackbone``)
=============  ===========================================================

A :class:`~swin_ext.segmentation.UperNet` loads through
:func:`swin_ext.segmentation.weights.load_upernet` (UperNet layouts of
swin_ext, transformers and mmseg, or a backbone checkpoint).

Swin V2 checkpoints (``logit_scale`` / ``cpb_mlp`` /
``continuous_position_bias_mlp`` keys) load into a
:class:`~swin_ext.SwinTransformerV2` from the official, timm and transformers
layouts (transformers' ``query.bias`` / ``value.bias`` become ``q_bias`` /
``v_bias``; its key has no bias); a V1 checkpoint into a V2 model, or the
reverse, is an error that says so.  The CPB MLP evaluates any window, so a
V2 checkpoint of another window size needs no resizing.

Buffers (``relative_position_index``, ``attn_mask``, ``relative_coords_table``)
are dropped: the model computes them.  A ``relative_position_bias_table``
of another window size is resized by bicubic interpolation, as the official
fine-tuning code does; one whose length is not ``(2 * window - 1) ** 2`` for
any window is refused.

Nothing in a file is executed (``weights_only=True``), only regular files are
opened (a FIFO or device is refused before ``open``), and a zip archive's
CRC-32 checksums are verified before it is unpickled, so flipped bytes inside
tensor data are an error naming the damaged entry, not a silently changed
model.  Everything is checked before anything is copied -- storage and layout
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
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "CheckpointError",
    "LoadResult",
    "load_pretrained",
    "read_state_dict",
    "convert_state_dict",
    "checkpoint_version",
    "safe_torch_load",
    "check_regular_file",
    "verify_archive",
]

FORMATS = ("official", "timm", "torchvision", "transformers")

# Wrappers a training script puts around the state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")

# Buffers every implementation recomputes; never loaded.
_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask", "relative_coords_table")

# The patch-embedding weight of each layout: finds the layout and the key prefix.
_EMBED_KEYS = (
    ("transformers", "embeddings.patch_embeddings.projection.weight"),
    ("torchvision", "features.0.0.weight"),
    ("official", "patch_embed.proj.weight"),  # or timm: told apart below
)

# Keys of Swin V2 (cosine attention, continuous position bias).
_V2_MARKERS = ("logit_scale", "cpb_mlp", "continuous_position_bias_mlp")


def checkpoint_version(sd: Mapping[str, Any]) -> int:
    """2 for a Swin V2 state dict (cosine attention / continuous position bias keys), else 1."""
    return 2 if any(m in k for k in sd for m in _V2_MARKERS) else 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


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


def verify_archive(path: str) -> None:
    """Check the CRC-32 of every entry of a zip archive (``torch.save``'s format).

    ``torch.load`` itself does not: flipped bytes inside tensor data load
    silently.  Non-zip files (torch's legacy format, anything else) pass
    untouched; ``torch.load`` judges them.  Reads the whole file once.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
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
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged zip archive ({type(e).__name__}: {e})") from None


def _torch_reason(e: BaseException) -> str:
    """torch.load's own reason, without its advice to turn off ``weights_only``."""
    msg = str(e)
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1]
        msg = msg.split("Check the documentation of torch.load", 1)[0]
        msg = msg.split("Please use `torch.serialization.add_safe_globals", 1)[0]
    msg = " ".join(msg.split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def safe_torch_load(path: Union[str, os.PathLike], what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, checked first.

    The path must be a regular file (:func:`check_regular_file`), non-empty,
    and a zip archive must pass its checksums (:func:`verify_archive`).
    Nothing in the file is ever executed: a file that needs Python globals
    other than tensors and plain containers is refused, naming them.  Every
    failure is a :class:`CheckpointError` that names the file and says what
    is wrong (damaged vs. holding foreign objects); the file is not touched.
    """
    path = os.fspath(path)
    st = check_regular_file(path)
    if st.st_size == 0:
        raise CheckpointError(f"{path}: not a readable {what}: the file is empty (0 bytes)")
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
                f"executed when loading a {what}. If you trust the file and need those objects, load it "
                "yourself with torch.load(path, weights_only=False) and pass the state dict."
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


def read_state_dict(source: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict of a file or (possibly wrapped) state dict.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` (and
    ``model_state_dict``, ``module``) wrappers; non-tensor entries are dropped.
    """
    name = "state dict"
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        obj = _read_file(name)
    elif isinstance(source, Mapping):
        obj = source
    else:
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
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


def _find_layout(sd: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """``(format, prefix)`` from the patch-embedding key; prefix like ``"module."``, ``"swin."``."""
    for fmt, suffix in _EMBED_KEYS:
        prefixes = [k[: -len(suffix)] for k in sd if k.endswith(suffix) and (k == suffix or k[-len(suffix) - 1] == ".")]
        if prefixes:
            prefix = min(prefixes, key=len)
            if fmt == "official":
                fmt = _official_or_timm(sd, prefix)
            return fmt, prefix
    raise CheckpointError(
        "not a Swin Transformer checkpoint: no patch-embedding weight found (looked for keys ending in "
        f"{[s for _, s in _EMBED_KEYS]}); its first keys are {list(sd)[:8]}"
    )


def _official_or_timm(sd: Mapping[str, torch.Tensor], prefix: str) -> str:
    """timm puts stage i's merging at ``layers.{i+1}.downsample`` and its head at ``head.fc``."""
    if prefix + "head.fc.weight" in sd:
        return "timm"
    down = [int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.downsample\.", k))]
    if not down or 0 in down:
        return "official"
    return "timm"


def _split_prefix(sd, prefix, fmt):
    """Strip the model prefix; keys outside it are kept (HF heads) or ignored (a detector's neck and heads)."""
    out, ignored = {}, {}
    outer = None
    if fmt == "transformers":
        for model_prefix in ("swin.", "swinv2."):
            if prefix.endswith(model_prefix):
                outer = prefix[: -len(model_prefix)]
    for k, v in sd.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = (k, v)
        elif outer is not None and k.startswith(outer):
            out[k[len(outer):]] = (k, v)
        elif prefix.endswith("backbone."):
            ignored[k] = f"outside the checkpoint's '{prefix}'"
        else:
            out[k] = (k, v)
    return out, ignored


_TV_BLOCK = {"mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}


def _rename_torchvision(k: str) -> Optional[str]:
    if k.startswith("features.0.0."):
        return "patch_embed.proj." + k[len("features.0.0."):]
    if k.startswith("features.0.2."):
        return "patch_embed.norm." + k[len("features.0.2."):]
    m = re.match(r"features\.(\d+)\.(.*)$", k)
    if not m:
        return k  # norm.*, head.*
    n, rest = int(m.group(1)), m.group(2)
    if n == 0:
        return None
    if n % 2 == 1:  # stage (n-1)/2 blocks
        b = re.match(r"(\d+)\.(.*)$", rest)
        if not b:
            return None
        j, tail = b.group(1), b.group(2)
        for a, c in _TV_BLOCK.items():
            if tail.startswith(a):
                tail = c + tail[len(a):]
        return f"layers.{(n - 1) // 2}.blocks.{j}.{tail}"
    return f"layers.{(n - 2) // 2}.downsample.{rest}"


_HF_BLOCK = (
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.self.relative_position_index", "attn.relative_position_index"),
    ("attention.relative_position_bias.relative_position_index", "attn.relative_position_index"),
    ("attention.self.logit_scale", "attn.logit_scale"),
    ("attention.self.continuous_position_bias_mlp.", "attn.cpb_mlp."),
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
)
_HF_QKV = {
    "attention.self.query.": "q", "attention.self.key.": "k", "attention.self.value.": "v",
    "attention.q_proj.": "q", "attention.k_proj.": "k", "attention.v_proj.": "v",
}


def _rename_transformers(k: str) -> Union[None, str, Tuple[str, str, str]]:
    """New key, or ``(block prefix, "q"|"k"|"v", param)`` for a part of qkv."""
    if k.startswith("embeddings.patch_embeddings.projection."):
        return "patch_embed.proj." + k[len("embeddings.patch_embeddings.projection."):]
    if k.startswith("embeddings.norm."):
        return "patch_embed.norm." + k[len("embeddings.norm."):]
    if k.startswith("layernorm."):
        return "norm." + k[len("layernorm."):]
    if k.startswith("classifier."):
        return "head." + k[len("classifier."):]
    m = re.match(r"hidden_states_norms\.stage(\d+)\.(.*)$", k)
    if m:
        return f"norm{int(m.group(1)) - 1}.{m.group(2)}"
    m = re.match(r"encoder\.layers\.(\d+)\.downsample\.(.*)$", k)
    if m:
        return f"layers.{m.group(1)}.downsample.{m.group(2)}"
    m = re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)$", k)
    if not m:
        return None
    block, tail = f"layers.{m.group(1)}.blocks.{m.group(2)}.", m.group(3)
    for a, part in _HF_QKV.items():
        if tail.startswith(a):
            return block, part, tail[len(a):]
    for a, c in _HF_BLOCK:
        if tail.startswith(a):
            return block + c + tail[len(a):]
    return None


def convert_state_dict(
    sd: Mapping[str, torch.Tensor],
) -> Tuple[str, Dict[str, Tuple[str, torch.Tensor]], List[str], Dict[str, str]]:
    """Convert any supported layout to the official one.

    Returns ``(format, converted, unexpected, ignored)``: ``converted`` maps
    each official key to ``(source key, tensor)``; ``unexpected`` lists keys
    that belong to no Swin layout; ``ignored`` the keys dropped on purpose.
    Swin V2 (:func:`checkpoint_version`) converts to the official V2 keys.
    """
    from .segmentation.weights import openmmlab_swin  # OpenMMLab's (mmseg / mmdet) Swin keys, renamed first

    mm = openmmlab_swin(sd)
    if mm is not None:
        return mm.restore(convert_state_dict(mm.state_dict))
    v2 = checkpoint_version(sd) == 2
    fmt, prefix = _find_layout(sd)
    keyed, ignored = _split_prefix(sd, prefix, fmt)
    out: Dict[str, Tuple[str, torch.Tensor]] = {}
    unexpected: List[str] = []
    qkv: Dict[Tuple[str, str], Dict[str, Tuple[str, torch.Tensor]]] = {}

    for k, (orig, v) in keyed.items():
        if fmt == "torchvision":
            new = _rename_torchvision(k)
        elif fmt == "transformers":
            new = _rename_transformers(k)
        elif fmt == "timm":
            new = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
            new = "head." + new[len("head.fc."):] if new.startswith("head.fc.") else new
        else:
            new = k
        if isinstance(new, tuple):
            block, part, param = new
            qkv.setdefault((block, param), {})[part] = (orig, v)
            continue
        if new is None:
            unexpected.append(orig)
        elif new.rsplit(".", 1)[-1] in _BUFFER_SUFFIXES:
            ignored[orig] = "buffer, recomputed by the model"
        elif new in out:
            raise CheckpointError(f"checkpoint keys {out[new][0]!r} and {orig!r} both map to {new!r}")
        else:
            out[new] = (orig, v)

    for (block, param), parts in sorted(qkv.items()):
        if v2 and param == "bias":  # V2: q and v have biases, k none (transformers' key Linear has bias=False)
            for part, name in (("q", "q_bias"), ("v", "v_bias")):
                if part in parts:
                    out[f"{block}attn.{name}"] = parts[part]
            if "k" in parts:
                unexpected.append(parts["k"][0])
            continue
        if set(parts) != {"q", "k", "v"}:
            names = sorted(o for o, _ in parts.values())
            raise CheckpointError(f"incomplete query/key/value {param} in {names}: all three are needed")
        key = f"{block}attn.qkv.{param}"
        out[key] = (parts["q"][0], torch.cat([parts[p][1] for p in ("q", "k", "v")], 0))
    return fmt, out, unexpected, ignored


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


def load_pretrained(model: torch.nn.Module, source: Union[str, os.PathLike, Mapping[str, Any]], strict: bool = True) -> LoadResult:
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

    Everything is validated before anything is copied: a failed load leaves
    the model unchanged.  Returns a :class:`LoadResult`.
    """
    return _load(model, source, strict=strict, allow_new_head=False)


def _load(model, source, strict: bool, allow_new_head: bool) -> LoadResult:
    from .model import SwinTransformer
    from .model_v2 import SwinTransformerV2
    from .segmentation.upernet import UperNet

    if isinstance(model, UperNet):  # backbone and heads: swin_ext.segmentation.weights
        from .segmentation.weights import load_upernet

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

    # Head: a different num_classes is the one tolerated mismatch.
    head_keys = [k for k in target if k.startswith("head.")]
    if not features_only and ck["num_classes"] != mine["num_classes"]:
        what = (
            f"num_classes differs: checkpoint {ck['num_classes']}, model {mine['num_classes']}"
            if ck["num_classes"] else f"the checkpoint has no classification head, model num_classes {mine['num_classes']}"
        )
        if strict and not allow_new_head and not problems:
            raise CheckpointError(
                f"{what}. Pass strict=False to load everything else and keep the model's own "
                "(newly initialised) head."
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
                problems.append(f"{k} (from {orig!r}): its length {v.shape[0]} is not (2 * window - 1) ** 2 "
                                "for any window size")
                continue
            if len(want) == 2 and v.shape[1] == want[1] and tuple(v.shape) != want:
                v = _resize_table(v, want[0])
                result.resized_keys.append(k)
        if tuple(v.shape) != want:
            problems.append(f"{k} (from {orig!r}): checkpoint shape {tuple(v.shape)}, model {want}")
            continue
        problem = _value_problem(v, target[k])
        if problem:
            problems.append(f"{k} (from {orig!r}): {problem}")
            continue
        values[k] = v

    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise CheckpointError(
            f"the {fmt} checkpoint does not match the model's architecture:\n  " + "\n  ".join(shown)
        )

    for k in target:
        if k in values or k in result.initialized_keys:
            continue
        if features_only and re.fullmatch(r"norm\d+\.(weight|bias)", k):
            result.initialized_keys[k] = "output norm of a features_only backbone, not in the checkpoint"
        else:
            result.missing_keys.append(k)
    result.unexpected_keys = sorted(unexpected)

    if strict and (result.missing_keys or result.unexpected_keys):
        lines = []
        if result.missing_keys:
            lines.append(f"missing from the checkpoint: {_short(result.missing_keys)}")
        if result.unexpected_keys:
            lines.append(f"not used by the model: {_short(result.unexpected_keys)}")
        raise CheckpointError(
            f"the {fmt} checkpoint's keys do not match the model (strict=True):\n  " + "\n  ".join(lines)
        )

    # All checked: copy.
    with torch.no_grad():
        for k, v in values.items():
            target[k].copy_(v)
    result.loaded = sorted(values)

    if result.new_head is not None:
        warnings.warn(f"load_pretrained: the checkpoint's head was not loaded ({result.new_head}); "
                      "the model keeps its own head", stacklevel=3)
    return result


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

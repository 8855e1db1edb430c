"""Checkpoint key layouts of Swin (V1 and V2), in both directions, in one place.

INTO the official Microsoft layout (the model's own ``state_dict`` keys),
:func:`convert_state_dict` recognises a layout by its patch-embedding key:

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
transformers   ``[swin.]embeddings.patch_embeddings.projection``; attention
               as ``attention.self.{query,key,value}`` +
               ``attention.output.dense`` +
               ``intermediate.dense`` / ``output.dense`` (the hub's files) or
               as ``attention.{q,k,v,o}_proj`` + ``mlp.fc1/fc2`` (current
               transformers); ``classifier`` head,
               ``hidden_states_norms.stageN`` (``SwinBackbone``)
openmmlab      ``patch_embed.projection``, ``stages.i.blocks.j.attn.w_msa``,
               ``ffn.layers.0.0`` / ``ffn.layers.1`` (mmseg's, mmdet's and
               mmpretrain's ``SwinTransformer``, optionally under
               ``backbone.``); its patch merging gathers the 2x2
               neighbourhood with ``nn.Unfold`` (channel-major), so the
               merging's norm and reduction are permuted to the official
               quadrant order (the inverse of mmseg's ``swin2mmseg.py``)
=============  ===========================================================

Swin V2 keys (``logit_scale`` / ``cpb_mlp`` / ``continuous_position_bias_mlp``,
:func:`checkpoint_version`) convert to the official V2 keys (transformers'
``query.bias`` / ``value.bias`` become ``q_bias`` / ``v_bias``).

OUT of the official layout, :func:`to_timm`, :func:`to_torchvision` and
:func:`to_openmmlab` give the keys of timm's, torchvision's and OpenMMLab's
Swin V1 (the benchmarks load the same weights into every implementation with
them; :func:`swin_ext.segmentation.to_mmseg_state_dict` writes mmseg's).

Pure key and tensor bookkeeping: nothing here reads files or touches a model
(:mod:`.checkpoint` does).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..layers.pos_bias import relative_position_index

__all__ = ["FORMATS", "BUFFER_SUFFIXES", "CheckpointError", "checkpoint_version", "convert_state_dict", "to_timm",
           "to_torchvision", "to_openmmlab", "v2_checkpoint_windows", "check_index_buffer"]

FORMATS = ("official", "timm", "torchvision", "transformers", "openmmlab")

# Buffers every implementation recomputes; never loaded.
BUFFER_SUFFIXES = ("relative_position_index", "attn_mask", "relative_coords_table")

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


def v2_checkpoint_windows(sd: Mapping[str, Any]) -> Optional[List[int]]:
    """The window of each stage of a Swin V2 state dict, read off its coordinate tables
    (``relative_coords_table``, ``(1, 2w - 1, 2w - 1, 2)``: the official layout stores them; timm's and
    transformers' do not), or ``None`` when not every stage has one."""
    found: Dict[int, int] = {}
    for k, v in sd.items():
        m = re.search(r"layers\.(\d+)\.blocks\.0\.(?:attn|attention\.self)\.relative_coords_table$", k)
        if m and isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[1] == v.shape[2] and v.shape[1] % 2:
            found[int(m.group(1))] = (v.shape[1] + 1) // 2
    if not found or set(found) != set(range(len(found))):
        return None
    return [found[i] for i in range(len(found))]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""



# --------------------------------------------------------------------------- into the official layout


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


# OpenMMLab name -> official name, of a whole key segment sequence (``(^|.)name.``)
_MM_RENAMES = (("stages", "layers"), ("attn.w_msa", "attn"), ("ffn.layers.0.0", "mlp.fc1"), ("ffn.layers.1", "mlp.fc2"),
               ("patch_embed.projection", "patch_embed.proj"))
# The quadrant permutation between nn.Unfold's 2x2 order and the official (x0, x1, x2, x3): its own inverse.
_UNFOLD_ORDER = [0, 2, 1, 3]
_MERGE_NORM = re.compile(r"downsample\.norm\.(weight|bias)$")


def _is_openmmlab(sd: Mapping[str, Any]) -> bool:
    return any(k.endswith("patch_embed.projection.weight") for k in sd) and any(".w_msa." in k for k in sd)


def _rename_segments(k: str, renames: Sequence[Tuple[str, str]]) -> str:
    for a, b in renames:
        k = re.sub(r"(^|\.)" + re.escape(a) + r"\.", r"\g<1>" + b + ".", k, count=1)
    return k


def _unfold_to_official(k: str, v: torch.Tensor) -> torch.Tensor:
    """A merging ``reduction.weight (2C, 4C)`` / ``norm.{weight,bias} (4C,)`` from nn.Unfold's channel-major
    order ``c * 4 + q`` to the official quadrant-major ``q * C + c``; other tensors as they are."""
    if k.endswith("downsample.reduction.weight") and v.dim() == 2 and v.shape[1] % 4 == 0:
        o, c4 = v.shape
        return v.reshape(o, c4 // 4, 4)[:, :, _UNFOLD_ORDER].transpose(1, 2).reshape(o, c4)
    if _MERGE_NORM.search(k) and v.dim() == 1 and v.shape[0] % 4 == 0:
        return v.reshape(v.shape[0] // 4, 4)[:, _UNFOLD_ORDER].transpose(0, 1).reshape(-1)
    return v


def _official_to_unfold(k: str, v: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_unfold_to_official` (mmseg's ``correct_unfold_*_order``)."""
    if k.endswith("downsample.reduction.weight") and v.dim() == 2 and v.shape[1] % 4 == 0:
        o, c4 = v.shape
        return v.reshape(o, 4, c4 // 4)[:, _UNFOLD_ORDER, :].transpose(1, 2).reshape(o, c4)
    if _MERGE_NORM.search(k) and v.dim() == 1 and v.shape[0] % 4 == 0:
        return v.reshape(4, v.shape[0] // 4)[_UNFOLD_ORDER, :].transpose(0, 1).reshape(-1)
    return v


def _convert_openmmlab(sd: Mapping[str, torch.Tensor]):
    """:func:`convert_state_dict` of an OpenMMLab Swin: renamed to the official keys, converted, and reported
    under the checkpoint's own key names."""
    renamed: Dict[str, torch.Tensor] = {}
    names: Dict[str, str] = {}  # official key -> the checkpoint's
    for k, v in sd.items():
        new = _rename_segments(k, _MM_RENAMES)
        if new in renamed:
            raise CheckpointError(f"checkpoint keys {names[new]!r} and {k!r} both map to {new!r}")
        renamed[new], names[new] = _unfold_to_official(new, v), k
    try:
        _, out, unexpected, ignored = convert_state_dict(renamed)
    except CheckpointError as e:  # name the checkpoint's own key
        key, sep, rest = str(e).partition(": ")
        if sep and key in names:
            raise CheckpointError(f"{names[key]}: {rest}") from None
        raise
    return ("openmmlab", {k: (names.get(o, o), v) for k, (o, v) in out.items()},
            [names.get(k, k) for k in unexpected], {names.get(k, k): why for k, why in ignored.items()})


def check_index_buffer(key: str, v: torch.Tensor, window: Optional[Sequence[int]] = None) -> None:
    """Refuse a checkpoint's ``relative_position_index`` that is not the standard one.

    Every layout stores the same index (the official recipe,
    :func:`swin_ext.layers.pos_bias.relative_position_index`), as ``(N, N)``
    or flattened ``(N * N,)``; the models recompute it rather than load it.  A
    checkpoint whose index differs was trained with another bias lookup, so
    loading its tables under the standard index would give a different model:
    that is a :class:`CheckpointError`, not a silent drop.  ``window``: the
    window per axis; without it a square 2-D window is inferred from ``N``.
    """
    n2 = v.numel()
    n = int(round(n2 ** 0.5))
    if v.is_floating_point() or v.is_complex() or n * n != n2 or v.dim() not in (1, 2):
        raise CheckpointError(f"{key}: a relative_position_index must be an integer (N, N) or (N * N,) tensor, "
                              f"got {v.dtype} of shape {tuple(v.shape)}")
    if window is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise CheckpointError(f"{key}: {n} tokens per window is not a square 2-D window")
        window = (side, side)
    want = relative_position_index(tuple(window))
    if want.numel() != n2 or not torch.equal(v.detach().cpu().to(torch.int64).reshape(-1), want.reshape(-1)):
        raise CheckpointError(
            f"{key}: the checkpoint's relative_position_index is not the standard Swin index for window "
            f"{tuple(window)}; its bias tables were trained under another lookup, which these models cannot "
            "reproduce (loading them under the standard index would give a different model)"
        )


def convert_state_dict(
    sd: Mapping[str, torch.Tensor],
) -> Tuple[str, Dict[str, Tuple[str, torch.Tensor]], List[str], Dict[str, str]]:
    """Convert any supported layout to the official one.

    Returns ``(format, converted, unexpected, ignored)``: ``converted`` maps
    each official key to ``(source key, tensor)``; ``unexpected`` lists keys
    that belong to no Swin layout; ``ignored`` the keys dropped on purpose.
    Swin V2 (:func:`checkpoint_version`) converts to the official V2 keys.
    """
    if _is_openmmlab(sd):
        return _convert_openmmlab(sd)
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
        elif new.rsplit(".", 1)[-1] in BUFFER_SUFFIXES:
            if new.endswith("relative_position_index"):
                check_index_buffer(orig, v)
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


# --------------------------------------------------------------------------- out of the official layout


def to_timm(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official (swin_ext) V1 keys -> timm's ``SwinTransformer``: patch merging moves to the start
    of the next stage (``layers.{i+1}.downsample``), ``head`` -> ``head.fc``."""
    out = {}
    for k, v in sd.items():
        k2 = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        if k2.startswith("head."):
            k2 = "head.fc." + k2[len("head."):]
        out[k2] = v
    return out


def to_torchvision(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official (swin_ext) V1 keys -> torchvision's ``swin_t``: ``features.0`` = (conv, permute,
    norm), ``features.2i+1`` = stage i's blocks, ``features.2i+2`` = stage i's merging,
    ``mlp.fc1/fc2`` -> ``mlp.0/mlp.3``."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^patch_embed\.(proj|norm)\.(.*)$", k)
        if m:
            out[f"features.0.{0 if m.group(1) == 'proj' else 2}.{m.group(2)}"] = v
            continue
        m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.(.*)$", k)
        if m:
            rest = m.group(3).replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
            out[f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}.{rest}"] = v
            continue
        m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", k)
        if m:
            out[f"features.{2 * int(m.group(1)) + 2}.{m.group(2)}"] = v
            continue
        out[k] = v  # norm.*, head.*
    return out


def to_openmmlab(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official (swin_ext) V1 keys -> OpenMMLab's ``SwinTransformer`` (mmseg / mmdet / mmpretrain):
    ``stages.i``, ``attn.w_msa``, ``ffn.layers.0.0`` / ``ffn.layers.1``, ``patch_embed.projection``, the
    merging's norm and reduction in ``nn.Unfold``'s channel order.  Any key prefix (``backbone.``) is kept."""
    back = [(b, a) for a, b in _MM_RENAMES]
    out = {}
    for k, v in sd.items():
        k2 = _rename_segments(k, back)
        out[k2] = _official_to_unfold(k2, v)
    return out

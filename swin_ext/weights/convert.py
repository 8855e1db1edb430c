"""Drop-in conversion of live Swin models from timm, torchvision and transformers.

``swin_ext.from_timm(m)``, ``from_torchvision(m)`` and ``from_transformers(m)``
read the source's configuration (embed dim, depths, heads, windows per
stage, classes, patch size, MLP ratio, qkv bias, each LayerNorm's eps,
input channels, image size) and weights, and return a swin_ext
:class:`~swin_ext.SwinTransformer` that computes the same outputs at the
source's image size (its ``state_dict`` through the same layout conversion
as :func:`~swin_ext.load_pretrained`).  timm's ``SwinTransformerV2`` and
transformers' ``Swinv2ForImageClassification`` / ``Swinv2Model`` become a
:class:`~swin_ext.SwinTransformerV2` (with their pretrained window sizes).
The copy has the source's mode (train / eval), dtype and device; dropout and
drop-path rates are not copied (the copy has none).  transformers'
``UperNetForSemanticSegmentation`` over a ``SwinBackbone`` / ``Swinv2Backbone``
becomes a :class:`swin_ext.segmentation.UperNet` (its backbone through
:func:`transformers_backbone`).  A source the copy
cannot reproduce -- another model family, torchvision's Swin V2, an option
swin_ext does not implement -- raises :class:`ConversionError` naming it;
docs/converters.md lists every option of the three libraries' constructors.

    model = swin_ext.from_timm(timm.create_model("swin_tiny_patch4_window7_224", pretrained=True))
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch.nn as nn

from ..models import SwinTransformer, SwinTransformerV2
from .checkpoint import load_pretrained
from .layouts import convert_state_dict

__all__ = ["from_timm", "from_torchvision", "from_transformers", "transformers_backbone", "ConversionError",
           "copy_norm_eps"]


class ConversionError(ValueError):
    """The source model cannot be converted (the message says why)."""


def _build(cfg: Dict[str, Any], source: nn.Module, state_dict, what: str, cls: type = SwinTransformer,
           windows: Optional[Sequence[Sequence[Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]]]] = None,
           shift_before_pad: bool = False, hint: str = ""):
    """The swin_ext copy of ``source``: built from ``cfg``, each LayerNorm with the eps of the source norm it
    loads, in the source's dtype and device and mode, ``state_dict`` loaded strictly.

    ``windows``: per stage, per block, the source's ``(window (h, w), shift (h, w), map (h, w))`` at its
    image size; a block whose window or shift the copy does not reproduce is refused
    (:func:`_check_windows`; ``hint`` ends that message)."""
    try:
        model = cls(drop_path_rate=0.0, **cfg)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{what}: its configuration {cfg} is not a swin_ext {cls.__name__}: {e}") from e
    if windows is not None:
        _check_windows(model, windows, what, shift_before_pad, hint)
    copy_norm_eps(source, model, what)
    # to the source's dtype first: float64 weights loaded into float32 parameters would be rounded
    p = next(source.parameters(), None)
    if p is not None:
        model = model.to(device=p.device, dtype=p.dtype)
    load_pretrained(model, state_dict, strict=True)
    return model.train(source.training)


def _is_layer_norm(m: nn.Module) -> bool:
    """torch's LayerNorm over the last dim with weight and bias (timm's subclass computes the same)."""
    plain = type(m) is nn.LayerNorm or (type(m).__name__ == "LayerNorm" and type(m).__module__.startswith("timm."))
    return plain and len(m.normalized_shape) == 1 and m.weight is not None and m.bias is not None


def copy_norm_eps(source: nn.Module, model: nn.Module, what: str) -> None:
    """Give every LayerNorm of ``model`` the eps of the ``source`` norm whose weight it loads.

    The sources mix eps (transformers keeps its patch-embedding and merging
    norms at torch's 1e-5 whatever ``layer_norm_eps`` says); a source norm
    that is not a LayerNorm with weight and bias is refused.  Norms with no
    counterpart in ``source`` (a new backbone's ``norm{i}``) are left as they are.
    """
    _, converted, _, _ = convert_state_dict(source.state_dict())
    for name, m in model.named_modules():
        if not isinstance(m, nn.LayerNorm) or f"{name}.weight" not in converted:
            continue
        src_name = converted[f"{name}.weight"][0].rsplit(".", 1)[0]
        src = source.get_submodule(src_name)
        if not _is_layer_norm(src):
            raise ConversionError(f"{what}: its norm {src_name} is a {type(src).__name__} (norm_layer): only "
                                  "torch's LayerNorm with weight and bias over the channels is supported")
        m.eps = float(src.eps)


def _window_and_shift(block: nn.Module, H: int, W: int) -> Tuple[int, Tuple[int, int]]:
    """The window and shift a swin_ext block uses on an ``H x W`` map."""
    if hasattr(block, "window_and_shift"):  # V2: the window follows the map
        return block.window_and_shift(H, W)
    return block.window_size, block.effective_shift(H, W)


def _check_windows(model: nn.Module, windows, what: str, shift_before_pad: bool, hint: str = "") -> None:
    """Refuse a source block whose window and shift the swin_ext copy does not reproduce.

    ``windows``: per stage, per block, the source's ``(window (h, w), shift (h, w),
    map (h, w))`` at its image size.  swin_ext's windows are square; a map no
    larger than the window along an axis is not shifted along it (padded,
    or, V2, the window shrunk to the map).  ``shift_before_pad`` (timm): the
    source rolls the map before padding it, which is swin_ext's order (pad,
    then shift: the official detection code's and torchvision's) only where
    the window divides every shifted axis.
    """
    for i, (layer, stage) in enumerate(zip(model.layers, windows)):
        for j, (blk, (win, shift, res)) in enumerate(zip(layer.blocks, stage)):
            where = f"stage {i} block {j} ({res[0]} x {res[1]} map at the source's image size)"
            if win[0] != win[1]:
                raise ConversionError(f"{what}: {where}: the source's window {tuple(win)} is not square (it shrinks "
                                      "the window to the map per axis): swin_ext's windows are square")
            ours_ws, ours_shift = _window_and_shift(blk, *res)
            if (ours_ws, tuple(ours_shift)) != (win[0], tuple(shift)):
                raise ConversionError(
                    f"{what}: {where}: the source uses window {win[0]} shifted by {tuple(shift)}, swin_ext would use "
                    f"window {ours_ws} shifted by {tuple(ours_shift)} (swin_ext shifts only along an axis longer than "
                    "the window)" + (f": {hint}" if hint else ""))
            if shift_before_pad and any(s and r % win[0] for s, r in zip(shift, res)):
                raise ConversionError(
                    f"{what}: {where}: timm shifts the map before padding it to a multiple of the window {win[0]}; "
                    "swin_ext pads first (the official detection order), a different model where the window does "
                    "not divide a shifted axis: not supported")


def _first(seq, what):
    try:
        return seq[0]
    except (IndexError, TypeError, KeyError):
        raise ConversionError(f"{what}: no blocks found") from None


def _pair(v) -> Tuple[int, int]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _square(v, what: str, name: str) -> int:
    v = _pair(v)
    if len(set(v)) != 1:
        raise ConversionError(f"{what}: non-square {name} {v} are not supported")
    return int(v[0])


def _check_exact_gelu(act: nn.Module, what: str, option: str) -> None:
    """swin_ext's MLP is the exact (erf) GELU of ``nn.GELU()``."""
    name = type(act).__name__
    exact = (isinstance(act, nn.GELU) and act.approximate == "none") or (
        name == "GELU" and type(act).__module__.startswith("timm.") and getattr(act, "approximate", "none") == "none")
    if not exact:
        desc = f"{name}(approximate={act.approximate!r})" if hasattr(act, "approximate") else name
        raise ConversionError(f"{what}: {option} gives the MLP {desc}: only the exact GELU is supported")


def _check_stage_widths(dims: Sequence[int], mlp_hidden: Sequence[int], attn_dims: Sequence[int], mlp_ratio: float,
                        what: str) -> None:
    """swin_ext's stage widths: ``dim * 2**i``, MLP ``int(dim * mlp_ratio)``, attention ``dim`` (head_dim * heads)."""
    for i, (d, h, a) in enumerate(zip(dims, mlp_hidden, attn_dims)):
        if d != dims[0] * 2**i:
            raise ConversionError(f"{what}: stage widths {list(dims)} (embed_dim per stage) are not supported: "
                                  "swin_ext doubles the width at every stage")
        if h != int(d * mlp_ratio):
            raise ConversionError(f"{what}: MLP widths {list(mlp_hidden)} for stage widths {list(dims)} (mlp_ratio "
                                  f"per stage) are not supported: swin_ext uses one mlp_ratio ({mlp_ratio})")
        if a != d:
            raise ConversionError(f"{what}: stage {i}'s attention width {a} (head_dim * num_heads) differs from its "
                                  f"width {d} (head_dim set): not supported, swin_ext's head_dim is dim // num_heads")


# ----------------------------------------------------------------------------- timm


def _timm_common(model: nn.Module, what: str) -> Tuple[Dict[str, Any], list]:
    """The configuration shared by timm's V1 and V2 Swin, and the blocks' windows; refusals naming the option."""
    if getattr(model, "global_pool", "avg") != "avg":
        raise ConversionError(f"{what}: global_pool={model.global_pool!r} is not supported (only 'avg')")
    pe = model.patch_embed
    if type(pe).__name__ != "PatchEmbed" or not type(pe).__module__.startswith("timm.layers"):
        raise ConversionError(f"{what}: embed_layer={type(pe).__name__} is not supported (only timm's PatchEmbed)")
    proj = pe.proj
    if not getattr(pe, "strict_img_size", True) or any(getattr(b, "dynamic_mask", False) for layer in model.layers
                                                        for b in layer.blocks):
        raise ConversionError(
            f"{what}: dynamic_img_size=True / strict_img_size=False is not supported: timm runs other input sizes "
            "with its img_size windows and shifts the map before padding it, swin_ext pads first -- the copy would "
            "match only at img_size (convert the same weights in a model with strict_img_size=True)")
    if proj.kernel_size != proj.stride or getattr(pe, "dynamic_img_pad", False):
        raise ConversionError(f"{what}: a patch embedding with kernel {proj.kernel_size} and stride {proj.stride} "
                              "is not supported")
    layers = list(model.layers)
    blocks = [_first(list(layer.blocks), what) for layer in layers]
    for b in blocks:
        _check_exact_gelu(b.mlp.act, what, "act_layer")
    dims = [b.norm1.normalized_shape[0] for b in blocks]
    mlp_ratio = getattr(blocks[0], "mlp_ratio", blocks[0].mlp.fc1.out_features / dims[0])
    _check_stage_widths(dims, [b.mlp.fc1.out_features for b in blocks], [b.attn.qkv.out_features // 3 for b in blocks],
                        mlp_ratio, what)
    windows = [[(_pair(b.window_size), _pair(b.shift_size), _pair(b.input_resolution)) for b in layer.blocks]
               for layer in layers]
    head_fc = getattr(getattr(model, "head", None), "fc", None)
    cfg = dict(
        img_size=tuple(getattr(pe, "img_size", None) or (224, 224)),
        patch_size=_square(proj.kernel_size, what, "patches"),
        in_chans=proj.in_channels,
        num_classes=head_fc.out_features if isinstance(head_fc, nn.Linear) else 0,
        embed_dim=dims[0],
        depths=[len(layer.blocks) for layer in layers],
        num_heads=[b.attn.num_heads for b in blocks],
        window_size=[stage[0][0][0] for stage in windows],  # square: _check_windows
        mlp_ratio=mlp_ratio,
    )
    return cfg, windows


def _timm_always_partition(model: nn.Module) -> bool:
    return any(getattr(b, "always_partition", False) for layer in model.layers for b in layer.blocks)


def _timm_hint(model: nn.Module) -> str:
    """V2: swin_ext's Swin V2 shrinks the window to a map no larger than it and does not shift there."""
    return "always_partition=True is not supported for Swin V2" if _timm_always_partition(model) else ""


def _from_timm_v2(model: nn.Module, what: str) -> SwinTransformerV2:
    """timm's ``SwinTransformerV2`` (``swinv2_*``, not the ``swinv2_cr_*`` family)."""
    cfg, windows = _timm_common(model, what)
    blocks = [_first(list(layer.blocks), what) for layer in model.layers]
    cfg.update(
        pretrained_window_sizes=[_square(b.attn.pretrained_window_size, what, "pretrained windows") for b in blocks],
        qkv_bias=blocks[0].attn.q_bias is not None,
    )
    return _build(cfg, model, model.state_dict(), what, SwinTransformerV2, windows, True, _timm_hint(model))


def from_timm(model: nn.Module):
    """A swin_ext copy of a timm ``SwinTransformer`` (``swin_*_patch4_window*``) or
    ``SwinTransformerV2`` (``swinv2_*``; a :class:`~swin_ext.SwinTransformerV2`).

    timm's per-stage windows (its shrink of a window to a smaller stage map)
    become the copy's, and its ``always_partition`` (V1) the copy's (timm
    shifts before padding: reproduced where no shifted map needs padding);
    what the copy cannot reproduce raises
    :class:`ConversionError` naming the option (docs/converters.md).
    """
    what = f"from_timm({type(model).__name__})"
    cls = type(model)
    if cls.__name__ == "SwinTransformerV2" and cls.__module__ == "timm.models.swin_transformer_v2":
        return _from_timm_v2(model, what)
    if cls.__module__.startswith("timm.models.swin_transformer_v2"):
        raise ConversionError(f"{what}: timm's {cls.__module__}.{cls.__name__} (the swinv2_cr_* family) is not "
                              "supported; timm's SwinTransformerV2 (swinv2_*) is")
    if cls.__name__ != "SwinTransformer" or not cls.__module__.startswith("timm.models.swin_transformer"):
        raise ConversionError(
            f"{what}: expects timm.models.swin_transformer.SwinTransformer, got {cls.__module__}.{cls.__name__}"
        )
    cfg, windows = _timm_common(model, what)
    cfg["qkv_bias"] = _first(list(model.layers[0].blocks), what).attn.qkv.bias is not None
    cfg["always_partition"] = _timm_always_partition(model)
    return _build(cfg, model, model.state_dict(), what, SwinTransformer, windows, True)


# ----------------------------------------------------------------------------- torchvision


def from_torchvision(model: nn.Module) -> SwinTransformer:
    """A swin_ext copy of a torchvision ``SwinTransformer`` (``swin_t`` / ``swin_s`` / ``swin_b``).

    torchvision pads a map to the window and shifts only along an axis longer
    than it, as swin_ext V1 does: the copy equals the source at every input size.
    """
    what = f"from_torchvision({type(model).__name__})"
    cls = type(model)
    if cls.__name__ != "SwinTransformer" or not cls.__module__.startswith("torchvision.models.swin_transformer"):
        raise ConversionError(
            f"{what}: expects torchvision.models.swin_transformer.SwinTransformer, got {cls.__module__}.{cls.__name__}"
        )
    from torchvision.models import swin_transformer as tv

    stages = [
        m for m in model.features[1:] if isinstance(m, nn.Sequential) and len(m) and not isinstance(m[0], nn.Conv2d)
    ]
    blocks = [list(s) for s in stages]
    merges = [m for m in model.features[1:] if not (isinstance(m, nn.Sequential) and len(m))]
    if any(isinstance(b, tv.SwinTransformerBlockV2) for s in blocks for b in s) or any(
        isinstance(m, tv.PatchMergingV2) for m in merges
    ):
        raise ConversionError(
            f"{what}: torchvision's Swin V2 models (swin_v2_*; block=SwinTransformerBlockV2, "
            "downsample_layer=PatchMergingV2) are not supported (timm's and transformers' Swin V2 "
            "are: swin_ext.from_timm / from_transformers)"
        )
    for b in (b for s in blocks for b in s):
        if type(b) is not tv.SwinTransformerBlock:
            raise ConversionError(f"{what}: block={type(b).__name__} is not supported (only SwinTransformerBlock)")
    for m in merges:
        if type(m) is not tv.PatchMerging:
            raise ConversionError(f"{what}: downsample_layer={type(m).__name__} is not supported (only PatchMerging)")
    conv = model.features[0][0]
    if conv.kernel_size != conv.stride:
        raise ConversionError(
            f"{what}: a patch embedding with kernel {conv.kernel_size} and stride {conv.stride} is not supported"
        )
    b0 = [_first(s, what) for s in blocks]
    for b in b0:
        _check_exact_gelu(b.mlp[1], what, "the MLP")
    dims = [b.norm1.normalized_shape[0] for b in b0]
    mlp_ratio = b0[0].mlp[0].out_features / dims[0]
    _check_stage_widths(
        dims, [b.mlp[0].out_features for b in b0], [b.attn.qkv.out_features // 3 for b in b0], mlp_ratio, what
    )
    cfg = dict(
        patch_size=_square(conv.kernel_size, what, "patches"),
        in_chans=conv.in_channels,
        num_classes=model.head.out_features,
        embed_dim=dims[0],
        depths=[len(s) for s in blocks],
        num_heads=[b.attn.num_heads for b in b0],
        window_size=_square(b0[0].attn.window_size, what, "windows"),
        mlp_ratio=mlp_ratio,
        qkv_bias=b0[0].attn.qkv.bias is not None,
    )
    return _build(cfg, model, model.state_dict(), what)


# ----------------------------------------------------------------------------- transformers


def _hf_windows(c, model: nn.Module, v2: bool, what: str, always_partition: bool = False):
    """transformers' window and shift per block at ``config.image_size``.

    Swin (V1) decides at run time: a stage whose shorter side is no longer
    than the window uses a window of that side and no shift (and fails for a
    side shorter than the window: its position bias is the full window's);
    ``always_partition`` (how ``SwinBackbone`` runs its encoder): every map
    keeps the window and the shift, padded to the window.  Swin V2 decides at
    construction, per stage, from the H side.
    """
    if v2:
        enc = getattr(model, "swinv2", model).encoder
        return [
            [((b.window_size,) * 2, (b.shift_size,) * 2, _pair(b.input_resolution)) for b in layer.blocks]
            for layer in enc.layers
        ]
    patch = _pair(c.patch_size)
    res = tuple(-(-s // p) for s, p in zip(_pair(c.image_size), patch))
    ws = int(c.window_size)
    out = []
    for i, depth in enumerate(c.depths):
        if always_partition:
            shift = ws // 2
        elif min(res) < ws:
            raise ConversionError(
                f"{what}: stage {i}'s {res[0]} x {res[1]} map at image_size {c.image_size} is smaller than window_size "
                f"{ws}: transformers' Swin fails to run there (it shrinks the window but not its position bias); "
                "nothing to reproduce"
            )
        else:
            shift = 0 if min(res) <= ws else ws // 2
        out.append([((ws, ws), (shift * (j % 2),) * 2, res) for j in range(depth)])
        res = tuple(-(-r // 2) for r in res)
    return out


def _transformers_config(model: nn.Module, v2: bool, what: str, num_classes: int = 0,
                         always_partition: bool = False):
    """``(constructor keywords, per-block windows)`` of the swin_ext copy of a transformers Swin / Swin V2
    model (its ``config``); refusals naming the option."""
    c = model.config
    if getattr(c, "use_absolute_embeddings", False):
        raise ConversionError(f"{what}: absolute position embeddings (use_absolute_embeddings=True) are not supported")
    if c.hidden_act != "gelu":
        raise ConversionError(
            f"{what}: hidden_act={c.hidden_act!r} is not supported: swin_ext's MLP is the exact "
            "GELU (hidden_act='gelu')"
        )
    windows = _hf_windows(c, model, v2, what, always_partition)
    cfg = dict(
        img_size=_pair(c.image_size),
        patch_size=_square(c.patch_size, what, "patches"),
        in_chans=c.num_channels,
        num_classes=num_classes,
        embed_dim=c.embed_dim,
        depths=list(c.depths),
        num_heads=list(c.num_heads),
        window_size=[stage[0][0][0] for stage in windows],
        mlp_ratio=c.mlp_ratio,
        qkv_bias=c.qkv_bias,
    )
    if always_partition:
        cfg["always_partition"] = True
    if v2:
        # transformers reads pretrained_window_sizes[i] for stage i: the config's default has 4 entries
        pws = list(c.pretrained_window_sizes or [0] * len(c.depths))
        if len(pws) < len(c.depths):
            raise ConversionError(
                f"{what}: pretrained_window_sizes {pws} has fewer entries than the {len(c.depths)} stages"
            )
        cfg["pretrained_window_sizes"] = pws[: len(c.depths)]
    return cfg, windows


def from_transformers(model: nn.Module):
    """A swin_ext copy of a transformers ``SwinForImageClassification`` or ``SwinModel``, of a
    ``Swinv2ForImageClassification`` or ``Swinv2Model`` (a :class:`~swin_ext.SwinTransformerV2`), or of an
    ``UperNetForSemanticSegmentation`` over a ``SwinBackbone`` / ``Swinv2Backbone`` (a
    :class:`swin_ext.segmentation.UperNet`: :func:`swin_ext.segmentation.from_transformers_upernet`).

    The copy equals the source at ``config.image_size``; what it cannot
    reproduce raises :class:`ConversionError` naming the option (docs/converters.md).
    """
    what = f"from_transformers({type(model).__name__})"
    cfg_src = getattr(model, "config", None)
    mtype = getattr(cfg_src, "model_type", None)
    if mtype == "upernet":
        from ..segmentation import from_transformers_upernet  # the segmentation package builds on this one

        return from_transformers_upernet(model)
    if mtype not in ("swin", "swinv2"):
        raise ConversionError(
            f"{what}: expects a transformers Swin or Swin V2 model (config.model_type 'swin' "
            f"or 'swinv2') or a UperNet over one, got {mtype!r}"
        )
    v2 = mtype == "swinv2"
    name = type(model).__name__
    supported = ("Swinv2ForImageClassification", "Swinv2Model") if v2 else ("SwinForImageClassification", "SwinModel")
    if name not in supported:
        raise ConversionError(f"{what}: supported are {' and '.join(supported)}, got {name}")
    num_classes = getattr(model, "classifier", None)
    num_classes = num_classes.out_features if isinstance(num_classes, nn.Linear) else 0
    cfg, windows = _transformers_config(model, v2, what, num_classes)
    return _build(cfg, model, model.state_dict(), what, SwinTransformerV2 if v2 else SwinTransformer, windows)


def transformers_backbone(backbone: nn.Module, what: str = "") -> Union[SwinTransformer, SwinTransformerV2]:
    """A ``features_only`` swin_ext copy of a transformers ``SwinBackbone`` or ``Swinv2Backbone``.

    ``out_indices`` are its ``out_features`` (``stageN`` is stage ``N - 1``).
    ``SwinBackbone`` runs its encoder with ``always_partition=True`` (every
    map padded to the window and shifted), and so does the copy; its
    ``hidden_states_norms`` become the copy's ``norm{i}``.
    ``Swinv2Backbone`` fixes its windows per stage at ``config.image_size``
    (the copy's ``window_size`` per stage) and has no output norms: the
    copy's keep their initialisation
    (:func:`swin_ext.segmentation.without_output_norms` removes them).
    ``what`` names the source in errors.
    """
    name = type(backbone).__name__
    what = what or f"transformers_backbone({name})"
    if name not in ("SwinBackbone", "Swinv2Backbone"):
        raise ConversionError(f"{what}: expects a transformers SwinBackbone or Swinv2Backbone, got {name}")
    stages = list(backbone.out_features)
    if not stages or any(not re.fullmatch(r"stage\d+", s) for s in stages):
        raise ConversionError(f"{what}: out_features {stages} are not supported (the stem is not a Swin stage)")
    v2 = name == "Swinv2Backbone"
    cfg, windows = _transformers_config(backbone, v2, what, always_partition=not v2)
    cfg.update(features_only=True, out_indices=[int(s[len("stage"):]) - 1 for s in stages])
    return _build(cfg, backbone, backbone.state_dict(), what, SwinTransformerV2 if v2 else SwinTransformer, windows)

"""The Swin variant table, written once: architectures, releases and their names.

Everything that knows a variant reads it from here: the ``swin_t`` ...
``swin_l`` factories (:mod:`swin_ext.models.swin`), ``create_model`` /
``list_models`` (:mod:`swin_ext.factory`), the training CLI's presets
(:mod:`swin_ext.train.presets`) and the benchmarks.  As timm's ``@register_model``
registry, a name maps to its constructor keywords; unlike timm's, the names
are generated from the release tables below rather than written one function
each.

* :data:`SIZES` -- embed dim, depths, heads and the official training
  stochastic depth of each size (V1 and V2 share them).
* :data:`RELEASES` -- the official Swin V1 checkpoints (size, window, image
  size); each gives ``swin_<size>_patch4_window<w>_<img>`` (ImageNet-1k),
  ``..._22k`` (21,841 classes) and ``..._22kto1k``; ``swin_t/s/b/l`` alias
  the window-7, 224-px ones.
* :data:`V2_RELEASES` -- timm's twelve ``swinv2_*`` registrations (size,
  window or ``"<pre>to<fine>"``, image size, pretrained window sizes, classes).
* :data:`COMPACT` -- small V1 models that are not releases: ``swin_digits``,
  the model the demo trains on the digits.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

__all__ = ["SIZES", "RELEASES", "V2_RELEASES", "ALIASES", "COMPACT", "v1_table", "v2_table", "size_of"]

SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.5),
}

#: (size, window, image size) of the official Swin V1 releases.
RELEASES: Tuple[Tuple[str, int, int], ...] = (
    ("tiny", 7, 224), ("small", 7, 224), ("base", 7, 224), ("base", 12, 384), ("large", 7, 224), ("large", 12, 384),
)

#: the short names: swin_t = swin_tiny_patch4_window7_224, ...
ALIASES: Dict[str, str] = {"t": "tiny", "s": "small", "b": "base", "l": "large"}

#: timm's Swin V2 registrations: (size, window, image size, pretrained window sizes, classes).  The
#: 192-px ones are the ImageNet-22k pre-trained models, "12to16" / "12to24" fine-tuned from them.
V2_RELEASES: Tuple[Tuple[str, Any, int, Any, int], ...] = (
    ("tiny", 8, 256, 0, 1000), ("tiny", 16, 256, 0, 1000), ("small", 8, 256, 0, 1000),
    ("small", 16, 256, 0, 1000), ("base", 8, 256, 0, 1000), ("base", 16, 256, 0, 1000),
    ("base", 12, 192, 0, 21841), ("base", "12to16", 256, (12, 12, 12, 6), 1000),
    ("base", "12to24", 384, (12, 12, 12, 6), 1000), ("large", 12, 192, 0, 21841),
    ("large", "12to16", 256, (12, 12, 12, 6), 1000), ("large", "12to24", 384, (12, 12, 12, 6), 1000),
)

#: small V1 models, not releases.  ``swin_digits``: 32x32 digits, patch 4 (one token per original 8x8
#: pixel), 8x8 tokens in 2x2 windows of 4 (shifted), then 4x4 tokens in one window; 0.3M parameters.
COMPACT: Dict[str, Dict[str, Any]] = {
    "swin_digits": dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depths=(2, 2),
                        num_heads=(3, 6), window_size=4, drop_path_rate=0.1),
}


def size_of(name: str) -> str:
    """The size (``"tiny"`` ... ``"large"``) of a V1/V2 name or short alias."""
    part = name.split("_")[1]
    return ALIASES.get(part, part)


def v1_table() -> Dict[str, Dict[str, Any]]:
    """Every Swin V1 name (releases, aliases, :data:`COMPACT`) -> its constructor keywords (the official
    stochastic depth included)."""
    table: Dict[str, Dict[str, Any]] = {}
    for size, window, img in RELEASES:
        base = dict(SIZES[size], window_size=window, img_size=img, patch_size=4, num_classes=1000)
        name = f"swin_{size}_patch4_window{window}_{img}"
        table[name] = base
        table[name + "_22k"] = dict(base, num_classes=21841)
        table[name + "_22kto1k"] = dict(base)
    for short, size in ALIASES.items():
        table[f"swin_{short}"] = table[f"swin_{size}_patch4_window7_224"]
    table.update(COMPACT)
    return table


def v2_table() -> Dict[str, Dict[str, Any]]:
    """Every Swin V2 name -> its constructor keywords (timm's defaults: stochastic depth 0.1)."""
    table: Dict[str, Dict[str, Any]] = {}
    for size, window, img, pretrained_ws, classes in V2_RELEASES:
        arch = {k: v for k, v in SIZES[size].items() if k != "drop_path_rate"}
        ws = int(str(window).split("to")[-1])
        img_name = f"{img}" if isinstance(window, int) else f"192to{img}"
        table[f"swinv2_{size}_window{window}_{img_name}"] = dict(
            arch, window_size=ws, img_size=img, patch_size=4, num_classes=classes,
            pretrained_window_sizes=pretrained_ws,
        )
    return table

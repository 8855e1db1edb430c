"""``create_model(name, pretrained=None, **kw)``: the standard Swin variants by name.

Names follow the official release (and timm): ``swin_{tiny,small,base,large}
_patch4_window{7,12}_{224,384}``, with ``_22k`` (21,841 ImageNet-22k classes)
and ``_22kto1k`` (22k pre-trained, 1k fine-tuned) suffixes, plus the short
aliases ``swin_t``, ``swin_s``, ``swin_b``, ``swin_l``.  ``pretrained`` is a
local checkpoint path or a state dict: nothing is ever downloaded.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Dict, List, Mapping, Optional, Union

from .checkpoint import LoadResult, _load
from .model import SwinTransformer

__all__ = ["create_model", "list_models", "model_config"]

_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.5),
}
# (size, window, image size) of the official releases
_RELEASES = [("tiny", 7, 224), ("small", 7, 224), ("base", 7, 224), ("base", 12, 384),
             ("large", 7, 224), ("large", 12, 384)]


def _build_table() -> Dict[str, Dict[str, Any]]:
    table: Dict[str, Dict[str, Any]] = {}
    for size, window, img in _RELEASES:
        base = dict(_SIZES[size], window_size=window, img_size=img, patch_size=4, num_classes=1000)
        name = f"swin_{size}_patch4_window{window}_{img}"
        table[name] = base
        table[name + "_22k"] = dict(base, num_classes=21841)
        table[name + "_22kto1k"] = dict(base)
    for short, long in (("t", "tiny"), ("s", "small"), ("b", "base"), ("l", "large")):
        table[f"swin_{short}"] = table[f"swin_{long}_patch4_window7_224"]
    return table


_MODELS = _build_table()


def list_models() -> List[str]:
    """The names ``create_model`` knows, sorted."""
    return sorted(_MODELS)


def model_config(name: str) -> Dict[str, Any]:
    """The constructor keywords of ``name`` (a copy)."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {close}?" if close else f"; known: {list_models()}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return dict(_MODELS[name])


def create_model(
    name: str,
    pretrained: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
    *,
    strict: Optional[bool] = None,
    **kwargs: Any,
) -> SwinTransformer:
    """Build the variant ``name``; keywords override its defaults.

    ``pretrained``: a local checkpoint (path or state dict, any layout
    ``load_pretrained`` reads) to load; nothing is downloaded.  Loading is
    strict, except that passing ``num_classes`` explicitly asks for a new head:
    a checkpoint head of another size is then left out (like timm).  Pass
    ``strict=False`` to also tolerate missing/unexpected keys.  The
    :class:`~swin_ext.checkpoint.LoadResult` is kept on the model as
    ``model.pretrained_result``.

        >>> m = create_model("swin_base_patch4_window12_384", pretrained="swin_base_patch4_window12_384.pth")
        >>> backbone = create_model("swin_tiny_patch4_window7_224", pretrained="swin_tiny.pth",
        ...                         features_only=True, out_indices=(1, 2, 3))
    """
    cfg = model_config(name)
    if pretrained is True:
        raise ValueError("pretrained must be a local checkpoint path or a state dict; swin_ext downloads nothing")
    new_head = "num_classes" in kwargs
    cfg.update(kwargs)
    model = SwinTransformer(**cfg)
    if pretrained is not None and pretrained is not False:
        result: LoadResult = _load(model, pretrained, strict=True if strict is None else strict,
                                   allow_new_head=new_head)
        model.pretrained_result = result
    return model

"""``create_model(name, pretrained=None, **kw)``: the standard Swin variants by name.

Names follow the official release (and timm): ``swin_{tiny,small,base,large}
_patch4_window{7,12}_{224,384}``, with ``_22k`` (21,841 ImageNet-22k classes)
and ``_22kto1k`` (22k pre-trained, 1k fine-tuned) suffixes, plus the short
aliases ``swin_t``, ``swin_s``, ``swin_b``, ``swin_l`` and the demo's compact
``swin_digits``; and timm's twelve Swin V2 names
``swinv2_{tiny,small,base,large}_window{8,12,16,...}_{192,256,384}``
(a :class:`~swin_ext.SwinTransformerV2` with timm's defaults).  ``pretrained``
is a local checkpoint path or a state dict: nothing is ever downloaded.
The names and their keywords come from the one variant table,
:mod:`swin_ext.models.variants`.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Dict, List, Mapping, Optional, Union

from .models import SwinTransformer, SwinTransformerV2
from .models.variants import v1_table, v2_table
from .weights.checkpoint import LoadResult, load_pretrained

__all__ = ["create_model", "list_models", "model_config", "model_class"]

_MODELS = v1_table()
_V2_MODELS = v2_table()


def list_models() -> List[str]:
    """The names ``create_model`` knows, sorted."""
    return sorted(list(_MODELS) + list(_V2_MODELS))


def model_config(name: str) -> Dict[str, Any]:
    """The constructor keywords of ``name`` (a copy)."""
    if name in _V2_MODELS:
        return dict(_V2_MODELS[name])
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f"; did you mean {close}?" if close else f"; known: {list_models()}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return dict(_MODELS[name])


def model_class(name: str) -> type:
    """:class:`~swin_ext.SwinTransformerV2` for a ``swinv2_*`` name, else :class:`~swin_ext.SwinTransformer`."""
    model_config(name)  # unknown names raise
    return SwinTransformerV2 if name in _V2_MODELS else SwinTransformer


def create_model(
    name: str,
    pretrained: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
    *,
    strict: Optional[bool] = None,
    **kwargs: Any,
) -> Union[SwinTransformer, SwinTransformerV2]:
    """Build the variant ``name``; keywords override its defaults.

    ``pretrained``: a local checkpoint (path or state dict, any layout
    ``load_pretrained`` reads) to load; nothing is downloaded.  Loading is
    strict, except that passing ``num_classes`` explicitly asks for a new head:
    a checkpoint head of another size is then left out (like timm).  Pass
    ``strict=False`` to also tolerate missing/unexpected keys.  The
    :class:`~swin_ext.LoadResult` is kept on the model as
    ``model.pretrained_result``.

        >>> m = create_model("swin_base_patch4_window12_384", pretrained="swin_base_patch4_window12_384.pth")
        >>> backbone = create_model("swin_tiny_patch4_window7_224", pretrained="swin_tiny.pth",
        ...                         features_only=True, out_indices=(1, 2, 3))
        >>> v2 = create_model("swinv2_tiny_window8_256", pretrained="swinv2_tiny_patch4_window8_256.pth")
    """
    cfg = model_config(name)
    if pretrained is True:
        raise ValueError("pretrained must be a local checkpoint path or a state dict; swin_ext downloads nothing")
    new_head = "num_classes" in kwargs
    cfg.update(kwargs)
    model = model_class(name)(**cfg)
    model.pretrained_cfg["architecture"] = name
    if pretrained is not None and pretrained is not False:
        result: LoadResult = load_pretrained(model, pretrained, strict=True if strict is None else strict,
                                             allow_new_head=new_head)
        model.pretrained_result = result
    return model

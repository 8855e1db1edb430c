"""Feature-map selection shared by the models (as timm's ``models/_features.py``)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

__all__ = ["OUTPUT_FORMATS", "normalize_indices", "feature_info"]

#: the layouts ``forward_intermediates`` returns
OUTPUT_FORMATS = ("NCHW", "NHWC")


def normalize_indices(indices: Union[int, Sequence[int], None], num_layers: int, what: str) -> List[int]:
    """timm's convention: ``None`` -> all stages, an int ``n`` -> the last ``n``,
    a sequence -> those stages (negative counts from the end); sorted, unique."""
    if indices is None:
        return list(range(num_layers))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= num_layers:
            raise ValueError(f"{what}: an int selects the last n stages, n must be in [1, {num_layers}], got {indices}")
        return list(range(num_layers - indices, num_layers))
    try:
        seq = list(indices)
    except TypeError:
        raise TypeError(f"{what} must be None, an int or a sequence of ints, got {type(indices).__name__}") from None
    if not seq:
        raise ValueError(f"{what} must not be empty")
    out = set()
    for i in seq:
        if not isinstance(i, int) or isinstance(i, bool) or not -num_layers <= i < num_layers:
            raise ValueError(f"{what}: stage index {i!r} out of range for {num_layers} stages")
        out.add(i % num_layers)
    return sorted(out)


def feature_info(embed_dim: int, patch_size: int, num_layers: int) -> List[Dict[str, Any]]:
    """Per stage: channels, stride w.r.t. the input and the module producing it (timm's convention)."""
    return [dict(num_chs=int(embed_dim * 2**i), reduction=patch_size * 2**i, module=f"layers.{i}")
            for i in range(num_layers)]

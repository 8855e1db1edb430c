"""The Swin Transformer models (V1 and V2) and the variant table.

:mod:`.swin` and :mod:`.swin_v2` hold each family's blocks and stages and
share the rest through :class:`._base.SwinBase`; :mod:`.variants` names the
standard sizes and releases.  Build them by name with
:func:`swin_ext.create_model`.
"""
from .swin import (
    BasicLayer,
    PatchEmbed,
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    swin_b,
    swin_l,
    swin_s,
    swin_t,
)
from .swin_v2 import BasicLayerV2, PatchMergingV2, SwinTransformerV2, SwinTransformerV2Block, WindowAttentionV2

__all__ = [
    "SwinTransformer",
    "SwinTransformerV2",
    "swin_t",
    "swin_s",
    "swin_b",
    "swin_l",
    "PatchEmbed",
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "BasicLayer",
    "WindowAttentionV2",
    "SwinTransformerV2Block",
    "PatchMergingV2",
    "BasicLayerV2",
]

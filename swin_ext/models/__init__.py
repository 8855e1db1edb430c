"""The Swin Transformer models (V1, V2 and Video Swin) and the variant table.

:mod:`.swin` and :mod:`.swin_v2` hold each family's blocks and stages and
share the rest through :class:`._base.SwinBase`; :mod:`.swin3d` is Video
Swin in torchvision's layout (its own skeleton, the shared layers); :mod:`.variants` names the
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
from .swin3d import (
    PatchEmbed3d,
    PatchMerging3d,
    ShiftedWindowAttention3d,
    SwinTransformer3d,
    SwinTransformerBlock3d,
    swin3d_b,
    swin3d_s,
    swin3d_t,
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
    "SwinTransformer3d",
    "swin3d_t",
    "swin3d_s",
    "swin3d_b",
    "PatchEmbed3d",
    "ShiftedWindowAttention3d",
    "SwinTransformerBlock3d",
    "PatchMerging3d",
]

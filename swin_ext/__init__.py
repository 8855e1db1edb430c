"""swin_ext: the Swin Transformer with fused C++/CUDA kernels.

    >>> import swin_ext
    >>> model = swin_ext.swin_t()            # backend="fused" by default
    >>> logits = model(torch.randn(2, 3, 224, 224))
"""
from . import segmentation
from ._ext import HAS_OPS, build_info
from .detection import SwinFPN, fpn_backbone
from .export import ExportError, export_onnx, install_onnx_hook, onnx_translation_table
from .factory import create_model, list_models
from .models import (
    BasicLayer,
    PatchEmbed,
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerV2,
    WindowAttention,
    swin_b,
    swin_l,
    swin_s,
    swin_t,
)
from .ops import add_layernorm, bias_gelu, patch_merging, window_attention, window_attention_v2
from .ops.reference import (
    add_layernorm_reference,
    bias_gelu_reference,
    patch_merging_reference,
    window_attention_reference,
    window_attention_v2_reference,
)
from .weights import (
    CheckpointError,
    ConversionError,
    LoadResult,
    from_timm,
    from_torchvision,
    from_transformers,
    load_pretrained,
)

install_onnx_hook()  # swin_ext's ONNX translations join torch.onnx's registry when torch imports it

__version__ = "0.1.0"

__all__ = [
    "HAS_OPS",
    "build_info",
    "window_attention",
    "window_attention_v2",
    "patch_merging",
    "add_layernorm",
    "bias_gelu",
    "window_attention_reference",
    "window_attention_v2_reference",
    "patch_merging_reference",
    "add_layernorm_reference",
    "bias_gelu_reference",
    "PatchEmbed",
    "PatchMerging",
    "BasicLayer",
    "SwinTransformer",
    "SwinTransformerBlock",
    "WindowAttention",
    "swin_t",
    "swin_s",
    "swin_b",
    "swin_l",
    "SwinTransformerV2",
    "load_pretrained",
    "create_model",
    "list_models",
    "CheckpointError",
    "LoadResult",
    "export_onnx",
    "onnx_translation_table",
    "ExportError",
    "from_timm",
    "from_torchvision",
    "from_transformers",
    "ConversionError",
    "fpn_backbone",
    "SwinFPN",
    "segmentation",
]

"""Checkpoints: their key layouts (:mod:`.layouts`), reading, verifying and loading them
(:mod:`.checkpoint`), and converters from live timm / torchvision / transformers models
(:mod:`.convert`)."""
from .checkpoint import LoadResult, load_pretrained, read_state_dict
from .convert import ConversionError, from_timm, from_torchvision, from_transformers
from .layouts import (
    FORMATS,
    CheckpointError,
    checkpoint_version,
    convert_state_dict,
    to_openmmlab,
    to_timm,
    to_torchvision,
)

__all__ = [
    "load_pretrained",
    "LoadResult",
    "CheckpointError",
    "read_state_dict",
    "FORMATS",
    "checkpoint_version",
    "convert_state_dict",
    "to_timm",
    "to_torchvision",
    "to_openmmlab",
    "from_timm",
    "from_torchvision",
    "from_transformers",
    "ConversionError",
]

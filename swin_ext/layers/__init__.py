"""swin_ext's layers: the fast paths behind small functions, the probes and switches in :mod:`.config`.

Each model module stores one flag (``fused`` / ``fast``, set from the model's
backend) and calls these; every function falls back to plain PyTorch where
its fast path does not apply, and its docstring says what runs where.
"""
from .attention import window_attention, window_attention_v2
from .config import (
    autocast_dtype,
    cpu_gemm_preferred,
    has_kernel,
    onednn_available,
    onednn_preferred,
    set_cpu_gemm,
    set_onednn,
    use_cpu_gemm,
    use_onednn,
)
from .fast_linear import Linear, linear, linear_gelu
from .mlp import Mlp, SequentialMlp
from .norm import add_layernorm, residual_add

__all__ = [
    "window_attention",
    "window_attention_v2",
    "add_layernorm",
    "residual_add",
    "Linear",
    "linear",
    "linear_gelu",
    "Mlp",
    "SequentialMlp",
    "has_kernel",
    "use_onednn",
    "set_onednn",
    "onednn_available",
    "onednn_preferred",
    "use_cpu_gemm",
    "set_cpu_gemm",
    "cpu_gemm_preferred",
    "autocast_dtype",
]

"""swin_ext's custom operators, one module per op (as ``torchvision.ops``).

Each op module (``window_attention`` for V1 and V2, ``patch_merging``,
``add_layernorm``, ``bias_gelu``) holds the public wrapper, which validates
its arguments (:mod:`._validate`, the Python mirror of ``csrc/checks.h``) and
calls ``torch.ops.swin_ext.<op>_fwd`` through ``<op>_unchecked`` (the same call without the
Python checks, which the layers use: their arguments are valid by construction, and the raw
op checks them again in C++), and wires the op into PyTorch: fake
kernels (so ``torch.compile(fullgraph=True)``, ``torch.export`` and the meta
device run the same checks), autograd with the backward op, higher-order
gradients and ``torch.func`` (:mod:`._autograd`), and vmap rules.
:mod:`.reference` is the plain-PyTorch composite of every op: the tests'
oracle and the ``backend="reference"`` path.

Adding an op: its schemas in ``csrc/op_schemas.h``, its kernels in
``csrc/cpu/<op>_cpu.cpp`` and ``csrc/cuda/``, a module here named after it
with an ``OPS`` tuple, its name in :data:`_MODULES` below, its reference in
:mod:`.reference`, its case table in ``tests/op_testing.py``.
"""
from __future__ import annotations

import importlib
from typing import Tuple

from ._autograd import forward_mode, functorch_active
from ._validate import MAX_WINDOW_SIZE, acc_dtype
from .add_layernorm import add_layernorm, add_layernorm_unchecked, autocast_dtype
from .bias_gelu import bias_gelu, bias_gelu_unchecked
from .patch_merging import patch_merging, patch_merging_unchecked
from .window_attention import (
    window_attention,
    window_attention_unchecked,
    window_attention_v2,
    window_attention_v2_unchecked,
)

__all__ = [
    "window_attention",
    "window_attention_v2",
    "patch_merging",
    "add_layernorm",
    "bias_gelu",
    "window_attention_unchecked",
    "window_attention_v2_unchecked",
    "patch_merging_unchecked",
    "add_layernorm_unchecked",
    "bias_gelu_unchecked",
    "OPS",
    "MAX_WINDOW_SIZE",
    "acc_dtype",
    "autocast_dtype",
    "functorch_active",
    "forward_mode",
]

# The op modules, the one list of them.  (``swin_ext.ops.window_attention`` is
# the function, as ``torchvision.ops.roi_align`` is: the modules are reached
# through ``importlib`` / ``sys.modules``.)
_MODULES = tuple(importlib.import_module(f"{__name__}.{m}")
                 for m in ("window_attention", "patch_merging", "add_layernorm", "bias_gelu"))

#: every op's name; ``torch.ops.swin_ext.<name>_fwd`` and ``<name>_bwd`` are its raw forward and backward
OPS: Tuple[str, ...] = tuple(op for m in _MODULES for op in m.OPS)

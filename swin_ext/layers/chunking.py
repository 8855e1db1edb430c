"""CPU inference over image chunks: a large stage map run a few images at a time.

In eager CPU inference every intermediate of a Swin stage is a fresh
allocation of the whole batch's map (the qkv map 3x it, the MLP's hidden 4x),
written to DRAM and read back.  glibc maps large blocks anew on every call and
returns freed heap to the OS, so each such tensor also page-faults on first
touch: ~23,000 faults per Swin-T forward at batch 8 on the dev machine.  Every
op of a stage works on one image at a time (the windows, the token-wise
Linears and norms, the 2x2 merge), so a stage can run its images a few at a
time with the same per-image results: the intermediates then stay in the
cache and the heap, and the faults disappear.  Measured (2 threads of the
2-core Xeon dev VM, Swin-T, interleaved rounds in one process, median):
batch 8 355.4 -> 323.4 ms per forward (stage 1 in chunks of 2 images; 23,392
faults -> 0), batch 16 702.4 -> 670.0 ms.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import forward_mode, functorch_active
from . import config
from .pos_bias import eager_plain

__all__ = ["inference_image_chunk", "STAGE_CHUNK_MIN_BYTES", "STAGE_CHUNK_BYTES"]

#: a stage input ``(B, ...)`` larger than this many bytes runs in image chunks (Swin-T's stage 1
#: from batch 7, stage 2 from batch 14, at 224 px); set it to ``float("inf")`` to turn the chunking off
STAGE_CHUNK_MIN_BYTES = 8 << 20
#: ... of about this many bytes of input each (at least one image): 2 images of Swin-T's stage 1
STAGE_CHUNK_BYTES = 5 << 19


def inference_image_chunk(x: torch.Tensor, module: nn.Module) -> int:
    """Images per chunk to run ``module`` on ``x (B, ...)`` with, or 0 to run it on the whole batch.

    Non-zero only in CPU float32 inference (grad mode off, ``module`` in eval mode: no dropout
    whose random stream a chunking would change), no autocast, eager on a plain tensor (not
    compiled, traced, exported or under ``torch.func`` / forward-mode AD), and for an input over
    :data:`STAGE_CHUNK_MIN_BYTES` of at least two images.  The caller guarantees that ``module``
    treats the images independently.
    """
    if (
        module.training
        or torch.is_grad_enabled()
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or x.dim() < 2
        or config.autocast_dtype("cpu") is not None
        or not eager_plain(x)  # (compiled, traced, scripted, ONNX export; a fake or functional tensor)
        or torch.compiler.is_exporting()
        or functorch_active()
        or forward_mode((x,))
    ):
        return 0
    images = x.shape[0]
    if images < 2:
        return 0
    per_image = x[0].numel() * x.element_size()
    if per_image == 0 or images * per_image <= STAGE_CHUNK_MIN_BYTES:
        return 0
    chunk = max(1, int(STAGE_CHUNK_BYTES // per_image))
    return chunk if chunk < images else 0

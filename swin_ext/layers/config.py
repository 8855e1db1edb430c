"""Capability probes and switches of swin_ext's fast paths, in one place (as timm's ``layers/config.py``).

The modules of :mod:`swin_ext.model` store one flag each (set from the
model's backend) and call the functions of :mod:`swin_ext.layers`; those
functions ask this module whether a fast path exists here:

* :func:`has_kernel` -- whether ``swin_ext._C`` has a kernel of an op for a
  device type (probed once at import: the CUDA kernels exist only in a CUDA
  build, and an op may have a CPU kernel only).
* :func:`use_onednn` -- whether the oneDNN GEMM paths of the CPU
  (``torch.ops.mkldnn._linear_pointwise``: Linear forward and input-gradient
  GEMMs, the fc1 + GELU epilogue) are available and enabled.  The op is
  private to PyTorch, so it is checked once against ``F.linear`` /
  ``F.gelu`` and skipped if missing or different.  ``SWIN_EXT_ONEDNN_MLP=0``
  (read once) or :func:`set_onednn` turn it off for the process;
  ``SwinTransformer.set_cpu_inference_fusion(False)`` for one model.
* :func:`autocast_dtype` -- the autocast dtype of a device type, or ``None``.

Everything here is a cached Python value by the time a model runs, so
``torch.compile`` traces these calls as constants.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .._ext import HAS_OPS
from ..ops import OPS, autocast_dtype

__all__ = ["has_kernel", "use_onednn", "set_onednn", "onednn_available", "autocast_dtype"]

def _probe_kernels() -> Dict[Tuple[str, str], bool]:
    out = {}
    for op in OPS:
        for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            ok = False
            if HAS_OPS:
                try:
                    ok = torch._C._dispatch_has_kernel_for_dispatch_key(f"swin_ext::{op}_fwd", key)
                except RuntimeError:  # op not defined in this build
                    ok = False
            out[(op, dev)] = ok
    return out


_KERNELS = _probe_kernels()


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``swin_ext::<op>_fwd`` has a compiled kernel for ``device_type``.

    ``op`` is one of :data:`swin_ext.ops.OPS`.  The meta device always has
    one (the fake kernels).
    """
    if device_type == "meta":
        return HAS_OPS
    return _KERNELS.get((op, device_type), False)


# SWIN_EXT_ONEDNN_MLP (its name from when it governed the MLP only) switches every oneDNN Linear path.
_ONEDNN_ENABLED = os.environ.get("SWIN_EXT_ONEDNN_MLP", "1") != "0"
_ONEDNN_OK: Optional[bool] = None


def onednn_available() -> bool:
    """Whether oneDNN's ``linear``, ``linear + GELU`` and transposed-weight ``linear``
    exist here and agree with ``F.linear``, ``F.gelu(F.linear(...))`` and ``g @ W``
    (checked once per process on a small random case)."""
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        if ok:
            try:
                lp = torch.ops.mkldnn._linear_pointwise
                g = torch.Generator().manual_seed(0)
                cpu = dict(generator=g, device="cpu", dtype=torch.float32)  # also under torch.device("meta")
                x = torch.randn(37, 24, **cpu)
                w = torch.randn(40, 24, **cpu)
                b = torch.randn(40, **cpu)
                go = torch.randn(37, 40, **cpu)
                with torch.no_grad():
                    want = F.linear(x, w, b)
                    got = lp(x, w, b, "none", [], "")
                    got_gelu = lp(x, w, b, "gelu", [], "none")
                    got_dgrad = lp(go, w.t(), None, "none", [], "")
                    got_nobias = lp(x, w, None, "none", [], "")
                ok = (
                    got.shape == got_gelu.shape == (37, 40)
                    and torch.allclose(got, want, rtol=1e-4, atol=1e-4)
                    and torch.allclose(got_gelu, F.gelu(want), rtol=1e-4, atol=1e-4)
                    and torch.allclose(got_dgrad, go @ w, rtol=1e-4, atol=1e-4)
                    and torch.allclose(got_nobias, want - b, rtol=1e-4, atol=1e-4)
                )
            except Exception:  # op missing or a different signature in this torch
                ok = False
        _ONEDNN_OK = bool(ok)
    return _ONEDNN_OK


def use_onednn() -> bool:
    """Whether the oneDNN GEMM paths are enabled and available."""
    return _ONEDNN_ENABLED and onednn_available()


def set_onednn(enabled: bool) -> None:
    """Enable or disable the oneDNN GEMM paths for the whole process."""
    global _ONEDNN_ENABLED
    _ONEDNN_ENABLED = bool(enabled)

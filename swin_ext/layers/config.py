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
  ``F.gelu`` and skipped if missing or different.  By default they are
  enabled only where ATen's CPU capability is AVX-512 and the build has no
  CPU GEMM of swin_ext's own (:func:`onednn_preferred`: on AVX-512 CPUs
  oneDNN's GEMMs were measured faster than ATen's ``addmm`` / ``mm``, MKL,
  and swin_ext's AVX-512 GEMMs faster than oneDNN's; on an AVX2 CPU
  oneDNN's were slower than MKL's).
  ``SWIN_EXT_ONEDNN_MLP=1`` / ``=0`` (read once) or :func:`set_onednn`
  choose for the process; ``SwinTransformer.set_cpu_inference_fusion(False)``
  turns them off for one model.
* :func:`use_cpu_gemm` -- whether the block Linears' float32 GEMMs run on
  swin_ext's own CPU kernels (``torch.ops.swin_ext.linear_cpu_fwd`` / ``_bwd``,
  ``csrc/cpu/linear_cpu.cpp``) instead of ATen's ``addmm`` / ``mm`` (MKL).  By
  default where ATen's CPU capability is AVX2 or AVX-512
  (:func:`cpu_gemm_preferred`: there they were measured faster than MKL's
  and, on AVX-512, oneDNN's for the Swin Linears).  When oneDNN is on too
  (chosen), oneDNN takes the forward and input-gradient GEMMs and these the
  weight gradient.  ``SWIN_EXT_CPU_GEMM=1`` / ``=0`` (read once) or
  :func:`set_cpu_gemm` choose for the process.
* :func:`autocast_dtype` -- the autocast dtype of a device type, or ``None``.

Everything here is a cached Python value by the time a model runs, so
``torch.compile`` traces these calls as constants.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .._ext import HAS_OPS
from ..ops import OPS, autocast_dtype

__all__ = [
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


def _switch_env(name: str) -> Optional[bool]:
    """A switch variable: ``1`` on, ``0`` off, unset or empty ``None`` (the CPU's default); any other
    value warns and counts as unset."""
    value = os.environ.get(name, "").strip()
    if value in ("", "1", "0"):
        return None if value == "" else value == "1"
    warnings.warn(f"{name}={value!r} is not 0 or 1; ignored (the CPU's default applies)", RuntimeWarning,
                  stacklevel=3)
    return None


def _onednn_env() -> Optional[bool]:
    """``SWIN_EXT_ONEDNN_MLP`` (its name from when it governed the MLP only; it switches every oneDNN
    Linear path): ``1`` on, ``0`` off, unset or empty: the CPU's default (:func:`onednn_preferred`)."""
    return _switch_env("SWIN_EXT_ONEDNN_MLP")


def _cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # an old torch without the query, or a platform it does not know
        return "DEFAULT"


#: ATen's CPU capability at import ("AVX512", "AVX2", "DEFAULT", ...; ATEN_CPU_CAPABILITY lowers it)
CPU_CAPABILITY = _cpu_capability()
# None: the CPU's default; True / False: chosen by SWIN_EXT_ONEDNN_MLP or set_onednn.
_ONEDNN_ENABLED: Optional[bool] = _onednn_env()
_ONEDNN_OK: Optional[bool] = None
# None: the CPU's default; True / False: chosen by SWIN_EXT_CPU_GEMM or set_cpu_gemm.
_CPU_GEMM_ENABLED: Optional[bool] = _switch_env("SWIN_EXT_CPU_GEMM")


def _probe_cpu_kernel(op: str) -> bool:
    if not HAS_OPS:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")
    except RuntimeError:  # op not defined in this build
        return False


_CPU_GEMM_KERNEL = _probe_cpu_kernel("swin_ext::linear_cpu_fwd")
#: the fused inference MLP on swin_ext's CPU GEMMs (``swin_ext::mlp_cpu_fwd``) is in this build
_CPU_MLP_KERNEL = _probe_cpu_kernel("swin_ext::mlp_cpu_fwd")


def onednn_preferred() -> bool:
    """Whether the oneDNN GEMM paths are the default on this CPU: where ATen's CPU capability is
    AVX-512 and this build has no CPU GEMM of swin_ext's own (:func:`cpu_gemm_preferred` takes
    AVX-512 CPUs where it has).

    Why by the ISA: over the Swin-T Linears, oneDNN's GEMMs were measured faster than ATen's
    (MKL) on the 2-core AVX-512 Xeon (forward 185 vs 225 ms, input gradient 184 vs 232 ms per
    training step at batch 4) and slower on a 2-core AVX2 AMD EPYC (Zen 2: the model's
    inference at batch 8 641.5 vs 607.6 ms, the training step at batch 4 1010 vs 1002 ms, within
    that machine's drift; ``benchmarks/results/cpu_gemm_backend_avx2_2026-12-05.md``).  On a
    2-core AVX-512 AMD EPYC (Zen 5) swin_ext's AVX-512 GEMMs were faster than oneDNN's: Swin-T
    inference 192 vs 203 ms at batch 8, the training step 372 vs 463 ms at batch 4
    (``benchmarks/results/cpu_gemm_avx512_zen5_2026-12-06.md``).  A fixed rule, not a timing at
    start-up: the libraries round differently, and a choice by timing could change a model's bits
    from one run to the next.
    """
    return CPU_CAPABILITY.upper().startswith("AVX512") and not _CPU_GEMM_KERNEL


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
    """Whether the oneDNN GEMM paths are enabled (by :func:`set_onednn`, ``SWIN_EXT_ONEDNN_MLP`` or
    else :func:`onednn_preferred`) and available."""
    enabled = _ONEDNN_ENABLED if _ONEDNN_ENABLED is not None else onednn_preferred()
    return enabled and onednn_available()


def set_onednn(enabled: Optional[bool]) -> None:
    """Enable (``True``) or disable (``False``) the oneDNN GEMM paths for the whole process;
    ``None``: the CPU's default again (:func:`onednn_preferred`)."""
    global _ONEDNN_ENABLED
    _ONEDNN_ENABLED = None if enabled is None else bool(enabled)


def cpu_gemm_preferred() -> bool:
    """Whether swin_ext's CPU GEMMs are the default for the block Linears on this CPU: where ATen's
    CPU capability is AVX2 or AVX-512.

    Why: on the 2-core AVX2 AMD EPYC (Zen 2), torch's GEMMs (MKL's sgemm) run the Swin-T Linears at
    61-79 GFLOP/s on one core, swin_ext's at 72-101, faster at every shape of the model (on two
    threads every shape but one, which ties; 1.19-1.26x by the model's FLOPs;
    ``benchmarks/results/cpu_linear_gemm_avx2_2026-12-05.md``).  On the 2-core AVX-512 AMD EPYC
    (Zen 5) swin_ext's AVX-512 clones (two 16-column panels per register tile) run them at
    383-389 GFLOP/s on two threads by the model's FLOPs, MKL's at 194-205 (1.87-1.97x), and the
    model faster than on oneDNN's GEMMs (:func:`onednn_preferred`;
    ``benchmarks/results/cpu_gemm_avx512_zen5_2026-12-06.md``).  On an AVX-512 Xeon swin_ext's
    GEMMs have not been measured.  A fixed rule, not a timing at start-up, for the reason
    :func:`onednn_preferred` gives.
    """
    return CPU_CAPABILITY.upper() == "AVX2" or CPU_CAPABILITY.upper().startswith("AVX512")


def use_cpu_gemm() -> bool:
    """Whether swin_ext's CPU GEMMs are enabled (by :func:`set_cpu_gemm`, ``SWIN_EXT_CPU_GEMM`` or
    else :func:`cpu_gemm_preferred`) and compiled into this build."""
    enabled = _CPU_GEMM_ENABLED if _CPU_GEMM_ENABLED is not None else cpu_gemm_preferred()
    return enabled and _CPU_GEMM_KERNEL


def set_cpu_gemm(enabled: Optional[bool]) -> None:
    """Enable (``True``) or disable (``False``) swin_ext's CPU GEMMs for the block Linears for the
    whole process; ``None``: the CPU's default again (:func:`cpu_gemm_preferred`)."""
    global _CPU_GEMM_ENABLED
    _CPU_GEMM_ENABLED = None if enabled is None else bool(enabled)

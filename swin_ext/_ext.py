"""Loading of the compiled extension ``swin_ext._C`` and its build info."""
from __future__ import annotations

from typing import Any, Dict

import torch

__all__ = ["HAS_OPS", "LOAD_ERROR", "LIMITS", "build_info", "require_ops"]

try:
    from . import _build_config  # written by setup.py
except ImportError:  # a source checkout that was never built
    _build_config = None

HAS_OPS = False
LOAD_ERROR = ""
#: The kernels' argument limits, from ``csrc/checks.h`` through ``swin_ext._C``
#: (empty without the compiled extension: then no kernel runs to need them).
LIMITS: Dict[str, int] = {}

if _build_config is None:
    LOAD_ERROR = (
        "swin_ext was imported from a source tree that was never built; install it with "
        "`pip install --no-build-isolation .` (or `pip install -e .`)"
    )
elif _build_config.TORCH_VERSION != torch.__version__:
    # torch has no stable C++ ABI: loading the library would fail with an
    # undefined-symbol error, or worse, load and misbehave.
    raise ImportError(
        f"swin_ext was built against torch {_build_config.TORCH_VERSION} but torch "
        f"{torch.__version__} is installed; rebuild it with "
        "`pip install --no-build-isolation --force-reinstall --no-deps .`"
    )
else:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.swin_ext.*)

        HAS_OPS = True
        LIMITS = {k: getattr(_C, k) for k in ("MAX_WINDOW_SIZE", "MAX_WINDOW_TOKENS", "MAX_DIM",
                                              "MAX_MERGE_CHANNELS", "MAX_LAYERNORM_CHANNELS") if hasattr(_C, k)}
    except ImportError as e:  # pragma: no cover - broken install
        LOAD_ERROR = f"swin_ext._C failed to load: {e}"


def build_info() -> Dict[str, Any]:
    """What the installed extension was built with.

    Returns a dict with ``ops_loaded`` (compiled operators available),
    ``cuda`` (CUDA kernels compiled in), ``cuda_archs``, ``torch_built``
    (the torch version built against), ``torch_runtime``, ``torch_cuda_built``
    and ``variant_reason`` (why this variant was built).
    """
    cfg = _build_config
    return {
        "ops_loaded": HAS_OPS,
        "cuda": bool(cfg and cfg.WITH_CUDA),
        "cuda_archs": cfg.CUDA_ARCHS if cfg else "",
        "torch_built": cfg.TORCH_VERSION if cfg else None,
        "torch_cuda_built": cfg.TORCH_CUDA_VERSION if cfg else None,
        "torch_runtime": torch.__version__,
        "variant_reason": cfg.VARIANT_REASON if cfg else LOAD_ERROR,
    }


def require_ops(device: torch.device) -> None:
    """Raise a clear error if no compiled kernel exists for ``device``."""
    if not HAS_OPS:
        raise RuntimeError(LOAD_ERROR + ' (or use backend="reference")')
    if device.type == "cpu" or device.type == "meta":
        return
    if device.type == "cuda":
        if not (_build_config and _build_config.WITH_CUDA):
            raise RuntimeError(
                "swin_ext was built without CUDA kernels "
                f"({_build_config.VARIANT_REASON if _build_config else 'not built'}); "
                'rebuild with a CUDA toolkit (SWIN_EXT_FORCE_CUDA=1) or use backend="reference"'
            )
        return
    raise RuntimeError(f"swin_ext has no kernels for device type {device.type!r}; use backend=\"reference\"")

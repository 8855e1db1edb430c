"""Checks of model configuration fields, shared by every model (as timm's ``layers/helpers.py``).

A model constructor checks each field once, up front, so that a bad value is
a ``TypeError`` / ``ValueError`` naming the field rather than a shape error
deep inside a block: a float where an int belongs is refused, never
truncated, and a bool is not taken for an int.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["BACKENDS", "check_backend", "is_int", "int_field", "real_field", "rate_field", "int_list_field",
           "per_stage", "to_2tuple"]

#: a model's ``backend``: the fused kernels and fast paths, or plain PyTorch everywhere
BACKENDS = ("fused", "reference")


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def is_int(v: Any) -> bool:
    """An integral number that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def int_field(v: Any, name: str, lo: Optional[int] = None, hi: Optional[float] = None) -> int:
    """A config int: ``TypeError`` for another type (a float, bool or string), ``ValueError`` outside ``[lo, hi]``."""
    if not is_int(v):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return int(v)


def real_field(v: Any, name: str) -> float:
    """A config real number: finite, not a bool or string."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return float(v)


def rate_field(v: Any, name: str) -> float:
    """A dropout / stochastic-depth rate: a real number in ``[0, 1)``."""
    real_field(v, name)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    return float(v)


def int_list_field(v: Any, name: str) -> List[int]:
    """A per-stage list of ints (list or tuple); a bare int or a string is a ``TypeError``."""
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise TypeError(f"{name} must be a list or tuple of ints (one per stage), got {type(v).__name__} {v!r}")
    for i, x in enumerate(v):
        if not is_int(x):
            raise TypeError(f"{name}[{i}] must be an int, got {type(x).__name__} {x!r}")
    return [int(x) for x in v]


def per_stage(v: Any, n: int, name: str, lo: int, hi: float) -> List[int]:
    """An int for every one of ``n`` stages (a bare int repeated), each in ``[lo, hi]``."""
    if is_int(v):
        vals = [int(v)] * n
    else:
        vals = int_list_field(v, name)
        if len(vals) != n:
            raise ValueError(f"{name} must be an int or one int per stage ({n}), got {v!r}")
    for i, x in enumerate(vals):
        if x < lo:
            raise ValueError(f"{name}[{i}] must be >= {lo}, got {x}")
        if x > hi:
            raise ValueError(f"{name}[{i}] must be <= {hi}, got {x}")
    return vals


def to_2tuple(v: Any, name: str = "img_size") -> Tuple[int, int]:
    """``s`` or ``(h, w)`` of positive ints; a string, float or 1-tuple is a ``TypeError`` naming ``name``."""
    if is_int(v):
        pair = (v, v)
    elif isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and len(v) == 2 and all(map(is_int, v)):
        pair = tuple(v)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (H, W), got {type(v).__name__} {v!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return int(pair[0]), int(pair[1])

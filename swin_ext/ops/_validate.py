"""Argument validation shared by the op wrappers, the fake kernels and the reference.

The same rules as ``csrc/checks.h`` (and the same bounds), in Python, so that
an argument the compiled kernels refuse is refused everywhere: by the public
wrappers (``TypeError`` / ``ValueError`` naming the argument), by the fake
(meta) kernels under the meta device, ``torch.compile`` and ``torch.export``
(``RuntimeError``, like the compiled kernels' ``TORCH_CHECK``), and by the
reference composite.

Everything here is host-side arithmetic on shapes and Python numbers: no
tensor data is read, so nothing here synchronises a device.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Type, Union

import torch

from .._ext import LIMITS

__all__ = [
    "MAX_WINDOW_SIZE",
    "MAX_WINDOW_TOKENS",
    "MAX_DIM",
    "MAX_MERGE_CHANNELS",
    "MAX_LAYERNORM_CHANNELS",
    "FLOAT_DTYPES",
    "acc_dtype",
    "in_dtype",
    "int_arg",
    "pair_arg",
    "axes_arg",
    "real_arg",
    "check_attention",
    "attention_scale",
    "check_merging",
    "check_add_layernorm",
    "check_add_layernorm_bwd",
    "dtype_arg",
]

# The kernels' limits are written once, in csrc/checks.h, and read from the
# compiled extension; without it no kernel runs and nothing is limited.
_NO_LIMIT = float("inf")
#: Largest window side along any axis (kMaxWindowSize).
MAX_WINDOW_SIZE = LIMITS.get("MAX_WINDOW_SIZE", _NO_LIMIT)
#: Largest token count of a window, ``N = wt * wh * ww`` (kMaxWindowTokens; Video Swin's (8, 7, 7) is 392).
MAX_WINDOW_TOKENS = LIMITS.get("MAX_WINDOW_TOKENS", _NO_LIMIT)
#: Largest dimension of any tensor argument (kMaxDim).
MAX_DIM = LIMITS.get("MAX_DIM", _NO_LIMIT)
#: Largest patch-merging channel count ``C`` (kMaxMergeChannels): ``4C <= 2**30``.
MAX_MERGE_CHANNELS = LIMITS.get("MAX_MERGE_CHANNELS", _NO_LIMIT)
#: Largest add_layernorm / bias_gelu channel count (kMaxLayerNormChannels).
MAX_LAYERNORM_CHANNELS = LIMITS.get("MAX_LAYERNORM_CHANNELS", _NO_LIMIT)
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1  # largest relative-position table (kMaxInt32Rows)

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def in_dtype(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``t`` in ``dtype`` (``None`` stays ``None``): ``t`` itself, without a dispatch, when it already is.

    Why not ``t.to(dtype)``: the same result, but each call costs the host a dispatch (~1 us), and the
    ops' unchecked paths, which the models call per block, make several a call."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _exc(raw: bool, kind: Type[Exception], msg: str) -> Exception:
    """``kind(msg)`` for the public API; ``RuntimeError`` for a raw op (as TORCH_CHECK raises)."""
    return RuntimeError(msg) if raw else kind(msg)


def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, torch.SymInt)) and not isinstance(v, bool)


def int_arg(v, name: str, raw: bool = False, where: str = "swin_ext"):
    """``v`` as an int; floats, bools, strings and tensors are refused (never truncated)."""
    if not _is_int(v):
        raise _exc(raw, TypeError, f"{where}: {name} must be an int, got {type(v).__name__} {v!r}")
    return v if isinstance(v, torch.SymInt) else int(v)


def axes_arg(v: Union[int, Sequence[int]], axes: int, name: str, raw: bool = False,
             where: str = "swin_ext") -> Tuple[int, ...]:
    """An int (the same on every axis) or a sequence of ``axes`` ints, one per map axis, as a tuple;
    anything else is a ``TypeError`` naming ``name``."""
    if _is_int(v):
        return (int_arg(v, name, raw, where),) * axes
    if isinstance(v, (str, bytes, torch.Tensor)) or not isinstance(v, Sequence) or len(v) != axes:
        what = "a pair of ints" if axes == 2 else f"{axes} ints (one per axis T, H, W)"
        raise _exc(raw, TypeError, f"{where}: {name} must be an int or {what}, got {v!r}")
    return tuple(int_arg(x, f"{name}[{i}]", raw, where) for i, x in enumerate(v))


def pair_arg(v: Union[int, Sequence[int]], name: str, raw: bool = False, where: str = "swin_ext") -> Tuple[int, int]:
    """``s`` or ``(s_h, s_w)`` of ints as a pair; anything else is a ``TypeError`` naming ``name``."""
    return axes_arg(v, 2, name, raw, where)  # type: ignore[return-value]


def real_arg(v, name: str, raw: bool = False, where: str = "swin_ext") -> float:
    """``v`` as a finite float.  A tensor is refused: it would be detached, its gradient lost."""
    if isinstance(v, torch.Tensor):
        raise _exc(
            raw,
            TypeError,
            f"{where}: {name} must be a Python number, got a Tensor; a tensor {name} would not be "
            f"differentiated (pass float({name}) if it needs no gradient)",
        )
    if isinstance(v, torch.SymFloat):
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise _exc(raw, TypeError, f"{where}: {name} must be a real number, got {type(v).__name__} {v!r}")
    if torch.compiler.is_compiling():
        return v  # may be traced symbolically (dynamic=True); the kernels' C++ check sees the value
    v = float(v)
    if not math.isfinite(v):
        raise _exc(raw, ValueError, f"{where}: {name} must be finite, got {v}")
    return v


def _static(*vals) -> bool:
    """All plain ints (not symbolic): overflow bounds are checked only then."""
    return all(isinstance(v, int) for v in vals)


def _check_tensor(t, name: str, ndim: Optional[int], raw: bool, where: str, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise _exc(raw, TypeError, f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise _exc(raw, TypeError, f"{where}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if dtypes is not None and t.dtype not in dtypes:
        raise _exc(raw, TypeError, f"{where}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise _exc(raw, ValueError, f"{where}: {name} must have {ndim} dims, got shape {tuple(t.shape)}")


def _check_dims(t: torch.Tensor, name: str, raw: bool, where: str) -> None:
    for i, s in enumerate(t.shape):
        if isinstance(s, int) and s > MAX_DIM:
            raise _exc(raw, ValueError, f"{where}: {name} dimension {i} is {s}, larger than the supported {MAX_DIM}")


def _check_device(a: torch.Tensor, b: torch.Tensor, an: str, bn: str, raw: bool, where: str) -> None:
    if a.device != b.device:
        raise _exc(raw, ValueError, f"{where}: {an} is on {a.device} but {bn} is on {b.device}")


def _check_vector(t, name: str, n, ref, ref_name: str, exact_dtypes: bool, raw: bool, where: str,
                  why: str = "") -> None:
    """``t`` is an ``(n,)`` tensor on ``ref``'s device (``exact_dtypes``: in ``ref``'s accumulation dtype)."""
    _check_tensor(t, name, 1, raw, where)
    if t.shape[0] != n:
        raise _exc(raw, ValueError, f"{where}: {name} must be ({n},){why}, got {tuple(t.shape)}")
    if exact_dtypes and t.dtype != acc_dtype(ref.dtype):
        raise _exc(raw, TypeError,
                   f"{where}: {name} must be {acc_dtype(ref.dtype)} for {ref_name} of dtype {ref.dtype}, got {t.dtype}")
    _check_device(ref, t, ref_name, name, raw, where)


def check_attention(
    qkv,
    bias,
    qkv_pad,
    window_size,
    shift,
    raw: bool = False,
    exact_dtypes: bool = False,
    where: str = "swin_ext.window_attention",
    video: bool = True,
) -> Tuple[Tuple[int, ...], Tuple[int, ...], int]:
    """Validate the attention arguments; returns ``(window, shift, heads)``, ``window`` and
    ``shift`` with one entry per map axis: ``(h, w)`` for ``qkv (B, H, W, 3C)``, ``(t, h, w)``
    for ``qkv (B, T, H, W, 3C)`` (``video=False``: 2-D maps only).

    ``exact_dtypes``: the raw op's contract (bias in the accumulation dtype,
    ``qkv_pad`` in ``qkv``'s dtype); the wrappers convert instead.
    """
    _check_tensor(qkv, "qkv", None, raw, where)
    if qkv.dim() != 4 and not (video and qkv.dim() == 5):
        also = " or 5 dims (B, T, H, W, 3C)" if video else ""
        raise _exc(raw, ValueError, f"{where}: qkv must have 4 dims (B, H, W, 3C){also}, got shape {tuple(qkv.shape)}")
    _check_dims(qkv, "qkv", raw, where)
    _check_tensor(bias, "bias", None, raw, where)
    axes = qkv.dim() - 2
    window = axes_arg(window_size, axes, "window_size", raw, where)
    for w in window:
        if _static(w) and not 1 <= w <= MAX_WINDOW_SIZE:
            raise _exc(raw, ValueError, f"{where}: window_size must be in [1, {MAX_WINDOW_SIZE}], got {w}")
    shifts = axes_arg(shift, axes, "shift", raw, where)
    if not all(0 <= s < w for s, w in zip(shifts, window)):
        raise _exc(raw, ValueError, f"{where}: shift must satisfy 0 <= shift < window_size on every axis, got shift "
                                    f"{shifts} for window_size {window}")
    N = math.prod(window)
    if _static(N) and N > MAX_WINDOW_TOKENS:
        raise _exc(raw, ValueError, f"{where}: a window of {window} holds {N} tokens, more than the supported "
                                    f"{MAX_WINDOW_TOKENS}")
    C3 = qkv.shape[-1]
    if C3 % 3 != 0:
        raise _exc(raw, ValueError, f"{where}: last dim of qkv must be 3*C, got {C3}")
    rows = bias_table_rows(window)
    if not ((bias.dim() == 3 and tuple(bias.shape[1:]) == (N, N)) or (bias.dim() == 2 and bias.shape[0] == rows)):
        raise _exc(
            raw, ValueError,
            f"{where}: bias must be (heads, {N}, {N}) or the relative-position table ({rows}, heads) for "
            f"window_size {window}, got {tuple(bias.shape)}"
        )
    if bias.dim() == 2 and _static(rows) and rows > _INT32_MAX:
        raise _exc(raw, ValueError, f"{where}: the relative-position table of window_size {window} has {rows} "
                                    f"rows, more than the supported {_INT32_MAX}; pass the gathered (heads, N, N) bias")
    heads = bias.shape[-1] if bias.dim() == 2 else bias.shape[0]
    if heads < 1 or (C3 // 3) % heads != 0:
        raise _exc(raw, ValueError, f"{where}: channels C={C3 // 3} are not divisible by heads={heads}")
    if exact_dtypes and bias.dtype != acc_dtype(qkv.dtype):
        raise _exc(
            raw,
            TypeError,
            f"{where}: bias must be {acc_dtype(qkv.dtype)} for qkv of dtype {qkv.dtype}, got {bias.dtype}",
        )
    _check_device(qkv, bias, "qkv", "bias", raw, where)
    if qkv_pad is not None:
        _check_tensor(qkv_pad, "qkv_pad", 1, raw, where)
        if qkv_pad.shape[0] != C3:
            raise _exc(raw, ValueError, f"{where}: qkv_pad must be ({C3},), got {tuple(qkv_pad.shape)}")
        if exact_dtypes and qkv_pad.dtype != qkv.dtype:
            raise _exc(raw, TypeError, f"{where}: qkv_pad dtype {qkv_pad.dtype} differs from qkv dtype {qkv.dtype}")
        _check_device(qkv, qkv_pad, "qkv", "qkv_pad", raw, where)
    B, sizes = qkv.shape[0], tuple(qkv.shape[1:-1])
    if _static(B, heads, *sizes, *window):
        nW = num_windows(sizes, window)
        if B * nW * heads * N > _INT64_MAX:
            raise _exc(
                raw, ValueError, f"{where}: the lse size B * windows * heads * N = {B}*{nW}*{heads}*{N} overflows int64"
            )
    return window, shifts, heads


def bias_table_rows(window: Sequence[int]) -> int:
    """Rows of the relative-position bias table of a window (one entry per axis): ``prod(2 w - 1)``,
    the table form of the attention's ``bias`` (``csrc/bias_table.h``)."""
    rows = 1
    for w in window:
        rows *= 2 * w - 1
    return rows


def num_windows(sizes: Sequence[int], window: Sequence[int]) -> int:
    """Windows per image of a map of ``sizes`` (padded to window multiples).  A loop, not
    ``math.prod`` of a generator: torch.compile's fullgraph tracing takes no generator there."""
    nW = 1
    for n, w in zip(sizes, window):
        nW *= -(-n // w)
    return nW


def check_attention_v2(
    qkv,
    bias,
    head_scale,
    qkv_pad,
    window_size,
    shift,
    raw: bool = False,
    exact_dtypes: bool = False,
    where: str = "swin_ext.window_attention_v2",
) -> Tuple[int, int, int, int]:
    """Validate Swin V2 attention arguments (a 2-D map, a square window): those of
    :func:`check_attention` plus ``head_scale`` ``(heads,)`` (``exact_dtypes``: in the
    accumulation dtype); returns ``(window_size, shift_h, shift_w, heads)``."""
    ws = int_arg(window_size, "window_size", raw, where)
    (ws, _), (sh, sw), heads = check_attention(qkv, bias, qkv_pad, ws, shift, raw, exact_dtypes, where, video=False)
    _check_vector(head_scale, "head_scale", heads, qkv, "qkv", exact_dtypes, raw, where, " (one scale per head)")
    return ws, sh, sw, heads


def attention_scale(scale, qkv, heads: int, where: str) -> float:
    """The logit scale: ``scale`` checked as a real number, or the default ``head_dim ** -0.5``."""
    if scale is not None:
        return real_arg(scale, "scale", where=where)
    C = qkv.shape[-1] // 3
    if C == 0:
        raise ValueError(
            f"{where}: qkv has C = 0 channels, so the default scale "
            "head_dim ** -0.5 is undefined; pass scale explicitly"
        )
    return (C // heads) ** -0.5


def check_merging(
    x,
    weight,
    bias,
    raw: bool = False,
    exact_dtypes: bool = False,
    where: str = "swin_ext.patch_merging",
    branch=None,
) -> None:
    """Validate the patch-merging arguments (``exact_dtypes``: weight/bias in the accumulation dtype).

    ``branch``: ``None`` or the pending residual branch, a floating tensor of ``x``'s shape on its device.
    """
    _check_tensor(x, "x", 4, raw, where)
    _check_dims(x, "x", raw, where)
    _check_tensor(weight, "weight", 1, raw, where)
    _check_tensor(bias, "bias", 1, raw, where)
    B, H, W, C = x.shape
    if _static(C) and C > MAX_MERGE_CHANNELS:
        raise _exc(raw, ValueError, f"{where}: C = {C} is larger than the supported {MAX_MERGE_CHANNELS}")
    C4 = 4 * C
    if weight.shape[0] != C4 or bias.shape[0] != C4:
        raise _exc(
            raw,
            ValueError,
            f"{where}: weight and bias must be ({C4},) for x with C={C}, "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}",
        )
    if exact_dtypes:
        acc = acc_dtype(x.dtype)
        if weight.dtype != acc or bias.dtype != acc:
            raise _exc(
                raw,
                TypeError,
                f"{where}: weight/bias must be {acc} for x of dtype {x.dtype}, got {weight.dtype} and {bias.dtype}",
            )
    _check_device(x, weight, "x", "weight", raw, where)
    _check_device(x, bias, "x", "bias", raw, where)
    if branch is not None:
        _check_tensor(branch, "branch", None, raw, where)
        if tuple(branch.shape) != tuple(x.shape):
            raise _exc(
                raw, ValueError, f"{where}: branch must have the shape of x {tuple(x.shape)}, got {tuple(branch.shape)}"
            )
        _check_device(x, branch, "x", "branch", raw, where)
    if _static(B, H, W, C) and B * -(-H // 2) * -(-W // 2) * C4 > _INT64_MAX:
        raise _exc(raw, ValueError, f"{where}: the output size B * H2 * W2 * 4C overflows int64")


def dtype_arg(v, name: str, raw: bool = False, where: str = "swin_ext") -> Optional[torch.dtype]:
    """``None`` or one of the four floating dtypes."""
    if v is None:
        return None
    if not isinstance(v, torch.dtype):
        raise _exc(raw, TypeError, f"{where}: {name} must be a torch.dtype or None, got {type(v).__name__} {v!r}")
    if v not in FLOAT_DTYPES:
        raise _exc(raw, TypeError, f"{where}: {name} must be float32, float64, float16 or bfloat16, got {v}")
    return v


def _check_layernorm_input(t, name: str, raw: bool, where: str) -> int:
    """A ``(..., C)`` LayerNorm input; returns ``C``."""
    _check_tensor(t, name, None, raw, where)
    if t.dim() < 1:
        raise _exc(raw, ValueError, f"{where}: {name} must be (..., C) with at least one dim, got a scalar")
    _check_dims(t, name, raw, where)
    C = t.shape[-1]
    if _static(C) and not 1 <= C <= MAX_LAYERNORM_CHANNELS:
        raise _exc(
            raw, ValueError, f"{where}: the last dim C of {name} must be in [1, {MAX_LAYERNORM_CHANNELS}], got {C}"
        )
    if _static(*t.shape) and math.prod(t.shape) > _INT64_MAX:
        raise _exc(raw, ValueError, f"{where}: the element count of {name} overflows int64")
    return C


def check_add_layernorm(
    x, branch, weight, bias, raw: bool = False, exact_dtypes: bool = False, where: str = "swin_ext.add_layernorm"
) -> int:
    """Validate the add_layernorm arguments; returns ``C``.

    ``exact_dtypes``: the raw op's contract (weight/bias in the accumulation
    dtype of ``x``); the wrapper converts instead.
    """
    C = _check_layernorm_input(x, "x", raw, where)
    _check_tensor(branch, "branch", None, raw, where)
    if tuple(branch.shape) != tuple(x.shape):
        raise _exc(
            raw, ValueError, f"{where}: branch must have the shape of x {tuple(x.shape)}, got {tuple(branch.shape)}"
        )
    _check_tensor(weight, "weight", 1, raw, where)
    _check_tensor(bias, "bias", 1, raw, where)
    if weight.shape[0] != C or bias.shape[0] != C:
        raise _exc(
            raw,
            ValueError,
            f"{where}: weight and bias must be ({C},), got {tuple(weight.shape)} and {tuple(bias.shape)}",
        )
    if exact_dtypes:
        acc = acc_dtype(x.dtype)
        if weight.dtype != acc or bias.dtype != acc:
            raise _exc(
                raw,
                TypeError,
                f"{where}: weight/bias must be {acc} for x of dtype {x.dtype}, got {weight.dtype} and {bias.dtype}",
            )
    _check_device(x, branch, "x", "branch", raw, where)
    _check_device(x, weight, "x", "weight", raw, where)
    _check_device(x, bias, "x", "bias", raw, where)
    return C


def check_add_layernorm_bwd(
    grad_h, grad_y, h, weight, mean, rstd, branch_dtype, where: str = "swin_ext.add_layernorm_bwd"
) -> int:
    """Validate the raw add_layernorm_bwd arguments (``RuntimeError``, as the kernels); returns ``C``."""
    raw = True
    C = _check_layernorm_input(h, "h", raw, where)
    _check_tensor(grad_y, "grad_y", None, raw, where)
    if tuple(grad_y.shape) != tuple(h.shape):
        raise _exc(
            raw, ValueError, f"{where}: grad_y must have the shape of h {tuple(h.shape)}, got {tuple(grad_y.shape)}"
        )
    if grad_h is not None:
        _check_tensor(grad_h, "grad_h", None, raw, where)
        if tuple(grad_h.shape) != tuple(h.shape) or grad_h.dtype != h.dtype:
            raise _exc(
                raw,
                ValueError,
                f"{where}: grad_h must be {h.dtype} {tuple(h.shape)}, got {grad_h.dtype} {tuple(grad_h.shape)}",
            )
        _check_device(h, grad_h, "h", "grad_h", raw, where)
    acc = acc_dtype(h.dtype)
    _check_tensor(weight, "weight", 1, raw, where)
    if weight.shape[0] != C or weight.dtype != acc:
        raise _exc(raw, ValueError, f"{where}: weight must be {acc} ({C},), got {weight.dtype} {tuple(weight.shape)}")
    rows = tuple(h.shape[:-1])
    for name, t in (("mean", mean), ("rstd", rstd)):
        _check_tensor(t, name, None, raw, where)
        if tuple(t.shape) != rows or t.dtype != acc:
            raise _exc(raw, ValueError, f"{where}: mean/rstd must be {acc} {rows}, got {t.dtype} {tuple(t.shape)}")
    dtype_arg(branch_dtype, "branch_dtype", raw, where)
    for name, t in (("grad_y", grad_y), ("weight", weight), ("mean", mean), ("rstd", rstd)):
        _check_device(h, t, "h", name, raw, where)
    return C


def check_bias_gelu(z, bias, raw: bool = False, exact_dtypes: bool = False, where: str = "swin_ext.bias_gelu") -> int:
    """Validate the bias_gelu arguments (``z (..., K)``, ``bias (K,)``); returns ``K``.

    ``exact_dtypes``: the raw op's contract (bias in the accumulation dtype of ``z``).
    """
    K = _check_layernorm_input(z, "z", raw, where)
    _check_vector(bias, "bias", K, z, "z", exact_dtypes, raw, where, f" for z of shape {tuple(z.shape)}")
    return K

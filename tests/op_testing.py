"""The one op table: every op's cases, run on every executor the machine has.

Per op (every name of ``swin_ext.ops.OPS``): a kernel case table
(``ATTN_CASES``, ``ATTN_V2_CASES``, ``MERGE_CASES``, ``LN_CASES``,
``BG_CASES``) with its ``run_*`` / ``check_*`` pair, ``OPCHECK`` rows
(``torch.library.opcheck`` of the registered op: schema, fakes, autograd
registration) and ``GRADCHECK`` rows (float64 ``gradcheck`` of the wrapper,
a second opinion against the reference composite, and ``gradgradcheck``
where marked).  ``tests/test_<op>.py`` runs them; ``benchmarks/gradcheck.py``
prints the ``GRADCHECK`` rows as a table for users.

An *executor* runs the raw ``<op>_fwd`` / ``<op>_bwd`` ops with the shared
schemas:

* ``cpu``               the CPU kernels (``torch.ops.swin_ext`` on CPU tensors);
* ``harness-ordered``   the CUDA kernels run by the CPU harness
  (``torch.ops.swin_ext_harness``), threads in order on one OS thread;
* ``harness-shuffled``  the same, threads in a random order between barriers,
  blocks on two OS threads;
* ``cuda``              the CUDA kernels on the GPU (``torch.ops.swin_ext`` on
  CUDA tensors), only where a GPU and a CUDA build exist.

Every kernel case is compared with ``swin_ext.ops.reference`` by one
tolerance rule (:func:`check_close`), as torchvision's ``RoIOpTester`` does
for its ops.  The wrapper rows (opcheck, gradcheck) run where the wrappers
run: the ``cpu`` and ``cuda`` executors (the harness library registers raw
kernels only).  Inputs are drawn from a generator seeded by the test id
(conftest.py).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import pytest
import torch

from swin_ext.ops import acc_dtype

import harness_build as hb

ASAN_CHILD = os.environ.get("SWIN_HARNESS_VARIANT") == "asan"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
#: a wrapper against the reference composite in the same dtype
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}


# ----------------------------------------------------------------------------- executors


def _cuda_available() -> bool:
    try:
        import swin_ext
    except ImportError:
        return False
    return torch.cuda.is_available() and swin_ext.HAS_OPS and swin_ext.build_info()["cuda"]


_harness_ops = None


def harness_ops():
    """``torch.ops.swin_ext_harness`` (built once per session), or a skip saying why not."""
    global _harness_ops
    if _harness_ops is None:
        if ASAN_CHILD:
            lib = hb.outputs()["lib_asan"]
            assert os.path.exists(lib), "the parent test session builds the ASan library"
        else:
            try:
                hb.build()
            except hb.BuildUnavailable as e:
                pytest.skip(f"CUDA harness cannot be built here: {e}")
            lib = hb.require("lib")
        torch.ops.load_library(lib)
        _harness_ops = torch.ops.swin_ext_harness
    return _harness_ops


@dataclass
class Executor:
    name: str
    device: str
    ops: object
    mode: Optional[Tuple[int, int]] = None  # harness (shuffle seed, OS threads)

    def __enter__(self):
        if self.mode is not None:
            self.ops.set_options(*self.mode)
        return self

    def __exit__(self, *exc):
        if self.mode is not None:
            self.ops.clear_options()

    @property
    def is_cuda_kernel(self) -> bool:
        """Runs the CUDA kernel sources (harness or GPU)."""
        return self.name != "cpu"

    def require_wrappers(self) -> None:
        """Skip unless the public wrappers run here (``cpu``, ``cuda``; the harness has raw kernels only)."""
        if self.name.startswith("harness"):
            pytest.skip("the harness library registers the raw kernels only (no fakes, no autograd)")


def executor_names() -> List[str]:
    """Executors of this process: the ASan child re-runs the harness in one mode."""
    if ASAN_CHILD:
        return ["harness-shuffled"]
    only = os.environ.get("SWIN_TEST_EXECUTORS")
    names = ["cpu", "harness-ordered", "harness-shuffled", "cuda"]
    return [n for n in names if n in only.split(",")] if only else names


def make_executor(name: str) -> Executor:
    if name == "cpu":
        import swin_ext

        if not swin_ext.HAS_OPS:
            pytest.skip("swin_ext._C is not built")
        return Executor(name, "cpu", torch.ops.swin_ext)
    if name.startswith("harness"):
        seed, workers = (0, 1) if name == "harness-ordered" else (12345, 2)
        return Executor(name, "cpu", harness_ops(), (seed, workers))
    if name == "cuda":
        if not _cuda_available():
            pytest.skip("needs a GPU and a CUDA build of swin_ext")
        return Executor(name, "cuda", torch.ops.swin_ext)
    raise ValueError(name)


# ----------------------------------------------------------------------------- tolerance


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check_close(name: str, got: torch.Tensor, exact: torch.Tensor, comp: torch.Tensor, floor: torch.Tensor,
                dtype: torch.dtype) -> None:
    """The one tolerance rule.

    float32 / float64: close to the float64 reference.  float16 / bfloat16:
    error at most ~2x that of the plain PyTorch composite run in the same
    dtype (flash-attention's rule) -- or of the rounding floor, the exact
    result computed from the kernel's rounded inputs and rounded like its
    output, which no kernel can beat (on a few dozen elements the composite
    is sometimes luckier than that).  NaN never passes (an element no kernel
    wrote is NaN in the harness).
    """
    got = got.detach().cpu()
    assert got.shape == exact.shape, (name, tuple(got.shape), tuple(exact.shape))
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an element no kernel wrote is NaN)"
    if dtype in (torch.float32, torch.float64):
        tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=5e-5, rtol=5e-5)
        torch.testing.assert_close(got.double(), exact.double(), **tol, msg=lambda m: f"{name}: {m}")
    else:
        err, err_comp, err_floor = max_err(got, exact), max_err(comp, exact), max_err(floor, exact)
        assert err <= 2 * max(err_comp, err_floor) + 1e-3, (name, err, err_comp, err_floor)


# ----------------------------------------------------------------------------- attention


@dataclass(frozen=True)
class AttnCase:
    B: int
    H: int
    W: int
    ws: Union[int, Tuple[int, ...]]  # a side, or one per map axis ((wh, ww) / (wt, wh, ww))
    shift: Tuple[int, ...]  # one per map axis
    heads: int
    d: int
    pad: bool  # a qkv_pad vector (else zero padding)
    T: Optional[int] = None  # frames of a 3-D clip (None: a 2-D map)

    @property
    def video(self) -> bool:
        return self.T is not None

    @property
    def sizes(self) -> Tuple[int, ...]:
        """The map's own sizes: (H, W) or (T, H, W)."""
        return (self.H, self.W) if self.T is None else (self.T, self.H, self.W)

    @property
    def window(self) -> Tuple[int, ...]:
        """The window per map axis."""
        return tuple(self.ws) if isinstance(self.ws, tuple) else (self.ws,) * len(self.sizes)

    @property
    def N(self) -> int:
        return math.prod(self.window)

    @property
    def id(self) -> str:
        pad = "-pad" if self.pad else ""
        size = "x".join(map(str, self.sizes))
        ws = "x".join(map(str, self.window)) if isinstance(self.ws, tuple) else str(self.ws)
        return f"B{self.B}-{size}-ws{ws}-s{''.join(map(str, self.shift))}-h{self.heads}-d{self.d}{pad}"


# Window 1 to 16 (N = 1 ... 256), head_dim 8 ... 128 (specialised 16/32/64/128
# and generic), B = 0 / 1 / odd, shifted and unshifted, padded (with and
# without a pad vector), maps smaller than the window.
ATTN_CASES = [
    AttnCase(2, 8, 8, 4, (0, 0), 2, 16, False),
    AttnCase(1, 9, 11, 4, (2, 1), 1, 32, True),  # padded, per-axis shift
    AttnCase(1, 14, 14, 7, (3, 3), 2, 32, False),  # Swin-T's window
    AttnCase(3, 13, 10, 7, (0, 0), 1, 16, True),  # odd batch, padded
    AttnCase(1, 5, 3, 7, (3, 3), 1, 64, True),  # map smaller than the window
    AttnCase(1, 16, 8, 8, (4, 4), 1, 64, False),  # N = 64: the largest single tile
    AttnCase(1, 3, 3, 1, (0, 0), 2, 8, False),  # N = 1
    AttnCase(0, 7, 7, 7, (3, 3), 1, 32, False),  # empty batch
    AttnCase(2, 6, 7, 3, (1, 1), 3, 20, True),  # generic head_dim, not a vector multiple
    AttnCase(1, 10, 10, 5, (2, 2), 2, 24, False),  # generic head_dim, vector multiple
    AttnCase(1, 8, 8, 8, (0, 0), 1, 128, True),  # N = 64, head_dim 128
    AttnCase(1, 12, 12, 12, (0, 0), 1, 32, False),  # N = 144: streaming
    AttnCase(1, 14, 13, 12, (6, 6), 1, 16, True),  # N = 144, padded, shifted
    AttnCase(1, 9, 9, 9, (4, 4), 1, 96, True),  # N = 81, generic head_dim 96
    AttnCase(1, 16, 16, 16, (8, 8), 1, 32, False),  # N = 256
    AttnCase(1, 17, 9, 16, (0, 0), 1, 128, True),  # N = 256, head_dim 128, padded
    AttnCase(1, 7, 14, 7, (0, 3), 3, 5, False),  # one axis shifted, odd head_dim, 3 heads
    AttnCase(3, 8, 8, 4, (1, 3), 4, 8, False),  # asymmetric shift, 4 heads
    AttnCase(4, 5, 3, 7, (0, 0), 2, 8, False),  # map smaller than the window, unshifted
    AttnCase(1, 9, 10, 9, (4, 4), 1, 12, True),  # N = 81 (two key tiles), head_dim not a vector multiple
    AttnCase(1, 7, 9, (3, 4), (1, 2), 2, 8, True),  # a non-square 2-D window, padded, shifted
    # 3-D clips (Video Swin): one geometry, T = 1 / window depth 1 is the 2-D map
    AttnCase(2, 6, 6, (2, 3, 3), (1, 1, 1), 2, 8, False, T=4),  # divisible, shifted on every axis
    AttnCase(1, 7, 5, (4, 3, 3), (2, 1, 1), 1, 16, True, T=5),  # odd T/H/W: padded on every axis, then shifted
    AttnCase(1, 4, 9, (2, 7, 3), (1, 0, 2), 2, 8, True, T=3),  # window taller than the map, H unshifted
    AttnCase(3, 5, 4, (3, 2, 2), (0, 1, 0), 1, 8, False, T=2),  # T shorter than the window, odd batch
    AttnCase(1, 7, 7, (8, 7, 7), (4, 3, 3), 1, 32, False, T=8),  # Video Swin's window, N = 392, 27 regions
    AttnCase(2, 6, 7, (1, 3, 3), (0, 1, 1), 2, 16, True, T=3),  # window depth 1: frames of 2-D windows
    AttnCase(0, 4, 4, (2, 2, 2), (1, 1, 1), 1, 8, False, T=2),  # empty batch
]


# Swin V2 (cosine attention, per-head scale) on the same kernels: the
# single-tile and streaming paths, padded with a pad vector, shifted, an
# empty batch, a generic head_dim, and window 24 (N = 576, the 384-px
# fine-tunes).
ATTN_V2_CASES = [
    AttnCase(2, 8, 8, 4, (2, 2), 2, 16, False),
    AttnCase(1, 9, 11, 4, (2, 1), 1, 32, True),
    AttnCase(1, 16, 16, 8, (4, 4), 2, 32, True),  # timm's swinv2 window 8, N = 64
    AttnCase(0, 8, 8, 8, (4, 4), 1, 32, False),  # empty batch
    AttnCase(2, 6, 7, 3, (1, 1), 3, 20, True),  # generic head_dim
    AttnCase(1, 13, 12, 12, (6, 6), 1, 32, True),  # N = 144: streaming, padded
    AttnCase(1, 16, 16, 16, (8, 8), 1, 16, False),  # window 16, N = 256
    AttnCase(1, 24, 24, 24, (12, 12), 1, 16, False),  # window 24, N = 576
]


def attention_inputs(
    case: AttnCase, gen: torch.Generator, dtype: torch.dtype, v2: bool = False, table: bool = False
) -> Dict[str, Optional[torch.Tensor]]:
    """float64 inputs of a case (large logits in half precision, where overflow would show).

    v2: also a per-head ``head_scale`` in [1, 21) (``exp(logit_scale)``; the
    cosine logits times it span up to +-21).  table: ``bias`` is the
    relative-position table ``(rows, heads)`` (the ops read it through the
    standard index; the reference gathers it), not the ``(heads, N, N)`` bias.
    """
    C = case.heads * case.d
    big = 1.0 if dtype in (torch.float32, torch.float64) else 3.0
    f64 = dict(dtype=torch.float64, generator=gen)
    rows = math.prod(2 * w - 1 for w in case.window)
    inp = dict(
        qkv=torch.randn(case.B, *case.sizes, 3 * C, **f64) * big,
        bias=torch.randn(rows, case.heads, **f64) if table else torch.randn(case.heads, case.N, case.N, **f64),
        pad=torch.randn(3 * C, **f64) if case.pad else None,
        go=torch.randn(case.B, *case.sizes, C, **f64),
    )
    if v2:
        inp["head_scale"] = torch.rand(case.heads, **f64) * 20 + 1
    return inp


def run_attention(ex: Executor, case: AttnCase, inp: Dict, dtype: torch.dtype, scale: float):
    """fwd + bwd of the raw ops on an executor; returns out, lse, dqkv, dbias, dpad (and
    dscale for V2 inputs, which carry ``head_scale``; ``scale`` is then unused) on the CPU."""
    acc = acc_dtype(dtype)
    dev = ex.device
    low = lambda t: None if t is None else t.to(dev, dtype)  # noqa: E731
    bias = inp["bias"].to(dev, acc)
    with ex:
        if "head_scale" in inp:
            sh, sw = case.shift
            hs = inp["head_scale"].to(dev, acc)
            out, lse = ex.ops.window_attention_v2_fwd(low(inp["qkv"]), bias, low(inp["pad"]), hs, case.ws, sh, sw)
            dqkv, dbias, dpad, dscale = ex.ops.window_attention_v2_bwd(
                low(inp["go"]), low(inp["qkv"]), bias, low(inp["pad"]), hs, lse, case.ws, sh, sw
            )
            got = dict(out=out, lse=lse, dqkv=dqkv, dbias=dbias, dpad=dpad, dscale=dscale)
        else:
            window, shift = list(case.window), list(case.shift)
            out, lse = ex.ops.window_attention_fwd(low(inp["qkv"]), bias, low(inp["pad"]), window, shift, scale)
            dqkv, dbias, dpad = ex.ops.window_attention_bwd(
                low(inp["go"]), low(inp["qkv"]), bias, low(inp["pad"]), lse, window, shift, scale
            )
            got = dict(out=out, lse=lse, dqkv=dqkv, dbias=dbias, dpad=dpad)
    return {k: v.cpu() for k, v in got.items()}


def _as_reference(t: torch.Tensor, prec: torch.dtype, rnd: Optional[torch.dtype]) -> torch.Tensor:
    """A fresh copy of ``t`` (never the caller's tensor) in ``prec``, or with ``rnd`` in float64 from
    its values rounded to ``prec``."""
    t = t.to(prec, copy=True)
    return t.double() if rnd else t


def _reference_inputs(
    case: AttnCase, inp: Dict, prec: torch.dtype, bias_prec: torch.dtype, rnd: Optional[torch.dtype] = None
) -> Dict[str, Optional[torch.Tensor]]:
    """qkv, bias, pad (None on an unpadded case) and, for V2 inputs, head_scale as the reference
    composites take them: qkv and pad in ``prec`` (``rnd``: rounded to it, in float64), bias and
    head_scale in ``bias_prec``."""
    x = {
        "qkv": _as_reference(inp["qkv"], rnd or prec, rnd),
        "bias": _as_reference(inp["bias"], bias_prec, rnd),
        "pad": _as_reference(inp["pad"], rnd or prec, rnd) if case.pad else None,
    }
    if "head_scale" in inp:
        x["head_scale"] = _as_reference(inp["head_scale"], bias_prec, rnd)
    return x


def attention_reference(
    case: AttnCase,
    inp: Dict,
    scale: float,
    prec: torch.dtype,
    bias_prec: torch.dtype,
    rnd: Optional[torch.dtype] = None,
) -> List[torch.Tensor]:
    """out, dqkv, dbias(, dpad)(, dscale) of the reference composite (V2 when ``inp`` has ``head_scale``).

    rnd: compute in float64 from inputs rounded to ``rnd`` (the rounding floor).
    """
    from swin_ext.ops.reference import window_attention_reference, window_attention_v2_reference

    x = _reference_inputs(case, inp, prec, bias_prec, rnd)
    leaves = [x[k].requires_grad_() for k in ("qkv", "bias", "pad", "head_scale") if x.get(k) is not None]
    if "head_scale" in x:
        out = window_attention_v2_reference(x["qkv"], x["bias"], x["head_scale"], case.ws, case.shift, x["pad"])
    else:
        out = window_attention_reference(x["qkv"], x["bias"], case.window, case.shift, scale, x["pad"])
    if out.numel() == 0:
        return [out] + [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(
        out, leaves, _as_reference(inp["go"], rnd or prec, rnd), allow_unused=True
    )  # pad: unused on unpadded maps
    return [out] + [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def check_attention(case: AttnCase, inp: Dict, got: Dict, dtype: torch.dtype, scale: float) -> None:
    acc = acc_dtype(dtype)
    v2 = "head_scale" in inp
    assert got["out"].dtype == dtype and got["out"].shape == (case.B, *case.sizes, case.heads * case.d)
    nW = math.prod(-(-n // w) for n, w in zip(case.sizes, case.window))
    assert got["lse"].shape == (case.B, nW, case.heads, case.N)
    assert got["dqkv"].dtype == dtype and got["dbias"].dtype == acc and got["dpad"].dtype == acc
    assert got["dbias"].shape == inp["bias"].shape  # (heads, N, N), or the table's (rows, heads)
    if v2:
        assert got["dscale"].dtype == acc and got["dscale"].shape == (case.heads,)
    exact = attention_reference(case, inp, scale, torch.float64, torch.float64)
    names = ["out", "dqkv", "dbias"] + (["dpad"] if case.pad else []) + (["dscale"] if v2 else [])
    if dtype in (torch.float32, torch.float64):
        comp = floor = exact
    else:
        comp = attention_reference(case, inp, scale, dtype, dtype)
        # out and dqkv in the input dtype, the rest in the accumulation dtype
        out_dtypes = [dtype, dtype] + [acc] * (len(names) - 2)
        floor = [
            t.to(dt) for t, dt in zip(attention_reference(case, inp, scale, torch.float64, acc, rnd=dtype), out_dtypes)
        ]
    for i, name in enumerate(names):
        check_close(name, got[name], exact[i], comp[i], floor[i], dtype)
    if case.B and all(case.sizes):
        # Every row's log-sum-exp, padding tokens' rows included: the backward reads them all.
        want = attention_lse_reference(case, inp, scale, dtype)
        tol = LSE_TOL[dtype]
        torch.testing.assert_close(got["lse"].double(), want, rtol=tol, atol=tol, msg=lambda m: f"lse: {m}")


# The forward's log-sum-exp against the float64 one from the same rounded inputs: float32
# accumulation and the exp2 / log2 evaluation (|lse| < ~30 in these cases).
LSE_TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def attention_lse_reference(case: AttnCase, inp: Dict, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """(B, nW, heads, N) float64 log-sum-exp of every window row from the inputs as the kernels
    read them (qkv and pad in ``dtype``, bias and head_scale in its accumulation dtype)."""
    from swin_ext.ops.reference import window_attention_lse_reference

    x = _reference_inputs(case, inp, torch.float64, acc_dtype(dtype), rnd=dtype)
    if "head_scale" in x:
        return window_attention_lse_reference(x["qkv"], x["bias"], case.ws, case.shift, None, x["pad"],
                                              x["head_scale"])
    return window_attention_lse_reference(x["qkv"], x["bias"], case.window, case.shift, scale, x["pad"])


def assert_thread_independent(fn: Callable[[], Tuple[torch.Tensor, ...]]) -> None:
    """``fn()``'s tensors are bitwise the same at 1, 2 and again 1 threads (fixed-order reductions)."""
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            runs.append(fn())
    finally:
        torch.set_num_threads(before)
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)


def ops_dispatched(fn: Callable[[], object], prefix: str) -> List[str]:
    """The names of the ops starting with ``prefix`` that ``fn()`` dispatches, in order: the profiler's
    CPU events, which include the calls made inside C++ kernels, glue and autograd nodes (on a GPU
    each ATen call of the glue is a launch or an allocation)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return [e.name for e in p.events() if e.name.startswith(prefix)]


def _reference_leaf(inp: Dict, dt: Dict, exact: bool) -> Callable[[str], torch.Tensor]:
    """Input ``k`` rounded to its kernel dtype: in float64 (``exact``) or in that dtype; always a copy
    (never the caller's tensor: the callers set requires_grad)."""
    if exact:
        return lambda k: inp[k].to(dt[k]).to(torch.float64, copy=True)
    return lambda k: inp[k].to(dt[k], copy=True)


# ----------------------------------------------------------------------------- patch merging


@dataclass(frozen=True)
class MergeCase:
    B: int
    H: int
    W: int
    C: int
    branch: Union[None, str, torch.dtype] = None  # the pending branch: None (none), "x" (x's dtype) or its dtype
    y_dtype: Optional[torch.dtype] = None  # the op's y_dtype argument

    @property
    def id(self) -> str:
        b = ""
        if self.branch is not None:
            b = "-b" + (self.branch if isinstance(self.branch, str) else str(self.branch).split(".")[-1])
        y = f"-y{str(self.y_dtype).split('.')[-1]}" if self.y_dtype else ""
        return f"B{self.B}-{self.H}x{self.W}-C{self.C}" + b + y


BF16, HALF = torch.bfloat16, torch.float16
# Even and odd (zero-padded) sizes, 1-pixel maps, an empty batch, channel
# counts with and without a 16-byte vector multiple; with and without the
# pending branch, in every dtype mix (x's dtype, the autocast mixes of a
# bf16 / fp16 branch and output on a float32 stream, a float32 branch onto a
# low-precision stream); on the CUDA kernels: the streaming kernels (C not a
# vector multiple, float64), the register kernels with groups of a few lanes,
# of a warp, and (C = 384) of two and four warps, and several partial blocks
# of the register backward (B3-9x10-C96).
MERGE_CASES = [
    MergeCase(2, 8, 8, 16),
    MergeCase(1, 7, 9, 32),
    MergeCase(1, 5, 4, 48),
    MergeCase(2, 1, 3, 8),
    MergeCase(0, 4, 4, 8),
    MergeCase(3, 6, 5, 3),
    MergeCase(1, 9, 7, 96),
    MergeCase(0, 4, 4, 8, branch=BF16, y_dtype=BF16),
    MergeCase(2, 8, 8, 16, branch="x"),
    MergeCase(1, 7, 9, 32, branch=BF16, y_dtype=BF16),  # autocast bf16: float32 stream + bf16 branch, bf16 y
    MergeCase(1, 5, 4, 48, branch=HALF, y_dtype=HALF),  # autocast fp16
    MergeCase(3, 6, 5, 3, branch=BF16),                 # not a vector multiple, bf16 branch
    MergeCase(2, 1, 3, 8, y_dtype=BF16),                # no branch, bf16 y
    MergeCase(1, 5, 7, 24, branch=torch.float32),       # a float32 branch (onto a low-precision stream)
    MergeCase(3, 9, 10, 96, branch=BF16, y_dtype=BF16),  # several register-backward blocks
    MergeCase(1, 3, 4, 384, branch="x"),                # groups of 2 and 4 warps
]


def merge_dtypes(case: MergeCase, dtype: torch.dtype) -> Dict[str, Optional[torch.dtype]]:
    """The dtype of every input and output of a case run with x in ``dtype`` (``b``: None without a branch)."""
    acc, ydt = acc_dtype(dtype), case.y_dtype or dtype
    bdt = dtype if case.branch == "x" else case.branch
    return dict(x=dtype, b=bdt, w=acc, bb=acc, go=ydt, y=ydt, dx=dtype, dbranch=bdt, dweight=acc, dbias=acc)


def merge_inputs(case: MergeCase, gen: torch.Generator, scale: float = 1.0) -> Dict[str, torch.Tensor]:
    f64 = dict(dtype=torch.float64, generator=gen)
    H2, W2 = (case.H + 1) // 2, (case.W + 1) // 2
    return dict(
        x=(torch.randn(case.B, case.H, case.W, case.C, **f64) * 2 + 0.5) * scale,
        b=torch.randn(case.B, case.H, case.W, case.C, **f64) * scale,
        w=torch.randn(4 * case.C, **f64),
        bb=torch.randn(4 * case.C, **f64),
        go=torch.randn(case.B, H2, W2, 4 * case.C, **f64),
    )


def run_merging(
    ex: Executor, inp: Dict, dtype: torch.dtype, eps: float = 1e-5, case: Optional[MergeCase] = None
):
    """fwd + bwd of the raw ops on an executor; returns y, mean, rstd, dx, dbranch, dweight, dbias on the CPU.

    ``dbranch`` is the op's own output when the branch's dtype differs from
    x's, else ``dx`` (what the wrapper passes on); ``dbranch_raw`` is what the op returned.
    """
    case = case or MergeCase(0, 0, 0, 0)
    dt = merge_dtypes(case, dtype)
    dev = ex.device
    t = lambda k: inp[k].to(dev, dt[k])  # noqa: E731
    branch = t("b") if dt["b"] is not None else None
    branch_dtype = dt["b"] if dt["b"] is not None and dt["b"] != dtype else None
    with ex:
        y, mean, rstd = ex.ops.patch_merging_fwd(t("x"), t("w"), t("bb"), eps, branch, case.y_dtype)
        dx, dbranch, dw, db = ex.ops.patch_merging_bwd(t("go"), t("x"), t("w"), mean, rstd, branch, branch_dtype)
    out = dict(y=y, mean=mean, rstd=rstd, dx=dx, dbranch=dbranch if branch_dtype else dx, dbranch_raw=dbranch,
               dweight=dw, dbias=db)
    return {k: v.cpu() for k, v in out.items()}


def merging_reference(
    case: MergeCase, inp: Dict, dtype: torch.dtype, exact: bool, eps: float = 1e-5
) -> List[torch.Tensor]:
    """y, dx, dbranch (None without a branch), dweight, dbias of the reference composite.

    exact: in float64 from the inputs rounded to the kernel's dtypes; else in
    the kernel's own dtypes (the plain PyTorch composite of the same precision).
    """
    from swin_ext.ops.reference import patch_merging_reference

    dt = merge_dtypes(case, dtype)
    q = _reference_leaf(inp, dt, exact)
    x, w, bb = (q(k).requires_grad_() for k in ("x", "w", "bb"))
    br = q("b").requires_grad_() if dt["b"] is not None else None
    leaves = [x, w, bb] + ([br] if br is not None else [])
    out = patch_merging_reference(x, w, bb, eps, branch=br, y_dtype=None if exact else case.y_dtype)
    if out.numel() == 0:
        grads = [torch.zeros_like(t) for t in leaves]
    else:
        grads = list(torch.autograd.grad(out, leaves, q("go")))
    return [out, grads[0], grads[3] if br is not None else None, grads[1], grads[2]]


def check_merging(case: MergeCase, inp: Dict, got: Dict, dtype: torch.dtype) -> None:
    dt = merge_dtypes(case, dtype)
    acc = acc_dtype(dtype)
    H2, W2 = (case.H + 1) // 2, (case.W + 1) // 2
    names = ["y", "dx", "dbranch", "dweight", "dbias"]
    for k in names:
        if dt[k] is not None:
            assert got[k].dtype == dt[k], (k, got[k].dtype, dt[k])
    assert got["y"].shape == (case.B, H2, W2, 4 * case.C)
    assert got["mean"].shape == got["rstd"].shape == (case.B, H2, W2) and got["mean"].dtype == acc
    if dt["b"] in (None, dtype):
        assert got["dbranch_raw"].shape == (0,), "dbranch must be empty when branch_dtype is None"
    exact = merging_reference(case, inp, dtype, exact=True)
    comp = merging_reference(case, inp, dtype, exact=False)
    for i, name in enumerate(names):
        if exact[i] is None:
            continue
        # float32 / float64 results of float32 / float64 streams: close to float64; any low-precision
        # stream or output: the 2x-the-composite rule
        rule = dt[name] if dtype in (torch.float32, torch.float64) else dtype
        check_close(name, got[name], exact[i], comp[i], exact[i].to(dt[name]), rule)


# ----------------------------------------------------------------------------- add + LayerNorm


@dataclass(frozen=True)
class LnCase:
    shape: Tuple[int, ...]  # (..., C)
    branch: Optional[torch.dtype] = None  # the branch's dtype (None: x's)
    y_dtype: Optional[torch.dtype] = None  # the op's y_dtype argument
    grad_h: bool = True  # a gradient reaching h from its other uses

    @property
    def C(self) -> int:
        return self.shape[-1]

    @property
    def id(self) -> str:
        s = "x".join(map(str, self.shape))
        b = f"-b{str(self.branch).split('.')[-1]}" if self.branch else ""
        y = f"-y{str(self.y_dtype).split('.')[-1]}" if self.y_dtype else ""
        return s + b + y + ("" if self.grad_h else "-nogradh")


# C from 1 to 1536 (vector multiples and not), rows 0 / 1 / odd / several
# deterministic-partial blocks, mixed dtypes (a bf16 branch as autocast's
# Linear gives, a float32 branch onto a low-precision stream), y_dtype None
# and bf16, grad_h given and not.
LN_CASES = [
    LnCase((2, 3, 96)),  # Swin-T stage 1 channels
    LnCase((1, 1)),  # C = 1, one row: y is the bias
    LnCase((7, 3), grad_h=False),  # odd rows, C not a vector multiple, no grad_h
    LnCase((0, 8)),  # no rows
    LnCase((5, 8), branch=BF16, y_dtype=BF16),  # autocast: stream + bf16 branch, bf16 y
    LnCase((33, 100), y_dtype=BF16),  # two partial blocks, C = 100
    LnCase((2, 4, 384), branch=BF16),  # Swin-T stage 3
    LnCase((3, 1536), y_dtype=BF16, grad_h=False),  # the largest C of the spec
    LnCase((130, 96), branch=torch.float32),  # many rows, several partial blocks; float32 branch
    # The CUDA register path's lane groups (add_layernorm.cuh): 2 lanes per row with a
    # partial last chunk, 8 lanes, 32 lanes at the small capacity; above 1536 the wide path.
    LnCase((3, 40), branch=BF16),
    LnCase((2, 5, 192), y_dtype=BF16),
    LnCase((2, 768), branch=BF16, y_dtype=BF16),
    LnCase((2, 1600)),
]


def ln_inputs(case: LnCase, gen: torch.Generator, scale: float = 1.0) -> Dict[str, torch.Tensor]:
    f64 = dict(dtype=torch.float64, generator=gen)
    return dict(
        x=(torch.randn(*case.shape, **f64) * 2 + 0.5) * scale,
        b=torch.randn(*case.shape, **f64) * scale,
        w=torch.randn(case.C, **f64),
        bb=torch.randn(case.C, **f64),
        gh=torch.randn(*case.shape, **f64),
        gy=torch.randn(*case.shape, **f64),
    )


def ln_dtypes(case: LnCase, dtype: torch.dtype) -> Dict[str, torch.dtype]:
    """The dtype of every input and output of a case run with x in ``dtype``."""
    acc, bdt, ydt = acc_dtype(dtype), case.branch or dtype, case.y_dtype or dtype
    return dict(
        x=dtype, b=bdt, w=acc, bb=acc, gh=dtype, gy=ydt, h=dtype, y=ydt, dx=dtype, dbranch=bdt, dweight=acc, dbias=acc
    )


def at_storage_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A contiguous copy of ``t`` that starts ``offset`` elements into its storage (unaligned rows)."""
    if not offset:
        return t
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


def run_add_layernorm(
    ex: Executor, case: LnCase, inp: Dict, dtype: torch.dtype, eps: float = 1e-5, offset: int = 0
):
    """fwd + bwd of the raw ops on an executor; returns h, y, mean, rstd, dx, dbranch, dweight, dbias on the CPU.

    ``dbranch`` is the op's own output when the branch's dtype differs from
    x's, else ``dh`` (what the wrapper passes on); ``dbranch_raw`` is what the op returned.
    ``offset``: x, branch, grad_h and grad_y start that many elements into their storage.
    """
    dt = ln_dtypes(case, dtype)
    dev = ex.device
    t = lambda k: at_storage_offset(inp[k].to(dev, dt[k]), offset if k in ("x", "b", "gh", "gy") else 0)  # noqa: E731
    branch_dtype = dt["b"] if dt["b"] != dtype else None
    with ex:
        h, y, mean, rstd = ex.ops.add_layernorm_fwd(t("x"), t("b"), t("w"), t("bb"), eps, case.y_dtype)
        dh, dbranch, dw, db = ex.ops.add_layernorm_bwd(
            t("gh") if case.grad_h else None, t("gy"), h, t("w"), mean, rstd, branch_dtype
        )
    out = dict(
        h=h,
        y=y,
        mean=mean,
        rstd=rstd,
        dx=dh,
        dbranch=dbranch if branch_dtype else dh,
        dbranch_raw=dbranch,
        dweight=dw,
        dbias=db,
    )
    return {k: v.cpu() for k, v in out.items()}


def ln_reference(case: LnCase, inp: Dict, dtype: torch.dtype, exact: bool, eps: float = 1e-5) -> List[torch.Tensor]:
    """h, y, dx, dbranch, dweight, dbias of the reference composite.

    exact: in float64 from the inputs rounded to the kernel's dtypes; else in
    the kernel's own dtypes (the plain PyTorch composite of the same precision).
    """
    from swin_ext.ops.reference import add_layernorm_reference

    dt = ln_dtypes(case, dtype)
    q = _reference_leaf(inp, dt, exact)
    leaves = [q(k).requires_grad_() for k in ("x", "b", "w", "bb")]
    h, y = add_layernorm_reference(*leaves, eps, None if exact else case.y_dtype)
    if h.numel() == 0:
        return [h, y] + [torch.zeros_like(t) for t in leaves]
    outs, cots = [y], [q("gy")]
    if case.grad_h:
        outs.append(h)
        cots.append(q("gh"))
    return [h, y] + list(torch.autograd.grad(outs, leaves, cots))


def check_add_layernorm(case: LnCase, inp: Dict, got: Dict, dtype: torch.dtype) -> None:
    dt = ln_dtypes(case, dtype)
    acc = acc_dtype(dtype)
    rows = case.shape[:-1]
    for k in ("h", "y", "dx", "dbranch", "dweight", "dbias"):
        assert got[k].dtype == dt[k], (k, got[k].dtype, dt[k])
    assert got["h"].shape == got["y"].shape == case.shape and got["dweight"].shape == (case.C,)
    assert got["mean"].shape == got["rstd"].shape == rows and got["mean"].dtype == got["rstd"].dtype == acc
    if dt["b"] == dtype:
        assert got["dbranch_raw"].shape == (0,), "dbranch must be empty when branch_dtype is None"
    exact = ln_reference(case, inp, dtype, exact=True)
    comp = ln_reference(case, inp, dtype, exact=False)
    names = ["h", "y", "dx", "dbranch", "dweight", "dbias"]
    for i, name in enumerate(names):
        # float32 / float64 results of float32 / float64 streams: close to float64; any low-precision
        # stream or output: the 2x-the-composite rule
        rule = dt[name] if dtype in (torch.float32, torch.float64) else dtype
        check_close(name, got[name], exact[i], comp[i], exact[i].to(dt[name]), rule)
    if all(rows):
        assert torch.isfinite(got["mean"]).all() and (got["rstd"] > 0).all()


# ----------------------------------------------------------------------------- bias + GELU


@dataclass(frozen=True)
class BgCase:
    shape: Tuple[int, ...]  # (..., K)

    @property
    def K(self) -> int:
        return self.shape[-1]

    @property
    def id(self) -> str:
        return "x".join(map(str, self.shape))


# K from 1 to 1536 (vector multiples and not, wider than one 32-lane column
# slab), rows 0 / 1 / odd / several 128-row partial chunks, 3-d inputs.
BG_CASES = [
    BgCase((2, 5, 384)),  # Swin-T stage 1 hidden width
    BgCase((1, 1)),  # K = 1
    BgCase((7, 3)),  # odd rows, K not a vector multiple
    BgCase((0, 16)),  # no rows
    BgCase((300, 40)),  # three row chunks, K = 40 (bf16 vectors of 8, fp32 of 4, not fp64's 2 * 32 slab)
    BgCase((3, 1536)),  # Swin-T stage 3 hidden width, several column slabs
    BgCase((129, 264)),  # one row past a chunk, K past one slab in every dtype
    BgCase((5, 1544)),  # several column blocks, the last one with idle threads
]


def bg_inputs(case: BgCase, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    f64 = dict(dtype=torch.float64, generator=gen)
    return dict(z=torch.randn(*case.shape, **f64) * 2, b=torch.randn(case.K, **f64), gy=torch.randn(*case.shape, **f64))


def run_bias_gelu(ex: Executor, case: BgCase, inp: Dict, dtype: torch.dtype):
    """fwd + bwd of the raw ops on an executor; returns y, dz, dbias on the CPU."""
    acc = acc_dtype(dtype)
    dev = ex.device
    z, b, gy = inp["z"].to(dev, dtype), inp["b"].to(dev, acc), inp["gy"].to(dev, dtype)
    gy_inplace = gy.clone()
    with ex:
        y = ex.ops.bias_gelu_fwd(z, b)
        dz, db = ex.ops.bias_gelu_bwd(gy, z, b)
        db_inplace = ex.ops.bias_gelu_bwd_inplace(gy_inplace, z, b)  # dz written over gy_inplace
    out = dict(y=y, dz=dz, dbias=db, dz_inplace=gy_inplace, dbias_inplace=db_inplace)
    return {k: v.cpu() for k, v in out.items()}


def bg_reference(case: BgCase, inp: Dict, dtype: torch.dtype, exact: bool) -> List[torch.Tensor]:
    """y, dz, dbias of the reference composite: in float64 from the rounded inputs
    (exact), else in the kernel's own dtypes (the plain PyTorch composite)."""
    acc = acc_dtype(dtype)
    if exact:
        z = inp["z"].to(dtype).double().requires_grad_()
        b = inp["b"].to(acc).double().requires_grad_()
        gy = inp["gy"].to(dtype).double()
    else:
        z = inp["z"].to(dtype).requires_grad_()
        b = inp["b"].to(dtype).requires_grad_()
        gy = inp["gy"].to(dtype)
    y = torch.nn.functional.gelu(z + b)
    if y.numel() == 0:
        return [y, torch.zeros_like(z), torch.zeros_like(b)]
    dz, db = torch.autograd.grad(y, (z, b), gy)
    return [y, dz, db]


def check_bias_gelu(case: BgCase, inp: Dict, got: Dict, dtype: torch.dtype) -> None:
    acc = acc_dtype(dtype)
    assert got["y"].dtype == dtype and got["dz"].dtype == dtype and got["dbias"].dtype == acc
    assert got["y"].shape == got["dz"].shape == case.shape and got["dbias"].shape == (case.K,)
    exact = bg_reference(case, inp, dtype, exact=True)
    comp = bg_reference(case, inp, dtype, exact=False)
    for i, (name, odt) in enumerate((("y", dtype), ("dz", dtype), ("dbias", acc))):
        check_close(name, got[name], exact[i], comp[i], exact[i].to(odt), dtype)
    # bias_gelu_bwd_inplace is the same kernel writing over grad_y: the same bits
    for name in ("dz", "dbias"):
        assert torch.equal(got[f"{name}_inplace"], got[name]), name


# ----------------------------------------------------------------------------- opcheck rows

OpSample = Tuple[Any, tuple]  # (torch.ops.swin_ext.<op>_fwd/_bwd.default, args)


def _rand(*shape, device, dtype=torch.float32, grad=False) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(grad)


def _attn_opcheck(v2: bool, sample: str, device: str) -> OpSample:
    ops = torch.ops.swin_ext
    fwd, bwd = (
        (ops.window_attention_v2_fwd, ops.window_attention_v2_bwd)
        if v2
        else (ops.window_attention_fwd, ops.window_attention_bwd)
    )
    grad = sample == "fwd-requires-grad"
    if sample == "fwd-strided-float64":  # a transposed map, no pad vector
        qkv = _rand(1, 8, 8, 18, device=device, dtype=torch.float64).transpose(1, 2)
        bias = _rand(3, 16, 16, device=device, dtype=torch.float64, grad=True)
        extra = (torch.rand(3, dtype=torch.float64, device=device) + 1,) if v2 else ()
        return fwd.default, ((qkv, bias, None) + extra + ((4, 0, 0) if v2 else ([4, 4], [0, 0], 0.7)))
    video = "video" in sample  # a 3-D clip (B, T, H, W, 3C), window (2, 2, 3), V1 only
    if sample.endswith("table"):  # the relative-position table form of the bias, (rows, heads)
        grad = sample.startswith("fwd")
        bias = _rand(*((3 * 3 * 5, 2) if video else (49, 2)), device=device, grad=grad)
    else:
        bias = _rand(*((2, 12, 12) if video else (2, 16, 16)), device=device, grad=grad)
    qkv, pad = (
        _rand(*((2, 3, 5, 4, 24) if video else (2, 9, 7, 24)), device=device, grad=grad),
        _rand(24, device=device, grad=grad),
    )
    geometry = (4, 2, 2) if v2 else (([2, 2, 3], [1, 1, 2], 0.5) if video else ([4, 4], [2, 2], 0.5))
    head_scale = ((torch.rand(2, device=device) * 9 + 1).requires_grad_(grad),) if v2 else ()
    args = (qkv, bias, pad) + head_scale + geometry
    if sample.startswith("fwd"):
        return fwd.default, args
    out, lse = fwd(*args)
    return bwd.default, ((torch.randn_like(out), qkv, bias, pad) + head_scale + (lse,) + geometry)


def _merging_opcheck(sample: str, device: str) -> OpSample:
    ops = torch.ops.swin_ext
    x, w, b = (
        _rand(2, 5, 6, 3, device=device, grad=True),
        _rand(12, device=device, grad=True),
        _rand(12, device=device, grad=True),
    )
    if sample == "fwd-requires-grad":
        return ops.patch_merging_fwd.default, (x, w, b, 1e-5)
    x, w, b = x.detach(), w.detach(), b.detach()
    if sample == "fwd-strided":
        return ops.patch_merging_fwd.default, (x.transpose(1, 2), w, b, 1e-6)
    br = _rand(2, 5, 6, 3, device=device).bfloat16()
    if sample == "fwd-branch-autocast-mix":  # a float32 stream, a bf16 branch and y
        return ops.patch_merging_fwd.default, (x, w, b, 1e-5, br.requires_grad_(), torch.bfloat16)
    if sample == "bwd-branch-bf16":
        _, mean, rstd = ops.patch_merging_fwd(x, w, b, 1e-5, br, torch.bfloat16)
        go = _rand(2, 3, 3, 12, device=device).bfloat16()
        return ops.patch_merging_bwd.default, (go, x, w, mean, rstd, br, torch.bfloat16)
    _, mean, rstd = ops.patch_merging_fwd(x, w, b, 1e-5)
    return ops.patch_merging_bwd.default, (_rand(2, 3, 3, 12, device=device), x, w, mean, rstd)


def _add_layernorm_opcheck(sample: str, device: str) -> OpSample:
    ops = torch.ops.swin_ext
    fwd, bwd = ops.add_layernorm_fwd.default, ops.add_layernorm_bwd.default
    x, b = _rand(2, 5, 12, device=device, grad=True), _rand(2, 5, 12, device=device, grad=True)
    w, c = _rand(12, device=device, grad=True), _rand(12, device=device, grad=True)
    if sample == "fwd-requires-grad":
        return fwd, (x, b, w, c, 1e-5, None)
    if sample == "fwd-strided":
        return fwd, (x.detach().transpose(0, 1), b.detach().transpose(0, 1), w.detach(), c.detach(), 1e-6, None)
    if sample == "fwd-autocast-mix":  # a float32 stream, a bf16 branch and y
        return fwd, (x, b.detach().bfloat16().requires_grad_(), w, c, 1e-5, torch.bfloat16)
    if sample == "fwd-float64-eps0":
        f64 = dict(device=device, dtype=torch.float64)
        return fwd, (_rand(7, 3, **f64), _rand(7, 3, **f64), _rand(3, **f64), _rand(3, **f64), 0.0, None)
    h, y, mean, rstd = ops.add_layernorm_fwd(x.detach(), b.detach(), w.detach(), c.detach(), 1e-5, None)
    if sample == "bwd":
        return bwd, (torch.randn_like(h), torch.randn_like(y), h, w.detach(), mean, rstd, None)
    return bwd, (None, torch.randn_like(y).bfloat16(), h, w.detach(), mean, rstd, torch.bfloat16)  # bwd-no-grad-h-bf16


def _bias_gelu_opcheck(sample: str, device: str) -> OpSample:
    ops = torch.ops.swin_ext
    z, b = _rand(4, 9, device=device) * 2, _rand(9, device=device)
    if sample == "fwd":
        return ops.bias_gelu_fwd.default, (z, b)
    if sample == "fwd-requires-grad":
        return ops.bias_gelu_fwd.default, (z.requires_grad_(), b.requires_grad_())
    if sample == "bwd-inplace":
        return ops.bias_gelu_bwd_inplace.default, (_rand(4, 9, device=device), z, b)
    return ops.bias_gelu_bwd.default, (_rand(4, 9, device=device), z, b)


_ATTN_SAMPLES = ("fwd-pad", "fwd-requires-grad", "fwd-strided-float64", "bwd", "fwd-table", "bwd-table")
#: op -> {sample id: (device -> (op overload, args))}; every forward and backward op, the shapes
#: ``opcheck`` needs to see (requires_grad, strided inputs, optional arguments absent)
OPCHECK: Dict[str, Dict[str, Callable[[str], OpSample]]] = {
    "window_attention": {
        s: (lambda d, s=s: _attn_opcheck(False, s, d))
        for s in _ATTN_SAMPLES + ("fwd-video-pad", "bwd-video", "fwd-video-table", "bwd-video-table")
    },
    "window_attention_v2": {s: (lambda d, s=s: _attn_opcheck(True, s, d)) for s in _ATTN_SAMPLES},
    "patch_merging": {
        s: (lambda d, s=s: _merging_opcheck(s, d))
        for s in ("fwd-requires-grad", "fwd-strided", "fwd-branch-autocast-mix", "bwd", "bwd-branch-bf16")
    },
    "add_layernorm": {
        s: (lambda d, s=s: _add_layernorm_opcheck(s, d))
        for s in (
            "fwd-requires-grad",
            "fwd-strided",
            "fwd-autocast-mix",
            "fwd-float64-eps0",
            "bwd",
            "bwd-no-grad-h-bf16",
        )
    },
    "bias_gelu": {
        s: (lambda d, s=s: _bias_gelu_opcheck(s, d)) for s in ("fwd", "fwd-requires-grad", "bwd", "bwd-inplace")
    },
}


def run_opcheck(op: str, sample: str, device: str) -> None:
    overload, args = OPCHECK[op][sample](device)
    torch.library.opcheck(overload, args)


# ----------------------------------------------------------------------------- gradcheck rows


@dataclass(frozen=True)
class GradCase:
    """A float64 gradient check of a public wrapper: ``build(device, gen)`` gives the leaves and the
    wrapper and reference as functions of them; ``second_order`` adds ``gradgradcheck``."""

    op: str
    name: str
    build: Callable[[str, torch.Generator], Tuple[Tuple[torch.Tensor, ...], Callable, Callable]]
    second_order: bool = False

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"


def _f64(*shape, device, gen, scale=1.0, offset=0.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale + offset).to(device).requires_grad_()


def _attn_grad(v2: bool, B, H, W, ws, shift, heads, d, pad: bool, T: Optional[int] = None, table: bool = False):
    """``ws``: a side or one per map axis; ``T``: frames of a 3-D clip (None: a 2-D map); ``table``:
    the bias as the relative-position table ``(rows, heads)``."""
    def build(device, gen):
        import swin_ext

        C = heads * d
        sizes = (H, W) if T is None else (T, H, W)
        window = ws if isinstance(ws, tuple) else (ws,) * len(sizes)
        N = math.prod(window)
        bias = (_f64(math.prod(2 * w - 1 for w in window), heads, device=device, gen=gen) if table
                else _f64(heads, N, N, device=device, gen=gen))
        leaves = [_f64(B, *sizes, 3 * C, device=device, gen=gen), bias]
        if v2:
            leaves.append((torch.rand(heads, dtype=torch.float64, generator=gen) * 9 + 1).to(device).requires_grad_())
        if pad:
            leaves.append(_f64(3 * C, device=device, gen=gen))

        def call(fn):
            if v2:
                return lambda q, b, s, *p: fn(q, b, s, ws, shift, p[0] if p else None)
            return lambda q, b, *p: fn(q, b, ws, shift, None, p[0] if p else None)

        if v2:
            return tuple(leaves), call(swin_ext.window_attention_v2), call(swin_ext.window_attention_v2_reference)
        return tuple(leaves), call(swin_ext.window_attention), call(swin_ext.window_attention_reference)

    return build


def _merging_grad(B, H, W, C, branch: bool = False):
    def build(device, gen):
        import swin_ext

        leaves = (
            _f64(B, H, W, C, device=device, gen=gen),
            _f64(4 * C, device=device, gen=gen, scale=0.3, offset=1.0),
            _f64(4 * C, device=device, gen=gen, scale=0.3),
        )
        if branch:  # the stage's pending residual branch as a fourth leaf
            return (
                leaves + (_f64(B, H, W, C, device=device, gen=gen),),
                (lambda x, w, b, br: swin_ext.patch_merging(x, w, b, 1e-5, br)),
                (lambda x, w, b, br: swin_ext.patch_merging_reference(x, w, b, 1e-5, br)),
            )
        return leaves, swin_ext.patch_merging, swin_ext.patch_merging_reference

    return build


def _add_layernorm_grad(shape, y_only: bool = False):
    def build(device, gen):
        import swin_ext

        C = shape[-1]
        leaves = (
            _f64(*shape, device=device, gen=gen),
            _f64(*shape, device=device, gen=gen),
            _f64(C, device=device, gen=gen),
            _f64(C, device=device, gen=gen),
        )
        if y_only:  # h unused: the backward gets no gradient for it
            return (
                leaves,
                (lambda *a: swin_ext.add_layernorm(*a)[1]),
                (lambda *a: swin_ext.add_layernorm_reference(*a)[1]),
            )
        return leaves, swin_ext.add_layernorm, swin_ext.add_layernorm_reference

    return build


def _bias_gelu_grad(shape):
    def build(device, gen):
        import swin_ext

        return (
            (_f64(*shape, device=device, gen=gen, scale=2.0), _f64(shape[-1], device=device, gen=gen)),
            swin_ext.bias_gelu,
            swin_ext.bias_gelu_reference,
        )

    return build


#: op -> its gradient checks (plain, shifted, padded with and without a pad vector, maps smaller than the
#: window, odd and 1-pixel merges, unused outputs) and second-order checks
GRADCHECK: Dict[str, List[GradCase]] = {
    "window_attention": [
        GradCase("window_attention", "6x6-ws3-s1", _attn_grad(False, 2, 6, 6, 3, (1, 1), 2, 3, False)),
        GradCase("window_attention", "5x7-ws3-s1-pad", _attn_grad(False, 2, 5, 7, 3, (1, 1), 2, 3, True)),
        GradCase("window_attention", "4x5-ws4-pad", _attn_grad(False, 2, 4, 5, 4, (0, 0), 2, 3, True)),
        GradCase("window_attention", "2x2-ws3-s12-pad", _attn_grad(False, 2, 2, 2, 3, (1, 2), 2, 3, True)),
        GradCase("window_attention", "3x3-ws2-s1-pad", _attn_grad(False, 1, 3, 3, 2, (1, 1), 2, 2, True), True),
        GradCase("window_attention", "3x3x3-w223-s111-pad",
                 _attn_grad(False, 1, 3, 3, (2, 2, 3), (1, 1, 1), 1, 2, True, T=3)),
        GradCase("window_attention", "3x3x2-w222-s101-pad",
                 _attn_grad(False, 1, 3, 2, (2, 2, 2), (1, 0, 1), 1, 2, True, T=3), True),
        GradCase("window_attention", "5x7-ws3-s1-pad-table",
                 _attn_grad(False, 2, 5, 7, 3, (1, 1), 2, 3, True, table=True), True),
        GradCase("window_attention", "3x3x3-w223-s111-table",
                 _attn_grad(False, 1, 3, 3, (2, 2, 3), (1, 1, 1), 1, 2, False, T=3, table=True)),
    ],
    "window_attention_v2": [
        GradCase("window_attention_v2", "6x6-ws3-s1", _attn_grad(True, 1, 6, 6, 3, (1, 1), 2, 3, False)),
        GradCase("window_attention_v2", "5x7-ws3-s1-pad", _attn_grad(True, 1, 5, 7, 3, (1, 1), 2, 3, True)),
        GradCase("window_attention_v2", "2x2-ws3-s12-pad", _attn_grad(True, 1, 2, 2, 3, (1, 2), 2, 3, True)),
        GradCase("window_attention_v2", "3x3-ws2-s1-pad", _attn_grad(True, 1, 3, 3, 2, (1, 1), 1, 2, True), True),
        GradCase("window_attention_v2", "5x7-ws3-s1-pad-table",
                 _attn_grad(True, 1, 5, 7, 3, (1, 1), 2, 3, True, table=True), True),
    ],
    "patch_merging": [
        GradCase("patch_merging", "5x3-C3", _merging_grad(2, 5, 3, 3)),
        GradCase("patch_merging", "4x4-C3", _merging_grad(2, 4, 4, 3)),
        GradCase("patch_merging", "1x1-C2", _merging_grad(2, 1, 1, 2)),
        GradCase("patch_merging", "3x4-C2", _merging_grad(1, 3, 4, 2), True),
        GradCase("patch_merging", "5x3-C3-branch", _merging_grad(2, 5, 3, 3, branch=True)),
        GradCase("patch_merging", "3x3-C2-branch", _merging_grad(1, 3, 3, 2, branch=True), True),
    ],
    "add_layernorm": [
        GradCase("add_layernorm", "2x3x6", _add_layernorm_grad((2, 3, 6)), True),
        GradCase("add_layernorm", "2x3x5-y-only", _add_layernorm_grad((2, 3, 5), y_only=True), True),
    ],
    "bias_gelu": [
        GradCase("bias_gelu", "3x2x5", _bias_gelu_grad((3, 2, 5)), True),
    ],
}


def _outputs(y) -> Tuple[torch.Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


def run_gradcheck(case: GradCase, device: str, seed: int = 0) -> Dict[str, Any]:
    """``gradcheck`` (and ``gradgradcheck``) of the wrapper, and the largest difference between its
    gradients and the reference composite's for one random cotangent.  ``ok`` needs both."""
    gen = torch.Generator().manual_seed(seed)
    leaves, fn, ref = case.build(device, gen)
    t0 = time.perf_counter()
    err = ""
    try:
        torch.autograd.gradcheck(fn, leaves, raise_exception=True)
        if case.second_order:
            torch.autograd.gradgradcheck(fn, leaves, fast_mode=True, raise_exception=True)
        passed = True
    except Exception as e:  # noqa: BLE001 - reported, the caller decides
        passed, err = False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    outs = _outputs(fn(*leaves))
    cots = [torch.randn(o.shape, dtype=o.dtype, generator=gen).to(device) for o in outs]
    got = torch.autograd.grad(outs, leaves, cots)
    want = torch.autograd.grad(_outputs(ref(*leaves)), leaves, cots)
    dref = max((a - b).abs().max().item() if a.numel() else 0.0 for a, b in zip(got, want))
    return {
        "ok": passed and dref < 1e-9,
        "gradcheck": passed,
        "dref": dref,
        "err": err,
        "seconds": time.perf_counter() - t0,
        "inputs": ", ".join(str(tuple(t.shape)) for t in leaves),
    }

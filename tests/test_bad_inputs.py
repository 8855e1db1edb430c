"""The bad-input and fault table (issue 14): every case asserts its exact outcome.

Each row is a bad input or a fault, tried as a careless user or an attacker
would, and the outcome it must get: a specific exception type with a message
naming the argument or file, or a result equal to the reference composite.
Rows marked ``# was:`` failed before the fix (what happened then); the others
already held and must keep holding.  Cases that could crash or hang the
interpreter (uninitialised memory from an overflowed size, a FIFO that blocks
``open``) run in a child process.
"""
import json
import math
import os
import pickle
import re
import subprocess
import sys
import zipfile

import pytest
import torch
from torch.autograd import gradgradcheck

import swin_ext
from swin_ext import (
    CheckpointError,
    SwinTransformer,
    add_layernorm,
    add_layernorm_reference,
    load_pretrained,
    patch_merging,
    patch_merging_reference,
    window_attention,
    window_attention_reference,
)
from swin_ext import train as T

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = torch.float64


def _child(code: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, f"child died (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


# Child-process harness: runs each named case with a 20 s alarm, records "ok",
# "<ExcType>: <message>" or "timeout", and prints them as JSON.
_CHILD_HARNESS = r'''
import json, signal, traceback, torch, swin_ext
results = {}
class Timeout(Exception): pass
def _alarm(*a): raise Timeout()
signal.signal(signal.SIGALRM, _alarm)
def case(name, fn):
    signal.alarm(20)
    try:
        fn(); results[name] = "ok"
    except Timeout:
        results[name] = "timeout"
    except BaseException as e:
        results[name] = type(e).__name__ + ": " + " ".join(str(e).split())[:400]
    finally:
        signal.alarm(0)
'''


# ============================================================================ ops: arguments


def _q(C3=12, H=4, W=4, **kw):
    return torch.randn(1, H, W, C3, **kw)


def _attn(**over):
    a = dict(qkv=_q(), bias=torch.randn(2, 16, 16), window_size=4, shift=0, scale=None, qkv_pad=None)
    a.update(over)
    return lambda: window_attention(a["qkv"], a["bias"], a["window_size"], a["shift"], a["scale"], a["qkv_pad"])


def _merge(**over):
    a = dict(x=torch.randn(1, 4, 4, 2), weight=torch.ones(8), bias=torch.zeros(8), eps=1e-5)
    a.update(over)
    return lambda: patch_merging(a["x"], a["weight"], a["bias"], a["eps"])


def _ln(**over):
    a = dict(x=torch.randn(2, 3, 4), branch=torch.randn(2, 3, 4), weight=torch.ones(4), bias=torch.zeros(4), eps=1e-5)
    a.update(over)
    return lambda: add_layernorm(a["x"], a["branch"], a["weight"], a["bias"], a["eps"])


def _ref_attn(**over):
    a = dict(qkv=_q(), bias=torch.randn(2, 16, 16), window_size=4, shift=0, scale=None)
    a.update(over)
    return lambda: window_attention_reference(a["qkv"], a["bias"], a["window_size"], a["shift"], a["scale"])


OP_ARGUMENT_CASES = [
    # --- silent coercion
    ("shift-float-pair", _attn(shift=(1.7, 0.2)), TypeError, r"shift\[0\] must be an int, got float 1.7"),  # was: ran as (1, 0)
    ("shift-float", _attn(shift=1.0), TypeError, "shift must be an int or a pair of ints"),  # was: ran as 1
    ("shift-bool", _attn(shift=True), TypeError, "shift"),
    ("shift-bool-pair", _attn(shift=(True, 0)), TypeError, r"shift\[0\] must be an int, got bool"),  # was: ran as (1, 0)
    ("shift-str", _attn(shift="1"), TypeError, "shift"),
    ("shift-triple", _attn(shift=(1, 1, 1)), TypeError, "shift"),
    ("window-float", _attn(window_size=4.0), TypeError, "window_size"),
    ("scale-str", _attn(scale="0.5"), TypeError, "scale must be a real number, got str"),  # was: float("0.5")
    ("scale-complex", _attn(scale=1j), TypeError, "scale must be a real number"),  # was: bare float() error
    ("scale-none-like-list", _attn(scale=[0.5]), TypeError, "scale"),  # was: bare float() error
    ("scale-bool", _attn(scale=True), TypeError, "scale"),  # was: ran with scale 1.0
    ("scale-tensor-grad", _attn(scale=torch.tensor(0.5, requires_grad=True)), TypeError,
     "scale must be a Python number, got a Tensor"),  # was: detached, gradient lost
    ("scale-nan", _attn(scale=float("nan")), ValueError, "scale must be finite"),  # was: NaN output
    ("scale-inf", _attn(scale=math.inf), ValueError, "scale must be finite"),
    ("eps-str", _merge(eps="1e-5"), TypeError, "eps must be a real number"),  # was: float("1e-5")
    ("eps-none", _merge(eps=None), TypeError, "eps must be a real number"),  # was: bare float() error
    ("eps-negative", _merge(eps=-1.0), ValueError, "eps must be >= 0"),  # was: NaN output
    ("eps-tensor", _merge(eps=torch.tensor(1e-5)), TypeError, "eps must be a Python number"),
    # --- sizes bounded before arithmetic
    ("window-2**32", _attn(window_size=2**32, bias=torch.randn(2, 0, 0)), ValueError,
     r"window_size must be in \[1, 32768\], got 4294967296"),  # was: N overflowed to 0, garbage output
    ("window-2**15+1", _attn(window_size=2**15 + 1, bias=torch.randn(2, 0, 0)), ValueError, "window_size must be in"),
    ("window-zero", _attn(window_size=0), ValueError, "window_size"),
    ("shift-ge-window", _attn(shift=(0, 4)), ValueError, r"shift must satisfy 0 <= shift < window_size \(4\)"),
    ("bias-wrong-shape", _attn(bias=torch.randn(2, 9, 9)), ValueError, r"bias must be \(heads, 16, 16\)"),
    ("heads-zero", _attn(bias=torch.randn(0, 16, 16)), ValueError, "not divisible by heads=0"),
    ("C-zero-default-scale", _attn(qkv=_q(C3=0)), ValueError, "C = 0 channels.*default scale"),  # was: ZeroDivisionError
    ("merging-C-bound", _merge(x=torch.empty(0, 1, 1, 2**28 + 1), weight=torch.empty(4 * (2**28 + 1), device="meta"),
                               bias=torch.empty(4 * (2**28 + 1), device="meta")), ValueError, "C = 268435457 is larger"),
    # --- layouts and dtypes
    ("qkv-sparse", _attn(qkv=_q().to_sparse()), TypeError, "qkv must be a dense"),  # was: internal layout error
    ("bias-sparse", _attn(bias=torch.randn(2, 16, 16).to_sparse()), TypeError, "bias must be a dense"),
    ("x-sparse", _merge(x=torch.randn(1, 4, 4, 2).to_sparse()), TypeError, "x must be a dense"),
    ("qkv-int", _attn(qkv=torch.ones(1, 4, 4, 12, dtype=torch.int32)), TypeError, "qkv must be float32"),
    ("qkv-3d", _attn(qkv=torch.randn(4, 4, 12)), ValueError, "qkv must have 4 dims"),
    ("qkv-not-tensor", _attn(qkv=[[1.0]]), TypeError, "qkv must be a torch.Tensor"),
    ("pad-wrong-len", _attn(qkv_pad=torch.randn(5)), ValueError, r"qkv_pad must be \(12,\)"),
    ("bias-on-meta", _attn(bias=torch.randn(2, 16, 16, device="meta")), ValueError, "bias is on meta"),
    ("merge-weight-len", _merge(weight=torch.ones(7)), ValueError, r"weight and bias must be \(8,\)"),
    # --- the reference composite: the same rules, no bare ZeroDivisionError
    ("ref-C-zero-default-scale", _ref_attn(qkv=_q(C3=0)), ValueError, "C = 0 channels"),  # was: ZeroDivisionError
    ("ref-shift-float", _ref_attn(shift=(1.5, 0)), TypeError, r"shift\[0\] must be an int"),  # was: truncated
    ("ref-window-2**32", _ref_attn(window_size=2**32, bias=torch.randn(2, 0, 0)), ValueError, "window_size"),
    ("ref-merge-eps-str", lambda: patch_merging_reference(torch.randn(1, 2, 2, 1), torch.ones(4), torch.zeros(4), "x"),
     TypeError, "eps"),
    # --- add_layernorm: shapes, dtypes, layouts, devices, eps
    ("ln-branch-shape", _ln(branch=torch.randn(2, 3, 5)), ValueError, r"branch must have the shape of x \(2, 3, 4\)"),
    ("ln-branch-broadcast", _ln(branch=torch.randn(1, 3, 4)), ValueError, "branch must have the shape of x"),
    ("ln-x-scalar", _ln(x=torch.tensor(1.0), branch=torch.tensor(1.0)), ValueError, r"x must be \(\.\.\., C\)"),
    ("ln-C-zero", _ln(x=torch.randn(2, 0), branch=torch.randn(2, 0), weight=torch.ones(0), bias=torch.zeros(0)),
     ValueError, r"C of x must be in \[1, 1073741824\], got 0"),
    ("ln-weight-len", _ln(weight=torch.ones(5)), ValueError, r"weight and bias must be \(4,\)"),
    ("ln-weight-2d", _ln(weight=torch.ones(1, 4)), ValueError, "weight must have 1 dims"),
    ("ln-x-int", _ln(x=torch.ones(2, 3, 4, dtype=torch.int32)), TypeError, "x must be float32"),
    ("ln-branch-int", _ln(branch=torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, "branch must be float32"),
    ("ln-branch-sparse", _ln(branch=torch.randn(2, 3, 4).to_sparse()), TypeError, "branch must be a dense"),
    ("ln-branch-not-tensor", _ln(branch=1.0), TypeError, "branch must be a torch.Tensor"),
    ("ln-branch-on-meta", _ln(branch=torch.randn(2, 3, 4, device="meta")), ValueError, "branch is on meta"),
    ("ln-eps-negative", _ln(eps=-1.0), ValueError, "eps must be >= 0"),
    ("ln-eps-str", _ln(eps="1e-5"), TypeError, "eps must be a real number"),
    ("ln-eps-tensor", _ln(eps=torch.tensor(1e-5)), TypeError, "eps must be a Python number"),
    ("ln-eps-nan", _ln(eps=float("nan")), ValueError, "eps must be finite"),
    ("ref-ln-branch-shape", lambda: add_layernorm_reference(torch.randn(2, 4), torch.randn(4), torch.ones(4), torch.zeros(4)),
     ValueError, "branch must have the shape of x"),
    ("ref-ln-y-dtype", lambda: add_layernorm_reference(torch.randn(2, 4), torch.randn(2, 4), torch.ones(4), torch.zeros(4),
                                                       y_dtype=torch.int8), TypeError, "y_dtype must be float32"),
]


@pytest.mark.parametrize("fn,exc,match", [pytest.param(*c[1:], id=c[0]) for c in OP_ARGUMENT_CASES])
def test_op_argument(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


# Raw ops (the C++ kernels' own TORCH_CHECKs) and their fake kernels: the same
# rules, as RuntimeError, on CPU tensors and on the meta device.
def _raw_attn(device="cpu", qkv_shape=(1, 4, 4, 12), bias_shape=(2, 16, 16), ws=4, sh=0, sw=0, scale=1.0, layout=None):
    def f():
        q = torch.empty(qkv_shape, device=device) if device == "meta" else torch.randn(qkv_shape)
        b = torch.empty(bias_shape, device=device) if device == "meta" else torch.randn(bias_shape)
        if layout == "sparse":
            q = q.to_sparse()
        return torch.ops.swin_ext.window_attention_fwd(q, b, None, ws, sh, sw, scale)

    return f


def _raw_merge(device="cpu", C=2, wlen=None, eps=1e-5):
    def f():
        mk = (lambda *s: torch.empty(*s, device=device)) if device == "meta" else torch.randn
        return torch.ops.swin_ext.patch_merging_fwd(mk(1, 4, 4, C), mk(wlen or 4 * C), mk(4 * C), eps)

    return f


def _raw_ln(device="cpu", shape=(2, 3, 4), bshape=None, wdtype=torch.float32, eps=1e-5, y_dtype=None):
    def f():
        mk = (lambda *s, dtype=torch.float32: torch.empty(*s, device=device, dtype=dtype)) if device == "meta" else \
            (lambda *s, dtype=torch.float32: torch.randn(*s, dtype=dtype))
        C = shape[-1]
        return torch.ops.swin_ext.add_layernorm_fwd(mk(*shape), mk(*(bshape or shape)), mk(C, dtype=wdtype), mk(C, dtype=wdtype),
                                                    eps, y_dtype)

    return f


def _raw_ln_bwd(device="cpu", grad_h_dtype=torch.float32, mean_shape=(2, 3), gy_shape=(2, 3, 4)):
    def f():
        mk = (lambda *s, dtype=torch.float32: torch.empty(*s, device=device, dtype=dtype)) if device == "meta" else \
            (lambda *s, dtype=torch.float32: torch.rand(*s, dtype=dtype) + 0.5)
        return torch.ops.swin_ext.add_layernorm_bwd(mk(2, 3, 4, dtype=grad_h_dtype), mk(*gy_shape), mk(2, 3, 4), mk(4),
                                                    mk(*mean_shape), mk(*mean_shape), None)

    return f


RAW_OP_CASES = [
    ("cpu-shift-ge-window", _raw_attn(sh=4), "shift must satisfy"),
    ("cpu-window-2**15+1", _raw_attn(ws=2**15 + 1, bias_shape=(2, 0, 0)), r"window_size must be in \[1, 32768\]"),
    ("cpu-scale-nan", _raw_attn(scale=float("nan")), "scale must be finite"),  # was: NaN output
    ("cpu-qkv-sparse", _raw_attn(layout="sparse"), "from the .SparseCPU. backend"),  # the dispatcher refuses it
    ("cpu-eps-negative", _raw_merge(eps=-1.0), "eps must be finite and >= 0"),  # was: NaN output
    ("cpu-merge-weight-len", _raw_merge(wlen=7), r"weight and bias must be \(8,\)"),
    ("meta-shift-ge-window", _raw_attn("meta", sh=4), "shift must satisfy"),  # was: accepted by the fake
    ("meta-bias-shape", _raw_attn("meta", bias_shape=(2, 9, 9)), r"bias must be \(heads, 16, 16\)"),  # was: accepted
    ("meta-window-2**32", _raw_attn("meta", ws=2**32, bias_shape=(2, 0, 0)), "window_size must be in"),  # was: accepted
    ("meta-heads-divide", _raw_attn("meta", qkv_shape=(1, 4, 4, 9)), "not divisible by heads"),  # was: accepted
    ("meta-scale-nan", _raw_attn("meta", scale=float("nan")), "scale must be finite"),
    ("meta-merge-weight-len", _raw_merge("meta", wlen=7), r"weight and bias must be \(8,\)"),  # was: accepted
    ("meta-eps-negative", _raw_merge("meta", eps=-1.0), "eps must be finite"),  # was: accepted
    # add_layernorm: the C++ checks and the fake kernel say the same
    ("cpu-ln-y-dtype-int", _raw_ln(y_dtype=torch.int32), "y_dtype must be float32, float64, float16 or bfloat16"),
    ("cpu-ln-weight-dtype", _raw_ln(wdtype=torch.float64), "weight/bias must be"),
    ("cpu-ln-eps-negative", _raw_ln(eps=-1.0), "eps must be finite and >= 0"),
    ("cpu-ln-eps-inf", _raw_ln(eps=math.inf), "eps must be finite and >= 0"),
    ("cpu-ln-branch-shape", _raw_ln(bshape=(2, 3, 5)), "branch must have the shape of x"),
    ("cpu-ln-C-zero", _raw_ln(shape=(2, 0)), r"C of x must be in \[1, "),
    ("cpu-ln-bwd-grad-h-dtype", _raw_ln_bwd(grad_h_dtype=torch.float64), "grad_h must be"),
    ("cpu-ln-bwd-mean-shape", _raw_ln_bwd(mean_shape=(3,)), "mean/rstd must be"),
    ("cpu-ln-bwd-grad-y-shape", _raw_ln_bwd(gy_shape=(2, 3, 5)), "grad_y must have the shape of h"),
    ("meta-ln-y-dtype-int", _raw_ln("meta", y_dtype=torch.int32), "y_dtype must be float32, float64, float16 or bfloat16"),
    ("meta-ln-weight-dtype", _raw_ln("meta", wdtype=torch.float64), "weight/bias must be"),
    ("meta-ln-eps-negative", _raw_ln("meta", eps=-1.0), "eps must be finite and >= 0"),
    ("meta-ln-branch-shape", _raw_ln("meta", bshape=(2, 3, 5)), "branch must have the shape of x"),
    ("meta-ln-C-zero", _raw_ln("meta", shape=(2, 0)), r"C of x must be in \[1, "),
    ("meta-ln-bwd-grad-h-dtype", _raw_ln_bwd("meta", grad_h_dtype=torch.float64), "grad_h must be"),
    ("meta-ln-bwd-mean-shape", _raw_ln_bwd("meta", mean_shape=(3,)), "mean/rstd must be"),
]


@pytest.mark.parametrize("fn,match", [pytest.param(*c[1:], id=c[0]) for c in RAW_OP_CASES])
def test_raw_op_and_fake_kernel_refuse(fn, match):
    with pytest.raises(RuntimeError, match=match):
        fn()


class _RawAttn(torch.nn.Module):
    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, q, b):
        return torch.ops.swin_ext.window_attention_fwd(q, b, None, 4, self.shift, 0, 1.0)[0]


def test_fake_kernel_refuses_under_compile_and_export():
    q, b = torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16)
    with pytest.raises(RuntimeError, match="shift must satisfy"):  # was: compiled, then failed (or not) at run time
        torch.compile(_RawAttn(4), backend="eager", fullgraph=True)(q, b)
    with pytest.raises(RuntimeError, match="shift must satisfy"):
        torch.export.export(_RawAttn(4), (q, b))
    ep = torch.export.export(_RawAttn(1), (q, b))  # a valid one still exports and runs
    torch.testing.assert_close(ep.module()(q, b), window_attention_reference(q, b, 4, (1, 0), 1.0), atol=2e-5, rtol=2e-5)


def test_overflowing_sizes_in_a_child_process():
    """``window_size = 2**32`` made ``window_size**2`` wrap to 0 and read uninitialised memory."""
    code = _CHILD_HARNESS + r'''
q, b0 = torch.randn(1, 4, 4, 12), torch.randn(2, 0, 0)
case("raw-2**32", lambda: torch.ops.swin_ext.window_attention_fwd(q, b0, None, 2**32, 0, 0, 1.0))
case("raw-2**31", lambda: torch.ops.swin_ext.window_attention_fwd(q, b0, None, 2**31 + 1, 0, 0, 1.0))
case("wrapper-2**32", lambda: swin_ext.window_attention(q, b0, 2**32))
case("raw-bwd-2**32", lambda: torch.ops.swin_ext.window_attention_bwd(torch.randn(1, 4, 4, 4), q, b0, None,
     torch.empty(1, 1, 2, 0), 2**32, 0, 0, 1.0))
case("huge-empty-map", lambda: torch.ops.swin_ext.window_attention_fwd(torch.empty(0, 2**40 + 1, 1, 12),
     torch.randn(2, 16, 16), None, 4, 0, 0, 1.0))
case("merge-huge-empty", lambda: torch.ops.swin_ext.patch_merging_fwd(torch.empty(0, 2**41, 1, 2), torch.ones(8),
     torch.zeros(8), 1e-5))
print(json.dumps(results))
'''
    r = _child(code)
    for name in ("raw-2**32", "raw-2**31", "raw-bwd-2**32"):
        assert r[name].startswith("RuntimeError: swin_ext.window_attention") and "window_size must be in" in r[name], r
    assert r["wrapper-2**32"].startswith("ValueError:") and "window_size" in r["wrapper-2**32"]
    assert r["huge-empty-map"].startswith("RuntimeError:") and "larger than the supported" in r["huge-empty-map"]
    assert r["merge-huge-empty"].startswith("RuntimeError:") and "larger than the supported" in r["merge-huge-empty"]


# ============================================================================ ops: correct results


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _empty_map_matches(H, W, shift):
    q = torch.randn(1, H, W, 12, dtype=F64, requires_grad=True)
    b = torch.randn(2, 16, 16, dtype=F64, requires_grad=True)
    out, ref = window_attention(q, b, 4, shift), window_attention_reference(q, b, 4, shift)
    assert out.shape == ref.shape == (1, H, W, 4)
    g = torch.autograd.grad(ref.sum(), (q, b))  # the reference stays connected: zero gradients
    assert all(torch.count_nonzero(t) == 0 for t in g)


def _numpy_int_shift():
    np = pytest.importorskip("numpy")
    q, b = torch.randn(1, 8, 8, 12, dtype=F64), torch.randn(2, 16, 16, dtype=F64)
    _close(window_attention(q, b, np.int64(4), (np.int64(2), 1)), window_attention_reference(q, b, 4, (2, 1)))


def _merging_huge(scale, dtype=torch.float32):
    x = torch.randn(2, 5, 4, 6, dtype=F64) * scale
    x[0, 0, 0, 0] = 3 * scale
    w, c = torch.randn(24, dtype=F64), torch.randn(24, dtype=F64)
    y = patch_merging(x.to(dtype), w.float(), c.float())
    # LayerNorm(x, eps) == LayerNorm(x / s, eps / s**2): the float64 reference on the rescaled row
    exact = patch_merging_reference(x.to(dtype).double() / scale, w, c, 1e-5 / scale / scale)
    assert torch.isfinite(y).all()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(y.double(), exact, atol=tol, rtol=tol)


def _merging_huge_backward():
    x = (torch.randn(1, 4, 4, 3, dtype=F64) * 1e30).float().requires_grad_()
    w = torch.randn(12, requires_grad=True)
    c = torch.randn(12, requires_grad=True)
    g = torch.randn(1, 2, 2, 12)
    got = torch.autograd.grad(patch_merging(x, w, c), (x, w, c), g)
    xd, wd, cd = (t.detach().double().requires_grad_() for t in (x, w, c))
    want = torch.autograd.grad(patch_merging_reference(xd, wd, cd), (xd, wd, cd), g.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-4 * b.abs().max().item(), rtol=1e-3)


def _merging_constant_huge_row():
    x = torch.full((1, 2, 2, 4), 1e30)
    y = patch_merging(x, torch.ones(16), torch.full((16,), 0.5))
    torch.testing.assert_close(y, torch.full_like(y, 0.5))  # a constant row normalises to the bias, no 0 * inf


def _merging_nonfinite_propagates():
    x = torch.randn(1, 2, 2, 2)
    x[0, 0, 0, 0] = float("inf")
    x[0, 1, 1, 1] = float("nan")
    y = patch_merging(x, torch.ones(8), torch.zeros(8))
    assert torch.isnan(y).all()  # as torch's LayerNorm: NaN, never a finite wrong number


def _ln_huge(scale, dtype=torch.float32):
    x = torch.randn(5, 3, 24, dtype=F64) * scale
    x[0, 0, 0] = 3 * scale
    b = torch.randn(5, 3, 24, dtype=F64) * scale
    acc = F64 if dtype == F64 else torch.float32
    w, c = torch.randn(24, dtype=F64), torch.randn(24, dtype=F64)
    h, y = add_layernorm(x.to(dtype), b.to(dtype), w.to(acc), c.to(acc))
    hd = (x.to(dtype).double() + b.to(dtype).double()).to(dtype).double()
    # LayerNorm(h, eps) == LayerNorm(h / s, eps / s**2): the float64 reference on the rescaled rows
    exact = torch.nn.functional.layer_norm(hd / scale, (24,), w, c, 1e-5 / scale / scale)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), exact, atol=1e-4, rtol=1e-4)


def _ln_huge_backward():
    x = (torch.randn(3, 4, 12, dtype=F64) * 1e30).float().requires_grad_()
    b = torch.zeros(3, 4, 12, requires_grad=True)
    w, c = torch.randn(12, requires_grad=True), torch.randn(12, requires_grad=True)
    g = torch.randn(3, 4, 12)
    got = torch.autograd.grad(add_layernorm(x, b, w, c)[1], (x, b, w, c), g)
    xd, bd, wd, cd = (t.detach().double().requires_grad_() for t in (x, b, w, c))
    want = torch.autograd.grad(add_layernorm_reference(xd, bd, wd, cd)[1], (xd, bd, wd, cd), g.double())
    for a, r in zip(got, want):
        torch.testing.assert_close(a.double(), r, atol=1e-4 * r.abs().max().item(), rtol=1e-3)


def _ln_constant_huge_row():
    x = torch.full((2, 3, 8), 1e30)
    _, y = add_layernorm(x, torch.zeros_like(x), torch.ones(8), torch.full((8,), 0.5))
    torch.testing.assert_close(y, torch.full_like(y, 0.5), atol=0, rtol=0)  # no 0 * inf


def _ln_nonfinite_rows():
    x = torch.randn(4, 8)
    x[1, 3] = float("inf")
    x[2, 0] = float("nan")
    h, y = add_layernorm(x, torch.randn(4, 8), torch.ones(8), torch.zeros(8))
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()  # as torch's LayerNorm: NaN, never finite and wrong
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[3]).all()  # other rows untouched


def _ln_empty_rows():
    x, b = torch.randn(0, 3, 8, requires_grad=True), torch.randn(0, 3, 8, requires_grad=True)
    w, c = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    h, y = add_layernorm(x, b, w, c)
    assert h.shape == y.shape == (0, 3, 8)
    gx, gb, gw, gc = torch.autograd.grad((y.sum() + h.sum()), (x, b, w, c))
    assert gx.shape == (0, 3, 8) and torch.equal(gw, torch.zeros(8)) and torch.equal(gc, torch.zeros(8))


RESULT_CASES = [
    ("empty-map-H0", lambda: _empty_map_matches(0, 4, 2)),  # was: ZeroDivisionError in the reference
    ("empty-map-W0", lambda: _empty_map_matches(4, 0, 0)),  # was: reshape error in the reference
    ("numpy-int-args", _numpy_int_shift),
    ("merging-1e30-float32", lambda: _merging_huge(1e30)),  # was: finite but wrong (the bias)
    ("merging-1e37-float32", lambda: _merging_huge(1e37)),
    ("merging-1e30-bfloat16", lambda: _merging_huge(1e30, torch.bfloat16)),
    ("merging-1e300-float64", lambda: _merging_huge(1e300, F64)),
    ("merging-small-values", lambda: _merging_huge(1e-3)),  # the plain path, unchanged
    ("merging-1e30-backward", _merging_huge_backward),
    ("merging-constant-1e30-row", _merging_constant_huge_row),
    ("merging-inf-nan", _merging_nonfinite_propagates),
    ("ln-1e30-float32", lambda: _ln_huge(1e30)),  # torch's float32 LayerNorm gives NaN here
    ("ln-1e37-float32", lambda: _ln_huge(1e37)),
    ("ln-1e300-float64", lambda: _ln_huge(1e300, F64)),
    ("ln-small-values", lambda: _ln_huge(1e-3)),
    ("ln-1e30-backward", _ln_huge_backward),
    ("ln-constant-1e30-row", _ln_constant_huge_row),
    ("ln-inf-nan-rows", _ln_nonfinite_rows),
    ("ln-empty-rows", _ln_empty_rows),
]


@pytest.mark.parametrize("fn", [pytest.param(c[1], id=c[0]) for c in RESULT_CASES])
def test_op_result(fn):
    fn()


# ============================================================================ autograd


def _attn_small(requires_grad=True):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 3, 12, dtype=F64, generator=g).requires_grad_(requires_grad)
    b = torch.randn(2, 4, 4, dtype=F64, generator=g).requires_grad_(requires_grad)
    p = torch.randn(12, dtype=F64, generator=g).requires_grad_(requires_grad)
    return q, b, p


def test_double_backward_attention_gradgradcheck():
    # was: second-order gradients all zero, with only a warning
    q, b, p = _attn_small()
    assert gradgradcheck(lambda q, b, p: window_attention(q, b, 2, (1, 1), None, p), (q, b, p), fast_mode=True)


def test_double_backward_merging_gradgradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 2, dtype=F64, generator=g, requires_grad=True)
    w = torch.randn(8, dtype=F64, generator=g, requires_grad=True)
    c = torch.randn(8, dtype=F64, generator=g, requires_grad=True)
    assert gradgradcheck(lambda x, w, c: patch_merging(x, w, c), (x, w, c), fast_mode=True)


def test_double_backward_add_layernorm_gradgradcheck():
    g = torch.Generator().manual_seed(0)
    x, b = (torch.randn(2, 3, 5, dtype=F64, generator=g, requires_grad=True) for _ in range(2))
    w, c = (torch.randn(5, dtype=F64, generator=g, requires_grad=True) for _ in range(2))
    assert gradgradcheck(lambda *a: add_layernorm(*a), (x, b, w, c), fast_mode=True)
    assert gradgradcheck(lambda *a: add_layernorm(*a)[1], (x, b, w, c), fast_mode=True)  # h unused


def test_gradient_penalty_matches_reference():
    """R1 / WGAN-GP: d/dparams of |d out / d input|^2, through both ops."""

    def penalty(attn, merge, q, b, w, c):
        y = merge(attn(q, b, 2, (1, 1)), w, c)
        (gq,) = torch.autograd.grad(y.square().sum(), q, create_graph=True)
        return torch.autograd.grad(gq.square().sum(), (b, w, c))

    q, b, _ = _attn_small()
    w = torch.randn(16, dtype=F64, requires_grad=True)
    c = torch.randn(16, dtype=F64, requires_grad=True)
    got = penalty(window_attention, patch_merging, q, b, w, c)
    want = penalty(window_attention_reference, patch_merging_reference, q, b, w, c)
    for a, r in zip(got, want):
        assert r.abs().max() > 0
        _close(a, r, 1e-9)


def test_backward_ops_refuse_a_graph():
    q, b, _ = _attn_small()
    out, lse = torch.ops.swin_ext.window_attention_fwd(q, b, None, 2, 1, 1, 0.5)
    with pytest.raises(RuntimeError, match="window_attention_bwd is not differentiable"):  # was: zeros + warning
        torch.ops.swin_ext.window_attention_bwd(torch.ones_like(out), q, b, None, lse, 2, 1, 1, 0.5)
    x = torch.randn(1, 2, 2, 1, requires_grad=True)
    y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(x, torch.ones(4), torch.zeros(4), 1e-5)
    with pytest.raises(RuntimeError, match="patch_merging_bwd is not differentiable"):
        torch.ops.swin_ext.patch_merging_bwd(torch.ones_like(y), x, torch.ones(4), mean, rstd)
    xl = torch.randn(2, 4, requires_grad=True)
    h, y, mean, rstd = torch.ops.swin_ext.add_layernorm_fwd(xl, xl, torch.ones(4), torch.zeros(4), 1e-5, None)
    with pytest.raises(RuntimeError, match="add_layernorm_bwd is not differentiable"):
        torch.ops.swin_ext.add_layernorm_bwd(None, torch.ones_like(y), h, torch.ones(4), mean, rstd, None)


def test_auxiliary_outputs_are_not_differentiable():
    q, b, _ = _attn_small()
    out, lse = torch.ops.swin_ext.window_attention_fwd(q, b, None, 2, 1, 1, 0.5)
    assert out.requires_grad and not lse.requires_grad  # was: lse required grad, its gradient dropped
    x = torch.randn(1, 2, 2, 1, requires_grad=True)
    y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(x, torch.ones(4, requires_grad=True), torch.zeros(4), 1e-5)
    assert y.requires_grad and not mean.requires_grad and not rstd.requires_grad
    h, y, mean, rstd = torch.ops.swin_ext.add_layernorm_fwd(x, x, torch.ones(1, requires_grad=True), torch.zeros(1), 1e-5, None)
    assert h.requires_grad and y.requires_grad and not mean.requires_grad and not rstd.requires_grad


def _func_case(name):
    from torch.func import grad, jacrev, vmap

    g = torch.Generator().manual_seed(1)
    qs = torch.randn(3, 1, 4, 4, 12, dtype=F64, generator=g)
    b = torch.randn(2, 16, 16, dtype=F64, generator=g)
    xs = torch.randn(3, 1, 3, 4, 2, dtype=F64, generator=g)
    w, c = torch.randn(8, dtype=F64, generator=g), torch.randn(8, dtype=F64, generator=g)
    A, AR, M, MR = window_attention, window_attention_reference, patch_merging, patch_merging_reference
    if name == "grad":
        return [grad(lambda q, f=f: f(q, b, 4, 1).pow(2).sum())(qs[0]) for f in (A, AR)]
    if name == "per-sample-grad":  # Opacus style: vmap(grad) over the batch, parameters shared
        return [vmap(grad(lambda bb, q, f=f: f(q, bb, 4, 1).pow(2).sum()), in_dims=(None, 0))(b, qs) for f in (A, AR)]
    if name == "jacrev":
        return [jacrev(lambda q, f=f: f(q, b, 4, 1))(qs[0]) for f in (A, AR)]
    if name == "vmap-batched-bias":
        bs = torch.randn(3, 2, 16, 16, dtype=F64, generator=g)
        return [vmap(lambda q, bb: A(q, bb, 4, 1))(qs, bs), torch.stack([AR(qs[i], bs[i], 4, 1) for i in range(3)])]
    if name == "grad-of-grad":
        return [grad(lambda q, f=f: grad(lambda q2: f(q2, b, 4, 1).pow(3).sum())(q).sum())(qs[0]) for f in (A, AR)]
    if name == "merging-per-sample-grad":
        return [vmap(grad(lambda ww, x, f=f: f(x, ww, c).pow(3).sum()), in_dims=(None, 0))(w, xs) for f in (M, MR)]
    if name == "merging-jacrev":
        return [jacrev(lambda x, f=f: f(x, w, c))(xs[0]) for f in (M, MR)]
    L, LR = add_layernorm, add_layernorm_reference
    ls = torch.randn(3, 4, 6, dtype=F64, generator=g)
    lw, lc = torch.randn(6, dtype=F64, generator=g), torch.randn(6, dtype=F64, generator=g)
    if name == "ln-per-sample-grad":
        return [vmap(grad(lambda ww, x, f=f: f(x, x * 0.5, ww, lc)[1].pow(3).sum()), in_dims=(None, 0))(lw, ls)
                for f in (L, LR)]
    if name == "ln-jacrev":
        return [jacrev(lambda x, f=f: f(x, x.flip(-1), lw, lc)[1])(ls[0]) for f in (L, LR)]
    if name == "ln-vmap-batched-weight":
        lws = torch.randn(3, 6, dtype=F64, generator=g)
        return [vmap(lambda x, ww: L(x, x, ww, lc)[1])(ls, lws), torch.stack([LR(ls[i], ls[i], lws[i], lc)[1] for i in range(3)])]
    raise KeyError(name)


@pytest.mark.parametrize(
    "name",
    # was: every one failed with "it must override the setup_context staticmethod"
    ["grad", "per-sample-grad", "jacrev", "vmap-batched-bias", "grad-of-grad", "merging-per-sample-grad", "merging-jacrev",
     "ln-per-sample-grad", "ln-jacrev", "ln-vmap-batched-weight"],
)
def test_torch_func_matches_reference(name):
    got, want = _func_case(name)
    _close(got, want, 1e-9)


# ============================================================================ model config


MODEL_CONFIG_CASES = [
    ("depths-int", dict(depths=2), TypeError, "depths must be a list or tuple of ints"),  # was: 'int' not iterable
    ("num_heads-int", dict(num_heads=3), TypeError, "num_heads must be a list or tuple"),  # was: 'int' not iterable
    ("depths-float-entry", dict(depths=(2, 2.0, 6, 2)), TypeError, r"depths\[1\] must be an int"),
    ("img_size-str", dict(img_size="224"), TypeError, "img_size must be an int or a pair"),  # was: unpack error
    ("img_size-float", dict(img_size=224.0), TypeError, "img_size must be an int or a pair"),  # was: unpack error
    ("img_size-1-tuple", dict(img_size=(224,)), TypeError, "img_size must be an int or a pair"),  # was: unpack error
    ("img_size-zero", dict(img_size=0), ValueError, "img_size must be positive"),
    ("mlp_ratio-inf", dict(mlp_ratio=math.inf), ValueError, "mlp_ratio must be finite"),  # was: OverflowError
    ("mlp_ratio-str", dict(mlp_ratio="4"), TypeError, "mlp_ratio must be a real number"),  # was: bare comparison error
    ("mlp_ratio-zero-width", dict(mlp_ratio=0.001), ValueError, "mlp_ratio 0.001 gives.*hidden width"),  # was: trained
    ("mlp_ratio-negative", dict(mlp_ratio=-1.0), ValueError, "mlp_ratio must be > 0"),
    ("window-float", dict(window_size=7.0), TypeError, "window_size must be an int"),
    ("window-huge", dict(window_size=2**20), ValueError, "window_size must be <= 32768"),  # was: a huge allocation
    ("drop_path-str", dict(drop_path_rate="0.1"), TypeError, "drop_path_rate must be a real number"),
    ("drop_path-1.5", dict(drop_path_rate=1.5), ValueError, "drop_path_rate"),
    ("embed_dim-float", dict(embed_dim=96.0), TypeError, "embed_dim must be an int"),
    ("num_heads-not-dividing", dict(num_heads=(1, 5, 3, 24)), ValueError, r"num_heads\[1\]"),
    ("patch_size-zero", dict(patch_size=0), ValueError, "patch_size"),
]


@pytest.mark.parametrize("kw,exc,match", [pytest.param(*c[1:], id=c[0]) for c in MODEL_CONFIG_CASES])
def test_model_config(kw, exc, match):
    with pytest.raises(exc, match=match), torch.device("meta"):
        SwinTransformer(**kw)


# ============================================================================ load_pretrained


def _tiny_model(**kw):
    cfg = dict(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2,
               num_classes=3, drop_path_rate=0.0)
    cfg.update(kw)
    return SwinTransformer(**cfg)


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _assert_bitwise_unchanged(m, snap):
    sd = m.state_dict()
    for k, v in snap.items():
        assert torch.equal(sd[k].view(torch.uint8) if sd[k].numel() else sd[k], v.view(torch.uint8) if v.numel() else v), k


def _source_sd():
    torch.manual_seed(7)
    src = _tiny_model()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.3)
    return src.state_dict()


def _flip_tensor_byte(path):
    """Flip one byte inside the largest tensor's data in torch.save's zip."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, extra = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        pos = info.header_offset + 30 + n + extra + info.file_size // 2
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x10]))
    return info.filename


def _sd_with(**repl):
    sd = dict(_source_sd())
    for k, v in repl.items():
        k = k.replace("__", ".")
        sd[k] = v(sd[k]) if callable(v) else v
    return sd


def _late():  # the last key of the state dict: copied last, after all the others
    return list(_tiny_model().state_dict())[-1]


class _Evil:
    """Unpickling it would create the file ``marker`` (the code-execution probe)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _file_case(name, tmp_path):
    """``(source for load_pretrained, expected message regex, forbidden message text)``."""
    p = tmp_path / f"{name}.pth"
    if name == "flipped-byte":  # was: loaded silently, model changed
        torch.save(_source_sd(), p)
        entry = _flip_tensor_byte(p)
        return p, rf"damaged: the stored checksum \(CRC-32\) of its entry '{entry}'", None
    if name == "garbage-text":  # was: "holds objects other than tensors", advice to turn off weights_only
        p.write_text("this is not a checkpoint\n")
        return p, "not a readable PyTorch checkpoint: damaged or not written by torch.save", "weights_only=False"
    if name == "random-bytes":  # was: "holds objects other than tensors", advice to turn off weights_only
        p.write_bytes(bytes(range(256)) * 8)
        return p, "not a readable PyTorch checkpoint.*Unsupported operand", "weights_only=False"
    if name == "truncated":
        torch.save(_source_sd(), p)
        p.write_bytes(p.read_bytes()[:-200])
        return p, "not a readable PyTorch checkpoint", "weights_only=False"
    if name == "empty":
        p.write_bytes(b"")
        return p, "the file is empty", "weights_only=False"
    if name == "pickled-object":  # the genuine case: names the global, nothing executed
        marker = tmp_path / "marker"
        with open(p, "wb") as f:
            pickle.dump({"model": _Evil(str(marker))}, f, protocol=2)
        return p, r"holds objects other than tensors.*io\.open", None
    if name == "directory":
        return tmp_path, "is a directory", None
    if name == "char-device":
        return "/dev/zero", "is a device, not a regular file", None  # was: read forever
    if name == "missing":
        return tmp_path / "nope.pth", None, None
    raise KeyError(name)


@pytest.mark.parametrize(
    "name", ["flipped-byte", "garbage-text", "random-bytes", "truncated", "empty", "pickled-object", "directory",
             "char-device", "missing"]
)
def test_load_pretrained_bad_file(name, tmp_path):
    m = _tiny_model()
    snap = _snapshot(m)
    src, match, forbidden = _file_case(name, tmp_path)
    before = open(src, "rb").read() if os.path.isfile(src) else None
    if match is None:
        with pytest.raises(FileNotFoundError, match="not found"):
            load_pretrained(m, src)
    else:
        with pytest.raises(CheckpointError, match=match) as ei:
            load_pretrained(m, src)
        assert forbidden is None or forbidden not in str(ei.value)
        if name != "char-device":
            assert str(src) in str(ei.value)
    _assert_bitwise_unchanged(m, snap)
    assert not (tmp_path / "marker").exists()
    if before is not None:
        assert open(src, "rb").read() == before  # the file is left as it was


STATE_DICT_CASES = [
    # (id, state dict factory, message regex); the late key is copied last
    ("meta-late", lambda: _sd_with(**{_late(): lambda v: torch.empty_like(v, device="meta")}),
     "is a meta tensor"),  # was: earlier parameters overwritten, then a copy error
    ("sparse-late", lambda: _sd_with(**{_late(): lambda v: v.to_sparse()}), "has layout torch.sparse_coo"),  # was: ditto
    ("nan-late", lambda: _sd_with(**{_late(): lambda v: v.clone().fill_(float("nan"))}), "values are NaN or infinite"),
    ("inf-late", lambda: _sd_with(**{_late(): lambda v: v.clone().fill_(float("inf"))}), "values are NaN or infinite"),
    ("overflows-float32", lambda: _sd_with(**{_late(): lambda v: v.double().fill_(1e300)}), "beyond the range"),
    ("int-for-float", lambda: _sd_with(**{_late(): lambda v: v.long()}), "checkpoint dtype torch.int64"),
    ("complex-for-float", lambda: _sd_with(**{_late(): lambda v: v.to(torch.complex64)}), "checkpoint dtype torch.complex64"),
    ("even-sided-table", lambda: _sd_with(**{"layers.1.blocks.0.attn.relative_position_bias_table":
                                             torch.randn(16, 2)}), r"its length 16 is not \(2 \* window - 1\) \*\* 2"),
    # was: resized to the model's window
]


@pytest.mark.parametrize("make,match", [pytest.param(*c[1:], id=c[0]) for c in STATE_DICT_CASES])
def test_load_pretrained_bad_values_leave_model_bitwise_unchanged(make, match, tmp_path):
    for as_file in (False, True):
        m = _tiny_model()
        snap = _snapshot(m)
        sd = make()
        src = sd
        if as_file:
            src = tmp_path / "sd.pth"
            torch.save(sd, src)
        with pytest.raises(CheckpointError, match=match):
            load_pretrained(m, src)
        _assert_bitwise_unchanged(m, snap)


def test_load_pretrained_good_file_still_loads(tmp_path):
    p = tmp_path / "good.pth"
    sd = _source_sd()
    torch.save({"model": sd}, p)
    m = _tiny_model()
    res = load_pretrained(m, p)
    assert len(res.loaded) == len(sd)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_fifo_is_refused_not_opened_in_a_child_process(tmp_path):
    """A FIFO blocked ``open`` forever (load_pretrained and --resume auto)."""
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "last.pt")
    code = _CHILD_HARNESS + rf'''
from swin_ext import train as T
m = swin_ext.SwinTransformer(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2,
                             num_classes=3)
case("load_pretrained", lambda: swin_ext.load_pretrained(m, {str(fifo)!r}))
case("load_checkpoint", lambda: T.load_checkpoint({str(run_dir / "last.pt")!r}))
print(json.dumps(results))
'''
    r = _child(code)
    for name in ("load_pretrained", "load_checkpoint"):
        assert r[name].startswith("CheckpointError:") and "is a FIFO (named pipe), not a regular file" in r[name], r


# ============================================================================ training CLI

TINY = ["--data", "digits", "--img-size", "16", "--patch-size", "4", "--embed-dim", "12", "--depths", "1,2",
        "--num-heads", "1,2", "--window-size", "2", "--batch-size", "8", "--no-progress", "--threads", "1",
        "--no-plot", "--limit", "32"]

CLI_ARGUMENT_CASES = [
    # (argv, flag the one error line names, text); was: all accepted
    (["--epochs", "-3"], "--epochs", "must be >= 1, got -3"),
    (["--warmup-epochs", "-5"], "--warmup-epochs", "must be in"),
    (["--save-every", "-1"], "--save-every", "must be >= 0, got -1"),
    (["--max-steps", "-5"], "--max-steps", "must be >= 1, got -5"),
    (["--stop-after-steps", "0"], "--stop-after-steps", "must be >= 1, got 0"),
    (["--layer-decay", "0"], "--layer-decay", r"must be in \(0.0, 1.0\]"),
    (["--lr", "inf"], "--lr", "must be finite"),
    (["--lr", "nan"], "--lr", "must be finite"),
    (["--lr", "0.1", "--min-lr", "1"], "--min-lr", "is above --lr"),
    (["--batch-size", "0"], "--batch-size", "must be >= 1"),
    (["--mlp-ratio", "inf"], "--mlp-ratio", "must be finite"),
    (["--label-smoothing", "1"], "--label-smoothing", "must be in"),
    (["--depths", "2,0"], "--depths", "positive ints"),
]


@pytest.mark.parametrize("extra,flag,text", CLI_ARGUMENT_CASES, ids=[" ".join(c[0]) for c in CLI_ARGUMENT_CASES])
def test_cli_refuses_bad_argument(extra, flag, text, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        T.main(TINY + ["--output-dir", str(tmp_path)] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and re.search(text, err), err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("extra,text", [(["--stages", "5"], "invalid choice: 5"), (["--repeats", "0"], "must be >= 1"),
                                        (["--batch", "0"], "must be >= 1")])
def test_bench_ops_refuses_bad_argument(extra, text, capsys):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import bench_ops
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as e:  # was: IndexError / ZeroDivisionError / --batch 0 silently became 8
        bench_ops.main(["--device", "cpu"] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {extra[0]}" in err and text in err


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A 2-step run's directory; tests copy its last.pt."""
    d = tmp_path_factory.mktemp("good")
    assert T.main(TINY + ["--max-steps", "2", "--output-dir", str(d)]) == 0
    return d


def _copy_run(good_run, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "last.pt").write_bytes((good_run / "last.pt").read_bytes())
    return d


def test_training_checkpoint_loads_with_weights_only(good_run):
    st = torch.load(good_run / "last.pt", weights_only=True)  # was: needed weights_only=False (numpy RNG state)
    assert st["format"] == T.CHECKPOINT_FORMAT and st["step"] == 2
    assert isinstance(st["rng"][0]["numpy"]["keys"], torch.Tensor)


def _resume_case(name, d):
    """Prepare ``d/last.pt``; returns (expected error text, whether last.pt must stay byte-identical)."""
    ck = d / "last.pt"
    if name == "crafted-pickle":  # was: ran the payload on --resume auto
        torch.save({"format": T.CHECKPOINT_FORMAT, "step": 0, "x": _Evil(str(d / "marker"))}, ck)
        return r"last.pt: torch.load\(weights_only=True\) refused it.*io\.open"
    if name == "truncated":  # was: a raw zip traceback
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
        return r"last.pt: not a readable swin_ext.train checkpoint"
    if name == "empty":
        ck.write_bytes(b"")
        return r"last.pt: not a readable swin_ext.train checkpoint: the file is empty"
    if name == "random":
        ck.write_bytes(os.urandom(4096))
        return r"last.pt: not a readable swin_ext.train checkpoint"
    if name == "flipped-byte":  # was: resumed on corrupted state
        entry = _flip_tensor_byte(ck)
        return rf"last.pt: damaged: the stored checksum \(CRC-32\) of its entry '{entry}'"
    if name == "foreign":
        torch.save({"weights": torch.zeros(3)}, ck)
        return r"last.pt is not a swin_ext.train checkpoint"
    if name == "other-batch-size":  # was: silently ended early on the old schedule
        return r"last.pt was written with --batch-size 8 .* this run has --batch-size 4"
    if name == "directory":
        ck.unlink()
        ck.mkdir()
        return r"last.pt is a directory"
    raise KeyError(name)


@pytest.mark.parametrize(
    "name", ["crafted-pickle", "truncated", "empty", "random", "flipped-byte", "foreign", "other-batch-size", "directory"]
)
def test_resume_from_bad_checkpoint_is_one_clear_line(name, good_run, tmp_path, capsys):
    d = _copy_run(good_run, tmp_path)
    match = _resume_case(name, d)
    ck = d / "last.pt"
    before = ck.read_bytes() if ck.is_file() else None
    argv = TINY + ["--max-steps", "4", "--output-dir", str(d), "--resume", "auto"]
    if name == "other-batch-size":
        argv[argv.index("--batch-size") + 1] = "4"
    assert T.main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("swin-ext-train: error: "), err
    assert re.search(match, err[0]), err[0]
    assert not (d / "marker").exists()
    if before is not None:
        assert ck.read_bytes() == before  # the checkpoint stays as it was
    assert not (d / "metrics.json").exists()


def test_diverged_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    # was: trained on, exit 0, NaN weights saved over the last good checkpoint
    d = tmp_path / "run"
    rc = T.main(TINY + ["--max-steps", "30", "--lr", "1e6", "--clip-grad", "0", "--save-every", "1",
                        "--output-dir", str(d)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "keeps the last good checkpoint" in err
    st = T.load_checkpoint(str(d / "last.pt"))
    assert all(torch.isfinite(v).all() for v in st["model"].values())
    assert not (d / "metrics.json").exists()


def test_nan_loss_stops_before_any_save(tmp_path, capsys):
    d = tmp_path / "run"
    rc = T.main(TINY + ["--max-steps", "30", "--lr", "1e6", "--clip-grad", "0", "--output-dir", str(d), "--limit", "64"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "the training loss is nan" in err and "training diverged" in err and "no checkpoint was written" in err
    assert not (d / "last.pt").exists()  # no checkpoint of a diverged run


def test_stale_temporary_checkpoints_are_removed(good_run, tmp_path, capsys):
    # was: a save killed midway left .last.pt.*.tmp behind for good
    d = _copy_run(good_run, tmp_path)
    stale = d / ".last.pt.k2j4h1.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert T.main(TINY + ["--max-steps", "3", "--output-dir", str(d), "--resume", "auto"]) == 0
    assert not stale.exists()
    assert f"removed {stale}" in capsys.readouterr().out
    assert T.load_checkpoint(str(d / "last.pt"))["step"] == 3


def _image_folder(root, classes, n=4, broken=None):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    if broken:
        path = root / classes[0] / "0.png"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if broken == "truncated" else b"\x89PNG garbage")
        return path
    return None


IMAGE_ARGS = ["--img-size", "16", "--patch-size", "4", "--embed-dim", "12", "--depths", "1,1", "--num-heads", "1,2",
              "--window-size", "2", "--batch-size", "2", "--max-steps", "3", "--no-progress", "--no-plot",
              "--threads", "1"]


@pytest.mark.parametrize("case", ["one-class", "truncated-image", "garbage-image", "truncated-image-in-worker"])
def test_image_folder_problems_are_one_clear_line(case, tmp_path, capsys):
    pytest.importorskip("PIL")
    pytest.importorskip("torchvision")
    root = tmp_path / "data"
    if case == "one-class":  # was: trained a one-class classifier silently
        _image_folder(root, ["cat"])
        match = "needs at least 2 class folders to train a classifier, found 1"
    else:
        bad = _image_folder(root, ["cat", "dog"], broken="garbage" if case == "garbage-image" else "truncated")
        match = f"{bad}: cannot read this image"  # was: a raw PIL traceback
    workers = "1" if case.endswith("worker") else "0"
    rc = T.main(IMAGE_ARGS + ["--data", str(root), "--workers", workers, "--output-dir", str(tmp_path / "run"),
                              "--test-fraction", "0.25"])
    assert rc == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("swin-ext-train: error: ") and match in err[0], err

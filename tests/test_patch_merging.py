"""``patch_merging``: kernels on every executor, the wrapper, autograd, huge values, bad input."""
import pytest
import torch

import swin_ext
from swin_ext import patch_merging, patch_merging_reference

from op_testing import (
    DTYPES,
    GRADCHECK,
    MERGE_CASES,
    OPCHECK,
    TOL,
    MergeCase,
    assert_thread_independent,
    check_merging,
    merge_inputs,
    run_gradcheck,
    run_merging,
    run_opcheck,
)
from swin_test_utils import CHILD_HARNESS, run_child

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")
F64 = torch.float64


# ----------------------------------------------------------------------------- kernels on every executor


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MERGE_CASES, ids=lambda c: c.id)
def test_patch_merging(executor, case, dtype, seed_generator):
    inp = merge_inputs(case, seed_generator)
    got = run_merging(executor, inp, dtype, case=case)
    check_merging(case, inp, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("magnitude", [1e30, 1e36])
@pytest.mark.parametrize("case", [MERGE_CASES[1], MergeCase(1, 3, 4, 384, branch="x")], ids=lambda c: c.id)
def test_patch_merging_huge_values(executor, case, dtype, magnitude, seed_generator):
    """LayerNorm statistics stay right where float32 squares (and, at 4C = 1536, the row sum) overflow
    (torch's own LayerNorm gives NaN); with a branch, on groups of four warps in the CUDA register kernels."""
    inp = merge_inputs(case, seed_generator, scale=magnitude)
    got = run_merging(executor, inp, dtype, case=case)
    check_merging(case, inp, got, dtype)
    # a constant row has variance 0: the output is exactly the bias
    inp["x"] = torch.full_like(inp["x"], magnitude)
    inp["b"] = torch.zeros_like(inp["b"])
    got = run_merging(executor, inp, dtype, case=case)
    interior = got["y"][:, : case.H // 2, : case.W // 2]
    want = inp["bb"].to(dtype).expand_as(interior)
    torch.testing.assert_close(interior, want, atol=0, rtol=0)


@pytest.mark.parametrize("op,sample", [(op, s) for op in ('patch_merging',) for s in OPCHECK[op]])
def test_opcheck(executor, op, sample):
    """torch.library.opcheck of every forward and backward op (schema, fakes, autograd registration)."""
    executor.require_wrappers()
    run_opcheck(op, sample, executor.device)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=() if c.second_order else pytest.mark.slow)
                                  for op in ('patch_merging',) for c in GRADCHECK[op]])
def test_gradcheck(executor, case):
    """float64 gradcheck (gradgradcheck where marked) of the wrapper, and its gradients against the reference;
    the second-order rows (small inputs) are the fast tier's."""
    executor.require_wrappers()
    r = run_gradcheck(case, executor.device)
    assert r["ok"], r


# ----------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrapper_matches_reference_through_autograd(dtype):
    B, H, W = 2, 13, 10
    x = torch.randn(B, H, W, 6, dtype=dtype, requires_grad=True)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    w, bb = torch.randn(24, dtype=wdt, requires_grad=True), torch.randn(24, dtype=wdt, requires_grad=True)
    y, r = patch_merging(x, w, bb, 1e-5), patch_merging_reference(x, w, bb, 1e-5)
    torch.testing.assert_close(y, r, **TOL[dtype])
    g = torch.randn_like(y)
    for a, c in zip(torch.autograd.grad(y, (x, w, bb), g), torch.autograd.grad(r, (x, w, bb), g)):
        torch.testing.assert_close(a, c, **TOL[dtype])


def _merge_leaves(shape=(2, 5, 7, 6), dtype=torch.float64, bdtype=None):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    br = torch.randn(*shape, dtype=bdtype or dtype, requires_grad=True)
    w = torch.randn(4 * shape[-1], dtype=acc, requires_grad=True)
    c = torch.randn(4 * shape[-1], dtype=acc, requires_grad=True)
    return x, w, c, br


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_patch_merging_with_branch_matches_reference_through_autograd(dtype):
    x, w, c, br = _merge_leaves((2, 5, 7, 6), dtype)
    y = patch_merging(x, w, c, 1e-5, br)
    r = patch_merging_reference(x + br, w, c, 1e-5)  # what the model did before: the add, then the merging
    torch.testing.assert_close(y, r, **TOL[dtype])
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (x, w, c, br), g), torch.autograd.grad(r, (x, w, c, br), g)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_patch_merging_mixed_dtypes_and_autocast():
    """autocast's mix: a float32 stream plus a bf16 branch; each input gets its gradient in its own dtype,
    and under autocast the output comes in the autocast dtype (the reduction Linear's input)."""
    x, w, c, br = _merge_leaves((3, 9, 6, 16), torch.float32, torch.bfloat16)
    y = patch_merging(x, w, c, 1e-5, br)
    assert y.dtype == torch.float32
    yr = patch_merging_reference(x, w, c, 1e-5, branch=br)
    torch.testing.assert_close(y, yr, atol=2e-5, rtol=2e-5)
    g = torch.randn_like(y)
    dx, dw, dc, dbr = torch.autograd.grad(y, (x, w, c, br), g)
    rx, rw, rc, _ = torch.autograd.grad(yr, (x, w, c, br), g, retain_graph=True)
    assert dx.dtype == torch.float32 and dbr.dtype == torch.bfloat16
    torch.testing.assert_close(dx, rx, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(dbr.float(), dx.bfloat16().float(), atol=0, rtol=0)  # the same values, rounded
    torch.testing.assert_close(dw, rw, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = patch_merging(x, w, c, 1e-5, br)
    assert ya.dtype == torch.bfloat16
    torch.testing.assert_close(ya.float(), y.bfloat16().float(), atol=0, rtol=0)  # y rounded once
    (ya.float() * g).sum().backward()  # y's gradient reaches the kernel in bf16
    assert x.grad.dtype == torch.float32 and br.grad.dtype == torch.bfloat16
    (rx16,) = torch.autograd.grad(yr, (x,), g.bfloat16().float())
    torch.testing.assert_close(x.grad, rx16, atol=2e-5, rtol=2e-5)


def test_patch_merging_backward_is_bitwise_deterministic():
    x, w, c, br = _merge_leaves((3, 17, 15, 8), torch.float32, torch.bfloat16)
    g = torch.randn(3, 9, 8, 32)
    # dweight/dbias from fixed per-block partials: independent of threads
    assert_thread_independent(lambda: torch.autograd.grad(patch_merging(x, w, c, 1e-5, br), (x, w, c, br), g))


def test_patch_merging_torch_func():
    from torch.func import grad, vmap

    x, w, c, br = (t.detach() for t in _merge_leaves((3, 2, 3, 5, 2)))  # (V, B, H, W, C)
    f = lambda fn: (lambda w_, x_, b_: fn(x_, w_, c, 1e-5, b_).pow(3).sum())  # noqa: E731
    ref = lambda x_, w_, c_, eps, b_: patch_merging_reference(x_ + b_, w_, c_, eps)  # noqa: E731
    for dims in ((None, 0, 0), (None, 0, None), (None, None, 0)):  # per-sample weight gradients
        args = (w, x if dims[1] == 0 else x[0], br if dims[2] == 0 else br[0])
        got = vmap(grad(f(patch_merging)), in_dims=dims)(*args)
        want = vmap(grad(f(ref)), in_dims=dims)(*args)
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------- bad input


def test_patch_merging_bad_input():
    with pytest.raises(ValueError, match="4 dims"):
        patch_merging(torch.randn(4, 4, 2), torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="weight and bias"):
        patch_merging(torch.randn(1, 4, 4, 2), torch.ones(7), torch.zeros(8))
    with pytest.raises(TypeError, match="float32"):
        patch_merging(torch.ones(1, 4, 4, 2, dtype=torch.int32), torch.ones(8), torch.zeros(8))
    x, w, b = torch.randn(1, 4, 4, 2), torch.ones(8), torch.zeros(8)
    with pytest.raises(ValueError, match="branch must have the shape of x"):
        patch_merging(x, w, b, 1e-5, torch.randn(1, 4, 3, 2))
    with pytest.raises(TypeError, match="branch must be float32"):
        patch_merging(x, w, b, 1e-5, torch.ones(1, 4, 4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="branch must be a torch.Tensor"):
        patch_merging(x, w, b, 1e-5, 0.5)
    with pytest.raises(ValueError, match="branch is on meta"):
        patch_merging(x, w, b, 1e-5, torch.randn(1, 4, 4, 2, device="meta"))
    # the raw ops say the same (RuntimeError, as TORCH_CHECK raises)
    with pytest.raises(RuntimeError, match="branch must have the shape of x"):
        torch.ops.swin_ext.patch_merging_fwd(x, w, b, 1e-5, torch.randn(1, 4, 4, 3))
    with pytest.raises(RuntimeError, match="y_dtype must be float32"):
        torch.ops.swin_ext.patch_merging_fwd(x, w, b, 1e-5, None, torch.int32)
    y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(x, w, b, 1e-5)
    with pytest.raises(RuntimeError, match="branch_dtype must be float32"):
        torch.ops.swin_ext.patch_merging_bwd(torch.ones_like(y), x, w, mean, rstd, None, torch.int64)
    with pytest.raises(RuntimeError, match="grad_out must be float32"):
        torch.ops.swin_ext.patch_merging_bwd(torch.ones_like(y).int(), x, w, mean, rstd)


def _merge(**over):
    a = dict(x=torch.randn(1, 4, 4, 2), weight=torch.ones(8), bias=torch.zeros(8), eps=1e-5)
    a.update(over)
    return lambda: patch_merging(a["x"], a["weight"], a["bias"], a["eps"])


OP_ARGUMENT_CASES = [
    ("eps-str", _merge(eps="1e-5"), TypeError, "eps must be a real number"),  # was: float("1e-5")
    ("eps-none", _merge(eps=None), TypeError, "eps must be a real number"),  # was: bare float() error
    ("eps-negative", _merge(eps=-1.0), ValueError, "eps must be >= 0"),  # was: NaN output
    ("eps-tensor", _merge(eps=torch.tensor(1e-5)), TypeError, "eps must be a Python number"),
    (
        "merging-C-bound",
        _merge(
            x=torch.empty(0, 1, 1, 2**28 + 1),
            weight=torch.empty(4 * (2**28 + 1), device="meta"),
            bias=torch.empty(4 * (2**28 + 1), device="meta"),
        ),
        ValueError,
        "C = 268435457 is larger",
    ),
    ("x-sparse", _merge(x=torch.randn(1, 4, 4, 2).to_sparse()), TypeError, "x must be a dense"),
    ("merge-weight-len", _merge(weight=torch.ones(7)), ValueError, r"weight and bias must be \(8,\)"),
    (
        "ref-merge-eps-str",
        lambda: patch_merging_reference(torch.randn(1, 2, 2, 1), torch.ones(4), torch.zeros(4), "x"),
        TypeError,
        "eps",
    ),
]


@pytest.mark.parametrize("fn,exc,match", [pytest.param(*c[1:], id=c[0]) for c in OP_ARGUMENT_CASES])
def test_op_argument(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def _raw_merge(device="cpu", C=2, wlen=None, eps=1e-5):
    def f():
        mk = (lambda *s: torch.empty(*s, device=device)) if device == "meta" else torch.randn
        return torch.ops.swin_ext.patch_merging_fwd(mk(1, 4, 4, C), mk(wlen or 4 * C), mk(4 * C), eps)

    return f


RAW_OP_CASES = [
    ("cpu-eps-negative", _raw_merge(eps=-1.0), "eps must be finite and >= 0"),  # was: NaN output
    ("cpu-merge-weight-len", _raw_merge(wlen=7), r"weight and bias must be \(8,\)"),
    ("meta-merge-weight-len", _raw_merge("meta", wlen=7), r"weight and bias must be \(8,\)"),  # was: accepted
    ("meta-eps-negative", _raw_merge("meta", eps=-1.0), "eps must be finite"),  # was: accepted
]


@pytest.mark.parametrize("fn,match", [pytest.param(*c[1:], id=c[0]) for c in RAW_OP_CASES])
def test_raw_op_and_fake_kernel_refuse(fn, match):
    with pytest.raises(RuntimeError, match=match):
        fn()


@pytest.mark.slow
def test_overflowing_size_in_a_child_process():
    code = (
        CHILD_HARNESS
        + r"""
case("merge-huge-empty", lambda: torch.ops.swin_ext.patch_merging_fwd(torch.empty(0, 2**41, 1, 2), torch.ones(8),
     torch.zeros(8), 1e-5))
print(json.dumps(results))
"""
    )
    r = run_child(code)
    assert r["merge-huge-empty"].startswith("RuntimeError:") and "larger than the supported" in r["merge-huge-empty"]


# ----------------------------------------------------------------------------- results


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


RESULT_CASES = [
    ("merging-1e30-float32", lambda: _merging_huge(1e30)),  # was: finite but wrong (the bias)
    ("merging-1e37-float32", lambda: _merging_huge(1e37)),
    ("merging-1e30-bfloat16", lambda: _merging_huge(1e30, torch.bfloat16)),
    ("merging-1e300-float64", lambda: _merging_huge(1e300, F64)),
    ("merging-small-values", lambda: _merging_huge(1e-3)),  # the plain path, unchanged
    ("merging-1e30-backward", _merging_huge_backward),
    ("merging-constant-1e30-row", _merging_constant_huge_row),
    ("merging-inf-nan", _merging_nonfinite_propagates),
]


@pytest.mark.parametrize("fn", [pytest.param(c[1], id=c[0]) for c in RESULT_CASES])
def test_op_result(fn):
    fn()

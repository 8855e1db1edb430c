"""``add_layernorm``: kernels on every executor, the wrapper (autocast, compile, torch.func), huge values, bad input."""
import math

import pytest
import torch

import swin_ext
from swin_ext import add_layernorm, add_layernorm_reference

from op_testing import (
    DTYPES,
    GRADCHECK,
    LN_CASES,
    OPCHECK,
    TOL,
    LnCase,
    assert_thread_independent,
    check_add_layernorm,
    check_close,
    ln_inputs,
    ln_reference,
    run_add_layernorm,
    run_gradcheck,
    run_opcheck,
)

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")
F64 = torch.float64


# ----------------------------------------------------------------------------- kernels on every executor


# SWIN_EXT_ADD_LN_BLOCKS=1: the CUDA register path puts all rows of these
# cases in one block, so every warp walks several row groups (its last one
# partial) and the dweight / dbias sums span them.
LN_PARAMS = [pytest.param(c, "auto", id=c.id) for c in LN_CASES] + [
    pytest.param(c, "blocks1", id=f"{c.id}-blocks1") for c in LN_CASES if c.shape[0] >= 100
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,variant", LN_PARAMS)
def test_add_layernorm(executor, case, variant, dtype, monkeypatch, seed_generator):
    if variant != "auto":
        if not executor.is_cuda_kernel:
            pytest.skip("a CUDA launch variant")
        monkeypatch.setenv("SWIN_EXT_ADD_LN_BLOCKS", "1")
    inp = ln_inputs(case, seed_generator)
    got = run_add_layernorm(executor, case, inp, dtype)
    check_add_layernorm(case, inp, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_add_layernorm_unaligned_rows(executor, dtype, seed_generator):
    """Inputs one element into their storage (rows not 16-byte aligned): the same results
    (the CUDA kernels take the scalar path)."""
    case = LnCase((6, 96), branch=torch.bfloat16)
    inp = ln_inputs(case, seed_generator)
    got = run_add_layernorm(executor, case, inp, dtype, offset=1)
    check_add_layernorm(case, inp, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("magnitude", [1e30, 1e36])
def test_add_layernorm_huge_values(executor, dtype, magnitude, seed_generator):
    """Statistics stay right where float32 squares overflow; a constant row gives exactly the bias."""
    case = LnCase((33, 100))  # two partial blocks, C not a vector multiple
    inp = ln_inputs(case, seed_generator, scale=magnitude)
    got = run_add_layernorm(executor, case, inp, dtype)
    exact = ln_reference(case, inp, dtype, exact=True)
    for i, name in enumerate(["h", "y"]):
        check_close(name, got[name], exact[i], exact[i], exact[i], dtype)
    for i, name in ((4, "dweight"), (5, "dbias")):
        check_close(name, got[name], exact[i], exact[i], exact[i], dtype)
    torch.testing.assert_close(got["dx"].double() * magnitude, exact[2] * magnitude, atol=1e-4, rtol=1e-4)
    inp["x"] = torch.full_like(inp["x"], magnitude)
    inp["b"] = torch.zeros_like(inp["b"])
    got = run_add_layernorm(executor, case, inp, dtype)
    torch.testing.assert_close(got["y"], inp["bb"].to(dtype).expand_as(got["y"]), atol=0, rtol=0)


@pytest.mark.parametrize("op,sample", [(op, s) for op in ('add_layernorm',) for s in OPCHECK[op]])
def test_opcheck(executor, op, sample):
    """torch.library.opcheck of every forward and backward op (schema, fakes, autograd registration)."""
    executor.require_wrappers()
    run_opcheck(op, sample, executor.device)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=() if c.second_order else pytest.mark.slow)
                                  for op in ('add_layernorm',) for c in GRADCHECK[op]])
def test_gradcheck(executor, case):
    """float64 gradcheck (gradgradcheck where marked) of the wrapper, and its gradients against the reference;
    the second-order rows (small inputs) are the fast tier's."""
    executor.require_wrappers()
    r = run_gradcheck(case, executor.device)
    assert r["ok"], r


# ----------------------------------------------------------------------------- the wrapper


def _ln_leaves(shape=(2, 5, 12), dtype=torch.float64, bdtype=None):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    b = torch.randn(*shape, dtype=bdtype or dtype, requires_grad=True)
    w = torch.randn(shape[-1], dtype=acc, requires_grad=True)
    c = torch.randn(shape[-1], dtype=acc, requires_grad=True)
    return x, b, w, c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_h", [True, False])
def test_add_layernorm_matches_reference_through_autograd(dtype, use_h):
    x, b, w, c = _ln_leaves((3, 7, 20), dtype)
    h, y = add_layernorm(x, b, w, c)
    hr, yr = add_layernorm_reference(x, b, w, c)
    torch.testing.assert_close(h, hr, **TOL[dtype])
    torch.testing.assert_close(y, yr, **TOL[dtype])
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    outs, outs_r, cots = ((y, h), (yr, hr), (gy, gh)) if use_h else ((y,), (yr,), (gy,))
    for a, r in zip(torch.autograd.grad(outs, (x, b, w, c), cots), torch.autograd.grad(outs_r, (x, b, w, c), cots)):
        torch.testing.assert_close(a, r, **TOL[dtype])


def test_add_layernorm_mixed_dtypes_gradients():
    """autocast's mix: a float32 stream plus a bf16 branch; each input gets its gradient in its own dtype."""
    x, b, w, c = _ln_leaves((4, 9, 16), torch.float32, torch.bfloat16)
    h, y = add_layernorm(x, b, w, c)
    assert h.dtype == y.dtype == torch.float32
    hr, yr = add_layernorm_reference(x, b, w, c)
    torch.testing.assert_close(y, yr, atol=2e-5, rtol=2e-5)
    g = torch.randn_like(y)
    dx, db, dw, dc = torch.autograd.grad((y, h), (x, b, w, c), (g, g))
    rx, rb, rw, rc = torch.autograd.grad((yr, hr), (x, b, w, c), (g, g))
    assert dx.dtype == torch.float32 and db.dtype == torch.bfloat16
    torch.testing.assert_close(dx, rx, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(db.float(), dx.bfloat16().float(), atol=0, rtol=0)  # the same values, rounded
    torch.testing.assert_close(dw, rw, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_add_layernorm_autocast_output_dtype(dtype):
    x, b, w, c = _ln_leaves((2, 5, 12), torch.float32)
    with torch.autocast("cpu", dtype=dtype):
        h, y = add_layernorm(x, b.detach().to(dtype).requires_grad_(), w, c)
    assert h.dtype == torch.float32 and y.dtype == dtype
    _, yr = add_layernorm_reference(x, b.to(dtype), w, c)
    torch.testing.assert_close(y.float(), yr.to(dtype).float(), atol=1e-2, rtol=1e-2)
    (y.float().sum() + h.sum()).backward()
    assert x.grad.dtype == torch.float32 and w.grad is not None
    h, y = add_layernorm(x, b, w, c)  # outside autocast: x's dtype
    assert y.dtype == torch.float32


def test_add_layernorm_under_compile_follows_autocast():
    x, b, w, c = (t.detach() for t in _ln_leaves((2, 5, 12), torch.float32))
    f = torch.compile(lambda *a: add_layernorm(*a), fullgraph=True, backend="aot_eager")
    h, y = f(x, b, w, c)
    assert y.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h2, y2 = f(x, b.bfloat16(), w, c)  # a new graph: guarded on the autocast state
    assert h2.dtype == torch.float32 and y2.dtype == torch.bfloat16
    torch.testing.assert_close(y2.float(), add_layernorm(x, b.bfloat16(), w, c)[1].bfloat16().float())


def test_add_layernorm_backward_is_bitwise_deterministic():
    x, b, w, c = _ln_leaves((300, 96), torch.float32)
    g = torch.randn(300, 96)

    def grads():
        h, y = add_layernorm(x, b, w, c)
        return torch.autograd.grad((y, h), (x, b, w, c), (g, g))

    assert_thread_independent(grads)  # dweight/dbias from fixed per-block partials: independent of threads


def test_add_layernorm_torch_func():
    from torch.func import grad, jacrev, vmap

    x, b, w, c = (t.detach() for t in _ln_leaves((3, 4, 6)))
    f = lambda fn: (lambda w_, x_: fn(x_, b[0], w_, c)[1].pow(3).sum())  # noqa: E731
    per_sample = [vmap(grad(f(fn)), in_dims=(None, 0))(w, x) for fn in (add_layernorm, add_layernorm_reference)]
    torch.testing.assert_close(per_sample[0], per_sample[1], atol=1e-9, rtol=1e-9)
    j = [jacrev(lambda x_, fn=fn: fn(x_, b[0:1], w, c)[1])(x[0:1]) for fn in (add_layernorm, add_layernorm_reference)]
    torch.testing.assert_close(j[0], j[1], atol=1e-9, rtol=1e-9)
    gg = [grad(lambda x_, fn=fn: grad(lambda x2: fn(x2, b, w, c)[1].pow(3).sum())(x_).sum())(x)
          for fn in (add_layernorm, add_layernorm_reference)]
    torch.testing.assert_close(gg[0], gg[1], atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------- bad input


def _ln(**over):
    a = dict(x=torch.randn(2, 3, 4), branch=torch.randn(2, 3, 4), weight=torch.ones(4), bias=torch.zeros(4), eps=1e-5)
    a.update(over)
    return lambda: add_layernorm(a["x"], a["branch"], a["weight"], a["bias"], a["eps"])


OP_ARGUMENT_CASES = [
    ("ln-branch-shape", _ln(branch=torch.randn(2, 3, 5)), ValueError, r"branch must have the shape of x \(2, 3, 4\)"),
    ("ln-branch-broadcast", _ln(branch=torch.randn(1, 3, 4)), ValueError, "branch must have the shape of x"),
    ("ln-x-scalar", _ln(x=torch.tensor(1.0), branch=torch.tensor(1.0)), ValueError, r"x must be \(\.\.\., C\)"),
    (
        "ln-C-zero",
        _ln(x=torch.randn(2, 0), branch=torch.randn(2, 0), weight=torch.ones(0), bias=torch.zeros(0)),
        ValueError,
        r"C of x must be in \[1, 1073741824\], got 0",
    ),
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
    (
        "ref-ln-branch-shape",
        lambda: add_layernorm_reference(torch.randn(2, 4), torch.randn(4), torch.ones(4), torch.zeros(4)),
        ValueError,
        "branch must have the shape of x",
    ),
    (
        "ref-ln-y-dtype",
        lambda: add_layernorm_reference(
            torch.randn(2, 4), torch.randn(2, 4), torch.ones(4), torch.zeros(4), y_dtype=torch.int8
        ),
        TypeError,
        "y_dtype must be float32",
    ),
]


@pytest.mark.parametrize("fn,exc,match", [pytest.param(*c[1:], id=c[0]) for c in OP_ARGUMENT_CASES])
def test_op_argument(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def _raw_ln(device="cpu", shape=(2, 3, 4), bshape=None, wdtype=torch.float32, eps=1e-5, y_dtype=None):
    def f():
        mk = (
            (lambda *s, dtype=torch.float32: torch.empty(*s, device=device, dtype=dtype))
            if device == "meta"
            else (lambda *s, dtype=torch.float32: torch.randn(*s, dtype=dtype))
        )
        C = shape[-1]
        return torch.ops.swin_ext.add_layernorm_fwd(
            mk(*shape), mk(*(bshape or shape)), mk(C, dtype=wdtype), mk(C, dtype=wdtype), eps, y_dtype
        )

    return f


def _raw_ln_bwd(device="cpu", grad_h_dtype=torch.float32, mean_shape=(2, 3), gy_shape=(2, 3, 4)):
    def f():
        mk = (
            (lambda *s, dtype=torch.float32: torch.empty(*s, device=device, dtype=dtype))
            if device == "meta"
            else (lambda *s, dtype=torch.float32: torch.rand(*s, dtype=dtype) + 0.5)
        )
        return torch.ops.swin_ext.add_layernorm_bwd(
            mk(2, 3, 4, dtype=grad_h_dtype), mk(*gy_shape), mk(2, 3, 4), mk(4), mk(*mean_shape), mk(*mean_shape), None
        )

    return f


RAW_OP_CASES = [
    ("cpu-ln-y-dtype-int", _raw_ln(y_dtype=torch.int32), "y_dtype must be float32, float64, float16 or bfloat16"),
    ("cpu-ln-weight-dtype", _raw_ln(wdtype=torch.float64), "weight/bias must be"),
    ("cpu-ln-eps-negative", _raw_ln(eps=-1.0), "eps must be finite and >= 0"),
    ("cpu-ln-eps-inf", _raw_ln(eps=math.inf), "eps must be finite and >= 0"),
    ("cpu-ln-branch-shape", _raw_ln(bshape=(2, 3, 5)), "branch must have the shape of x"),
    ("cpu-ln-C-zero", _raw_ln(shape=(2, 0)), r"C of x must be in \[1, "),
    ("cpu-ln-bwd-grad-h-dtype", _raw_ln_bwd(grad_h_dtype=torch.float64), "grad_h must be"),
    ("cpu-ln-bwd-mean-shape", _raw_ln_bwd(mean_shape=(3,)), "mean/rstd must be"),
    ("cpu-ln-bwd-grad-y-shape", _raw_ln_bwd(gy_shape=(2, 3, 5)), "grad_y must have the shape of h"),
    (
        "meta-ln-y-dtype-int",
        _raw_ln("meta", y_dtype=torch.int32),
        "y_dtype must be float32, float64, float16 or bfloat16",
    ),
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


# ----------------------------------------------------------------------------- results


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

"""What every op keeps alike: the op table covers every op, build info and limits, the baseline-ISA
kernels, autograd contracts (torch.func, gradient penalties, raw backward ops, auxiliary outputs).

Each op's own tests (kernels on every executor, the wrapper, bad input) are
in ``tests/test_<op>.py``.
"""
import pytest
import torch

import swin_ext
from swin_ext import (
    add_layernorm,
    add_layernorm_reference,
    patch_merging,
    patch_merging_reference,
    window_attention,
    window_attention_reference,
)

from op_testing import GRADCHECK, OPCHECK
from swin_test_utils import run_on_isa

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")
F64 = torch.float64


def test_op_table_covers_every_op():
    """Every op of swin_ext.ops.OPS has opcheck rows for its forward and backward, gradcheck rows
    (one second-order), a reference, and a test file named after it."""
    import os

    from swin_ext.ops import OPS, reference

    assert set(OPCHECK) == set(GRADCHECK) == set(OPS)
    for op in OPS:
        assert any(s.startswith("fwd") for s in OPCHECK[op]) and any(s.startswith("bwd") for s in OPCHECK[op]), op
        assert any(c.second_order for c in GRADCHECK[op]), op
        assert callable(getattr(reference, f"{op}_reference")), op
        assert os.path.exists(os.path.join(os.path.dirname(__file__), f"test_{op.replace('_v2', '')}.py")), op


def test_cpp_checks_raise_python_errors():
    """The raw op validates too: a bad call is a RuntimeError, never a crash."""
    with pytest.raises(RuntimeError, match="shift"):
        torch.ops.swin_ext.window_attention_fwd(
            torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16), None, [4, 4], [5, 0], 1.0
        )
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.swin_ext.window_attention_fwd(
            torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16, dtype=torch.float64), None, [4, 4], [0, 0], 1.0
        )
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.swin_ext.patch_merging_bwd(
            torch.randn(1, 1, 1, 8), torch.randn(1, 4, 4, 2), torch.ones(8), torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_without_cuda_kernels_is_a_clear_error():
    if swin_ext.build_info()["cuda"]:
        pytest.skip("CUDA kernels compiled in")
    with pytest.raises(RuntimeError, match="without CUDA"):
        window_attention(torch.randn(1, 4, 4, 12, device="cuda"), torch.randn(2, 16, 16, device="cuda"), 4)


def test_build_info():
    info = swin_ext.build_info()
    assert info["ops_loaded"] is True
    assert info["torch_built"] == torch.__version__
    assert isinstance(info["cuda"], bool) and info["variant_reason"]


def test_limits_come_from_the_compiled_checks():
    """The kernels' limits are written once (csrc/checks.h) and read by the Python validation."""
    from swin_ext._ext import LIMITS
    from swin_ext.ops import _validate

    assert set(LIMITS) == {"MAX_WINDOW_SIZE", "MAX_WINDOW_TOKENS", "MAX_DIM", "MAX_MERGE_CHANNELS",
                           "MAX_LAYERNORM_CHANNELS"}
    assert _validate.MAX_WINDOW_SIZE == LIMITS["MAX_WINDOW_SIZE"] and _validate.MAX_DIM == LIMITS["MAX_DIM"]
    assert _validate.MAX_WINDOW_TOKENS == LIMITS["MAX_WINDOW_TOKENS"] == 2**30
    ws = LIMITS["MAX_WINDOW_SIZE"] + 1
    # the C++ check and the Python one name the same bound
    with pytest.raises(RuntimeError, match=f"window_size must be in \\[1, {ws - 1}\\]"):
        torch.ops.swin_ext.window_attention_fwd(
            torch.randn(1, 2, 2, 6), torch.randn(1, 1, 1), None, [ws, ws], [0, 0], 1.0
        )
    with pytest.raises(ValueError, match=f"window_size must be in \\[1, {ws - 1}\\]"):
        window_attention(torch.randn(1, 2, 2, 6), torch.randn(1, 1, 1), ws)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_baseline_isa_path_matches_reference(isa):
    """The kernels' baseline (non-AVX2) build, which machines without AVX2 run, and the AVX2 build where the
    machine has AVX-512 (bias + GELU is compiled a third time for it; SWIN_EXT_CPU_ISA=avx2 stops before)."""
    code = (
        "import torch, swin_ext\n"
        "from swin_ext.ops import reference as R\n"
        "torch.manual_seed(0)\n"
        "for dt, tol in ((torch.float32, 2e-5), (torch.float64, 1e-10)):\n"
        "    q = torch.randn(2, 11, 9, 3 * 12, dtype=dt, requires_grad=True)\n"
        "    b = torch.randn(3, 16, 16, dtype=dt, requires_grad=True)\n"
        "    p = torch.randn(36, dtype=dt, requires_grad=True)\n"
        "    o = swin_ext.window_attention(q, b, 4, 2, None, p)\n"
        "    r = R.window_attention_reference(q, b, 4, 2, None, p)\n"
        "    torch.testing.assert_close(o, r, atol=tol, rtol=tol)\n"
        "    g = torch.randn_like(o)\n"
        "    for x, y in zip(torch.autograd.grad(o, (q, b, p), g), torch.autograd.grad(r, (q, b, p), g)):\n"
        "        torch.testing.assert_close(x, y, atol=tol, rtol=tol)\n"
        "    x = torch.randn(2, 7, 5, 6, dtype=dt, requires_grad=True)\n"
        "    w = torch.randn(24, dtype=dt, requires_grad=True); c = torch.randn(24, dtype=dt, requires_grad=True)\n"
        "    y = swin_ext.patch_merging(x, w, c); yr = R.patch_merging_reference(x, w, c)\n"
        "    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, b in zip(torch.autograd.grad(y, (x, w, c), g), torch.autograd.grad(yr, (x, w, c), g)):\n"
        "        torch.testing.assert_close(a, b, atol=tol, rtol=tol)\n"
        "    x = torch.randn(2, 7, 5, 16, dtype=dt, requires_grad=True)\n"
        "    br = torch.randn(2, 7, 5, 16).bfloat16().requires_grad_()\n"
        "    w = torch.randn(64, dtype=dt, requires_grad=True); c = torch.randn(64, dtype=dt, requires_grad=True)\n"
        "    y = swin_ext.patch_merging(x, w, c, 1e-5, br); yr = R.patch_merging_reference(x, w, c, 1e-5, br)\n"
        "    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, b in zip(torch.autograd.grad(y, (x, w, c, br), g), torch.autograd.grad(yr, (x, w, c, br), g)):\n"
        "        torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol)\n"
        "    z = torch.randn(9, 37, dtype=dt, requires_grad=True) * 3\n"
        "    bz = torch.randn(37, dtype=dt, requires_grad=True)\n"
        "    y, yr = swin_ext.bias_gelu(z, bz), R.bias_gelu_reference(z, bz)\n"
        "    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, b in zip(torch.autograd.grad(y, (z, bz), g), torch.autograd.grad(yr, (z, bz), g)):\n"
        "        torch.testing.assert_close(a, b, atol=tol, rtol=tol)\n"
        "    x = torch.randn(5, 7, 20, dtype=dt, requires_grad=True)\n"
        "    br = torch.randn(5, 7, 20, dtype=dt, requires_grad=True)\n"
        "    w = torch.randn(20, dtype=dt, requires_grad=True); c = torch.randn(20, dtype=dt, requires_grad=True)\n"
        "    (h, y), (hr, yr) = swin_ext.add_layernorm(x, br, w, c), R.add_layernorm_reference(x, br, w, c)\n"
        "    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)\n"
        "    for a, b in zip(torch.autograd.grad((y, h), (x, br, w, c), (g2 := torch.randn_like(y), g2)),\n"
        "                    torch.autograd.grad((yr, hr), (x, br, w, c), (g2, g2))):\n"
        "        torch.testing.assert_close(a, b, atol=tol, rtol=tol)\n"
        "print('ok')\n"
    )
    run_on_isa(code, isa)


# ----------------------------------------------------------------------------- autograd contracts


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _attn_small(requires_grad=True):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 3, 12, dtype=F64, generator=g).requires_grad_(requires_grad)
    b = torch.randn(2, 4, 4, dtype=F64, generator=g).requires_grad_(requires_grad)
    p = torch.randn(12, dtype=F64, generator=g).requires_grad_(requires_grad)
    return q, b, p


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
    out, lse = torch.ops.swin_ext.window_attention_fwd(q, b, None, [2, 2], [1, 1], 0.5)
    with pytest.raises(RuntimeError, match="window_attention_bwd is not differentiable"):  # was: zeros + warning
        torch.ops.swin_ext.window_attention_bwd(torch.ones_like(out), q, b, None, lse, [2, 2], [1, 1], 0.5)
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
    out, lse = torch.ops.swin_ext.window_attention_fwd(q, b, None, [2, 2], [1, 1], 0.5)
    assert out.requires_grad and not lse.requires_grad  # was: lse required grad, its gradient dropped
    x = torch.randn(1, 2, 2, 1, requires_grad=True)
    y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(x, torch.ones(4, requires_grad=True), torch.zeros(4), 1e-5)
    assert y.requires_grad and not mean.requires_grad and not rstd.requires_grad
    h, y, mean, rstd = torch.ops.swin_ext.add_layernorm_fwd(
        x, x, torch.ones(1, requires_grad=True), torch.zeros(1), 1e-5, None
    )
    assert h.requires_grad and y.requires_grad and not mean.requires_grad and not rstd.requires_grad


@pytest.mark.parametrize("name", swin_ext.ops.OPS)
def test_autograd_kernels_are_cpp(name):
    """The raw ops' autograd kernels are C++ (csrc/autograd: no Python autograd per call of a
    training step) and the higher-order backward each calls is the Python composite's vjp."""
    import re

    for op in (f"{name}_fwd", f"{name}_bwd"):
        lines = torch._C._dispatch_dump(f"swin_ext::{op}").splitlines()
        autograd = [ln for ln in lines if ln.startswith("Autograd")]
        assert len(autograd) == 1 and re.search(r"csrc/autograd/\w+_autograd\.cpp", autograd[0]), autograd
    lines = torch._C._dispatch_dump(f"swin_ext::{name}_vjp").splitlines()
    assert any(ln.startswith("CompositeImplicitAutograd") and "_autograd.py" in ln for ln in lines), lines


def _second_order_cases():
    """Per op: (fused fn, reference fn, inputs, which inputs require grad); some inputs frozen,
    so the higher-order backward's placeholders for gradients not needed are exercised."""
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, dtype=F64, generator=g)

    q, b, p = r(1, 3, 3, 12), r(2, 4, 4), r(12)
    hs = torch.rand(2, dtype=F64, generator=g) + 0.5
    x, br, w, c = r(1, 3, 4, 2), r(1, 3, 4, 2), r(8), r(8)
    lx, lw, lc = r(3, 6), r(6), r(6)
    z, zb = r(4, 5), r(5)
    A, AR = window_attention, window_attention_reference
    V2, V2R = swin_ext.window_attention_v2, swin_ext.window_attention_v2_reference
    M, MR = patch_merging, patch_merging_reference
    L, LR = add_layernorm, add_layernorm_reference
    B, BR = swin_ext.bias_gelu, swin_ext.ops.reference.bias_gelu_reference
    return {
        "attention-qkv": (lambda f: lambda q_, b_, p_: f(q_, b_, 2, 1, qkv_pad=p_), A, AR, (q, b, p), (0,)),
        "attention-bias-pad": (lambda f: lambda q_, b_, p_: f(q_, b_, 2, 1, qkv_pad=p_), A, AR, (q, b, p), (1, 2)),
        "v2-scale": (lambda f: lambda q_, b_, s_: f(q_, b_, s_, 2, 1), V2, V2R, (q, b, hs), (2,)),
        "merging-branch": (lambda f: lambda x_, w_, c_, br_: f(x_, w_, c_, branch=br_), M, MR, (x, w, c, br), (3,)),
        "merging-x-weight": (lambda f: lambda x_, w_, c_, br_: f(x_, w_, c_, branch=br_), M, MR, (x, w, c, br), (0, 1)),
        "layernorm-x": (lambda f: lambda x_, b_, w_, c_: f(x_, b_, w_, c_), L, LR, (lx, lx.flip(-1), lw, lc), (0,)),
        "layernorm-bias": (lambda f: lambda x_, b_, w_, c_: f(x_, b_, w_, c_), L, LR, (lx, lx.flip(-1), lw, lc), (3,)),
        "bias-gelu-bias": (lambda f: lambda z_, b_: f(z_, b_), B, BR, (z, zb), (1,)),
    }


@pytest.mark.parametrize("case", sorted(_second_order_cases()))
def test_second_order_with_frozen_inputs_matches_reference(case):
    """create_graph=True through the C++ autograd kernels with some inputs frozen: the gradient of a
    gradient norm equals the reference composite's."""
    make, fused, ref, inputs, wrt = _second_order_cases()[case]

    def penalty(f):
        leaves = [t.clone().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
        out = make(f)(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        sel = [leaves[i] for i in wrt]
        first = torch.autograd.grad(sum(o.pow(3).sum() for o in outs), sel, create_graph=True)
        return torch.autograd.grad(sum(d.pow(2).sum() for d in first), sel)

    got, want = penalty(fused), penalty(ref)
    for a, e in zip(got, want):
        assert e.abs().max() > 0
        _close(a, e, 1e-9)


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
        return [
            vmap(grad(lambda ww, x, f=f: f(x, x * 0.5, ww, lc)[1].pow(3).sum()), in_dims=(None, 0))(lw, ls)
            for f in (L, LR)
        ]
    if name == "ln-jacrev":
        return [jacrev(lambda x, f=f: f(x, x.flip(-1), lw, lc)[1])(ls[0]) for f in (L, LR)]
    if name == "ln-vmap-batched-weight":
        lws = torch.randn(3, 6, dtype=F64, generator=g)
        return [
            vmap(lambda x, ww: L(x, x, ww, lc)[1])(ls, lws),
            torch.stack([LR(ls[i], ls[i], lws[i], lc)[1] for i in range(3)]),
        ]
    raise KeyError(name)


@pytest.mark.parametrize(
    "name",
    # was: every one failed with "it must override the setup_context staticmethod"
    [
        "grad",
        "per-sample-grad",
        "jacrev",
        "vmap-batched-bias",
        "grad-of-grad",
        "merging-per-sample-grad",
        "merging-jacrev",
        "ln-per-sample-grad",
        "ln-jacrev",
        "ln-vmap-batched-weight",
    ],
)
def test_torch_func_matches_reference(name):
    got, want = _func_case(name)
    _close(got, want, 1e-9)


def test_extension_keeps_a_static_libstdcxx_private():
    """``_C`` exports none of libstdc++'s own definitions.  A toolchain that links libstdc++
    statically (the H200 image's, 2026-12-04) put a second copy in ``_C``; exported, its symbols
    mixed with the copy torch loaded and the first formatted error message crashed the process
    (``setup.py`` links with ``--exclude-libs,ALL``).  A dynamic libstdc++ passes trivially."""
    import shutil
    import subprocess

    from swin_ext import _C

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm (binutils) on this machine")
    out = subprocess.run([nm, "-D", "--defined-only", _C.__file__], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    # std::locale::classic(), std::ostream::_M_insert<long>: defined only by libstdc++ itself
    assert not exported & {"_ZNSt6locale7classicEv", "_ZNSo9_M_insertIlEERSoT_"}


def test_formatted_argument_errors_raise():
    """An op's argument check with numbers in its message comes back as a RuntimeError (the path
    that crashed with the exported static libstdc++ above)."""
    with pytest.raises(RuntimeError, match=r"bias must be .* \(4,\)"):
        torch.ops.swin_ext.bias_gelu_fwd(torch.randn(2, 4), torch.randn(3))


def _unchecked_cases(dtype):
    """Per op: the public call and its ``<op>_unchecked`` twin on the same fresh random inputs (the
    parameters in the inputs' dtype, so that the twin's conversion to the accumulation dtype runs)."""
    from swin_ext import ops

    g = torch.Generator().manual_seed(7)

    def rg(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    qkv, tbl, pad = rg(2, 9, 11, 36), rg(49, 3, scale=0.2), rg(36)
    qkv3, bias3 = rg(1, 3, 5, 6, 24), rg(2, 32, 32, scale=0.2)
    qkv2, bias2, hs = rg(2, 9, 7, 24), rg(2, 16, 16, scale=0.2), (torch.rand(2, generator=g) * 5 + 1).to(dtype)
    hs.requires_grad_()
    x, br, w, b = rg(2, 7, 5, 6), rg(2, 7, 5, 6), rg(24), rg(24)
    xl, brl, wl, bl = rg(3, 4, 16), rg(3, 4, 16), rg(16), rg(16)
    z, zb = rg(3, 5, 16), rg(16)
    return {
        "window_attention": (
            lambda: window_attention(qkv, tbl, 4, 2, 0.3, pad),
            lambda: ops.window_attention_unchecked(qkv, tbl, (4, 4), (2, 2), 0.3, pad),
            (qkv, tbl, pad),
        ),
        "window_attention_3d": (
            lambda: window_attention(qkv3, bias3, (2, 4, 4), (1, 2, 2), 0.4),
            lambda: ops.window_attention_unchecked(qkv3, bias3, [2, 4, 4], [1, 2, 2], 0.4),
            (qkv3, bias3),
        ),
        "window_attention_v2": (
            lambda: swin_ext.window_attention_v2(qkv2, bias2, hs, 4, (2, 1), pad[:24]),
            lambda: ops.window_attention_v2_unchecked(qkv2, bias2, hs, 4, (2, 1), pad[:24]),
            (qkv2, bias2, hs, pad),
        ),
        "patch_merging": (
            lambda: patch_merging(x, w, b, 1e-5, br),
            lambda: ops.patch_merging_unchecked(x, w, b, 1e-5, br),
            (x, br, w, b),
        ),
        "add_layernorm": (
            lambda: add_layernorm(xl, brl, wl, bl, 1e-5),
            lambda: ops.add_layernorm_unchecked(xl, brl, wl, bl, 1e-5),
            (xl, brl, wl, bl),
        ),
        "bias_gelu": (
            lambda: swin_ext.bias_gelu(z, zb),
            lambda: ops.bias_gelu_unchecked(z, zb),
            (z, zb),
        ),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "name", ["window_attention", "window_attention_3d", "window_attention_v2", "patch_merging", "add_layernorm",
             "bias_gelu"]
)
def test_unchecked_twin_is_the_public_op(name, dtype):
    """``<op>_unchecked`` (what the layers call) is the public op less its Python checks: the same raw
    op on the same converted arguments, so the outputs and every input's gradient are bitwise equal."""
    public, unchecked, inputs = _unchecked_cases(dtype)[name]
    outs = []
    for call in (public, unchecked):
        out = call()
        out = out if isinstance(out, tuple) else (out,)
        cot = [torch.randn(o.shape, generator=torch.Generator().manual_seed(3)).to(o.dtype) for o in out]
        grads = torch.autograd.grad(out, inputs, cot, allow_unused=True)
        outs.append((out, grads))
    (o1, g1), (o2, g2) = outs
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    for t, a, b in zip(inputs, g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == t.dtype and torch.equal(a, b)


def test_unchecked_twins_still_refuse_bad_arguments():
    """Without the Python checks, a bad argument is refused by the raw op's C++ checks: a RuntimeError
    naming the problem, never a crash or a wrong answer."""
    from swin_ext import ops

    q, t = torch.randn(1, 4, 4, 12), torch.randn(50, 2)
    with pytest.raises(RuntimeError, match="shift must satisfy"):
        ops.window_attention_unchecked(q, torch.randn(2, 16, 16), (4, 4), (4, 0), 1.0)
    with pytest.raises(RuntimeError, match="one entry per map axis"):
        ops.window_attention_unchecked(q, torch.randn(2, 16, 16), (4, 4, 4), (0, 0, 0), 1.0)
    with pytest.raises(RuntimeError, match="bias must be"):
        ops.window_attention_unchecked(q, t, (4, 4), (0, 0), 1.0)  # window 4's table has 49 rows
    with pytest.raises(RuntimeError, match="scale must be finite"):
        ops.window_attention_unchecked(q, torch.randn(2, 16, 16), (4, 4), (0, 0), float("nan"))
    with pytest.raises(RuntimeError, match="head_scale"):
        ops.window_attention_v2_unchecked(q, torch.randn(2, 16, 16), torch.ones(3), 4, (0, 0))
    with pytest.raises(RuntimeError, match="branch must have the shape of x"):
        ops.add_layernorm_unchecked(torch.randn(2, 8), torch.randn(2, 7), torch.ones(8), torch.zeros(8), 1e-5)
    with pytest.raises(RuntimeError, match="eps must be finite and >= 0"):
        ops.add_layernorm_unchecked(torch.randn(2, 8), torch.randn(2, 8), torch.ones(8), torch.zeros(8), -1.0)
    with pytest.raises(RuntimeError, match=r"weight and bias must be \(8,\)"):
        ops.patch_merging_unchecked(torch.randn(1, 4, 4, 2), torch.ones(7), torch.zeros(7), 1e-5)
    with pytest.raises(RuntimeError, match="bias"):
        ops.bias_gelu_unchecked(torch.randn(3, 8), torch.zeros(7))


@pytest.mark.parametrize("kind", ["v1", "v2", "3d"])
def test_models_skip_the_python_checks(monkeypatch, kind):
    """The fused models call the ops through their unchecked twins (the layers build valid arguments;
    the C++ checks still run): a training step and an inference forward run with every Python check
    of the op modules made to fail.  Why it matters: those checks were ~13% of an eager Swin-T
    forward's host time (``benchmarks/host_overhead.py --step``), which a host-bound GPU step waits on."""
    import sys

    from swin_ext import SwinTransformer3d, SwinTransformerV2

    def refuse(*args, **kwargs):
        raise AssertionError("a Python op check ran in the model's fused path")

    torch.manual_seed(0)
    if kind == "v1":
        m = swin_ext.SwinTransformer(img_size=36, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                                     num_classes=5)
        x = torch.randn(2, 3, 36, 36)
    elif kind == "v2":
        m = SwinTransformerV2(img_size=36, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                              num_classes=5)
        x = torch.randn(2, 3, 36, 36)
    else:
        m = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                              window_size=[2, 3, 3], num_classes=5)
        x = torch.randn(1, 3, 4, 24, 20)
    with torch.no_grad():
        ref = m.eval()(x)
    for mod in swin_ext.ops._MODULES:
        for attr in dir(mod):
            if attr.startswith("check_") or attr == "attention_scale":
                monkeypatch.setattr(sys.modules[mod.__name__], attr, refuse)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    m.train()
    m(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
    with pytest.raises(AssertionError, match="Python op check"):  # the patch is live: the public op hits it
        window_attention(torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16), 4)

"""swin_ext operators vs the plain-PyTorch reference (CPU)."""
import itertools

import pytest
import torch
from torch.autograd import gradcheck

import swin_ext
from swin_ext import (
    add_layernorm,
    add_layernorm_reference,
    patch_merging,
    patch_merging_reference,
    window_attention,
    window_attention_reference,
)

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

# (H, W, window, shift): divisible, padded, map smaller than the window,
# rectangular, per-axis shift, window 1.
GEOMETRIES = [
    (14, 14, 7, (0, 0)),
    (14, 14, 7, (3, 3)),
    (13, 10, 7, (3, 3)),
    (9, 17, 4, (2, 2)),
    (5, 3, 7, (0, 0)),
    (5, 3, 7, (3, 3)),
    (7, 14, 7, (0, 3)),
    (8, 8, 4, (1, 3)),
    (3, 4, 1, (0, 0)),
]
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}


def _attn_inputs(B, H, W, ws, heads, d, dtype, with_pad):
    C = heads * d
    qkv = torch.randn(B, H, W, 3 * C, dtype=dtype)
    bias = torch.randn(heads, ws * ws, ws * ws, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    pad = torch.randn(3 * C, dtype=dtype) if with_pad else None
    return qkv, bias, pad


# Kernel-level cases (every geometry, dtype and executor) are in
# test_op_kernels.py; here the Python wrappers and their autograd wiring.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("H,W,ws,shift", [GEOMETRIES[2], GEOMETRIES[6]])
def test_wrappers_match_reference_through_autograd(dtype, H, W, ws, shift):
    heads, d, B = 3, 5, 2
    with_pad = (H % ws) != 0 or (W % ws) != 0
    qkv, bias, pad = _attn_inputs(B, H, W, ws, heads, d, dtype, with_pad)
    leaves = [t.requires_grad_() for t in (qkv, bias, pad) if t is not None]
    out = window_attention(qkv, bias, ws, shift, None, pad)
    ref = window_attention_reference(qkv, bias, ws, shift, None, pad)
    assert out.shape == (B, H, W, heads * d) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, b, **TOL[dtype])
    x = torch.randn(B, H, W, 6, dtype=dtype, requires_grad=True)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    w, bb = torch.randn(24, dtype=wdt, requires_grad=True), torch.randn(24, dtype=wdt, requires_grad=True)
    y, r = patch_merging(x, w, bb, 1e-5), patch_merging_reference(x, w, bb, 1e-5)
    torch.testing.assert_close(y, r, **TOL[dtype])
    g = torch.randn_like(y)
    for a, c in zip(torch.autograd.grad(y, (x, w, bb), g), torch.autograd.grad(r, (x, w, bb), g)):
        torch.testing.assert_close(a, c, **TOL[dtype])


@pytest.mark.parametrize(
    "H,W,ws,shift,pad",
    [(6, 6, 3, (1, 1), False), (5, 7, 3, (1, 1), True), (4, 5, 4, (0, 0), True), (2, 2, 3, (1, 2), True)],
)
def test_attention_gradcheck(H, W, ws, shift, pad):
    qkv, bias, p = _attn_inputs(2, H, W, ws, 2, 3, torch.float64, pad)
    inputs = [qkv.requires_grad_(), bias.requires_grad_()] + ([p.requires_grad_()] if pad else [])

    def f(q, b, *pp):
        return window_attention(q, b, ws, shift, None, pp[0] if pp else None)

    assert gradcheck(f, inputs)


def test_patch_merging_gradcheck():
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w, b: patch_merging(x, w, b), (x, w, b))
    br = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w, b, br: patch_merging(x, w, b, 1e-5, br), (x, w, b, br))
    xs, ws, bs, brs = (t.detach()[:1, :3].clone().requires_grad_() if t.dim() == 4 else t for t in (x, w, b, br))
    assert torch.autograd.gradgradcheck(lambda x, w, b, br: patch_merging(x, w, b, 1e-5, br), (xs, ws, bs, brs))


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
    runs = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        runs.append(torch.autograd.grad(patch_merging(x, w, c, 1e-5, br), (x, w, c, br), g))
    torch.set_num_threads(2)
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)  # dweight/dbias from fixed per-block partials: independent of threads


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


def test_attention_noncontiguous_inputs():
    qkv = torch.randn(2, 3 * 12, 9, 9).permute(0, 2, 3, 1)  # (B, H, W, 3C), not contiguous
    bias = torch.randn(2, 16, 32)[:, :, ::2]  # (2, 16, 16), strided
    out = window_attention(qkv, bias, 4, (2, 2))
    torch.testing.assert_close(out, window_attention_reference(qkv, bias, 4, (2, 2)), atol=2e-5, rtol=2e-5)


def test_backward_is_bitwise_deterministic():
    qkv, bias, pad = _attn_inputs(3, 11, 9, 4, 2, 8, torch.float32, True)
    for t in (qkv, bias, pad):
        t.requires_grad_(True)
    g = torch.randn(3, 11, 9, 16)
    runs = []
    for _ in range(2):
        out = window_attention(qkv, bias, 4, (2, 2), None, pad)
        runs.append(torch.autograd.grad(out, (qkv, bias, pad), g))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_nan_in_one_sample_stays_there():
    qkv, bias, _ = _attn_inputs(3, 8, 8, 4, 2, 4, torch.float32, False)
    qkv[1, 2, 3, 0] = float("nan")
    out = window_attention(qkv, bias, 4, (2, 2))
    assert torch.isnan(out[1]).any()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


# ----------------------------------------------------------------------------- opcheck


def _opcheck_samples():
    qkv, bias, pad = _attn_inputs(2, 9, 7, 4, 2, 4, torch.float32, True)
    yield torch.ops.swin_ext.window_attention_fwd.default, (qkv, bias, pad, 4, 2, 2, 0.5)
    yield torch.ops.swin_ext.window_attention_fwd.default, (qkv.requires_grad_(), bias.requires_grad_(), pad.requires_grad_(), 4, 2, 2, 0.5)
    q2 = torch.randn(1, 8, 8, 3 * 6, dtype=torch.float64).transpose(1, 2)
    yield torch.ops.swin_ext.window_attention_fwd.default, (q2, torch.randn(3, 16, 16, dtype=torch.float64, requires_grad=True), None, 4, 0, 0, 0.7)
    x = torch.randn(2, 5, 6, 3, requires_grad=True)
    w, b = torch.randn(12, requires_grad=True), torch.randn(12, requires_grad=True)
    yield torch.ops.swin_ext.patch_merging_fwd.default, (x, w, b, 1e-5)
    yield torch.ops.swin_ext.patch_merging_fwd.default, (x.detach().transpose(1, 2), w.detach(), b.detach(), 1e-6)
    go = torch.randn(2, 3, 3, 12)
    y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(x.detach(), w.detach(), b.detach(), 1e-5)
    yield torch.ops.swin_ext.patch_merging_bwd.default, (go, x.detach(), w.detach(), mean, rstd)
    br = torch.randn(2, 5, 6, 3).bfloat16().requires_grad_()
    yield torch.ops.swin_ext.patch_merging_fwd.default, (x, w, b, 1e-5, br, torch.bfloat16)  # autocast's mix
    y, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(x.detach(), w.detach(), b.detach(), 1e-5, br.detach(),
                                                         torch.bfloat16)
    yield torch.ops.swin_ext.patch_merging_bwd.default, (go.bfloat16(), x.detach(), w.detach(), mean, rstd,
                                                         br.detach(), torch.bfloat16)
    qd, bd, pd = qkv.detach(), bias.detach(), pad.detach()
    out, lse = torch.ops.swin_ext.window_attention_fwd(qd, bd, pd, 4, 2, 2, 0.5)
    yield torch.ops.swin_ext.window_attention_bwd.default, (torch.randn_like(out), qd, bd, pd, lse, 4, 2, 2, 0.5)


@pytest.mark.parametrize("sample", list(range(9)))
def test_opcheck(sample):
    op, args = list(_opcheck_samples())[sample]
    torch.library.opcheck(op, args)


def _ln_opcheck_samples():
    fwd, bwd = torch.ops.swin_ext.add_layernorm_fwd.default, torch.ops.swin_ext.add_layernorm_bwd.default
    x, b = torch.randn(2, 5, 12, requires_grad=True), torch.randn(2, 5, 12, requires_grad=True)
    w, c = torch.randn(12, requires_grad=True), torch.randn(12, requires_grad=True)
    yield fwd, (x, b, w, c, 1e-5, None)
    yield fwd, (x.detach().transpose(0, 1), b.detach().transpose(0, 1), w.detach(), c.detach(), 1e-6, None)  # strided
    yield fwd, (x, b.detach().bfloat16().requires_grad_(), w, c, 1e-5, torch.bfloat16)  # autocast's mix
    yield fwd, (torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64),
                torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64), 0.0, None)
    h, y, mean, rstd = torch.ops.swin_ext.add_layernorm_fwd(x.detach(), b.detach(), w.detach(), c.detach(), 1e-5, None)
    yield bwd, (torch.randn_like(h), torch.randn_like(y), h, w.detach(), mean, rstd, None)
    yield bwd, (None, torch.randn_like(y).bfloat16(), h, w.detach(), mean, rstd, torch.bfloat16)


@pytest.mark.parametrize("sample", list(range(6)))
def test_add_layernorm_opcheck(sample):
    op, args = list(_ln_opcheck_samples())[sample]
    torch.library.opcheck(op, args)


# ----------------------------------------------------------------------------- add_layernorm wrapper


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


def test_add_layernorm_gradcheck_and_gradgradcheck():
    x, b, w, c = _ln_leaves((2, 3, 6))
    assert gradcheck(lambda *a: add_layernorm(*a), (x, b, w, c))
    assert gradcheck(lambda *a: add_layernorm(*a)[1], (x, b, w, c))  # h unused: no grad_h
    assert torch.autograd.gradgradcheck(lambda *a: add_layernorm(*a), (x, b, w, c))


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
    runs = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        h, y = add_layernorm(x, b, w, c)
        runs.append(torch.autograd.grad((y, h), (x, b, w, c), (g, g)))
    torch.set_num_threads(2)
    for r in runs[1:]:
        for a, bb in zip(runs[0], r):
            assert torch.equal(a, bb)  # dweight/dbias from fixed per-block partials: independent of threads


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


def test_bias_gelu_cpu_accuracy_over_the_bf16_range():
    """The vectorised CPU GELU (Cephes erf / erfc) at every finite bf16 value below 1e4 in magnitude,
    against u * Phi(u) from erfc in float64 (torch's own GELU, 1 + erf, loses the lower tail): a few
    ulp in the bulk, <= 80 ulp where exp(-u^2 / 2) of a rounded u^2 limits it (GELU < 1e-15, like
    Cephes' erfcf); GELU' within 2 ulp of 1 in absolute terms (it crosses zero at u ~ -0.75).
    test_baseline_isa_path_matches_reference runs the non-AVX2 build."""
    import math

    z = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    z = z[torch.isfinite(z) & (z.abs() < 1e4)][:, None].contiguous()
    zd = z.double()
    phi = 0.5 * torch.special.erfc(-zd / math.sqrt(2))
    ref, dref = zd * phi, phi + zd * torch.exp(-0.5 * zd * zd) / math.sqrt(2 * math.pi)
    b = torch.zeros(1)
    y = swin_ext.bias_gelu(z, b).double()
    dz, db = torch.ops.swin_ext.bias_gelu_bwd(torch.ones_like(z), z, b)
    ulp = 2.0 ** -23
    e = (y - ref).abs()
    bulk = z[:, 0] > -5
    assert (e[bulk] <= 10 * ulp * ref[bulk].abs() + 1e-38).all(), e[bulk].max()
    assert (e <= 80 * ulp * ref.abs() + 1e-37).all(), (e / ref.abs()).max()
    assert ((dz.double() - dref).abs() <= 2 * ulp).all(), (dz.double() - dref).abs().max()
    torch.testing.assert_close(db.double(), dz.double().sum(0), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(qkv=torch.randn(2, 4, 4)), ValueError, "4 dims"),
        (dict(qkv=torch.randint(0, 3, (1, 4, 4, 12))), TypeError, "float32"),
        (dict(window_size=0), ValueError, "window_size"),
        (dict(shift=4), ValueError, "shift"),
        (dict(shift=-1), ValueError, "shift"),
        (dict(qkv=torch.randn(1, 4, 4, 13)), ValueError, "3\\*C"),
        (dict(qkv=torch.randn(1, 4, 4, 9)), ValueError, "divisible by heads"),
        (dict(bias=torch.randn(2, 9, 9)), ValueError, "bias must be"),
        (dict(qkv_pad=torch.randn(5)), ValueError, "qkv_pad"),
        (dict(bias=torch.randn(2, 16, 16, device="meta")), ValueError, "meta"),
    ],
)
def test_attention_bad_input(kwargs, exc, match):
    args = dict(qkv=torch.randn(1, 4, 4, 12), bias=torch.randn(2, 16, 16), window_size=4, shift=0, qkv_pad=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        window_attention(args["qkv"], args["bias"], args["window_size"], args["shift"], None, args["qkv_pad"])


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


def test_cpp_checks_raise_python_errors():
    """The raw op validates too: a bad call is a RuntimeError, never a crash."""
    with pytest.raises(RuntimeError, match="shift"):
        torch.ops.swin_ext.window_attention_fwd(torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16), None, 4, 5, 0, 1.0)
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.swin_ext.window_attention_fwd(torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16, dtype=torch.float64), None, 4, 0, 0, 1.0)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.swin_ext.patch_merging_bwd(torch.randn(1, 1, 1, 8), torch.randn(1, 4, 4, 2), torch.ones(8), torch.zeros(1, 2, 2), torch.ones(1, 2, 2))


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


def test_baseline_isa_path_matches_reference():
    """The kernels' baseline (non-AVX2) build, which machines without AVX2 run."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, swin_ext\n"
        "from swin_ext import reference as R\n"
        "torch.manual_seed(0)\n"
        "for dt, tol in ((torch.float32, 2e-5), (torch.float64, 1e-10)):\n"
        "    q = torch.randn(2, 11, 9, 3 * 12, dtype=dt, requires_grad=True)\n"
        "    b = torch.randn(3, 16, 16, dtype=dt, requires_grad=True)\n"
        "    p = torch.randn(36, dtype=dt, requires_grad=True)\n"
        "    o = swin_ext.window_attention(q, b, 4, 2, None, p); r = R.window_attention_reference(q, b, 4, 2, None, p)\n"
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
        "    x = torch.randn(2, 7, 5, 16, dtype=dt, requires_grad=True); br = torch.randn(2, 7, 5, 16).bfloat16().requires_grad_()\n"
        "    w = torch.randn(64, dtype=dt, requires_grad=True); c = torch.randn(64, dtype=dt, requires_grad=True)\n"
        "    y = swin_ext.patch_merging(x, w, c, 1e-5, br); yr = R.patch_merging_reference(x, w, c, 1e-5, br)\n"
        "    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, b in zip(torch.autograd.grad(y, (x, w, c, br), g), torch.autograd.grad(yr, (x, w, c, br), g)):\n"
        "        torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol)\n"
        "    z = torch.randn(9, 37, dtype=dt, requires_grad=True) * 3; bz = torch.randn(37, dtype=dt, requires_grad=True)\n"
        "    y, yr = swin_ext.bias_gelu(z, bz), R.bias_gelu_reference(z, bz)\n"
        "    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)\n"
        "    g = torch.randn_like(y)\n"
        "    for a, b in zip(torch.autograd.grad(y, (z, bz), g), torch.autograd.grad(yr, (z, bz), g)):\n"
        "        torch.testing.assert_close(a, b, atol=tol, rtol=tol)\n"
        "    x = torch.randn(5, 7, 20, dtype=dt, requires_grad=True); br = torch.randn(5, 7, 20, dtype=dt, requires_grad=True)\n"
        "    w = torch.randn(20, dtype=dt, requires_grad=True); c = torch.randn(20, dtype=dt, requires_grad=True)\n"
        "    (h, y), (hr, yr) = swin_ext.add_layernorm(x, br, w, c), R.add_layernorm_reference(x, br, w, c)\n"
        "    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)\n"
        "    for a, b in zip(torch.autograd.grad((y, h), (x, br, w, c), (g2 := torch.randn_like(y), g2)),\n"
        "                    torch.autograd.grad((yr, hr), (x, br, w, c), (g2, g2))):\n"
        "        torch.testing.assert_close(a, b, atol=tol, rtol=tol)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, SWIN_EXT_CPU_ISA="default")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# ----------------------------------------------------------------------------- Swin V2 attention


def _v2_leaves(B=2, H=9, W=7, ws=4, heads=2, d=3, dtype=torch.float64, pad=True):
    qkv, bias, p = _attn_inputs(B, H, W, ws, heads, d, dtype, pad)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    hs = torch.rand(heads, dtype=acc) * 9 + 1
    return [t for t in (qkv, bias, hs, p)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("H,W,ws,shift", [GEOMETRIES[2], GEOMETRIES[6], GEOMETRIES[5]])
def test_v2_wrapper_matches_reference_through_autograd(dtype, H, W, ws, shift):
    qkv, bias, hs, pad = _v2_leaves(2, H, W, ws, 3, 5, dtype, (H % ws) != 0 or (W % ws) != 0)
    leaves = [t.requires_grad_() for t in (qkv, bias, hs, pad) if t is not None]
    out = swin_ext.window_attention_v2(qkv, bias, hs, ws, shift, pad)
    ref = swin_ext.window_attention_v2_reference(qkv, bias, hs, ws, shift, pad)
    assert out.shape == (2, H, W, 15) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_v2_reference_is_timm_cosine_attention():
    """The reference is Swin V2's math, written out independently here for one window."""
    ws, heads, d = 3, 2, 4
    qkv = torch.randn(1, ws, ws, 3 * heads * d, dtype=torch.float64)
    bias = torch.randn(heads, ws * ws, ws * ws, dtype=torch.float64)
    hs = torch.tensor([2.0, 7.5], dtype=torch.float64)
    q, k, v = qkv.reshape(ws * ws, 3, heads, d).permute(1, 2, 0, 3)
    logits = (q / q.norm(dim=-1, keepdim=True)) @ (k / k.norm(dim=-1, keepdim=True)).transpose(-1, -2)
    want = (torch.softmax(logits * hs.view(heads, 1, 1) + bias, -1) @ v).transpose(0, 1).reshape(1, ws, ws, heads * d)
    got = swin_ext.window_attention_v2_reference(qkv, bias, hs, ws)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(swin_ext.window_attention_v2(qkv, bias, hs, ws), want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("H,W,ws,shift,pad", [(6, 6, 3, (1, 1), False), (5, 7, 3, (1, 1), True), (2, 2, 3, (1, 2), True)])
def test_v2_gradcheck(H, W, ws, shift, pad):
    qkv, bias, hs, p = _v2_leaves(1, H, W, ws, 2, 3, torch.float64, pad)
    inputs = [qkv.requires_grad_(), bias.requires_grad_(), hs.requires_grad_()] + ([p.requires_grad_()] if pad else [])

    def f(q, b, s, *pp):
        return swin_ext.window_attention_v2(q, b, s, ws, shift, pp[0] if pp else None)

    assert gradcheck(f, inputs)


def test_v2_gradgradcheck():
    """Second order goes through the differentiable reference composite."""
    qkv, bias, hs, p = _v2_leaves(1, 3, 3, 2, 1, 2, torch.float64, True)
    inputs = [t.requires_grad_() for t in (qkv, bias, hs, p)]
    assert torch.autograd.gradgradcheck(lambda q, b, s, pp: swin_ext.window_attention_v2(q, b, s, 2, (1, 1), pp),
                                        inputs, fast_mode=True)


def test_v2_backward_is_bitwise_deterministic():
    qkv, bias, hs, pad = _v2_leaves(3, 11, 9, 4, 2, 8, torch.float32, True)
    leaves = [t.requires_grad_() for t in (qkv, bias, hs, pad)]
    g = torch.randn(3, 11, 9, 16)
    runs = [torch.autograd.grad(swin_ext.window_attention_v2(qkv, bias, hs, 4, (2, 2), pad), leaves, g)
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _v2_opcheck_samples():
    qkv, bias, hs, pad = _v2_leaves(2, 9, 7, 4, 2, 4, torch.float32, True)
    yield torch.ops.swin_ext.window_attention_v2_fwd.default, (qkv, bias, pad, hs, 4, 2, 2)
    yield torch.ops.swin_ext.window_attention_v2_fwd.default, (
        qkv.clone().requires_grad_(), bias.clone().requires_grad_(), pad.clone().requires_grad_(),
        hs.clone().requires_grad_(), 4, 2, 2)
    q2 = torch.randn(1, 8, 8, 3 * 6, dtype=torch.float64).transpose(1, 2)
    yield torch.ops.swin_ext.window_attention_v2_fwd.default, (
        q2, torch.randn(3, 16, 16, dtype=torch.float64), None, torch.rand(3, dtype=torch.float64) + 1, 4, 0, 0)
    out, lse = torch.ops.swin_ext.window_attention_v2_fwd(qkv, bias, pad, hs, 4, 2, 2)
    yield torch.ops.swin_ext.window_attention_v2_bwd.default, (torch.randn_like(out), qkv, bias, pad, hs, lse, 4, 2, 2)


@pytest.mark.parametrize("sample", list(range(4)))
def test_v2_opcheck(sample):
    op, args = list(_v2_opcheck_samples())[sample]
    torch.library.opcheck(op, args)


def test_v2_torch_func():
    from torch.func import grad, vmap

    qkv, bias, hs, _ = (t.detach() if t is not None else None for t in _v2_leaves(3, 6, 6, 3, 2, 3, pad=False))

    def loss(fn):
        return lambda s, q: fn(q[None], bias, s, 3, (1, 1)).pow(2).sum()

    per_sample = [vmap(grad(loss(fn)), in_dims=(None, 0))(hs, qkv)
                  for fn in (swin_ext.window_attention_v2, swin_ext.window_attention_v2_reference)]
    torch.testing.assert_close(per_sample[0], per_sample[1], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(head_scale=torch.ones(3)), ValueError, "head_scale must be \\(2,\\)"),
        (dict(head_scale=torch.ones(2, 1)), ValueError, "head_scale must have 1 dims"),
        (dict(head_scale=torch.ones(2, dtype=torch.int64)), TypeError, "head_scale must be float32"),
        (dict(head_scale=[1.0, 2.0]), TypeError, "head_scale must be a torch.Tensor"),
        (dict(head_scale=torch.ones(2, device="meta")), ValueError, "head_scale is on meta"),
        (dict(shift=4), ValueError, "shift"),
        (dict(bias=torch.randn(2, 9, 9)), ValueError, "bias must be"),
    ],
)
def test_v2_bad_input(kwargs, exc, match):
    args = dict(qkv=torch.randn(1, 4, 4, 12), bias=torch.randn(2, 16, 16), head_scale=torch.ones(2), window_size=4,
                shift=0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        swin_ext.window_attention_v2(args["qkv"], args["bias"], args["head_scale"], args["window_size"], args["shift"])


def test_v2_raw_op_checks_raise_python_errors():
    qkv, bias, hs = torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16), torch.ones(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="head_scale must be Float"):
        torch.ops.swin_ext.window_attention_v2_fwd(qkv, bias, None, hs, 4, 0, 0)


# ----------------------------------------------------------------------------- bias + GELU


def _bg_leaves(shape=(3, 5, 12), dtype=torch.float64):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.randn(*shape, dtype=dtype) * 2, torch.randn(shape[-1], dtype=acc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_gelu_matches_reference_through_autograd(dtype):
    z, b = (t.requires_grad_() for t in _bg_leaves((4, 7, 24), dtype))
    y, r = swin_ext.bias_gelu(z, b), swin_ext.bias_gelu_reference(z, b)
    torch.testing.assert_close(y, r, **TOL[dtype])
    torch.testing.assert_close(y, torch.nn.functional.gelu(z + b), **TOL[dtype])  # nn.GELU(), exact erf
    g = torch.randn_like(y)
    for a, c in zip(torch.autograd.grad(y, (z, b), g), torch.autograd.grad(r, (z, b), g)):
        torch.testing.assert_close(a, c, **TOL[dtype])


def test_bias_gelu_gradcheck_and_gradgradcheck():
    z, b = (t.requires_grad_() for t in _bg_leaves((3, 2, 5)))
    assert gradcheck(swin_ext.bias_gelu, (z, b))
    assert torch.autograd.gradgradcheck(swin_ext.bias_gelu, (z, b), fast_mode=True)


def test_bias_gelu_backward_is_bitwise_deterministic():
    z, b = (t.requires_grad_() for t in _bg_leaves((300, 40), torch.float32))
    g = torch.randn(300, 40)
    runs = [torch.autograd.grad(swin_ext.bias_gelu(z, b), (z, b), g) for _ in range(2)]
    for a, c in zip(*runs):
        assert torch.equal(a, c)


def test_bias_gelu_mixed_bias_dtype_and_autocast():
    """A bf16 GEMM output (autocast) with the float32 parameter bias: y in bf16, dbias in float32."""
    z = (torch.randn(6, 16) * 2).bfloat16().requires_grad_()
    b = torch.randn(16, requires_grad=True)
    y = swin_ext.bias_gelu(z, b)
    assert y.dtype == torch.bfloat16
    gz, gb = torch.autograd.grad(y, (z, b), torch.ones_like(y))
    assert gz.dtype == torch.bfloat16 and gb.dtype == torch.float32
    want = torch.nn.functional.gelu(z.float() + b)
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("sample", [0, 1, 2])
def test_bias_gelu_opcheck(sample):
    z, b = _bg_leaves((4, 9), torch.float32)
    samples = [
        (torch.ops.swin_ext.bias_gelu_fwd.default, (z, b)),
        (torch.ops.swin_ext.bias_gelu_fwd.default, (z.clone().requires_grad_(), b.clone().requires_grad_())),
        (torch.ops.swin_ext.bias_gelu_bwd.default, (torch.randn(4, 9), z, b)),
    ]
    op, args = samples[sample]
    torch.library.opcheck(op, args)


def test_bias_gelu_torch_func():
    from torch.func import grad, vmap

    z, b = _bg_leaves((3, 4, 6))
    per_sample = [vmap(grad(lambda b_, z_, fn=fn: fn(z_, b_).pow(3).sum()), in_dims=(None, 0))(b, z)
                  for fn in (swin_ext.bias_gelu, swin_ext.bias_gelu_reference)]
    torch.testing.assert_close(per_sample[0], per_sample[1], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    "z,b,exc,match",
    [
        (torch.randn(()), torch.randn(1), ValueError, "at least one dim"),
        (torch.randn(2, 5), torch.randn(4), ValueError, "bias must be \\(5,\\)"),
        (torch.randn(2, 5), torch.randn(5, 1), ValueError, "bias must have 1 dims"),
        (torch.randint(0, 3, (2, 5)), torch.randn(5), TypeError, "z must be float32"),
        (torch.randn(2, 5), torch.randn(5, device="meta"), ValueError, "bias is on meta"),
        (torch.randn(2, 0), torch.randn(0), ValueError, "last dim C of z must be in"),
    ],
)
def test_bias_gelu_bad_input(z, b, exc, match):
    with pytest.raises(exc, match=match):
        swin_ext.bias_gelu(z, b)


def test_bias_gelu_raw_op_checks_raise_python_errors():
    with pytest.raises(RuntimeError, match="bias must be Float"):
        torch.ops.swin_ext.bias_gelu_fwd(torch.randn(2, 5), torch.randn(5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="grad_y must be"):
        torch.ops.swin_ext.bias_gelu_bwd(torch.randn(2, 4), torch.randn(2, 5), torch.randn(5))


def test_limits_come_from_the_compiled_checks():
    """The kernels' limits are written once (csrc/checks.h) and read by the Python validation."""
    from swin_ext import _validate
    from swin_ext._ext import LIMITS

    assert set(LIMITS) == {"MAX_WINDOW_SIZE", "MAX_DIM", "MAX_MERGE_CHANNELS", "MAX_LAYERNORM_CHANNELS"}
    assert _validate.MAX_WINDOW_SIZE == LIMITS["MAX_WINDOW_SIZE"] and _validate.MAX_DIM == LIMITS["MAX_DIM"]
    ws = LIMITS["MAX_WINDOW_SIZE"] + 1
    # the C++ check and the Python one name the same bound
    with pytest.raises(RuntimeError, match=f"window_size must be in \\[1, {ws - 1}\\]"):
        torch.ops.swin_ext.window_attention_fwd(torch.randn(1, 2, 2, 6), torch.randn(1, 1, 1), None, ws, 0, 0, 1.0)
    with pytest.raises(ValueError, match=f"window_size must be in \\[1, {ws - 1}\\]"):
        window_attention(torch.randn(1, 2, 2, 6), torch.randn(1, 1, 1), ws)

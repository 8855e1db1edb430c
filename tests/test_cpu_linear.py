"""swin_ext's CPU GEMMs for the block Linears (``torch.ops.swin_ext.linear_cpu_fwd`` / ``_bwd``,
``csrc/cpu/linear_cpu.cpp``) and the layer path that uses them (``swin_ext.layers.fast_linear``).

Each result is checked against float64 with the error bound of any float32 dot product of K terms
(``K u sum |a_k b_k|``, u = 2^-24): a kernel that drops or repeats a depth block, a tile or a row is
off by O(1) and fails it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import swin_ext
from swin_ext.layers import config
from swin_ext.layers import fast_linear as L

from swin_test_utils import run_on_isa

pytestmark = pytest.mark.skipif(not config._CPU_GEMM_KERNEL, reason="this build has no swin_ext CPU GEMM")

U32 = 2.0**-24

# (tokens, in, out): row tails (not multiples of 4 or 6), depths across the 256-deep blocks, outputs
# across the 512-column chunks, and weight gradients on both sides of the packing rule (out >= 384 and
# in >= 192: x packed; else read in place); odd panel counts (48, 400 and, packed, 208 columns: the
# AVX-512 clones' panel pairs end in a single panel).
SHAPES = [
    (1, 16, 16),
    (7, 32, 48),
    (13, 96, 288),
    (100, 96, 384),
    (391, 272, 96),
    (257, 608, 544),
    (450, 192, 384),
    (97, 528, 400),
    (300, 208, 400),
]


def _bound(a_abs: torch.Tensor, b_abs: torch.Tensor, depth: int, extra: torch.Tensor | float = 0.0) -> torch.Tensor:
    return (depth + 2) * U32 * (a_abs @ b_abs + extra) + 1e-30


def _check(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> None:
    err = (got.double() - want).abs()
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert bool((err <= bound).all()), f"max error / bound {float((err / bound).max()):.3g}"


def _case(M, K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g),
            torch.randn(M, N, generator=g))


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_forward_within_float32_bound(M, K, N):
    x, w, b, _ = _case(M, K, N)
    xd, wd, bd = x.double(), w.double(), b.double()
    y = torch.ops.swin_ext.linear_cpu_fwd(x, w, b)
    _check(y, xd @ wd.T + bd, _bound(xd.abs(), wd.abs().T, K, bd.abs()))
    y0 = torch.ops.swin_ext.linear_cpu_fwd(x, w, None)
    _check(y0, xd @ wd.T, _bound(xd.abs(), wd.abs().T, K))


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_backward_within_float32_bound(M, K, N):
    x, w, _, g = _case(M, K, N, seed=1)
    xd, wd, gd = x.double(), w.double(), g.double()
    dx, dw = torch.ops.swin_ext.linear_cpu_bwd(g, x, w, [True, True])
    _check(dx, gd @ wd, _bound(gd.abs(), wd.abs(), N))
    _check(dw, gd.T @ xd, _bound(gd.abs().T, xd.abs(), M))
    only_x, none_w = torch.ops.swin_ext.linear_cpu_bwd(g, x, w, [True, False])
    none_x, only_w = torch.ops.swin_ext.linear_cpu_bwd(g, x, w, [False, True])
    assert torch.equal(only_x, dx) and torch.equal(only_w, dw)
    assert none_w.shape == (0,) and none_x.shape == (0,)


def test_strided_inputs_and_empty_rows():
    op = torch.ops.swin_ext.linear_cpu_fwd
    x, w, b, g = _case(50, 64, 32)
    xt = torch.randn(64, 50).T  # transposed views: the op copies them to rows
    wt = torch.randn(64, 32).T
    assert torch.equal(op(xt, w, b), op(xt.contiguous(), w, b))
    assert torch.equal(op(x, wt, b), op(x, wt.contiguous(), b))
    e = op(x[:0], w, b)
    assert e.shape == (0, 32)
    dx, dw = torch.ops.swin_ext.linear_cpu_bwd(g[:0], x[:0], w, [True, True])
    assert dx.shape == (0, 64) and torch.equal(dw, torch.zeros(32, 64))


def test_bitwise_the_same_for_any_thread_count():
    """Rows and column chunks of C are split over threads, never the depth: the same bits on 1, 2 and 3
    threads, in both weight-gradient paths, for short outputs (column chunks only) and few blocks (made
    a multiple of the threads), and within the error bound on each."""
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            res = []
            for M, K, N in ((391, 272, 96), (450, 192, 384), (1200, 96, 48), (700, 96, 288), (60, 768, 2304)):
                x, w, b, g = _case(M, K, N, seed=2)
                res.append(torch.ops.swin_ext.linear_cpu_fwd(x, w, b))
                res.extend(torch.ops.swin_ext.linear_cpu_bwd(g, x, w, [True, True]))
            outs.append(res)
            x, _, _, g = _case(700, 96, 288, seed=2)
            xd, gd = x.double(), g.double()
            _check(res[-4], gd.T @ xd, _bound(gd.abs().T, xd.abs(), 700))  # dW, 288 rows: few blocks
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, c) for a, c in zip(outs[0], outs[1])) and len(outs[0]) == 15
    assert all(torch.equal(a, c) for a, c in zip(outs[0], outs[2]))


def test_bad_arguments_are_refused():
    op, bwd = torch.ops.swin_ext.linear_cpu_fwd, torch.ops.swin_ext.linear_cpu_bwd
    x, w, b, g = _case(5, 32, 16)
    with pytest.raises(RuntimeError, match="x must be float32, got Double"):
        op(x.double(), w, b)
    with pytest.raises(RuntimeError, match="bias must be float32"):
        op(x, w, b.half())
    with pytest.raises(RuntimeError, match="x must be 2-D"):
        op(x[None], w, b)
    with pytest.raises(RuntimeError, match="positive multiples of 16, got \\[16, 24\\]"):
        op(torch.randn(5, 24), torch.randn(16, 24), None)
    with pytest.raises(RuntimeError, match="positive multiples of 16"):
        op(torch.randn(5, 32), torch.randn(0, 32), None)
    with pytest.raises(RuntimeError, match="x has 48 features, the weight 32"):
        op(torch.randn(5, 48), w, b)
    with pytest.raises(RuntimeError, match="bias has 17 elements, the weight 16 rows"):
        op(x, w, torch.randn(17))
    with pytest.raises(RuntimeError, match="grad_y must be \\(5, 16\\)"):
        bwd(g[:4], x, w, [True, True])


def test_opcheck():
    x, w, b, g = _case(20, 32, 48, seed=3)
    torch.library.opcheck(torch.ops.swin_ext.linear_cpu_fwd.default, (x, w, b))
    torch.library.opcheck(torch.ops.swin_ext.linear_cpu_fwd.default, (x.requires_grad_(), w.requires_grad_(), None))
    torch.library.opcheck(torch.ops.swin_ext.linear_cpu_bwd.default, (g, x.detach(), w.detach(), [True, True]))


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(x in flags for x in ("avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq"))


@pytest.mark.skipif(not _cpu_has_avx512(), reason="needs an AVX-512 CPU (the AVX-512 clones)")
def test_avx512_build_bitwise_the_avx2_build(tmp_path):
    """The AVX-512 clones (two 16-column panels per tile) form each element's sum in the same order as the
    AVX2 ones (one panel as two 8-float vectors): the same bits, forward, both gradients (in place and
    packed) and the fused MLP, odd panel counts and row tails included."""
    code = (
        "import sys, torch, swin_ext\n"
        "g = torch.Generator().manual_seed(5)\n"
        "out = []\n"
        "for M, K, N in ((391, 272, 96), (300, 208, 400), (97, 528, 400), (13, 96, 48), (60, 768, 2304)):\n"
        "    x, w, b, d = (torch.randn(M, K, generator=g), torch.randn(N, K, generator=g),\n"
        "                  torch.randn(N, generator=g), torch.randn(M, N, generator=g))\n"
        "    out.append(torch.ops.swin_ext.linear_cpu_fwd(x, w, b))\n"
        "    out.extend(torch.ops.swin_ext.linear_cpu_bwd(d, x, w, [True, True]))\n"
        "x, w1 = torch.randn(203, 96, generator=g), torch.randn(400, 96, generator=g)\n"
        "b1, w2, b2 = torch.randn(400, generator=g), torch.randn(48, 400, generator=g), torch.randn(48, generator=g)\n"
        "out.append(torch.ops.swin_ext.mlp_cpu_fwd(x, w1, b1, w2, b2))\n"
        "torch.save(out, sys.argv[1])\n"
        "print('ok')\n"
    )
    results = {}
    for isa in ("avx512", "avx2"):
        path = tmp_path / f"{isa}.pt"
        run_on_isa(code, isa, args=[str(path)])
        results[isa] = torch.load(path)
    assert len(results["avx512"]) == 16
    for a, b in zip(results["avx512"], results["avx2"]):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_baseline_isa_build_within_bound():
    """The baseline (non-AVX2) clone, which a CPU without AVX2 runs when the GEMMs are switched on."""
    code = (
        "import torch, swin_ext\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for M, K, N in ((13, 96, 288), (391, 272, 96), (450, 192, 384)):\n"
        "    x, w, b, d = (torch.randn(M, K, generator=g), torch.randn(N, K, generator=g),\n"
        "                  torch.randn(N, generator=g), torch.randn(M, N, generator=g))\n"
        "    y = torch.ops.swin_ext.linear_cpu_fwd(x, w, b)\n"
        "    dx, dw = torch.ops.swin_ext.linear_cpu_bwd(d, x, w, [True, True])\n"
        "    X, W, B, D = x.double(), w.double(), b.double(), d.double()\n"
        "    u = 2.0 ** -24\n"
        "    for got, want, bound in ((y, X @ W.T + B, (K + 2) * u * (X.abs() @ W.abs().T + B.abs())),\n"
        "                             (dx, D @ W, (N + 2) * u * (D.abs() @ W.abs())),\n"
        "                             (dw, D.T @ X, (M + 2) * u * (D.abs().T @ X.abs()))):\n"
        "        assert bool(((got.double() - want).abs() <= bound).all())\n"
        "print('ok')\n"
    )
    run_on_isa(code, "default")


# ----------------------------------------------------------------------------- the layer path


def _count_gemm(monkeypatch, enabled=True):
    """Records each call of swin_ext's CPU GEMM forward from the layers; switches the path on (as
    SWIN_EXT_CPU_GEMM=1) and oneDNN off, whatever this CPU's defaults; ``enabled`` None leaves the
    GEMMs to the CPU's default."""
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", enabled)
    monkeypatch.setattr(config, "_ONEDNN_ENABLED", False)
    return _spy(monkeypatch, "linear_cpu_fwd", lambda x, w, b: tuple(w.shape))[0]


def _spy(monkeypatch, op: str, key):
    """Replaces ``torch.ops.swin_ext.<op>`` (as the layers look it up, at call time) by a wrapper that
    appends ``key(*args)`` to a list and calls the op; returns the list and the op itself."""
    calls = []
    real = getattr(torch.ops.swin_ext, op)

    class Recording:
        def __call__(self, *args):
            calls.append(key(*args))
            return real(*args)

    monkeypatch.setattr(torch.ops.swin_ext, op, Recording())
    return calls, real


def test_onednn_backward_takes_the_weight_gradient_from_the_cpu_gemm(monkeypatch):
    """With oneDNN chosen and swin_ext's GEMMs on, the oneDNN Linear's backward computes dW = grad^T x on
    swin_ext's GEMM (linear_cpu_bwd, weight gradient only), with its bits; with the GEMMs off, or under
    create_graph, by mm.  Every result within the float32 bound of float64."""
    if not config.onednn_available():
        pytest.skip("oneDNN's linear is not available in this torch")
    monkeypatch.setattr(config, "_ONEDNN_ENABLED", True)
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", True)
    calls, real = _spy(monkeypatch, "linear_cpu_bwd", lambda g, x, w, needs: tuple(needs))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 41, 96, generator=gen, requires_grad=True)
    w = torch.randn(288, 96, generator=gen, requires_grad=True)
    b = torch.randn(288, generator=gen, requires_grad=True)
    go = torch.randn(5, 41, 288, generator=gen)
    dx, dw, db = torch.autograd.grad(L.linear(x, w, b), (x, w, b), go)
    assert calls == [(False, True)]
    x2, g2 = x.detach().reshape(-1, 96), go.reshape(-1, 288)
    assert torch.equal(dw, real(g2, x2, w.detach(), [False, True])[1])
    xd, gd, wd = x2.double(), g2.double(), w.detach().double()
    _check(dw, gd.T @ xd, _bound(gd.abs().T, xd.abs(), x2.shape[0]))
    _check(dx.reshape(-1, 96), gd @ wd, _bound(gd.abs(), wd.abs(), 288))
    _check(db, gd.sum(0), _bound(gd.abs().T, torch.ones(x2.shape[0], 1, dtype=torch.float64), x2.shape[0]))
    calls.clear()
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", False)
    dw_mm = torch.autograd.grad(L.linear(x, w, b), w, go)[0]
    assert calls == []
    _check(dw_mm, gd.T @ xd, _bound(gd.abs().T, xd.abs(), x2.shape[0]))
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", True)
    (dw_graph,) = torch.autograd.grad(L.linear(x, w, b), w, go, create_graph=True)  # differentiable ops
    assert calls == [] and dw_graph.requires_grad  # a function of x, for the second order
    _check(dw_graph.detach(), gd.T @ xd, _bound(gd.abs().T, xd.abs(), x2.shape[0]))


def test_layer_gradients_match_f_linear(monkeypatch):
    calls = _count_gemm(monkeypatch)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 96, generator=g, requires_grad=True)
    w = torch.randn(288, 96, generator=g, requires_grad=True)
    b = torch.randn(288, generator=g, requires_grad=True)
    y = L.linear(x, w, b)
    assert calls == [(288, 96)]
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    yd = F.linear(xd, wd, bd)
    go = torch.randn(y.shape, generator=g)
    grads = torch.autograd.grad(y, (x, w, b), go)
    want = torch.autograd.grad(yd, (xd, wd, bd), go.double())
    torch.testing.assert_close(y.double(), yd, rtol=1e-5, atol=1e-5)
    for a, c in zip(grads, want):
        torch.testing.assert_close(a.double(), c, rtol=1e-5, atol=1e-4)
    # create_graph: a differentiable backward (the gradient penalty of a GAN, say)
    (gx,) = torch.autograd.grad(L.linear(x, w, b).square().sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.square().sum(), w)
    (gxd,) = torch.autograd.grad(F.linear(xd, wd, bd).square().sum(), xd, create_graph=True)
    (gwd,) = torch.autograd.grad(gxd.square().sum(), wd)
    torch.testing.assert_close(gw.double(), gwd, rtol=1e-5, atol=1e-6 * float(gwd.abs().max()))


def test_layer_keeps_f_linear_where_the_kernel_does_not_apply(monkeypatch):
    calls = _count_gemm(monkeypatch)
    x = torch.randn(4, 32)
    L.linear(x.double(), torch.randn(16, 32, dtype=torch.float64))  # float64
    L.linear(torch.randn(4, 24), torch.randn(16, 24))  # width not a multiple of 16
    L.linear(x, torch.randn(1000, 32))  # the classifier's 1000 classes
    L.linear(x, torch.randn(16, 32), fast=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        L.linear(x, torch.randn(16, 32))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        L.linear(fwAD.make_dual(x, torch.randn_like(x)), torch.randn(16, 32))
    assert calls == []
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", False)  # SWIN_EXT_CPU_GEMM=0
    L.linear(x, torch.randn(16, 32))
    assert calls == []


def test_model_on_cpu_gemms_matches_aten(monkeypatch):
    """Swin's training step and inference on the CPU GEMMs: every block Linear (qkv, proj, fc1, fc2) and
    each merge's reduction takes them, and logits and gradients match the same model on ATen's GEMMs."""
    from swin_ext.models.swin import SwinTransformer

    calls = _count_gemm(monkeypatch)
    torch.manual_seed(0)
    kw = dict(img_size=64, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
              num_classes=10, drop_path_rate=0.0)
    m = SwinTransformer(**kw)
    x = torch.randn(2, 3, 64, 60)
    out = m(x)
    out.square().sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    blocks, merges = 4, 1
    assert len(calls) == 4 * blocks + merges
    calls.clear()
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", False)
    m.zero_grad()
    ref = m(x)
    ref.square().sum().backward()
    assert calls == []
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for n, p in m.named_parameters():
        torch.testing.assert_close(fast_grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", True)
    mlps = []
    if config._CPU_MLP_KERNEL:  # inference: each MLP in one fused op (test_cpu_mlp.py)
        real_mlp = torch.ops.swin_ext.mlp_cpu_fwd
        monkeypatch.setattr(torch.ops.swin_ext, "mlp_cpu_fwd", lambda *a: mlps.append(1) or real_mlp(*a))
    with torch.inference_mode():
        torch.testing.assert_close(m.eval()(x), ref.detach(), rtol=1e-5, atol=1e-5)
    assert len(calls) + 2 * len(mlps) == 4 * blocks + merges
    assert len(mlps) == (blocks if config._CPU_MLP_KERNEL else 0)
    # the user's switch for one model turns them off with the other CPU GEMM paths
    calls.clear()
    mlps.clear()
    with torch.no_grad():
        m.set_cpu_inference_fusion(False)(x)
    assert calls == [] and mlps == []


def test_default_follows_the_cpu(monkeypatch, recwarn):
    """Unless chosen (SWIN_EXT_CPU_GEMM, set_cpu_gemm), the CPU GEMMs are on where ATen's capability is
    AVX2 or AVX-512 (measured faster than MKL's, and on AVX-512 than oneDNN's) and off elsewhere
    (DEFAULT: no AVX2 clone)."""
    _count_gemm(monkeypatch, enabled=None)
    for capability, preferred in (("AVX512", True), ("AVX512_VNNI", True), ("AVX2", True), ("DEFAULT", False)):
        monkeypatch.setattr(config, "CPU_CAPABILITY", capability)
        assert config.cpu_gemm_preferred() is preferred
        assert config.use_cpu_gemm() is preferred
    swin_ext.layers.set_cpu_gemm(True)
    assert config.use_cpu_gemm()
    monkeypatch.setattr(config, "CPU_CAPABILITY", "AVX2")
    swin_ext.layers.set_cpu_gemm(False)
    assert not config.use_cpu_gemm()
    swin_ext.layers.set_cpu_gemm(None)
    assert config.use_cpu_gemm()
    monkeypatch.setattr(config, "_CPU_GEMM_KERNEL", False)  # a build without the op
    assert not config.use_cpu_gemm()
    for value, want in (("1", True), ("0", False), ("", None), (" 0 ", False)):
        monkeypatch.setenv("SWIN_EXT_CPU_GEMM", value)
        assert config._switch_env("SWIN_EXT_CPU_GEMM") is want
    assert not recwarn.list
    monkeypatch.setenv("SWIN_EXT_CPU_GEMM", "on")
    with pytest.warns(RuntimeWarning, match="SWIN_EXT_CPU_GEMM='on' is not 0 or 1"):
        assert config._switch_env("SWIN_EXT_CPU_GEMM") is None


@pytest.mark.slow
def test_model_compiles_with_the_op_in_its_graph(monkeypatch):
    """torch.compile(fullgraph=True) keeps swin_ext's CPU GEMM as an op of the graph (fake and autograd
    kernels registered), with the eager model's logits and gradients."""
    from swin_ext.models.swin import SwinTransformer

    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", True)
    monkeypatch.setattr(config, "_ONEDNN_ENABLED", False)
    torch.manual_seed(0)
    m = SwinTransformer(img_size=64, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
                        num_classes=10, drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    ref = m(x)
    ref.square().sum().backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m)(x)
    assert explained.graph_break_count == 0
    targets = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert "swin_ext.linear_cpu_fwd" in targets
    out = torch.compile(m, fullgraph=True)(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-5, msg=n)
    torch._dynamo.reset()


def test_non_finite_values_stay_in_their_rows():
    """A NaN or inf in one token's features reaches only that token's output and input-gradient rows (no
    sum mixes rows); the weight gradient sums every token, so it is NaN wherever the token's row is used."""
    x, w, b, g = _case(50, 96, 288, seed=5)
    x[7, 3] = float("nan")
    x[20, 0] = float("inf")
    y = torch.ops.swin_ext.linear_cpu_fwd(x, w, b)
    bad = torch.zeros(50, dtype=torch.bool)
    bad[[7, 20]] = True
    assert not torch.isfinite(y[bad]).any(dim=1).any()
    assert torch.isfinite(y[~bad]).all()
    g[11, 5] = float("nan")
    dx, dw = torch.ops.swin_ext.linear_cpu_bwd(g, x, w, [True, True])
    assert torch.isnan(dx[11]).all() and torch.isfinite(dx[torch.arange(50) != 11]).all()
    assert torch.isnan(dw[5]).all()

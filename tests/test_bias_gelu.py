"""``bias_gelu``: kernels on every executor, the wrapper (mixed dtypes, torch.func), bad input."""
import pytest
import torch

import swin_ext

from op_testing import (
    BG_CASES,
    DTYPES,
    GRADCHECK,
    OPCHECK,
    TOL,
    bg_inputs,
    check_bias_gelu,
    ops_dispatched,
    run_bias_gelu,
    run_gradcheck,
    run_opcheck,
)

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")


# ----------------------------------------------------------------------------- kernels on every executor


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", BG_CASES, ids=lambda c: c.id)
def test_bias_gelu(executor, case, dtype, seed_generator):
    inp = bg_inputs(case, seed_generator)
    got = run_bias_gelu(executor, case, inp, dtype)
    check_bias_gelu(case, inp, got, dtype)


@pytest.mark.parametrize("op,sample", [(op, s) for op in ('bias_gelu',) for s in OPCHECK[op]])
def test_opcheck(executor, op, sample):
    """torch.library.opcheck of every forward and backward op (schema, fakes, autograd registration)."""
    executor.require_wrappers()
    run_opcheck(op, sample, executor.device)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=() if c.second_order else pytest.mark.slow)
                                  for op in ('bias_gelu',) for c in GRADCHECK[op]])
def test_gradcheck(executor, case):
    """float64 gradcheck (gradgradcheck where marked) of the wrapper, and its gradients against the reference;
    the second-order rows (small inputs) are the fast tier's."""
    executor.require_wrappers()
    r = run_gradcheck(case, executor.device)
    assert r["ok"], r


# ----------------------------------------------------------------------------- the wrapper


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


def test_bias_gelu_torch_func():
    from torch.func import grad, vmap

    z, b = _bg_leaves((3, 4, 6))
    per_sample = [vmap(grad(lambda b_, z_, fn=fn: fn(z_, b_).pow(3).sum()), in_dims=(None, 0))(b, z)
                  for fn in (swin_ext.bias_gelu, swin_ext.bias_gelu_reference)]
    torch.testing.assert_close(per_sample[0], per_sample[1], atol=1e-9, rtol=1e-9)


def test_bias_gelu_cpu_accuracy_over_the_bf16_range():
    """The vectorised CPU GELU (one erfc approximation, exp(-w^2) t R(t), csrc/cpu/bias_gelu_cpu.cpp) at every
    finite bf16 value below 1e4 in magnitude, against u * Phi(u) from erfc in float64 (torch's own GELU,
    1 + erf, loses the lower tail): a few ulp in the bulk, <= 80 ulp where exp(-u^2 / 2) of a rounded u^2
    limits it (GELU < 1e-15); GELU' within 2 ulp of 1 in absolute terms (it crosses zero at u ~ -0.75).
    Run on the machine's widest build (AVX-512 where present; SWIN_EXT_CPU_ISA=avx2 the AVX2 one);
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


# ----------------------------------------------------------------------------- dz over the incoming gradient


def _bwd_ops_called(fn):
    """The names of the bias_gelu backward ops that ``fn()`` runs (the profiler sees the C++ node's calls)."""
    return ops_dispatched(fn, "swin_ext::bias_gelu_bwd")


def _grads_out_of_place(z, b, g):
    dz, db = torch.ops.swin_ext.bias_gelu_bwd(g.contiguous(), z.detach(), b.detach())
    return dz, db


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_backward_writes_dz_over_a_gradient_nothing_else_holds(dtype):
    """A gradient made inside the backward (here by mul's node) is the node's alone: dz goes over it
    (bias_gelu_bwd_inplace), and the gradients are the out-of-place op's, bit for bit."""
    z = (torch.randn(37, 48, dtype=dtype) * 2).requires_grad_()
    b = torch.randn(48, dtype=torch.float64 if dtype == torch.float64 else torch.float32, requires_grad=True)
    w = torch.randn(37, 48, dtype=dtype)
    y = swin_ext.bias_gelu(z, b)
    called = _bwd_ops_called(lambda: torch.autograd.backward((y * w).sum()))
    assert called == ["swin_ext::bias_gelu_bwd_inplace"], called
    dz, db = _grads_out_of_place(z, b, w)
    assert torch.equal(z.grad, dz) and torch.equal(b.grad, db)


def test_backward_through_a_reshape_writes_over_its_base():
    """The gradient reaching the node through a reshape's backward is a view whose base nothing else holds."""
    z, b = torch.randn(2, 5, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    w = torch.randn(8, 16)
    y = swin_ext.bias_gelu(z, b)
    called = _bwd_ops_called(lambda: torch.autograd.backward((y.reshape(10, 16) @ w.t()).sum()))
    assert called == ["swin_ext::bias_gelu_bwd_inplace"], called


def test_backward_over_a_retained_gradient_keeps_the_retained_copy():
    """retain_grad stores a copy of the gradient (torch clones it into .grad), so dz may go over the
    node's own: y.grad stays the gradient of y."""
    z, b = (torch.randn(6, 24) * 2).requires_grad_(), torch.randn(24, requires_grad=True)
    y = swin_ext.bias_gelu(z, b)
    y.retain_grad()
    g = torch.randn(6, 24)
    called = _bwd_ops_called(lambda: torch.autograd.backward((y * g).sum()))
    assert called == ["swin_ext::bias_gelu_bwd_inplace"], called
    assert torch.equal(y.grad, g)
    dz, db = _grads_out_of_place(z, b, g)
    assert torch.equal(z.grad, dz) and torch.equal(b.grad, db)


@pytest.mark.parametrize("holder", ["grad_tensors", "hook", "view_of_callers_tensor"])
def test_backward_leaves_a_gradient_others_can_see_alone(holder):
    """A gradient the caller passed, a hook kept, or a view of the caller's tensor is never
    overwritten: the node runs the out-of-place op, and the gradients are right."""
    z, b = (torch.randn(6, 24) * 2).requires_grad_(), torch.randn(24, requires_grad=True)
    y = swin_ext.bias_gelu(z, b)
    g = torch.randn(6, 24)
    kept = []
    if holder == "grad_tensors":
        run, seen = (lambda: torch.autograd.backward(y, g)), g
    elif holder == "view_of_callers_tensor":
        big = torch.randn(2, 6, 24)
        g = big[1]
        run, seen = (lambda: torch.autograd.backward(y, g)), g
    else:
        y.register_hook(lambda t: kept.append(t))
        run = lambda: torch.autograd.backward((y * g).sum())  # noqa: E731
        seen = None
    before = g.clone()
    called = _bwd_ops_called(run)
    assert called == ["swin_ext::bias_gelu_bwd"], called
    if seen is not None:
        assert torch.equal(seen, before)  # the caller's tensor is untouched
    if holder == "hook":
        assert torch.equal(kept[0], g)
    dz, db = _grads_out_of_place(z, b, g)
    assert torch.equal(z.grad, dz) and torch.equal(b.grad, db)


@pytest.mark.skipif(
    tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13),
    reason="before torch 2.13 a gradient out of a Python backward counts its wrapper's reference",
)
def test_model_training_step_writes_every_mlp_dz_in_place():
    """Swin-T's CPU training path: fc2's input gradient comes out of the oneDNN Linear's (Python)
    backward through a reshape; every MLP's GELU backward writes over it."""
    torch.manual_seed(0)
    m = swin_ext.swin_t(backend="fused", drop_path_rate=0.0, img_size=64, window_size=2).train()
    x = torch.randn(1, 3, 64, 64)
    called = _bwd_ops_called(lambda: m(x).sum().backward())
    assert called == ["swin_ext::bias_gelu_bwd_inplace"] * 12, called


def test_inplace_backward_op_bad_input():
    z, b = torch.randn(4, 6), torch.randn(6)
    op = torch.ops.swin_ext.bias_gelu_bwd_inplace
    with pytest.raises(RuntimeError, match="grad_y is overwritten with dz, so it must be contiguous"):
        op(torch.randn(6, 4).t(), z, b)
    with pytest.raises(RuntimeError, match="must not share memory with z or bias"):
        op(z, z, b)
    with pytest.raises(RuntimeError, match="grad_y must be"):
        op(torch.randn(4, 6, dtype=torch.float64), z, b)
    g = torch.randn(4, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="bias_gelu_bwd is not differentiable"):
        op(g, z, b)
    # a failed call leaves grad_y as it was
    g2 = torch.randn(4, 6)
    keep = g2.clone()
    with pytest.raises(RuntimeError):
        op(g2, z, torch.randn(5))
    assert torch.equal(g2, keep)


# ----------------------------------------------------------------------------- bad input


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

"""The fused CPU inference MLP (``torch.ops.swin_ext.mlp_cpu_fwd``, ``csrc/cpu/mlp_cpu.cpp``) and the
layer path that takes it (``swin_ext.layers.fast_linear.mlp_inference``).

The op promises the bits of the unfused composition on swin_ext's own kernels -- fc1 without its bias
(``linear_cpu_fwd``), ``bias_gelu_fwd``, fc2 with its bias -- which the CPU GEMM tests
(``test_cpu_linear.py``) and the bias + GELU tests check against float64; here it is also checked
against float64 directly, with an error bound that a dropped or repeated row block, tile or depth
block exceeds by orders of magnitude."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from swin_ext.layers import config
from swin_ext.layers import fast_linear as L
from swin_ext.layers.mlp import Mlp, SequentialMlp

from swin_test_utils import run_on_isa

pytestmark = pytest.mark.skipif(not config._CPU_MLP_KERNEL, reason="this build has no fused CPU MLP")

U32 = 2.0**-24

# (tokens, in, hidden, out): row tails (not multiples of 6 or 12), several row blocks (128 rows a
# block at hidden 384, 60 at 768, 12 at 3072), depths across the GEMM's 256-deep blocks (in 272,
# hidden 544), hidden across its 512-column chunks, an output wider than the input.
SHAPES = [
    (1, 16, 64, 16),
    (13, 96, 384, 96),
    (257, 96, 384, 96),
    (130, 192, 768, 192),
    (37, 272, 544, 48),
    (29, 32, 3072, 80),
]


def _case(M, C, H, C2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, C, generator=g), torch.randn(H, C, generator=g) / C**0.5, torch.randn(H, generator=g),
            torch.randn(C2, H, generator=g) / H**0.5, torch.randn(C2, generator=g))


def _unfused(x, w1, b1, w2, b2):
    """The composition the op promises the bits of."""
    op = torch.ops.swin_ext
    h = op.bias_gelu_fwd(op.linear_cpu_fwd(x, w1, None), b1 if b1 is not None else torch.zeros(w1.shape[0]))
    return op.linear_cpu_fwd(h, w2, b2)


@pytest.mark.parametrize("M,C,H,C2", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_bitwise_the_unfused_composition(M, C, H, C2, bias):
    x, w1, b1, w2, b2 = _case(M, C, H, C2)
    if not bias:
        b1 = b2 = None
    y = torch.ops.swin_ext.mlp_cpu_fwd(x, w1, b1, w2, b2)
    assert y.shape == (M, C2) and y.dtype == torch.float32
    assert torch.equal(y, _unfused(x, w1, b1, w2, b2))


@pytest.mark.parametrize("M,C,H,C2", SHAPES)
def test_within_float64_bound(M, C, H, C2):
    """|y - y64| within the float32 rounding of both GEMMs (depth K: (K + 2) u sum |a b|), fc1's passed
    through GELU (slope below 1.13) and fc2, plus the GELU's own 2.2e-7 relative error."""
    x, w1, b1, w2, b2 = _case(M, C, H, C2, seed=1)
    y = torch.ops.swin_ext.mlp_cpu_fwd(x, w1, b1, w2, b2).double()
    X, W1, B1, W2, B2 = (t.double() for t in (x, w1, b1, w2, b2))
    z = X @ W1.T + B1
    h = F.gelu(z)
    want = h @ W2.T + B2
    err_z = (C + 2) * U32 * (X.abs() @ W1.abs().T + B1.abs())
    err_h = 1.13 * err_z + 4e-7 * h.abs() + 1e-30
    bound = (H + 2) * U32 * (h.abs() @ W2.abs().T + B2.abs()) + err_h @ W2.abs().T + 1e-30
    err = (y - want).abs()
    assert bool((err <= bound).all()), f"max error / bound {float((err / bound).max()):.3g}"


def test_bitwise_for_any_thread_count():
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append([torch.ops.swin_ext.mlp_cpu_fwd(*_case(*s, seed=2)) for s in SHAPES[2:5]])
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other))


def test_non_finite_values_stay_in_their_rows():
    x, w1, b1, w2, b2 = _case(40, 96, 384, 96, seed=3)
    x[7, 3] = float("nan")
    x[20, 0] = float("inf")
    y = torch.ops.swin_ext.mlp_cpu_fwd(x, w1, b1, w2, b2)
    bad = torch.zeros(40, dtype=torch.bool)
    bad[[7, 20]] = True
    assert bool(torch.isfinite(y[~bad]).all())
    assert bool(torch.isnan(y[7]).all())
    assert torch.equal(y[~bad], _unfused(x[~bad], w1, b1, w2, b2))


def test_empty_input():
    _, w1, b1, w2, b2 = _case(1, 32, 64, 48)
    y = torch.ops.swin_ext.mlp_cpu_fwd(torch.empty(0, 32), w1, b1, w2, b2)
    assert y.shape == (0, 48)


def test_bad_arguments_are_refused():
    op = torch.ops.swin_ext.mlp_cpu_fwd
    x, w1, b1, w2, b2 = _case(5, 32, 64, 48)
    with pytest.raises(RuntimeError, match="mlp_cpu_fwd: x must be float32, got Double"):
        op(x.double(), w1, b1, w2, b2)
    with pytest.raises(RuntimeError, match="x must be 2-D"):
        op(x[None], w1, b1, w2, b2)
    with pytest.raises(RuntimeError, match="fc1_weight.s dimensions must be positive multiples of 16, got .64, 24."):
        op(torch.randn(5, 24), torch.randn(64, 24), b1, w2, b2)
    with pytest.raises(RuntimeError, match="fc2_weight's dimensions must be positive multiples of 16"):
        op(x, w1, b1, torch.randn(40, 64), None)
    with pytest.raises(RuntimeError, match="x has 48 features, fc1_weight 32"):
        op(torch.randn(5, 48), w1, b1, w2, b2)
    with pytest.raises(RuntimeError, match="fc2_weight takes 32 features, fc1 gives 64"):
        op(x, w1, b1, torch.randn(48, 32), b2)
    with pytest.raises(RuntimeError, match="fc1_bias has 63 elements, its weight 64 rows"):
        op(x, w1, b1[:63], w2, b2)
    with pytest.raises(RuntimeError, match="fc2_bias must be float32"):
        op(x, w1, b1, w2, b2.half())


def test_opcheck():
    torch.library.opcheck(torch.ops.swin_ext.mlp_cpu_fwd.default, _case(20, 32, 128, 48, seed=4))
    x, w1, _, w2, _ = _case(20, 32, 128, 48, seed=4)
    torch.library.opcheck(torch.ops.swin_ext.mlp_cpu_fwd.default, (x, w1, None, w2, None))


@pytest.mark.slow
def test_baseline_isa_build_bitwise_the_unfused_composition():
    """The baseline (non-AVX2) clone, which a CPU without AVX2 runs when the CPU GEMMs are switched on."""
    code = (
        "import torch, swin_ext\n"
        "op = torch.ops.swin_ext\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for M, C, H, C2 in ((13, 96, 384, 96), (130, 192, 768, 192), (37, 272, 544, 48)):\n"
        "    x, w1, b1 = torch.randn(M, C, generator=g), torch.randn(H, C, generator=g), torch.randn(H, generator=g)\n"
        "    w2, b2 = torch.randn(C2, H, generator=g), torch.randn(C2, generator=g)\n"
        "    y = op.mlp_cpu_fwd(x, w1, b1, w2, b2)\n"
        "    want = op.linear_cpu_fwd(op.bias_gelu_fwd(op.linear_cpu_fwd(x, w1, None), b1), w2, b2)\n"
        "    assert torch.equal(y, want)\n"
        "    ref = torch.nn.functional.gelu(x.double() @ w1.double().T + b1.double()) @ w2.double().T + b2.double()\n"
        "    assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))\n"
        "print('ok')\n"
    )
    run_on_isa(code, "default")


# ----------------------------------------------------------------------------- the layer path


def _count(monkeypatch, enabled=True):
    """Records the fused MLP's calls from the layers (on swin_ext's CPU GEMMs, oneDNN off)."""
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", enabled)
    monkeypatch.setattr(config, "_ONEDNN_ENABLED", False)
    calls = []
    real = torch.ops.swin_ext.mlp_cpu_fwd

    class Counting:
        def __call__(self, *args):
            calls.append(tuple(args[1].shape))
            return real(*args)

    monkeypatch.setattr(torch.ops.swin_ext, "mlp_cpu_fwd", Counting())
    return calls


@pytest.mark.parametrize("cls", [Mlp, SequentialMlp])
def test_layer_inference_is_the_training_forward_bitwise(monkeypatch, cls):
    """In inference the MLP is one fused op, with the bits of the training path's forward (fc1 on the
    CPU GEMM, swin_ext.bias_gelu, fc2)."""
    calls = _count(monkeypatch)
    torch.manual_seed(0)
    m = cls(96, 384).eval()
    x = torch.randn(2, 7, 9, 96)
    with torch.no_grad():
        y = m(x)
    assert calls == [(384, 96)]
    y_train = m(x.requires_grad_())  # grad mode, a leaf that requires grad: the training path
    assert len(calls) == 1 and y_train.requires_grad
    assert torch.equal(y, y_train.detach())
    with torch.no_grad():
        torch.testing.assert_close(y, _plain(m, x), rtol=1e-5, atol=1e-5)


def _plain(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fc1, fc2 = (m.fc1, m.fc2) if isinstance(m, Mlp) else (m[0], m[3])
    return F.linear(F.gelu(F.linear(x, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


def test_layer_keeps_the_unfused_path_where_the_op_does_not_apply(monkeypatch):
    calls = _count(monkeypatch)
    torch.manual_seed(0)
    m = Mlp(96, 384).eval()
    x = torch.randn(3, 96)
    with torch.no_grad():
        m(x)  # the fused path, as a control
        assert len(calls) == 1
        calls.clear()
        copy.deepcopy(m).double()(x.double())  # float64: the op is float32 only
        seen = []
        handle = m.fc1.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
        m(x)  # a hook of fc1 sees fc1's call: the unfused path
        handle.remove()
        assert seen == [(3, 384)]
        big = Mlp(384, 1536).eval()  # weights above MLP_FUSED_MAX_WEIGHT
        assert big.fc1.weight.numel() * 2 > L.MLP_FUSED_MAX_WEIGHT
        big(torch.randn(3, 384))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)
        m.fc1.fast = False
        m(x)
        m.fc1.fast = True
        m.act.approximate = "tanh"
        m(x)
        m.act.approximate = "none"
    assert calls == []
    m(x)  # grad mode with parameters that require grad: the training path
    assert calls == []
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", False)  # SWIN_EXT_CPU_GEMM=0
    with torch.no_grad():
        m(x)
    assert calls == []

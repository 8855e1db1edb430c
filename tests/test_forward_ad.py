"""Forward-mode AD through the five ops and the models, against the reference's tangents (float64).

Every mode that carries a tangent: ``torch.autograd.forward_ad`` dual numbers,
``torch.func.jvp``, ``jacfwd``, ``hessian`` (forward over reverse),
forward over forward, eager forward over reverse, and a dual cotangent
through the fused backward.  The raw ``torch.ops.swin_ext`` operators
refuse a tangent instead of dropping it.
"""
import pytest
import torch
from torch.autograd import forward_ad as fwAD
from torch.func import hessian, jacfwd, jacrev, jvp

import swin_ext
from swin_ext import (
    add_layernorm,
    add_layernorm_reference,
    bias_gelu,
    bias_gelu_reference,
    patch_merging,
    patch_merging_reference,
    window_attention,
    window_attention_reference,
    window_attention_v2,
    window_attention_v2_reference,
)

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

F64 = torch.float64
TOL = dict(atol=1e-10, rtol=1e-10)


def _r(*shape):
    return torch.randn(*shape, dtype=F64)


# (wrapper, reference, differentiable inputs): 3 x 5 maps padded in windows of 2, shifted along one axis
# (padding tokens share windows with real ones along the other: qkv_pad reaches the output).
def _cases():
    heads, d = 2, 2
    C3 = 3 * heads * d
    return {
        "window_attention": (
            lambda q, b, p: window_attention(q, b, 2, (0, 1), qkv_pad=p),
            lambda q, b, p: window_attention_reference(q, b, 2, (0, 1), qkv_pad=p),
            (_r(1, 3, 5, C3), _r(heads, 4, 4), _r(C3)),
        ),
        # a 3 x 3 x 2 clip in (2, 2, 2) windows: padded along T and H, shifted along T and W (Video Swin)
        "window_attention_3d": (
            lambda q, b, p: window_attention(q, b, (2, 2, 2), (1, 0, 1), qkv_pad=p),
            lambda q, b, p: window_attention_reference(q, b, (2, 2, 2), (1, 0, 1), qkv_pad=p),
            (_r(1, 3, 3, 2, C3), _r(heads, 8, 8), _r(C3)),
        ),
        "window_attention_v2": (
            lambda q, b, s, p: window_attention_v2(q, b, s, 2, (1, 0), qkv_pad=p),
            lambda q, b, s, p: window_attention_v2_reference(q, b, s, 2, (1, 0), qkv_pad=p),
            (_r(1, 3, 5, C3), _r(heads, 4, 4), _r(heads).exp(), _r(C3)),
        ),
        "patch_merging": (
            lambda x, w, b: patch_merging(x, w, b, 1e-3),
            lambda x, w, b: patch_merging_reference(x, w, b, 1e-3),
            (_r(1, 3, 5, 2), 1 + _r(8) / 4, _r(8)),
        ),
        "patch_merging-branch": (  # the stage's pending residual branch, added in the op
            lambda x, w, b, br: patch_merging(x, w, b, 1e-3, br),
            lambda x, w, b, br: patch_merging_reference(x, w, b, 1e-3, br),
            (_r(1, 3, 5, 2), 1 + _r(8) / 4, _r(8), _r(1, 3, 5, 2)),
        ),
        "add_layernorm": (
            lambda x, br, w, b: add_layernorm(x, br, w, b, 1e-3),
            lambda x, br, w, b: add_layernorm_reference(x, br, w, b, 1e-3),
            (_r(2, 3, 6), _r(2, 3, 6), 1 + _r(6) / 4, _r(6)),
        ),
        "bias_gelu": (bias_gelu, bias_gelu_reference, (_r(2, 3, 6), _r(6))),
    }


OPS = list(_cases())


def _case(name):
    return _cases()[name]


def _scalar(fn):
    """A non-linear scalar function of every output (so second derivatives are not zero)."""

    def s(*args):
        out = fn(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return sum((o.sin() * torch.linspace(-1, 2, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)

    return s


def _flat(ts):
    ts = ts if isinstance(ts, (tuple, list)) else (ts,)
    return torch.cat([t.reshape(-1) for t in ts])


def _matrix(blocks, rows, cols):
    """torch.func's nested (row, col) Jacobian blocks as one (sum rows, sum cols) matrix."""
    blocks = blocks if isinstance(blocks[0], tuple) else (blocks,)
    return torch.cat([torch.cat([b.reshape(r, c) for b, c in zip(row, cols)], 1) for row, r in zip(blocks, rows)], 0)


# The oracles: the reference differentiated by eager reverse mode (torch.autograd.functional; products
# by the double-backward trick, no vectorization), so no forward-mode rule or torch.func batching rule
# is involved.  A matrix is checked by its products with random vectors.


def _jvp_oracle(ref, inputs, tangents):
    return _flat(torch.autograd.functional.jvp(ref, inputs, tangents)[1])


def _vjp_oracle(ref, inputs, cotangents):
    return _flat(torch.autograd.functional.vjp(ref, inputs, cotangents)[1])


def _hvp_oracle(ref, inputs, v):
    return _flat(torch.autograd.functional.vhp(_scalar(ref), inputs, v)[1])  # H is symmetric


def _assert_close(got, want):
    """Tangents ``got`` (``None`` where none came out: zeros) against the flat ``want``."""
    got = got if isinstance(got, (tuple, list)) else (got,)
    known = [g.numel() for g in got if g is not None]
    assert len(known) >= len(got) - 1, "several outputs without a tangent"
    flat = [g.reshape(-1) if g is not None else torch.zeros(want.numel() - sum(known), dtype=F64) for g in got]
    torch.testing.assert_close(torch.cat(flat), want, **TOL)


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def _randn_like(ts):
    return tuple(torch.randn_like(t) for t in ts)


@pytest.mark.parametrize("name", OPS)
def test_first_order_forward_mode_matches_reference(name):
    fn, ref, inputs = _case(name)
    tangents = _randn_like(inputs)
    want = _jvp_oracle(ref, inputs, tangents)
    with fwAD.dual_level():  # dual numbers
        out = fn(*(fwAD.make_dual(p, t) for p, t in zip(inputs, tangents)))
        got = [fwAD.unpack_dual(o).tangent for o in _outputs(out)]
    assert all(g is not None for g in got), "tangent dropped"
    _assert_close(got, want)
    primal, tangent = jvp(fn, inputs, tangents)  # torch.func.jvp
    _assert_close(tangent, want)
    torch.testing.assert_close(primal, ref(*inputs), **TOL)
    # jacfwd: the whole Jacobian, checked by its products with tangents and cotangents
    J = _matrix(jacfwd(fn, argnums=tuple(range(len(inputs))))(*inputs),
                [o.numel() for o in _outputs(primal)], [t.numel() for t in inputs])
    torch.testing.assert_close(J @ _flat(tangents), want, **TOL)
    cot = _randn_like(_outputs(primal))
    torch.testing.assert_close(J.T @ _flat(cot), _vjp_oracle(ref, inputs, cot if len(cot) > 1 else cot[0]), **TOL)
    # one dual input at a time: each input's tangent reaches the outputs (none read as zero)
    for i in range(len(inputs)):
        only = tuple(t if j == i else torch.zeros_like(t) for j, t in enumerate(tangents))
        want_i = _jvp_oracle(ref, inputs, only)
        assert want_i.abs().max() > 1e-3  # this input moves the output: a dropped tangent would show
        with fwAD.dual_level():
            out = fn(*(fwAD.make_dual(p, t) if j == i else p for j, (p, t) in enumerate(zip(inputs, tangents))))
            got = [fwAD.unpack_dual(o).tangent for o in _outputs(out)]
        if not all(g is not None for g in got):  # add_layernorm's h does not depend on weight and bias
            assert name == "add_layernorm" and i >= 2 and got[0] is None
        _assert_close(got, want_i)


@pytest.mark.parametrize("name", OPS)
def test_second_order_matches_reference(name):
    fn, ref, inputs = _case(name)
    argnums = tuple(range(len(inputs)))
    n = [t.numel() for t in inputs]
    t1, t2 = _randn_like(inputs), _randn_like(inputs)
    H_t1 = _hvp_oracle(ref, inputs, t1)
    # hessian (forward over reverse) and reverse over reverse (the fused backward's second-order path),
    # checked by their products with t1 and t2
    for H in (hessian(_scalar(fn), argnums=argnums)(*inputs),
              jacrev(jacrev(_scalar(fn), argnums=argnums), argnums=argnums)(*inputs)):
        H = _matrix(H, n, n)
        torch.testing.assert_close(H @ _flat(t1), H_t1, **TOL)
        torch.testing.assert_close(H @ _flat(t2), _hvp_oracle(ref, inputs, t2), **TOL)
    # forward over forward: t2' H t1
    inner = lambda *a: jvp(_scalar(fn), a, t1)[1]  # noqa: E731
    torch.testing.assert_close(jvp(inner, inputs, t2)[1], _flat(t2) @ H_t1, **TOL)
    # reverse over forward: H t1
    _assert_close(jacrev(inner, argnums=argnums)(*inputs), H_t1)
    # eager forward over reverse: dual inputs that require grad, then autograd.grad
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p.clone().requires_grad_(True), t) for p, t in zip(inputs, t1)]
        grads = torch.autograd.grad(_scalar(fn)(*duals), duals)
        _assert_close([fwAD.unpack_dual(g).tangent for g in grads], H_t1)


@pytest.mark.parametrize("name", OPS)
def test_dual_cotangent_through_the_fused_backward(name):
    # the graph is recorded on the fused op; its backward then meets a dual cotangent
    fn, ref, inputs = _case(name)
    leaves = [p.clone().requires_grad_(True) for p in inputs]
    outs = _outputs(fn(*leaves))
    assert all("swin_ext::autograd::" in o.grad_fn.name() for o in outs)  # the fused op's C++ node
    cot, tcot = _randn_like(outs), _randn_like(outs)
    with fwAD.dual_level():
        grads = torch.autograd.grad(outs, leaves, [fwAD.make_dual(c, t) for c, t in zip(cot, tcot)])
        got = [fwAD.unpack_dual(g) for g in grads]
    unpack = (lambda c: c) if len(outs) > 1 else (lambda c: c[0])  # noqa: E731
    _assert_close([g.tangent for g in got], _vjp_oracle(ref, inputs, unpack(tcot)))
    _assert_close([g.primal for g in got], _vjp_oracle(ref, inputs, unpack(cot)))


@pytest.mark.parametrize(
    "op,args,advice",
    [
        ("bias_gelu_fwd", lambda d: (d, _r(6)), "call swin_ext.bias_gelu"),
        ("add_layernorm_fwd", lambda d: (d, _r(2, 6), _r(6), _r(6), 1e-5, None), "call swin_ext.add_layernorm"),
        ("patch_merging_fwd", lambda d: (d.view(1, 2, 3, 2), _r(8), _r(8), 1e-5), "call swin_ext.patch_merging"),
        ("bias_gelu_bwd", lambda d: (d, _r(2, 6), _r(6)), "differentiate swin_ext.bias_gelu"),
        ("bias_gelu_bwd_inplace", lambda d: (d, _r(2, 6), _r(6)), "differentiate swin_ext.bias_gelu"),
    ],
)
def test_raw_ops_refuse_a_tangent(op, args, advice):
    with fwAD.dual_level():
        d = fwAD.make_dual(_r(2, 6), _r(2, 6))
        with pytest.raises(RuntimeError, match=f"does not propagate forward-mode AD tangents.*{advice}"):
            getattr(torch.ops.swin_ext, op)(*args(d))
        # a dual level with no tangent on the inputs changes nothing
        getattr(torch.ops.swin_ext, op)(*args(_r(2, 6)))


def test_forward_mode_under_torch_compile_is_refused_not_dropped():
    # the compiled graph keeps the raw op (no forward-mode rule): an error, never a zero tangent
    z, b = _r(3, 6), _r(6)
    f = torch.compile(lambda z_: bias_gelu(z_, b), backend="eager")
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match="does not propagate forward-mode AD tangents.*not under torch.compile"):
            f(fwAD.make_dual(z, torch.ones_like(z)))
    torch._dynamo.reset()


def test_forward_mode_under_autocast_keeps_the_ops_dtypes():
    # the op computes in float32 under autocast; its forward-mode path too (no bfloat16 matmuls)
    _, _, inputs = _case("window_attention")
    q, b, p = (t.float() for t in inputs)
    f = lambda q_: window_attention(q_, b, 2, (0, 1), qkv_pad=p)  # noqa: E731
    want = jvp(lambda q_: window_attention_reference(q_, b, 2, (0, 1), qkv_pad=p), (q,), (torch.ones_like(q),))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = jvp(f, (q,), (torch.ones_like(q),))
        fused = f(q)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, want[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- models


def _frozen(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
            p.requires_grad_(False)
    return model.eval()


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_frozen_model_jvp_matches_reference_backend(version, dtype):
    cls = swin_ext.SwinTransformer if version == "v1" else swin_ext.SwinTransformerV2
    model = _frozen(cls(img_size=32, embed_dim=16, depths=(2, 1), num_heads=(1, 2), window_size=4,
                        num_classes=5)).to(dtype)
    x = torch.randn(2, 3, 28, 36, dtype=dtype)  # maps 7 x 9: padded and shifted windows
    tx = torch.randn_like(x)
    want = jvp(model.set_backend("reference"), (x,), (tx,))
    model.set_backend("fused")
    got = jvp(model, (x,), (tx,))
    with fwAD.dual_level():
        out = model(fwAD.make_dual(x, tx))
        dual = fwAD.unpack_dual(out)
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-4, rtol=2e-4)
    for o, t in (got, (dual.primal, dual.tangent)):
        assert t is not None
        torch.testing.assert_close(o, want[0], **tol)
        torch.testing.assert_close(t, want[1], **tol)
    assert want[1].abs().max() > 1e-3  # a tangent that can be wrong


def test_model_jvp_in_a_parameter_direction():
    # the tangent enters through the weights (functional_call): bias_gelu's and the norms' tangents
    model = _frozen(swin_ext.SwinTransformerV2(img_size=16, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                               window_size=4, num_classes=3)).double()
    params = dict(model.named_parameters())
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(1, 3, 16, 16, dtype=F64)

    def f(backend):
        model.set_backend(backend)
        return jvp(lambda p: torch.func.functional_call(model, p, (x,)), (params,), (tangents,))[1]

    torch.testing.assert_close(f("fused"), f("reference"), atol=1e-10, rtol=1e-9)

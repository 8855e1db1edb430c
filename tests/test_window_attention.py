"""``window_attention`` and ``window_attention_v2``: kernels on every executor, wrappers, autograd, bad input.

The kernel cases are ``op_testing.ATTN_CASES`` / ``ATTN_V2_CASES``, run on
every executor (CPU kernels, the CUDA kernels under the CPU harness in
thread order and shuffled, the GPU where there is one) for every dtype.  The
CUDA backward runs both ways it can: the fused kernel (N <= 64) and the
streaming pair (``SWIN_EXT_ATTN_BWD=streaming``), and with several images
per block (``SWIN_EXT_ATTN_CHUNK``) so the bias gradient's accumulation
across images is exercised on small inputs.
"""
import math

import pytest
import torch

import swin_ext
from swin_ext import window_attention, window_attention_reference

from op_testing import (
    ATTN_CASES,
    ATTN_V2_CASES,
    DTYPES,
    GRADCHECK,
    OPCHECK,
    TOL,
    AttnCase,
    assert_thread_independent,
    attention_inputs,
    check_attention,
    run_attention,
    run_gradcheck,
    run_opcheck,
)
from swin_test_utils import CHILD_HARNESS, run_child

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")
F64 = torch.float64


# ----------------------------------------------------------------------------- kernels on every executor


# (SWIN_EXT_ATTN_BWD, SWIN_EXT_ATTN_CHUNK) variants of the CUDA kernels: the
# streaming backward, and several images per block (the backward's bias
# accumulation; the one-tile forward's images in flight: chunk3 reuses a
# stage for the third image).
# The "table" variants pass the relative-position table ((rows, heads), read
# through the standard index) instead of the (heads, N, N) bias: the kernels
# gather it and bin the bias gradient into its rows.
BWD_VARIANTS = {
    "auto": {},
    "streaming": {"SWIN_EXT_ATTN_BWD": "streaming"},
    "chunk2": {"SWIN_EXT_ATTN_CHUNK": "2"},
    "chunk3": {"SWIN_EXT_ATTN_CHUNK": "3"},
    "table": {},
    "table-streaming": {"SWIN_EXT_ATTN_BWD": "streaming"},
    "table-chunk2": {"SWIN_EXT_ATTN_CHUNK": "2"},
    # the tile kernel's four-blocks-per-SM form (V1, head_dim 32, bf16 / fp16)
    "tile4": {"SWIN_EXT_ATTN_BWD": "tile4"},
    "table-tile4": {"SWIN_EXT_ATTN_BWD": "tile4"},
    # the key-tiled kernel (N > 64) without the window's tables in shared memory: each
    # tile's table formed as it is issued, a table expanded (the path of huge windows)
    "pertile": {"SWIN_EXT_ATTN_BWD": "pertile"},
    "table-pertile": {"SWIN_EXT_ATTN_BWD": "pertile"},
}
TILE4_VARIANTS = ("tile4", "table-tile4")
PERTILE_VARIANTS = ("pertile", "table-pertile")
CPU_VARIANTS = ("auto", "table")  # the others choose between CUDA kernels


def _variants(case, v2=False):
    out = ["auto", "table"]
    if case.N <= 64:
        out += ["streaming", "table-streaming"]  # else streaming is what auto runs
    if case.N <= 64 and case.d == 32 and not v2:
        out += list(TILE4_VARIANTS)
    if case.N > 64:
        out += list(PERTILE_VARIANTS)
    if case.B >= 2:
        out += ["chunk2", "table-chunk2"]
    if case.B >= 3 and case.N <= 64:
        out.append("chunk3")
    return out


def _attention_case(executor, case, variant, dtype, monkeypatch, gen, v2: bool) -> None:
    """fwd + bwd of one attention case (V1 at the default scale, or V2) against the reference."""
    if variant not in CPU_VARIANTS and not executor.is_cuda_kernel:
        pytest.skip("a CUDA backward variant")
    if variant == "chunk3" and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("chunk3 is for the tensor-core forward's image pipeline (chunk2 covers the backward)")
    if variant in TILE4_VARIANTS and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("tile4 is a form of the tensor-core tile kernel (bf16 / fp16)")
    if variant in PERTILE_VARIANTS and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("pertile is a form of the tensor-core key-tiled kernel (bf16 / fp16)")
    for k, v in BWD_VARIANTS[variant].items():
        monkeypatch.setenv(k, v)
    inp = attention_inputs(case, gen, dtype, v2=v2, table=variant.startswith("table"))
    scale = 1.0 if v2 else case.d ** -0.5  # V2: head_scale replaces it
    got = run_attention(executor, case, inp, dtype, scale)
    check_attention(case, inp, got, dtype, scale)


ATTN_PARAMS = [pytest.param(c, v, id=f"{c.id}-{v}") for c in ATTN_CASES for v in _variants(c)]
ATTN_V2_PARAMS = [pytest.param(c, v, id=f"{c.id}-{v}") for c in ATTN_V2_CASES for v in _variants(c, v2=True)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,variant", ATTN_PARAMS)
def test_window_attention(executor, case, variant, dtype, monkeypatch, seed_generator):
    _attention_case(executor, case, variant, dtype, monkeypatch, seed_generator, v2=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,variant", ATTN_V2_PARAMS)
def test_window_attention_v2(executor, case, variant, dtype, monkeypatch, seed_generator):
    """Swin V2 cosine attention (q, k normalized in the kernel, per-head scale), fwd + bwd."""
    _attention_case(executor, case, variant, dtype, monkeypatch, seed_generator, v2=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("table", [False, True], ids=["bias", "table"])
@pytest.mark.parametrize("chunk", ["1", "3"])
def test_tile4_backward_is_bitwise_the_tile_kernel(executor, dtype, table, chunk, monkeypatch, seed_generator):
    """SWIN_EXT_ATTN_BWD=tile4 (the tile kernel at four blocks per SM: one image in flight, early
    stores, dP one k-step at a time) computes the same values in the same order as the default
    tile kernel: every gradient bitwise equal, with one and with several images per block (the
    single stage refilled), padded and shifted, the (heads, N, N) bias and the table."""
    if not executor.is_cuda_kernel:
        pytest.skip("CUDA kernels only")
    case = AttnCase(4, 13, 12, 7, (3, 3), 2, 32, True)  # Swin's window and head_dim, padded, shifted
    inp = attention_inputs(case, seed_generator, dtype, table=table)
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", chunk)
    monkeypatch.delenv("SWIN_EXT_ATTN_BWD", raising=False)
    want = run_attention(executor, case, inp, dtype, case.d ** -0.5)
    monkeypatch.setenv("SWIN_EXT_ATTN_BWD", "tile4")
    got = run_attention(executor, case, inp, dtype, case.d ** -0.5)
    for k in ("out", "lse", "dqkv", "dbias", "dpad"):
        assert torch.equal(got[k], want[k]), k
    assert want["dqkv"].abs().max() > 0 and want["dbias"].abs().max() > 0


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("table", [False, True], ids=["bias", "table"])
def test_sixteen_images_per_block(executor, v2, table, monkeypatch, seed_generator):
    """The planners' most images per block (kMaxChunk = 16, launch_template.cuh), forced on 17
    images (a block of 16, then one of 1): every per-image result (out, lse, dqkv) bitwise what one
    image per block gives -- the one-tile forward and the tile backward walk their images without
    carrying anything from one to the next but the chunk's sums -- and those sums (the bias, padding
    and V2 head-scale gradients, summed over a block's images, then over blocks) the same values to
    float32 rounding.  (One thread order: the subject is the image loop.)"""
    if not executor.is_cuda_kernel or executor.name == "harness-shuffled":
        pytest.skip("CUDA kernels only, in one thread order")
    case = AttnCase(17, 9, 10, 7, (3, 3), 1, 32, True)  # Swin's window and head_dim, 4 windows, padded, shifted
    inp = attention_inputs(case, seed_generator, torch.bfloat16, v2=v2, table=table)
    scale = 1.0 if v2 else case.d ** -0.5
    monkeypatch.delenv("SWIN_EXT_ATTN_BWD", raising=False)
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "1")
    want = run_attention(executor, case, inp, torch.bfloat16, scale)
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "16")
    got = run_attention(executor, case, inp, torch.bfloat16, scale)
    for k in ("out", "lse", "dqkv"):
        assert torch.equal(got[k], want[k]), k
    for k in ("dbias", "dpad") + (("dscale",) if v2 else ()):
        scale_k = want[k].abs().max().item()
        assert scale_k > 0, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5 * scale_k, msg=k)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("table", [False, True], ids=["bias", "table"])
@pytest.mark.parametrize("chunk", ["1", "2"])
def test_key_tiled_tables_in_shared_memory_are_bitwise_the_per_tile_path(executor, v2, table, chunk, monkeypatch,
                                                                         seed_generator):
    """The key-tiled backward (N > 64, bf16) with the window's tile tables and the bias table in
    shared memory (the default) computes what its per-tile form computes (SWIN_EXT_ATTN_BWD=pertile:
    each tile's table formed as it is issued, a table expanded by the glue): the same logits (the
    bias times log2(e) either way), the same order, every gradient bitwise equal -- window 12,
    padded and shifted, with one and several images per block."""
    if not executor.is_cuda_kernel:
        pytest.skip("CUDA kernels only")
    case = AttnCase(2, 14, 13, 12, (6, 6), 2, 32, True)  # N = 144: 3 key tiles, padded, shifted
    inp = attention_inputs(case, seed_generator, torch.bfloat16, v2=v2, table=table)
    scale = 1.0 if v2 else case.d ** -0.5
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", chunk)
    monkeypatch.delenv("SWIN_EXT_ATTN_BWD", raising=False)
    want = run_attention(executor, case, inp, torch.bfloat16, scale)
    monkeypatch.setenv("SWIN_EXT_ATTN_BWD", "pertile")
    got = run_attention(executor, case, inp, torch.bfloat16, scale)
    for k in ("out", "lse", "dqkv", "dbias", "dpad") + (("dscale",) if v2 else ()):
        assert torch.equal(got[k], want[k]), k
    assert want["dqkv"].abs().max() > 0 and want["dbias"].abs().max() > 0


@pytest.mark.parametrize(
    "op,sample", [(op, s) for op in ("window_attention", "window_attention_v2") for s in OPCHECK[op]]
)
def test_opcheck(executor, op, sample):
    """torch.library.opcheck of every forward and backward op (schema, fakes, autograd registration)."""
    executor.require_wrappers()
    run_opcheck(op, sample, executor.device)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=() if c.second_order else pytest.mark.slow)
                                  for op in ("window_attention", "window_attention_v2") for c in GRADCHECK[op]])
def test_gradcheck(executor, case):
    """float64 gradcheck (gradgradcheck where marked) of the wrapper, and its gradients against the reference;
    the second-order rows (small inputs) are the fast tier's."""
    executor.require_wrappers()
    r = run_gradcheck(case, executor.device)
    assert r["ok"], r


# (case, V2) of the table-form checks: Swin's window 7 shifted on a padded map, a
# non-square window, 3-D clips (window (2, 3, 3) shifted; Video Swin's (8, 7, 7)),
# V2 (window 8, several images: the backward's images per block)
TABLE_CASES = [
    pytest.param(AttnCase(2, 10, 13, 7, (3, 3), 2, 32, True), False, id="ws7-s3-pad"),
    pytest.param(AttnCase(1, 7, 9, (3, 4), (1, 2), 2, 8, False), False, id="ws3x4-s12"),
    pytest.param(AttnCase(2, 6, 6, (2, 3, 3), (1, 1, 1), 2, 16, True, T=4), False, id="video-w233-s111-pad"),
    pytest.param(AttnCase(1, 7, 7, (8, 7, 7), (4, 3, 3), 1, 32, False, T=8), False, id="video-w877-s433"),
    pytest.param(AttnCase(3, 16, 16, 8, (4, 4), 2, 32, False), True, id="v2-ws8-s4"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,v2", TABLE_CASES)
def test_table_form_is_the_gathered_bias(executor, case, v2, dtype, seed_generator):
    """The table form reads the table through the standard relative_position_index: the forward and dqkv
    are bitwise those of the gathered (heads, N, N) bias, and the table's gradient is the gathered
    bias's gradient summed into the rows (bitwise on the CPU, which bins the same sums in the same
    order; to rounding on the CUDA kernels, which bin each block's sums before adding the blocks)."""
    from swin_ext.layers.pos_bias import relative_position_index

    inp = attention_inputs(case, seed_generator, dtype, v2=v2, table=True)
    table = inp["bias"]
    index = relative_position_index(case.window).view(-1)
    full = dict(inp, bias=table[index].view(case.N, case.N, case.heads).permute(2, 0, 1).contiguous())
    scale = 1.0 if v2 else case.d ** -0.5
    got_t = run_attention(executor, case, inp, dtype, scale)
    got_f = run_attention(executor, case, full, dtype, scale)
    for name in ("out", "lse", "dqkv", "dpad") + (("dscale",) if v2 else ()):
        assert torch.equal(got_t[name], got_f[name]), name
    dfull = got_f["dbias"].reshape(case.heads, -1)
    want = dfull.new_zeros(case.heads, table.shape[0]).scatter_add_(1, index.expand(case.heads, -1), dfull).t()
    assert got_t["dbias"].shape == table.shape
    if executor.is_cuda_kernel:
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got_t["dbias"], want, atol=tol * want.abs().max().item(), rtol=tol)
    else:
        assert torch.equal(got_t["dbias"], want)
    again = run_attention(executor, case, inp, dtype, scale)
    assert torch.equal(again["dbias"], got_t["dbias"])  # a fixed summation order


def test_table_form_gradient_is_thread_independent():
    qkv, _, pad = _attn_inputs(3, 11, 9, 4, 2, 8, torch.float32, True)
    table = torch.randn(49, 2, requires_grad=True)
    g = torch.randn(3, 11, 9, 16)

    def run():
        out = window_attention(qkv, table, 4, (2, 2), None, pad)
        return torch.autograd.grad(out, (table,), g)

    assert_thread_independent(run)


# ----------------------------------------------------------------------------- the wrappers

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


def _attn_inputs(B, H, W, ws, heads, d, dtype, with_pad):
    C = heads * d
    qkv = torch.randn(B, H, W, 3 * C, dtype=dtype)
    bias = torch.randn(heads, ws * ws, ws * ws, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    pad = torch.randn(3 * C, dtype=dtype) if with_pad else None
    return qkv, bias, pad


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


# ----------------------------------------------------------------------------- Swin V2


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


def test_v2_backward_is_bitwise_deterministic():
    qkv, bias, hs, pad = _v2_leaves(3, 11, 9, 4, 2, 8, torch.float32, True)
    leaves = [t.requires_grad_() for t in (qkv, bias, hs, pad)]
    g = torch.randn(3, 11, 9, 16)
    runs = [
        torch.autograd.grad(swin_ext.window_attention_v2(qkv, bias, hs, 4, (2, 2), pad), leaves, g) for _ in range(2)
    ]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_v2_torch_func():
    from torch.func import grad, vmap

    qkv, bias, hs, _ = (t.detach() if t is not None else None for t in _v2_leaves(3, 6, 6, 3, 2, 3, pad=False))

    def loss(fn):
        return lambda s, q: fn(q[None], bias, s, 3, (1, 1)).pow(2).sum()

    per_sample = [
        vmap(grad(loss(fn)), in_dims=(None, 0))(hs, qkv)
        for fn in (swin_ext.window_attention_v2, swin_ext.window_attention_v2_reference)
    ]
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
        (dict(bias=torch.randn(48, 2)), ValueError, "relative-position table \\(49, heads\\)"),
        (dict(bias=torch.randn(2, 16)), ValueError, "bias must be"),
    ],
)
def test_v2_bad_input(kwargs, exc, match):
    args = dict(
        qkv=torch.randn(1, 4, 4, 12), bias=torch.randn(2, 16, 16), head_scale=torch.ones(2), window_size=4, shift=0
    )
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        swin_ext.window_attention_v2(args["qkv"], args["bias"], args["head_scale"], args["window_size"], args["shift"])


def test_v2_raw_op_checks_raise_python_errors():
    qkv, bias, hs = torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16), torch.ones(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="head_scale must be Float"):
        torch.ops.swin_ext.window_attention_v2_fwd(qkv, bias, None, hs, 4, 0, 0)


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
        (dict(bias=torch.randn(48, 2)), ValueError, "relative-position table \\(49, heads\\)"),
        (dict(bias=torch.randn(2, 16)), ValueError, "bias must be"),
        (dict(qkv_pad=torch.randn(5)), ValueError, "qkv_pad"),
        (dict(bias=torch.randn(2, 16, 16, device="meta")), ValueError, "meta"),
    ],
)
def test_attention_bad_input(kwargs, exc, match):
    args = dict(qkv=torch.randn(1, 4, 4, 12), bias=torch.randn(2, 16, 16), window_size=4, shift=0, qkv_pad=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        window_attention(args["qkv"], args["bias"], args["window_size"], args["shift"], None, args["qkv_pad"])


def _q(C3=12, H=4, W=4, **kw):
    return torch.randn(1, H, W, C3, **kw)


def _attn(**over):
    a = dict(qkv=_q(), bias=torch.randn(2, 16, 16), window_size=4, shift=0, scale=None, qkv_pad=None)
    a.update(over)
    return lambda: window_attention(a["qkv"], a["bias"], a["window_size"], a["shift"], a["scale"], a["qkv_pad"])


def _ref_attn(**over):
    a = dict(qkv=_q(), bias=torch.randn(2, 16, 16), window_size=4, shift=0, scale=None)
    a.update(over)
    return lambda: window_attention_reference(a["qkv"], a["bias"], a["window_size"], a["shift"], a["scale"])


OP_ARGUMENT_CASES = [
    (
        "shift-float-pair",
        _attn(shift=(1.7, 0.2)),
        TypeError,
        r"shift\[0\] must be an int, got float 1.7",
    ),  # was: ran as (1, 0)
    ("shift-float", _attn(shift=1.0), TypeError, "shift must be an int or a pair of ints"),  # was: ran as 1
    ("shift-bool", _attn(shift=True), TypeError, "shift"),
    (
        "shift-bool-pair",
        _attn(shift=(True, 0)),
        TypeError,
        r"shift\[0\] must be an int, got bool",
    ),  # was: ran as (1, 0)
    ("shift-str", _attn(shift="1"), TypeError, "shift"),
    ("shift-triple", _attn(shift=(1, 1, 1)), TypeError, "shift"),
    ("window-float", _attn(window_size=4.0), TypeError, "window_size"),
    ("scale-str", _attn(scale="0.5"), TypeError, "scale must be a real number, got str"),  # was: float("0.5")
    ("scale-complex", _attn(scale=1j), TypeError, "scale must be a real number"),  # was: bare float() error
    ("scale-none-like-list", _attn(scale=[0.5]), TypeError, "scale"),  # was: bare float() error
    ("scale-bool", _attn(scale=True), TypeError, "scale"),  # was: ran with scale 1.0
    (
        "scale-tensor-grad",
        _attn(scale=torch.tensor(0.5, requires_grad=True)),
        TypeError,
        "scale must be a Python number, got a Tensor",
    ),  # was: detached, gradient lost
    ("scale-nan", _attn(scale=float("nan")), ValueError, "scale must be finite"),  # was: NaN output
    ("scale-inf", _attn(scale=math.inf), ValueError, "scale must be finite"),
    (
        "window-2**32",
        _attn(window_size=2**32, bias=torch.randn(2, 0, 0)),
        ValueError,
        r"window_size must be in \[1, 32768\], got 4294967296",
    ),  # was: N overflowed to 0, garbage output
    ("window-2**15+1", _attn(window_size=2**15 + 1, bias=torch.randn(2, 0, 0)), ValueError, "window_size must be in"),
    ("window-zero", _attn(window_size=0), ValueError, "window_size"),
    ("shift-ge-window", _attn(shift=(0, 4)), ValueError,
     r"shift must satisfy 0 <= shift < window_size on every axis, got shift \(0, 4\) for window_size \(4, 4\)"),
    ("bias-wrong-shape", _attn(bias=torch.randn(2, 9, 9)), ValueError, r"bias must be \(heads, 16, 16\)"),
    ("heads-zero", _attn(bias=torch.randn(0, 16, 16)), ValueError, "not divisible by heads=0"),
    (
        "C-zero-default-scale",
        _attn(qkv=_q(C3=0)),
        ValueError,
        "C = 0 channels.*default scale",
    ),  # was: ZeroDivisionError
    ("qkv-sparse", _attn(qkv=_q().to_sparse()), TypeError, "qkv must be a dense"),  # was: internal layout error
    ("bias-sparse", _attn(bias=torch.randn(2, 16, 16).to_sparse()), TypeError, "bias must be a dense"),
    ("qkv-int", _attn(qkv=torch.ones(1, 4, 4, 12, dtype=torch.int32)), TypeError, "qkv must be float32"),
    ("qkv-3d", _attn(qkv=torch.randn(4, 4, 12)), ValueError, "qkv must have 4 dims"),
    ("qkv-not-tensor", _attn(qkv=[[1.0]]), TypeError, "qkv must be a torch.Tensor"),
    ("pad-wrong-len", _attn(qkv_pad=torch.randn(5)), ValueError, r"qkv_pad must be \(12,\)"),
    ("bias-on-meta", _attn(bias=torch.randn(2, 16, 16, device="meta")), ValueError, "bias is on meta"),
    ("ref-C-zero-default-scale", _ref_attn(qkv=_q(C3=0)), ValueError, "C = 0 channels"),  # was: ZeroDivisionError
    ("ref-shift-float", _ref_attn(shift=(1.5, 0)), TypeError, r"shift\[0\] must be an int"),  # was: truncated
    ("ref-window-2**32", _ref_attn(window_size=2**32, bias=torch.randn(2, 0, 0)), ValueError, "window_size"),
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
        return torch.ops.swin_ext.window_attention_fwd(q, b, None, [ws, ws], [sh, sw], scale)

    return f


RAW_OP_CASES = [
    ("cpu-shift-ge-window", _raw_attn(sh=4), "shift must satisfy"),
    ("cpu-window-2**15+1", _raw_attn(ws=2**15 + 1, bias_shape=(2, 0, 0)), r"window_size must be in \[1, 32768\]"),
    ("cpu-scale-nan", _raw_attn(scale=float("nan")), "scale must be finite"),  # was: NaN output
    ("cpu-qkv-sparse", _raw_attn(layout="sparse"), "from the .SparseCPU. backend"),  # the dispatcher refuses it
    ("meta-shift-ge-window", _raw_attn("meta", sh=4), "shift must satisfy"),  # was: accepted by the fake
    ("meta-bias-shape", _raw_attn("meta", bias_shape=(2, 9, 9)), r"bias must be \(heads, 16, 16\)"),  # was: accepted
    ("meta-window-2**32", _raw_attn("meta", ws=2**32, bias_shape=(2, 0, 0)), "window_size must be in"),  # was: accepted
    ("meta-heads-divide", _raw_attn("meta", qkv_shape=(1, 4, 4, 9)), "not divisible by heads"),  # was: accepted
    ("meta-scale-nan", _raw_attn("meta", scale=float("nan")), "scale must be finite"),
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
        return torch.ops.swin_ext.window_attention_fwd(q, b, None, [4, 4], [self.shift, 0], 1.0)[0]


def test_fake_kernel_refuses_under_compile_and_export():
    q, b = torch.randn(1, 4, 4, 12), torch.randn(2, 16, 16)
    with pytest.raises(RuntimeError, match="shift must satisfy"):  # was: compiled, then failed (or not) at run time
        torch.compile(_RawAttn(4), backend="eager", fullgraph=True)(q, b)
    with pytest.raises(RuntimeError, match="shift must satisfy"):
        torch.export.export(_RawAttn(4), (q, b))
    ep = torch.export.export(_RawAttn(1), (q, b))  # a valid one still exports and runs
    torch.testing.assert_close(
        ep.module()(q, b), window_attention_reference(q, b, 4, (1, 0), 1.0), atol=2e-5, rtol=2e-5
    )


@pytest.mark.slow
def test_overflowing_sizes_in_a_child_process():
    """``window_size = 2**32`` made ``window_size**2`` wrap to 0 and read uninitialised memory."""
    code = (
        CHILD_HARNESS
        + r"""
q, b0 = torch.randn(1, 4, 4, 12), torch.randn(2, 0, 0)
case("raw-2**32", lambda: torch.ops.swin_ext.window_attention_fwd(q, b0, None, [2**32, 2**32], [0, 0], 1.0))
case("raw-2**31", lambda: torch.ops.swin_ext.window_attention_fwd(q, b0, None, [2**31 + 1, 1], [0, 0], 1.0))
case("wrapper-2**32", lambda: swin_ext.window_attention(q, b0, 2**32))
case("raw-bwd-2**32", lambda: torch.ops.swin_ext.window_attention_bwd(torch.randn(1, 4, 4, 4), q, b0, None,
     torch.empty(1, 1, 2, 0), [2**32, 2**32], [0, 0], 1.0))
case("huge-empty-map", lambda: torch.ops.swin_ext.window_attention_fwd(torch.empty(0, 2**40 + 1, 1, 12),
     torch.randn(2, 16, 16), None, [4, 4], [0, 0], 1.0))
case("raw-video-N-2**45", lambda: torch.ops.swin_ext.window_attention_fwd(torch.randn(1, 2, 2, 2, 12), b0, None,
     [2**15, 2**15, 2**15], [0, 0, 0], 1.0))
print(json.dumps(results))
"""
    )
    r = run_child(code)
    for name in ("raw-2**32", "raw-2**31", "raw-bwd-2**32"):
        assert r[name].startswith("RuntimeError: swin_ext.window_attention") and "window_size must be in" in r[name], r
    assert r["raw-video-N-2**45"].startswith("RuntimeError:") and "more than the supported" in r["raw-video-N-2**45"]
    assert r["wrapper-2**32"].startswith("ValueError:") and "window_size" in r["wrapper-2**32"]
    assert r["huge-empty-map"].startswith("RuntimeError:") and "larger than the supported" in r["huge-empty-map"]


# ----------------------------------------------------------------------------- results


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


RESULT_CASES = [
    ("empty-map-H0", lambda: _empty_map_matches(0, 4, 2)),  # was: ZeroDivisionError in the reference
    ("empty-map-W0", lambda: _empty_map_matches(4, 0, 0)),  # was: reshape error in the reference
    ("numpy-int-args", _numpy_int_shift),
]


@pytest.mark.parametrize("fn", [pytest.param(c[1], id=c[0]) for c in RESULT_CASES])
def test_op_result(fn):
    fn()


# ----------------------------------------------------------------------------- 3-D windows (Video Swin)


def _video_leaves(B, T, H, W, window, heads=2, d=4, dtype=F64, pad=True):
    N = math.prod(window)
    qkv = torch.randn(B, T, H, W, 3 * heads * d, dtype=dtype)
    bias = torch.randn(heads, N, N, dtype=torch.float64 if dtype == F64 else torch.float32)
    return qkv, bias, (torch.randn(3 * heads * d, dtype=dtype) if pad else None)


def test_video_one_frame_is_the_2d_map():
    """One geometry: a clip of one frame with a window of depth 1 is the 2-D map, bitwise, forward and backward."""
    qkv, bias, pad = _video_leaves(2, 1, 9, 7, (1, 4, 4))
    g = torch.randn(2, 1, 9, 7, 8, dtype=F64)
    res = []
    for q, gg, win, sh in ((qkv, g, (1, 4, 4), (0, 2, 1)), (qkv[:, 0], g[:, 0], 4, (2, 1))):
        leaves = [t.detach().clone().requires_grad_() for t in (q, bias, pad)]
        out = window_attention(*leaves[:2], win, sh, None, leaves[2])
        res.append([out.reshape(-1)] + [t.reshape(-1) for t in torch.autograd.grad(out, leaves, gg.view_as(out))])
    for a, b in zip(*res):
        assert torch.equal(a, b)


def test_video_depth1_windows_are_per_frame_2d_windows():
    """Windows of depth 1 on a clip: each frame attends alone, as the 2-D op on (B * T) maps."""
    qkv, bias, pad = _video_leaves(2, 3, 6, 5, (1, 3, 3))
    out = window_attention(qkv, bias, (1, 3, 3), (0, 1, 2), None, pad)
    want = window_attention(qkv.flatten(0, 1), bias, 3, (1, 2), None, pad).view_as(out)
    assert torch.equal(out, want)


@pytest.mark.parametrize("padded,window,shift", [
    ((8, 14, 14), (8, 7, 7), (4, 3, 3)),  # Video Swin's: 27 regions
    ((8, 14, 14), (8, 7, 7), (0, 3, 3)),  # T clamped (unshifted)
    ((6, 4, 9), (3, 2, 3), (1, 0, 2)),  # H unshifted
    ((4, 6, 6), (2, 3, 3), (1, 1, 1)),
])
def test_region_mask_is_torchvisions_3d_mask(padded, window, shift):
    """The 27-region mask from region ids is torchvision's (and the official) slice-assigned mask."""
    from torchvision.models.video.swin_transformer import _compute_attention_mask_3d

    from swin_ext.ops.reference import shift_mask

    want = _compute_attention_mask_3d(torch.zeros(1, dtype=F64), padded, window, shift)
    torch.testing.assert_close(shift_mask(padded, window, shift, dtype=F64), want, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(16, 56, 56), (8, 7, 7), (4, 7, 3), (9, 1, 8), (1, 1, 1)])
def test_clamp_window_is_torchvisions(size):
    from torchvision.models.video.swin_transformer import _get_window_and_shift_size

    from swin_ext.ops.reference import clamp_window

    for shift in ([0, 0, 0], [4, 3, 3]):
        w, s = _get_window_and_shift_size(list(shift), list(size), [8, 7, 7])
        assert clamp_window(size, (8, 7, 7), shift) == (tuple(w), tuple(s))


@pytest.mark.parametrize("size,window,shift", [
    ((5, 9, 7), (4, 3, 3), (2, 1, 1)),  # padded on every axis, then shifted
    ((4, 6, 6), (4, 3, 3), (0, 1, 1)),  # T = window: not shifted along T
    ((3, 4, 5), (3, 4, 5), (0, 0, 0)),  # one window
])
def test_video_op_is_torchvisions_shifted_window_attention_3d(size, window, shift):
    """The fused op (qkv Linear applied first, padding tokens carrying its bias) against torchvision's
    ``shifted_window_attention_3d`` itself, float64."""
    from torchvision.models.video.swin_transformer import shifted_window_attention_3d

    heads, C = 2, 8
    N = math.prod(window)
    x = torch.randn(2, *size, C, dtype=F64, requires_grad=True)
    wq, bq = torch.randn(3 * C, C, dtype=F64), torch.randn(3 * C, dtype=F64)
    wp, bp = torch.randn(C, C, dtype=F64), torch.randn(C, dtype=F64)
    bias = torch.randn(heads, N, N, dtype=F64)
    want = shifted_window_attention_3d(x, wq, wp, bias.unsqueeze(0), list(window), heads, list(shift),
                                       qkv_bias=bq, proj_bias=bp, training=False)
    pad = bq if any(n % w for n, w in zip(size, window)) else None
    got = torch.nn.functional.linear(window_attention(x @ wq.T + bq, bias, window, shift, None, pad), wp, bp)
    g = torch.randn_like(want)
    for a, b in ((got, want), (torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-12


def test_video_vmap_and_grad():
    from torch.func import grad, vmap

    qkv, bias, pad = _video_leaves(3, 3, 4, 5, (2, 3, 3), pad=True)

    def loss(fn):
        return lambda b, q: fn(q[None], b, (2, 3, 3), (1, 1, 1), None, pad).pow(2).sum()

    per_sample = [vmap(grad(loss(fn)), in_dims=(None, 0))(bias, qkv)
                  for fn in (window_attention, window_attention_reference)]
    _close(per_sample[0], per_sample[1], 1e-9)
    out = vmap(lambda q: window_attention(q, bias, (2, 3, 3), (1, 1, 1)))(qkv.view(3, 1, *qkv.shape[1:]))
    _close(out.view(3, *out.shape[2:]), window_attention(qkv, bias, (2, 3, 3), (1, 1, 1)))


VIDEO_ARGUMENT_CASES = [
    ("window-pair-on-clip", dict(window_size=(2, 2)), TypeError, r"window_size must be an int or 3 ints"),
    ("shift-pair-on-clip", dict(shift=(1, 1)), TypeError, r"shift must be an int or 3 ints"),
    ("shift-ge-window-T", dict(shift=(2, 0, 0)), ValueError, r"shift must satisfy 0 <= shift < window_size on every"),
    ("window-float", dict(window_size=(2, 2.0, 2)), TypeError, r"window_size\[1\] must be an int"),
    ("bias-shape", dict(bias=torch.randn(2, 16, 16)), ValueError,
     r"bias must be \(heads, 8, 8\) or the relative-position table \(27, heads\) for window_size \(2, 2, 2\)"),
    ("table-rows", dict(bias=torch.randn(25, 2)), ValueError, r"relative-position table \(27, heads\)"),
    ("too-many-tokens", dict(window_size=(2**11, 2**10, 2**10), bias=torch.randn(2, 0, 0)), ValueError,
     r"holds 2147483648 tokens, more than the supported 1073741824"),
    ("qkv-6d", dict(qkv=torch.randn(1, 1, 2, 2, 2, 12)), ValueError, r"qkv must have 4 dims \(B, H, W, 3C\) or 5 dims"),
]


@pytest.mark.parametrize("over,exc,match", [pytest.param(*c[1:], id=c[0]) for c in VIDEO_ARGUMENT_CASES])
def test_video_op_argument(over, exc, match):
    a = dict(qkv=torch.randn(1, 2, 4, 4, 12), bias=torch.randn(2, 8, 8), window_size=(2, 2, 2), shift=0)
    a.update(over)
    with pytest.raises(exc, match=match):
        window_attention(a["qkv"], a["bias"], a["window_size"], a["shift"])
    w, s = a["window_size"], a["shift"] if not isinstance(a["shift"], int) else (a["shift"],) * 3
    if all(isinstance(v, int) for v in (*w, *s)):
        with pytest.raises(RuntimeError, match="swin_ext.window_attention"):  # the raw op's own TORCH_CHECK
            torch.ops.swin_ext.window_attention_fwd(a["qkv"], a["bias"], None, list(w), list(s), 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("window", [(1, 1), (2, 3), (3, 3), (4, 5), (5, 5), (6, 6)])
def test_cpu_gemm_row_blocks_match_reference(dtype, window):
    """The CPU kernels' GEMMs take 6-row register blocks on AVX2 / AVX-512 with 4-row blocks at the end
    (cpu::gemm_rows): windows whose padded token count Nr (a multiple of 4) leaves 0, 4 and 8 rows
    after the 6-row blocks (N = 9, 36; 25; 6, 20) and one below 6 (N = 1), forward and backward, shifted
    and padded, against the reference."""
    torch.manual_seed(sum(window))
    wh, ww = window
    heads, d, B = 2, 8, 2
    H, W = 2 * wh + 1, 2 * ww + 1  # padded along both axes (but a window of 1)
    shift = (wh // 2, ww // 2)
    qkv = torch.randn(B, H, W, 3 * heads * d, dtype=dtype, requires_grad=True)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    table = torch.randn((2 * wh - 1) * (2 * ww - 1), heads, dtype=acc, requires_grad=True)
    pad = torch.randn(3 * heads * d, dtype=dtype, requires_grad=True) if window != (1, 1) else None
    out = window_attention(qkv, table, window, shift, None, pad)
    index = swin_ext.layers.pos_bias.relative_position_index(window)
    bias = table[index.reshape(-1)].reshape(wh * ww, wh * ww, heads).permute(2, 0, 1)
    ref = window_attention_reference(qkv, bias, window, shift, None, pad)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(out)
    leaves = [t for t in (qkv, table, pad) if t is not None]
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, b, **tol)


def test_lse_reference():
    """window_attention_lse_reference, which the op tests hold every kernel's lse to: with q = 0 the
    logits are the bias (plus the shift mask), so each row's value is the log-sum-exp of its bias row
    -- of the masked row where the shift splits the window; an empty map is refused."""
    from swin_ext.ops.reference import shift_mask, window_attention_lse_reference

    g = torch.Generator().manual_seed(3)
    heads, d, ws = 2, 4, 3
    qkv = torch.randn(2, 6, 6, 3 * heads * d, dtype=torch.float64, generator=g)
    qkv[..., : heads * d] = 0  # q = 0
    bias = torch.randn(heads, ws * ws, ws * ws, dtype=torch.float64, generator=g)
    lse = window_attention_lse_reference(qkv, bias, ws, 0)
    assert lse.shape == (2, 4, heads, ws * ws)
    torch.testing.assert_close(lse, bias.logsumexp(-1).expand(2, 4, heads, ws * ws))
    shifted = window_attention_lse_reference(qkv, bias, ws, 1)
    mask = shift_mask((6, 6), (ws, ws), (1, 1), dtype=torch.float64)  # (nW, N, N)
    want = (bias[None] + mask[:, None]).logsumexp(-1)  # (nW, heads, N)
    torch.testing.assert_close(shifted, want.expand(2, 4, heads, ws * ws))
    assert not torch.equal(shifted, lse)  # the last windows along each axis are split
    with pytest.raises(ValueError, match="empty map"):
        window_attention_lse_reference(qkv[:0], bias, ws, 0)

"""Every op kernel against swin_ext.reference, on every executor (op_testing.py).

One case table per op, run by one fixture on the CPU kernels, on the CUDA
kernels under the CPU harness (in thread order and shuffled) and on the GPU
where there is one, for every dtype, with one tolerance rule.  The CUDA
backward of the attention runs both ways it can: the fused kernel (N <= 64)
and the streaming pair (forced with SWIN_EXT_ATTN_BWD=streaming), and with
several images per block (SWIN_EXT_ATTN_CHUNK) so the bias gradient's
accumulation across images is exercised on small inputs.
``tests/test_harness.py::test_asan_kernel_suite`` reruns the harness part
under AddressSanitizer, ``test_sm86_kernel_suite`` with the sm_86 limits.
"""
from __future__ import annotations

import pytest
import torch

from op_testing import (
    ATTN_CASES,
    ATTN_V2_CASES,
    BG_CASES,
    DTYPES,
    LN_CASES,
    MERGE_CASES,
    LnCase,
    attention_inputs,
    bg_inputs,
    check_bias_gelu,
    check_add_layernorm,
    check_attention,
    check_close,
    check_merging,
    executor_names,
    ln_inputs,
    ln_reference,
    make_executor,
    merge_inputs,
    run_add_layernorm,
    run_attention,
    run_bias_gelu,
    run_merging,
)


@pytest.fixture(params=executor_names())
def executor(request):
    return make_executor(request.param)


# (SWIN_EXT_ATTN_BWD, SWIN_EXT_ATTN_CHUNK) variants of the CUDA kernels: the
# streaming backward, and several images per block (the backward's bias
# accumulation; the one-tile forward's images in flight: chunk3 reuses a
# stage for the third image).
BWD_VARIANTS = {
    "auto": {},
    "streaming": {"SWIN_EXT_ATTN_BWD": "streaming"},
    "chunk2": {"SWIN_EXT_ATTN_CHUNK": "2"},
    "chunk3": {"SWIN_EXT_ATTN_CHUNK": "3"},
}


def _variants(case):
    out = ["auto"]
    if case.N <= 64:
        out.append("streaming")  # else streaming is what auto runs
    if case.B >= 2:
        out.append("chunk2")
    if case.B >= 3 and case.N <= 64:
        out.append("chunk3")
    return out


def _attention_case(executor, case, variant, dtype, monkeypatch, gen, v2: bool) -> None:
    """fwd + bwd of one attention case (V1 at the default scale, or V2) against the reference."""
    if variant != "auto" and not executor.is_cuda_kernel:
        pytest.skip("a CUDA backward variant")
    if variant == "chunk3" and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("chunk3 is for the tensor-core forward's image pipeline (chunk2 covers the backward)")
    for k, v in BWD_VARIANTS[variant].items():
        monkeypatch.setenv(k, v)
    inp = attention_inputs(case, gen, dtype, v2=v2)
    scale = 1.0 if v2 else case.d ** -0.5  # V2: head_scale replaces it
    got = run_attention(executor, case, inp, dtype, scale)
    check_attention(case, inp, got, dtype, scale)


ATTN_PARAMS = [pytest.param(c, v, id=f"{c.id}-{v}") for c in ATTN_CASES for v in _variants(c)]
ATTN_V2_PARAMS = [pytest.param(c, v, id=f"{c.id}-{v}") for c in ATTN_V2_CASES for v in _variants(c)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,variant", ATTN_PARAMS)
def test_window_attention(executor, case, variant, dtype, monkeypatch, seed_generator):
    _attention_case(executor, case, variant, dtype, monkeypatch, seed_generator, v2=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,variant", ATTN_V2_PARAMS)
def test_window_attention_v2(executor, case, variant, dtype, monkeypatch, seed_generator):
    """Swin V2 cosine attention (q, k normalized in the kernel, per-head scale), fwd + bwd."""
    _attention_case(executor, case, variant, dtype, monkeypatch, seed_generator, v2=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MERGE_CASES, ids=lambda c: c.id)
def test_patch_merging(executor, case, dtype, seed_generator):
    inp = merge_inputs(case, seed_generator)
    got = run_merging(executor, inp, dtype)
    check_merging(case, inp, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("magnitude", [1e30, 1e36])
def test_patch_merging_huge_values(executor, dtype, magnitude, seed_generator):
    """LayerNorm statistics stay right where float32 squares overflow (torch's own LayerNorm gives NaN)."""
    case = MERGE_CASES[1]
    inp = merge_inputs(case, seed_generator, scale=magnitude)
    got = run_merging(executor, inp, dtype)
    check_merging(case, inp, got, dtype)
    # a constant row has variance 0: the output is exactly the bias
    inp["x"] = torch.full_like(inp["x"], magnitude)
    got = run_merging(executor, inp, dtype)
    H2, W2 = (case.H + 1) // 2, (case.W + 1) // 2
    interior = got["y"][:, : case.H // 2, : case.W // 2]
    want = inp["b"].to(dtype).expand_as(interior)
    torch.testing.assert_close(interior, want, atol=0, rtol=0)


def _need_add_layernorm(executor):
    from op_testing import has_add_layernorm

    if not has_add_layernorm(executor):
        pytest.skip(f"{executor.name}: no add_layernorm kernel registered "
                    "(swin_ext_harness::add_layernorm_fwd comes with its CUDA kernel)")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LN_CASES, ids=lambda c: c.id)
def test_add_layernorm(executor, case, dtype, seed_generator):
    _need_add_layernorm(executor)
    inp = ln_inputs(case, seed_generator)
    got = run_add_layernorm(executor, case, inp, dtype)
    check_add_layernorm(case, inp, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("magnitude", [1e30, 1e36])
def test_add_layernorm_huge_values(executor, dtype, magnitude, seed_generator):
    """Statistics stay right where float32 squares overflow; a constant row gives exactly the bias."""
    _need_add_layernorm(executor)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", BG_CASES, ids=lambda c: c.id)
def test_bias_gelu(executor, case, dtype, seed_generator):
    inp = bg_inputs(case, seed_generator)
    got = run_bias_gelu(executor, case, inp, dtype)
    check_bias_gelu(case, inp, got, dtype)

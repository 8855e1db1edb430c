"""Property tests: random shapes through both ops, on the CPU kernels and on
the CUDA kernels under the harness, forward and backward against the
reference (hypothesis).

CI runs a bounded, derandomized set of examples; more on request:

    SWIN_HYPOTHESIS_EXAMPLES=500 SWIN_HYPOTHESIS_RANDOM=1 bash scripts/run_tests.sh tests/test_op_properties.py
"""
from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from op_testing import (  # noqa: E402
    DTYPES,
    AttnCase,
    MergeCase,
    attention_inputs,
    check_attention,
    check_merging,
    make_executor,
    merge_inputs,
    run_attention,
    run_merging,
)

EXAMPLES = int(os.environ.get("SWIN_HYPOTHESIS_EXAMPLES", "12"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("SWIN_HYPOTHESIS_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
EXECUTORS = ["cpu", "harness-ordered"]


@st.composite
def attention_cases(draw):
    ws = draw(st.integers(1, 16))
    big = ws > 8  # the streaming sizes: keep the harness work small
    heads = draw(st.integers(1, 1 if big else 3))
    d = draw(st.sampled_from([8, 16, 32] if big else [5, 8, 16, 20, 24, 32, 48, 64, 100, 128]))
    B = draw(st.integers(0, 1 if big else 3))
    H = draw(st.integers(1, ws + (2 if big else 2 * ws + 2)))
    W = draw(st.integers(1, ws + (2 if big else 2 * ws + 2)))
    shift = (draw(st.integers(0, ws - 1)), draw(st.integers(0, ws - 1)))
    return AttnCase(B, H, W, ws, shift, heads, d, draw(st.booleans()))


@st.composite
def merge_cases(draw):
    return MergeCase(draw(st.integers(0, 3)), draw(st.integers(1, 11)), draw(st.integers(1, 11)),
                     draw(st.sampled_from([1, 3, 4, 8, 16, 24, 40])))


@pytest.mark.parametrize("executor_name", EXECUTORS)
@SETTINGS
@given(case=attention_cases(), dtype=st.sampled_from(DTYPES), bwd=st.sampled_from(["auto", "streaming"]),
       seed=st.integers(0, 2**31 - 1))
def test_window_attention_random_shapes(executor_name, case, dtype, bwd, seed):
    ex = make_executor(executor_name)
    gen = torch.Generator().manual_seed(seed)
    inp = attention_inputs(case, gen, dtype)
    scale = case.d ** -0.5
    old = os.environ.get("SWIN_EXT_ATTN_BWD")
    os.environ["SWIN_EXT_ATTN_BWD"] = bwd
    try:
        got = run_attention(ex, case, inp, dtype, scale)
    finally:
        if old is None:
            os.environ.pop("SWIN_EXT_ATTN_BWD", None)
        else:
            os.environ["SWIN_EXT_ATTN_BWD"] = old
    check_attention(case, inp, got, dtype, scale)


@pytest.mark.parametrize("executor_name", EXECUTORS)
@SETTINGS
@given(case=merge_cases(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_patch_merging_random_shapes(executor_name, case, dtype, seed):
    ex = make_executor(executor_name)
    inp = merge_inputs(case, torch.Generator().manual_seed(seed))
    got = run_merging(ex, inp, dtype)
    check_merging(case, inp, got, dtype)

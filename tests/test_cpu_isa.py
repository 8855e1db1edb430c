"""Static checks of the CPU kernels' machine code (x86-64, GCC): each ISA clone holds its own hot code.

The CPU kernels are compiled once per ISA from one body (``csrc/cpu/isa_dispatch.h``): the
``_default`` clone for the baseline ISA (SSE2), ``_avx2`` with AVX2 + FMA, some ``_avx512``.  A
function the body calls but does not inline -- a lambda is one: a function of its own, without the
clone's ``target`` attribute -- is compiled once, for the baseline ISA, and every clone calls that one
copy.  Patch merging's float32 paths were picked by a generic lambda until 2026-12-05, so its AVX2
clone ran them as SSE code, 4-5x slower than the fix
(``benchmarks/results/cpu_merging_isa_avx2_2026-12-05.md``).

The check: outside the ``_default`` clones and a short list of baseline code on purpose, no function
of swin_ext's CPU code has legacy-SSE packed floating-point arithmetic (``addps``, ``mulps``, ...,
without the VEX ``v``), which an AVX2 / AVX-512 clone never emits; and the AVX2 clones exist and
compute on ``ymm`` registers.  Reads the extension with ``objdump`` (binutils, beside the compiler).
"""
from __future__ import annotations

import collections
import platform
import re
import shutil
import subprocess
from typing import Dict

import pytest

import swin_ext

pytestmark = pytest.mark.skipif(
    not swin_ext.HAS_OPS or platform.machine() not in ("x86_64", "AMD64"),
    reason="needs the compiled extension on x86-64",
)

#: Legacy-SSE (non-VEX) packed float / double arithmetic.
_SSE_PACKED = re.compile(r"^\s*[0-9a-f]+:\s+(add|sub|mul|div|max|min|sqrt)p[sd]\s")
_YMM = re.compile(r"%ymm\d+")
_ZMM = re.compile(r"%zmm\d+")
_FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")

#: Baseline code on purpose, called outside the clones: the fixed-order sum of the weight / bias
#: gradient partials (a few KiB a call) and the ATen glue of the backward ops.
_BASELINE_OK = ("sum_partials", "patch_merging_bwd_cpu(", "add_layernorm_bwd_cpu(")


def _functions(lib: str) -> Dict[str, Dict[str, int]]:
    """Per demangled function of swin_ext in ``lib``: its count of legacy-SSE packed arithmetic and of
    instructions on ymm registers."""
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", lib], capture_output=True, text=True,
                         check=True).stdout
    funcs: Dict[str, Dict[str, int]] = collections.defaultdict(lambda: {"sse": 0, "ymm": 0, "zmm": 0})
    name = None
    for line in out.splitlines():
        m = _FUNC.match(line)
        if m:
            name = m.group(1) if ("swin_ext" in m.group(1) and "cuda" not in m.group(1).lower()) else None
            continue
        if name is None:
            continue
        if _SSE_PACKED.match(line):
            funcs[name]["sse"] += 1
        if _YMM.search(line):
            funcs[name]["ymm"] += 1
        if _ZMM.search(line):
            funcs[name]["zmm"] += 1
    return funcs


@pytest.fixture(scope="module")
def functions():
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) not found")
    from swin_ext import _C

    funcs = _functions(_C.__file__)
    if not any(n.startswith(("swin_ext::", "void swin_ext::")) and "_avx2" in n for n in funcs):
        pytest.skip("no AVX2 clones in this build (not GCC, or not x86-64)")
    return funcs


def test_no_clone_calls_baseline_hot_code(functions):
    """No swin_ext CPU function outside the ``_default`` clones (and the baseline-on-purpose list) does
    SSE packed arithmetic: the clones' hot code is inlined into them, compiled for their ISA."""
    shared = sorted(n for n, f in functions.items()
                    if f["sse"] and "_default" not in n and not any(ok in n for ok in _BASELINE_OK))
    assert not shared, "compiled for the baseline ISA but not a _default clone (a lambda or an out-of-line " \
                       "helper shared by every clone?):\n" + "\n".join(s[:300] for s in shared)


@pytest.mark.parametrize("clone", ["fwd_pixels_avx2", "bwd_blocks_avx2", "fwd_rows_avx2", "fwd_items_avx2",
                                   "bwd_items_avx2", "bg_fwd_avx2", "bg_bwd_avx2"])
def test_avx2_clones_compute_on_ymm(functions, clone):
    """Every AVX2 clone of the five kernels' row / item loops exists and computes on 256-bit registers."""
    mine = {n: f for n, f in functions.items() if re.search(rf"\b{clone}\b", n)}
    assert mine, f"no {clone} in the extension"
    for n, f in mine.items():
        assert f["ymm"] > 0 and f["sse"] == 0, (n[:200], f)


@pytest.mark.parametrize("clone", ["gemm_rows_avx512", "wgrad_rows_packed_avx512", "mlp_blocks_avx512"])
def test_avx512_gemm_clones_compute_on_zmm(functions, clone):
    """The CPU GEMM's AVX-512 clones (linear_cpu.cpp, mlp_cpu.cpp) exist and run their tiles on 512-bit
    registers (gemm_blocking.h, tile_rows_pair): a clone that fell back to the 8-float tile would hold ymm
    code only, at half the FMA width."""
    mine = {n: f for n, f in functions.items() if re.search(rf"\b{clone}\b", n)}
    assert mine, f"no {clone} in the extension"
    for n, f in mine.items():
        assert f["zmm"] > 0 and f["sse"] == 0, (n[:200], f)

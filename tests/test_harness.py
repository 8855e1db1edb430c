"""The CUDA harness: CUDA kernel sources run on the CPU (tools/cuda_harness/).

* Self-tests of the harness itself (the ``selftest`` program, one process per
  test, since planted bugs are expected to fail or abort it): shared-memory
  and shuffle reductions, atomics, WMMA, launch-configuration checks, and
  planted bugs -- a missing barrier that the shuffled mode catches, divergent
  barriers and warp operations with missing lanes that the scheduler reports,
  out-of-bounds writes that AddressSanitizer catches.
* ``test_kernel_*``: CUDA kernels run by the harness through the test-only
  ``swin_ext_harness`` op library on CPU tensors, against PyTorch / the
  ``swin_ext.reference`` oracle, in thread order and in shuffled order with
  blocks on several OS threads.  ``test_asan_kernel_suite`` runs the same
  tests again in a child Python with the AddressSanitizer build.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import harness_build as hb

# Every test here builds or runs the CPU harness of the CUDA kernels: the slow tier.
pytestmark = pytest.mark.slow

ASAN_CHILD = os.environ.get("SWIN_HARNESS_VARIANT") == "asan"
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def artefacts():
    """Paths of the harness programs and libraries (built once per session)."""
    if ASAN_CHILD:  # the parent built everything; never run the compiler under LD_PRELOAD
        outs = hb.outputs()
        missing = [p for p in outs.values() if not os.path.exists(p)]
        assert not missing, f"harness artefacts missing: {missing}"
        return outs
    try:
        hb.build()
    except hb.BuildUnavailable as e:
        pytest.skip(f"CUDA harness cannot be built here: {e}")
    return hb.outputs()


def built(name: str) -> str:
    """A built artefact; a compile error fails the test with the compiler output."""
    return hb.outputs()[name] if ASAN_CHILD else hb.require(name)


@pytest.fixture(scope="session")
def hops(artefacts):
    torch.ops.load_library(built("lib_asan" if ASAN_CHILD else "lib"))
    ops = torch.ops.swin_ext_harness
    assert ops.asan_enabled() == ASAN_CHILD
    return ops


# (name, shuffle seed, workers): thread order on one OS thread, and a random
# order between barriers with blocks spread over two OS threads.
# Under ASan (serial blocks) the shuffled order alone: the memory accesses are the same.
MODES = [("shuffled", 12345, 1)] if ASAN_CHILD else [("ordered", 0, 1), ("shuffled", 12345, 2)]


@pytest.fixture(params=MODES, ids=[m[0] for m in MODES])
def mode(request, hops):
    _, seed, workers = request.param
    hops.set_options(seed, workers)
    yield request.param[0]
    hops.clear_options()


# ---------------------------------------------------------------------------
# Self-tests of the harness (standalone program)

needs_parent = pytest.mark.skipif(ASAN_CHILD, reason="run by the parent test session")


def run_selftest(exe: str, name: str, shuffle: int = 0, workers: int = 0, asan: bool = False, extra_env=None):
    env = dict(os.environ, **(extra_env or {}))
    if asan:  # the ASan program links libasan itself: only the options are needed
        env["ASAN_OPTIONS"] = hb.asan_env()["ASAN_OPTIONS"]
    env["SWIN_HARNESS_SHUFFLE"] = str(shuffle)
    env["SWIN_HARNESS_WORKERS"] = str(workers)
    p = subprocess.run([exe, name], capture_output=True, text=True, env=env, timeout=120)
    return p.returncode, p.stdout + p.stderr


SELFTESTS = ["smem_reduction", "shuffle_reduction", "atomics", "exited_barrier", "wmma", "launch_config", "mma",
             "cp_async", "stmatrix", "fast_div"]


@needs_parent
@pytest.mark.parametrize("name", SELFTESTS)
@pytest.mark.parametrize("shuffle,workers", [(0, 1), (7, 3)], ids=["ordered", "shuffled"])
def test_selftest(artefacts, name, shuffle, workers):
    rc, out = run_selftest(built("selftest"), name, shuffle, workers)
    assert rc == 0 and f"PASS {name}" in out, out


@needs_parent
def test_planted_missing_barrier_caught_by_shuffled_mode(artefacts):
    # Thread order hides the missing __syncthreads (thread t-1 has written its
    # value before thread t reads it, as lockstep warps often hide it on a GPU).
    rc, out = run_selftest(built("selftest"), "planted_missing_barrier")
    assert rc == 0, out
    # The shuffled mode runs the threads between barriers in a random order.
    for seed in (1, 2, 3):
        rc, out = run_selftest(built("selftest"), "planted_missing_barrier", shuffle=seed)
        assert rc == 1 and "the missing barrier" in out, (seed, out)


@needs_parent
@pytest.mark.parametrize(
    "name,needle",
    [
        # mma.sync fed an A fragment whose registers 1 and 2 are exchanged
        ("planted_mma_swapped_fragment", "the swapped A fragment registers"),
        # a k-major B tile loaded by ldmatrix without .trans
        ("planted_ldmatrix_no_trans", "the B tile loaded without .trans"),
        # cp.async data read after the barrier but without cp.async.wait_group
        ("planted_cp_async_no_wait", "the missing cp.async wait"),
        # stmatrix given an A fragment whose registers 1 and 2 are exchanged
        ("planted_stmatrix_swapped_fragment", "the swapped fragment registers"),
    ],
)
def test_planted_wrong_fragment_use_gives_wrong_numbers(artefacts, name, needle):
    """The mma / ldmatrix / cp.async emulation follows the PTX ISA's layouts and
    timing closely enough that a kernel using them wrongly computes wrong numbers."""
    for shuffle in (0, 5):
        rc, out = run_selftest(built("selftest"), name, shuffle=shuffle)
        assert rc == 1 and needle in out, (shuffle, out)


@needs_parent
@pytest.mark.parametrize(
    "name,needle",
    [
        ("planted_mma_exited_lane",
         r"mma\.sync\.aligned\.m16n8k16 \(f16\) at .*selftest_kernels.cuh:\d+ in warp 0: lanes 16-31 have exited"),
        ("planted_ldmatrix_misaligned",
         r"ldmatrix\.sync\.aligned\.m8n8\.x1\.shared\.b16 at .*: the row address of lane 0 is not 16-byte aligned"),
        ("planted_stmatrix_below_sm90",
         r"stmatrix needs sm_90 or newer; the emulated device \(SWIN_HARNESS_ARCH\) is sm_86"),
    ],
)
def test_planted_mma_misuse_is_reported(artefacts, name, needle):
    rc, out = run_selftest(built("selftest"), name)
    assert rc == 2 and re.search(needle, out), out


@needs_parent
def test_planted_divergent_barrier_is_reported(artefacts):
    rc, out = run_selftest(built("selftest"), "planted_divergent_barrier")
    assert rc == 2, out
    assert "kernel planted_divergent_barrier_kernel" in out
    assert "threads wait at different barriers" in out
    assert re.search(r"threads 0-15 wait at __syncthreads\(\) at .*selftest_kernels.cuh:\d+", out), out
    assert re.search(r"threads 16-63 wait at __syncthreads\(\) at .*selftest_kernels.cuh:\d+", out), out


@needs_parent
def test_planted_missing_lanes_are_reported(artefacts):
    rc, out = run_selftest(built("selftest"), "planted_missing_lane", shuffle=3)
    assert rc == 2, out
    assert "kernel planted_missing_lane_kernel" in out
    never = r"__shfl_sync at .*selftest_kernels.cuh:\d+ with mask 0xffffffff in warp \d can never complete"
    assert re.search(never, out), out
    assert "lanes 0-15 wait there" in out and "lanes 16-31 wait at __syncthreads()" in out, out


@needs_parent
@pytest.mark.parametrize(
    "name,needle",
    [
        ("planted_trap", r"thread \(5,0,0\) \(warp 0 lane 5\): kernel called __trap\(\)"),
        ("planted_bad_mask", r"with mask 0x00000001, which does not include the calling lane 1"),
    ],
)
def test_planted_kernel_errors_are_reported(artefacts, name, needle):
    rc, out = run_selftest(built("selftest"), name)
    assert rc == 2 and re.search(needle, out), out


@needs_parent
def test_planted_spin_wait_stopped_by_watchdog(artefacts):
    """A block spin-waiting on another block never yields; the watchdog names it."""
    rc, out = run_selftest(built("selftest"), "planted_spin", workers=1, extra_env={"SWIN_HARNESS_TIMEOUT": "2"})
    assert rc != 0, out
    assert re.search(r"kernel planted_spin_kernel .* still running after 2 s .* in block \(0,0,0\)", out), out


def _asan_available():
    return hb.asan_runtime() is not None


needs_asan = pytest.mark.skipif(ASAN_CHILD or not _asan_available(), reason="needs the compiler's ASan runtime")
# The launch-plan tests whose grid sizes assume the emulated sm_90 (132 SMs), not the sm_86 child's.
sm90_grids = pytest.mark.skipif(os.environ.get("SWIN_HARNESS_ARCH", "90") != "90",
                                reason="the grid sizes are sm_90's (132 SMs)")


@needs_asan
@pytest.mark.parametrize("name", ["smem_reduction", "shuffle_reduction", "atomics", "exited_barrier", "wmma", "mma",
                                  "cp_async", "stmatrix"])
def test_selftest_under_asan(artefacts, name):
    rc, out = run_selftest(built("selftest_asan"), name, shuffle=5)
    assert rc == 0 and f"PASS {name}" in out, out


@needs_asan
@pytest.mark.parametrize(
    "name,kind,kernel",
    [
        ("planted_oob_global", "heap-buffer-overflow", "planted_oob_global_kernel"),
        ("planted_oob_dynamic_shared", "heap-buffer-overflow", "planted_oob_dynamic_shared_kernel"),
        ("planted_oob_static_shared", "global-buffer-overflow", "planted_oob_static_shared_kernel"),
    ],
)
def test_planted_out_of_bounds_caught_by_asan(artefacts, name, kind, kernel):
    rc, out = run_selftest(built("selftest_asan"), name, asan=True)
    assert rc != 0, out
    assert f"AddressSanitizer: {kind}" in out, out
    # The report's stack names the kernel and the harness names block and thread.
    assert f"in {kernel}" in out, out
    assert re.search(rf"swin_harness: kernel {kernel} .*block \(0,0,0\), thread \(\d+,0,0\)", out), out


@needs_asan
def test_asan_sees_out_of_bounds_writes_into_torch_tensors(artefacts):
    """The ASan library works inside a torch process (LD_PRELOAD of libasan)."""
    code = textwrap.dedent(
        f"""
        import torch
        torch.ops.load_library({built("lib_asan")!r})
        assert torch.ops.swin_ext_harness.asan_enabled()
        torch.ops.swin_ext_harness.planted("oob_global")
        print("NOT CAUGHT")
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=hb.asan_env(), timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "NOT CAUGHT" not in out, out
    assert "AddressSanitizer: heap-buffer-overflow" in out and "planted_oob_global_kernel" in out, out


KERNEL_SUITE = [
    os.path.join(HERE, f)
    for f in (
        "test_harness.py",
        "test_window_attention.py",
        "test_patch_merging.py",
        "test_add_layernorm.py",
        "test_bias_gelu.py",
    )
]


def _run_kernel_suite(env, kexpr):
    # --capture=sys: an ASan report (written to fd 2) reaches this process's output.
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "--capture=sys",
        "-p",
        "no:cacheprovider",
        *KERNEL_SUITE,
        "-k",
        kexpr,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, cwd=os.path.dirname(HERE))
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-20000:]
    assert re.search(r"\d+ passed", out), out[-5000:]
    return out


@needs_asan
def test_asan_kernel_suite(artefacts):
    """Every harness kernel test again, in a child Python with the ASan build."""
    built("lib_asan")
    _run_kernel_suite(hb.asan_env(), "test_kernel_ or harness-")


@needs_parent
def test_sm86_kernel_suite(artefacts):
    """The kernel suite with the sm_86 / sm_89 limits (99 KB of shared memory per block):
    the fused backward gives way to the streaming kernels where it does not fit."""
    built("lib")
    env = dict(os.environ, SWIN_HARNESS_ARCH="86", SWIN_TEST_EXECUTORS="harness-ordered")
    _run_kernel_suite(env, "test_kernel_ or harness-")


@needs_parent
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_harness_kernels_compile_with_nvcc(tmp_path):
    """The self-test and demo kernels and cuda_compat.h are valid CUDA too."""
    inc, _ = hb.cuda_include_dir()
    src = tmp_path / "check.cu"
    src.write_text(
        textwrap.dedent(
            """
            #include "selftest_kernels.cuh"
            #include "demo_kernels.cuh"
            template void swin_selftest::launch_block_sum<float, 256>(const float*, float*, int, int, cudaStream_t);
            template void swin_demo::launch_row_softmax<__half>(const __half*, __half*, int64_t, int64_t, cudaStream_t);
            template void swin_demo::launch_row_softmax<double>(const double*, double*, int64_t, int64_t, cudaStream_t);
            template void swin_demo::launch_layer_norm_fwd<__nv_bfloat16>(const __nv_bfloat16*, const float*,
                const float*, __nv_bfloat16*, float*, float*, int64_t, int64_t, double, cudaStream_t);
            void check_launch(const __half* a, const __half* b, float* c, cudaStream_t s) {
              SWIN_LAUNCH_KERNEL((swin_selftest::wmma_gemm_kernel<__half>), 1, 128, 0, s, a, b, c, 16, 16, 16);
              SWIN_LAUNCH_KERNEL((swin_selftest::mma_gemm_kernel<__half>), 1, 64, 8192, s, a, b, c, 16, 16, 16, 0);
              SWIN_LAUNCH_KERNEL((swin_selftest::mma_gemm_kernel<__nv_bfloat16>), 1, 64, 8192, s,
                                 reinterpret_cast<const __nv_bfloat16*>(a), reinterpret_cast<const __nv_bfloat16*>(b),
                                 c, 16, 16, 16, 0);
              SWIN_LAUNCH_KERNEL(swin_selftest::cp_async_kernel, 1, 32, 512, s, c, c, 4, false);
              SWIN_LAUNCH_KERNEL(swin_selftest::smem_tree_sum_kernel, 1, 128, 512, s, c, c, 16);
            }
            """
        )
    )
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(src), "-o", str(tmp_path / "check.o"),
           f"-I{hb.HARNESS_DIR}", f"-I{os.path.join(hb.ROOT, 'csrc')}"]
    if inc:
        cmd.append(f"-I{inc}")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


# ---------------------------------------------------------------------------
# Kernels run by the harness on CPU tensors (also run under ASan by
# test_asan_kernel_suite).

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", [(3, 1), (5, 200), (2, 1000)])
def test_kernel_row_softmax(hops, mode, dtype, rows, cols):
    x = (torch.randn(rows, cols, dtype=torch.float64) * 4).to(dtype)
    y = hops.row_softmax(x)
    want = torch.softmax(x.double(), dim=-1).to(dtype)
    torch.testing.assert_close(y, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", [(1, 24), (9, 96), (6, 257)])
def test_kernel_layer_norm(hops, mode, dtype, rows, cols):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = (torch.randn(rows, cols, dtype=torch.float64) * 3 + 1).to(dtype)
    w = torch.randn(cols, dtype=acc)
    b = torch.randn(cols, dtype=acc)
    y, mean, rstd = hops.layer_norm_fwd(x, w, b, 1e-5)
    xd = x.double()
    want = torch.nn.functional.layer_norm(xd, (cols,), w.double(), b.double(), 1e-5)
    torch.testing.assert_close(y, want.to(dtype), **TOL[dtype])
    torch.testing.assert_close(mean, xd.mean(-1).to(acc), **TOL[acc])
    torch.testing.assert_close(rstd, (xd.var(-1, unbiased=False) + 1e-5).rsqrt().to(acc), **TOL[acc])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_kernel_wmma_matmul(hops, mode, dtype):
    a = torch.randn(32, 48, dtype=torch.float64).to(dtype)
    b = torch.randn(48, 64, dtype=torch.float64).to(dtype)
    c = hops.wmma_matmul(a, b)
    torch.testing.assert_close(c, 2 * (a.double() @ b.double()).float(), atol=1e-4, rtol=1e-4)


def test_kernel_harness_errors_reach_python(hops):
    n = hops.launch_count()
    with pytest.raises(
        RuntimeError, match=r"kernel swin_selftest::planted_divergent_barrier_kernel .*different barriers"
    ):
        hops.planted("divergent_barrier")
    with pytest.raises(RuntimeError, match=r"__shfl_sync .* can never complete"):
        hops.planted("missing_lane")
    assert hops.launch_count() == n + 2


# ---------------------------------------------------------------------------
# The project's kernels (csrc/cuda/*.cuh): every case against swin_ext.ops.reference
# is in tests/test_<op>.py (one table for every executor); here what is
# particular to the harness.


def test_kernel_window_attention_matches_cpu_kernel_lse(hops):
    """The saved log-sum-exp equals the CPU kernel's (padding rows included)."""
    swin_ext = pytest.importorskip("swin_ext")
    if not getattr(swin_ext, "HAS_OPS", False):
        pytest.skip("swin_ext._C is not built")
    qkv = torch.randn(2, 13, 10, 3 * 32)
    bias = torch.randn(2, 49, 49)
    pad = torch.randn(3 * 32)
    _, lse = hops.window_attention_fwd(qkv, bias, pad, [7, 7], [3, 3], 0.25)
    _, lse_cpu = torch.ops.swin_ext.window_attention_fwd(qkv, bias, pad, [7, 7], [3, 3], 0.25)
    torch.testing.assert_close(lse, lse_cpu, atol=1e-5, rtol=1e-5)


def _same_in_every_thread_order(hops, run, finite: bool = False) -> None:
    """``run()``'s tensors are bitwise the same in thread order, shuffled on 2 OS threads and on 3
    (different seeds); ``finite``: and every tensor of the first run is finite."""
    results = []
    for seed, workers in [(0, 1), (1, 2), (99, 3)]:
        hops.set_options(seed, workers)
        results.append(tuple(run()))
    hops.clear_options()
    if finite:
        assert all(torch.isfinite(t).all() for t in results[0])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_kernel_window_attention_is_deterministic(hops):
    """Bitwise-identical results whatever the thread order and block placement."""
    qkv = torch.randn(2, 9, 11, 3 * 32)
    bias = torch.randn(2, 16, 16)
    pad = torch.randn(3 * 32)
    go = torch.randn(2, 9, 11, 32)

    def run():
        out, lse = hops.window_attention_fwd(qkv, bias, pad, [4, 4], [2, 2], 0.25)
        return (out, lse) + tuple(hops.window_attention_bwd(go, qkv, bias, pad, lse, [4, 4], [2, 2], 0.25))

    _same_in_every_thread_order(hops, run)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("ws,H,W,d", [(4, 9, 11, 32), (9, 10, 11, 16)], ids=["tile", "key-tiled"])
def test_kernel_tensor_core_backward_is_deterministic(hops, monkeypatch, dtype, v2, ws, H, W, d):
    """The mma.sync backward (tile kernel at N = 16, key-tiled kernel at N = 81),
    bf16 / fp16, V1 / V2, padded and shifted, several images per block:
    bitwise-identical gradients whatever the thread order and block placement."""
    B, heads, N, sh = 2, 2, ws * ws, ws // 2
    qkv = torch.randn(B, H, W, 3 * heads * d).to(dtype)
    bias = torch.randn(heads, N, N)
    pad = torch.randn(3 * heads * d).to(dtype)
    go = torch.randn(B, H, W, heads * d).to(dtype)
    hs = torch.rand(heads) * 20 + 1
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "2")

    def run():
        if v2:
            _, lse = hops.window_attention_v2_fwd(qkv, bias, pad, hs, ws, sh, sh)
            return hops.window_attention_v2_bwd(go, qkv, bias, pad, hs, lse, ws, sh, sh)
        _, lse = hops.window_attention_fwd(qkv, bias, pad, [ws, ws], [sh, sh], d ** -0.5)
        return hops.window_attention_bwd(go, qkv, bias, pad, lse, [ws, ws], [sh, sh], d ** -0.5)

    _same_in_every_thread_order(hops, run, finite=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("window,shift", [((2, 3, 3), (1, 1, 2)), ((3, 5, 5), (1, 2, 2))], ids=["tile", "key-tiled"])
def test_kernel_3d_backward_is_deterministic(hops, monkeypatch, dtype, window, shift):
    """3-D windows (Video Swin): the tensor-core backward (tile kernel at N = 18, key-tiled at N = 75)
    and the SIMT one (fused, streaming pair), a clip padded and shifted (27 regions),
    several images per block: bitwise-identical gradients whatever the thread order and block placement."""
    B, T, H, W, heads, d = 2, 3, 6, 4, 1, 16
    N = window[0] * window[1] * window[2]
    qkv = torch.randn(B, T, H, W, 3 * heads * d).to(dtype)
    bias = torch.randn(heads, N, N)
    pad = torch.randn(3 * heads * d).to(dtype)
    go = torch.randn(B, T, H, W, heads * d).to(dtype)
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "2")

    def run():
        _, lse = hops.window_attention_fwd(qkv, bias, pad, list(window), list(shift), d ** -0.5)
        return hops.window_attention_bwd(go, qkv, bias, pad, lse, list(window), list(shift), d ** -0.5)

    _same_in_every_thread_order(hops, run, finite=True)


# ---------------------------------------------------------------------------
# The relative-position table form of the attention bias (csrc/bias_table.h):
# the tensor-core tile backward reads the table and bins its gradient itself,
# every other kernel runs on the glue's expansion (bias_table_kernels.cuh).

# (The table form against the gathered bias on every executor and dtype:
# tests/test_window_attention.py, test_table_form_is_the_gathered_bias.)
# (id, window, shift, map, head_dim, v2): Swin's window 7 shifted on a padded map, a 3-D clip, V2.
TABLE_CASES = [
    ("w7", (7, 7), (3, 3), (10, 13), 32, False),
    ("3d", (2, 3, 3), (1, 1, 2), (3, 6, 4), 16, False),
    ("v2", (8, 8), (4, 4), (8, 13), 16, True),
]


def _table_case(case, dtype, B=2, heads=2):
    """Random inputs of a TABLE_CASES entry: qkv, dO, pad, head_scale (V2), the table and its
    standard index (flattened), and the table gathered to (heads, N, N) (the contract's bias_full)."""
    pos_bias = pytest.importorskip("swin_ext.layers.pos_bias")
    _, window, _, hw, d, _ = case
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    index = pos_bias.relative_position_index(list(window)).flatten()
    N, rows = math.prod(window), math.prod(2 * w - 1 for w in window)
    table = torch.randn(rows, heads, dtype=acc)
    full = table[index].view(N, N, heads).permute(2, 0, 1).contiguous()
    C = heads * d
    qkv = torch.randn(B, *hw, 3 * C).to(dtype)
    go = torch.randn(B, *hw, C).to(dtype)
    pad = torch.randn(3 * C).to(dtype)
    hs = (torch.rand(heads) * 20 + 1).to(acc)
    return qkv, go, pad, hs, table, index, full


def _attention_fwd_bwd(hops, case, qkv, go, pad, hs, bias):
    """(out, lse, dqkv, dbias, dpad[, dhead_scale]) of one case through the harness ops."""
    _, window, shift, _, d, v2 = case
    if v2:
        out, lse = hops.window_attention_v2_fwd(qkv, bias, pad, hs, window[0], shift[0], shift[1])
        return (out, lse) + tuple(hops.window_attention_v2_bwd(go, qkv, bias, pad, hs, lse, window[0], shift[0],
                                                               shift[1]))
    out, lse = hops.window_attention_fwd(qkv, bias, pad, list(window), list(shift), d**-0.5)
    return (out, lse) + tuple(hops.window_attention_bwd(go, qkv, bias, pad, lse, list(window), list(shift), d**-0.5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_kernel_attention_bias_table_gradient_is_deterministic(hops, monkeypatch, dtype, case):
    """dtable (binned in the tile backward, bf16; by the glue's kernel after the SIMT one, fp32) is
    bitwise the same whatever the thread order and block placement, several images per block."""
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "2")
    qkv, go, pad, hs, table, _, _ = _table_case(case, dtype, B=3)
    _same_in_every_thread_order(hops, lambda: _attention_fwd_bwd(hops, case, qkv, go, pad, hs, table), finite=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("ws,bwd", [(7, None), (12, None), (12, "pertile")], ids=["tile", "key-tiled", "pertile"])
def test_kernel_attention_bias_table_launches(hops, dtype, ws, bwd, monkeypatch):
    """Who handles the table: the bf16 backward kernels read it (the tile kernel, N <= 64; the
    key-tiled one from shared memory) and bin its gradient themselves -- no expansion, no binning
    launch; the bf16 streaming forward (N > 64) reads it from shared memory too, the one-tile forward
    (N <= 64) from the glue's expansion.  The key-tiled kernels' per-tile forms
    (SWIN_EXT_ATTN_BWD=pertile, the path of windows too large for their tables in shared memory) run
    on the glue's expansion (one per op call) and the backward still bins, as do both at head_dim 16
    (whose kernels keep no tables: 168 / 128 registers); SIMT fp32 expands in both directions and
    bins by one launch after the backward."""
    if bwd is not None:
        monkeypatch.setenv("SWIN_EXT_ATTN_BWD", bwd)
    heads = 2
    table = torch.randn((2 * ws - 1) ** 2, heads)

    def launches(d):
        qkv = torch.randn(1, ws, ws, 3 * heads * d).to(dtype)

        def step():
            out, lse = hops.window_attention_fwd(qkv, table, None, [ws, ws], [0, 0], 0.25)
            go = torch.randn_like(out)
            _, dtable, _ = hops.window_attention_bwd(go, qkv, table, None, lse, [ws, ws], [0, 0], 0.25)
            assert dtable.shape == table.shape and torch.isfinite(dtable).all()

        names = [n for n, *_ in _launches(hops, step)]
        count = lambda kernel: sum(kernel in n for n in names)  # noqa: E731
        return names, count("bias_table_expand_kernel"), count("bias_table_bin_kernel")

    names, expand, binned = launches(32)
    if dtype == torch.bfloat16:
        kernel = "attn_bwd_tile_kernel" if ws == 7 else "attn_bwd_window_kernel"
        want = 1 if ws == 7 else (2 if bwd == "pertile" else 0)  # the expansions of the forward and backward
        assert any(kernel in n for n in names) and (expand, binned) == (want, 0), names
        if ws == 12:  # head_dim 16: the per-tile forms, on the glue's expansion, whatever SWIN_EXT_ATTN_BWD says
            names, expand, binned = launches(16)
            assert any(kernel in n for n in names) and (expand, binned) == (2, 0), names
    else:
        assert (expand, binned) == (2, 1), names  # forward + backward expand, one binning launch


def test_kernel_attention_bias_table_empty_batch(hops):
    """An empty batch: the backward's dbias is still in the bias's form, the table's zeros."""
    table = torch.randn(13 * 13, 3)
    qkv = torch.randn(0, 7, 7, 3 * 96)
    out, lse = hops.window_attention_fwd(qkv, table, None, [7, 7], [0, 0], 0.2)
    _, dtable, dpad = hops.window_attention_bwd(torch.randn_like(out), qkv, table, None, lse, [7, 7], [0, 0], 0.2)
    assert dtable.shape == table.shape and not dtable.any() and dpad.shape == (3 * 96,)
    _, lse2 = hops.window_attention_v2_fwd(qkv, table, None, torch.ones(3), 7, 0, 0)
    grads = hops.window_attention_v2_bwd(torch.randn_like(out), qkv, table, None, torch.ones(3), lse2, 7, 0, 0)
    assert grads[1].shape == table.shape and grads[3].shape == (3,)


def test_kernel_add_layernorm_and_bias_gelu_are_deterministic(hops, monkeypatch):
    """Bitwise-identical outputs and dweight / dbias / dbias(gelu) whatever the thread order and block
    placement: the register path's group and warp reductions, several row groups per warp (2 blocks)."""
    monkeypatch.setenv("SWIN_EXT_ADD_LN_BLOCKS", "2")
    x, br = torch.randn(300, 96), torch.randn(300, 96).to(torch.bfloat16)
    w, b = torch.randn(96), torch.randn(96)
    gy, gh = torch.randn(300, 96).to(torch.bfloat16), torch.randn(300, 96)
    z, bias = torch.randn(300, 384).to(torch.bfloat16), torch.randn(384)
    dz = torch.randn(300, 384).to(torch.bfloat16)

    def run():
        h, y, mean, rstd = hops.add_layernorm_fwd(x, br, w, b, 1e-5, torch.bfloat16)
        return ((h, y, mean, rstd) + tuple(hops.add_layernorm_bwd(gh, gy, h, w, mean, rstd, torch.bfloat16))
                + (hops.bias_gelu_fwd(z, bias),) + tuple(hops.bias_gelu_bwd(dz, z, bias)))

    _same_in_every_thread_order(hops, run)


def test_kernel_window_attention_launch_errors_and_slow_paths(artefacts):
    """A failed cudaFuncSetAttribute is reported with its text and retried by the
    next launch (not remembered for the process); a launch that falls back to the
    element-by-element path warns once, naming the reason.  A process of its own:
    both are once-per-process behaviours."""
    code = textwrap.dedent(
        f"""
        import torch
        torch.ops.load_library({built('lib_asan' if ASAN_CHILD else 'lib')!r})
        ops = torch.ops.swin_ext_harness
        qkv = torch.randn(1, 7, 7, 3 * 32).bfloat16()
        bias = torch.randn(1, 49, 49)
        ops.inject_attribute_failures(1)
        try:
            ops.window_attention_fwd(qkv, bias, None, [7, 7], [3, 3], 0.2)
            raise SystemExit("no error")
        except RuntimeError as e:
            assert "shared-memory limit" in str(e) and "invalid argument" in str(e), str(e)
        out, lse = ops.window_attention_fwd(qkv, bias, None, [7, 7], [3, 3], 0.2)  # retried: works
        assert torch.isfinite(out).all()
        q20 = torch.randn(1, 7, 7, 3 * 20).bfloat16()
        for _ in range(2):
            ops.window_attention_fwd(q20, bias, None, [7, 7], [3, 3], 0.2)
        base = torch.randn(49 * 96 + 1).bfloat16()
        q_off = base[1:].view(1, 7, 7, 96)  # a view 2 bytes into its storage
        for _ in range(2):
            ops.window_attention_fwd(q_off, bias, None, [7, 7], [3, 3], 0.2)
        print("OK")
        """
    )
    env = hb.asan_env() if ASAN_CHILD else dict(os.environ)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
    # c10's warning (the log, as a custom op's TORCH_WARN reaches it): once per reason
    slow = [line for line in p.stderr.splitlines() if "slow path" in line]
    assert len(slow) == 2, p.stderr
    assert "head_dim 20 is not a multiple of 8 elements" in slow[0], slow
    assert "storage is not 16-byte aligned" in slow[1], slow


# ---------------------------------------------------------------------------
# Launch shapes: the harness records every launch (kernel, grid, block,
# dynamic shared memory).


def _launches(hops, fn):
    hops.start_launch_log()
    try:
        fn()
    finally:
        log = hops.stop_launch_log()
    out = []
    for line in log.splitlines():
        name, grid, block, smem = line.split(";")
        g = [int(v) for v in grid.split(",")]
        out.append((name, g[0] * g[1] * g[2], [int(v) for v in block.split(",")], int(smem)))
    return out


def _attention_step(hops, B, H, W, ws, heads, d, dtype, pad=True):
    C = heads * d
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    qkv = torch.randn(B, H, W, 3 * C).to(dtype)
    bias = torch.randn(heads, ws * ws, ws * ws).to(acc)
    p = torch.randn(3 * C).to(dtype) if pad else None
    shift = ws // 2 if min(H, W) > ws else 0
    out, lse = hops.window_attention_fwd(qkv, bias, p, [ws, ws], [shift, shift], d**-0.5)
    hops.window_attention_bwd(torch.randn_like(out), qkv, bias, p, lse, [ws, ws], [shift, shift], d**-0.5)


def _merging_step(hops, B, H, W, C, dtype):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(B, H, W, C).to(dtype)
    w, b = torch.randn(4 * C).to(acc), torch.randn(4 * C).to(acc)
    y, mean, rstd = hops.patch_merging_fwd(x, w, b, 1e-5)
    hops.patch_merging_bwd(torch.randn_like(y), x, w, mean, rstd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path,ws", [("auto", 7), ("streaming", 7), ("auto", 12)])
def test_kernel_grids_grow_with_the_batch(hops, monkeypatch, dtype, path, ws):
    """Every kernel's grid grows with the batch (none loops over the images of a batch), but the
    reduction of the merging backward's partial rows, whose grid is its gradients' columns.

    The merging map is 39 x 39 (400 output pixels an image): the register backward
    gives each block a fixed range of 512 output pixels at C = 8 (8 groups of 64:
    under one wave of blocks its plan takes the fewest groups, merge_bwd_iters), so
    its grid grows by whole ranges -- 1 block at B = 1, 3 at B = 3 here."""
    if path == "streaming":
        monkeypatch.setenv("SWIN_EXT_ATTN_BWD", "streaming")
    H = W = 2 * ws + 1  # padded, shifted
    runs = {}
    for B in (1, 3):
        runs[B] = _launches(
            hops, lambda: (_attention_step(hops, B, H, W, ws, 2, 16, dtype), _merging_step(hops, B, 39, 39, 8, dtype))
        )
    names1 = [r[0] for r in runs[1]]
    assert names1 == [r[0] for r in runs[3]], (runs[1], runs[3])
    if dtype == torch.bfloat16:  # the mma.sync tile kernel (N <= 64), else the key-tiled one
        want = "attn_bwd_tile_kernel" if (path, ws) == ("auto", 7) else "attn_bwd_window_kernel"
    else:
        want = "attn_bwd_fused_kernel" if (path, ws) == ("auto", 7) else "attn_bwd_dq_kernel"
    assert any(want in n for n in names1), names1
    for (name, g1, _, _), (_, g3, _, _) in zip(runs[1], runs[3]):
        if "sum_partials_kernel" in name:  # the partial rows' reduction: a block per 32 gradient columns
            continue
        assert g3 > g1, f"{name}: {g1} blocks at B=1, {g3} at B=3"


def _add_ln_launches(hops, rows, C, dtype, branch=None, offset=0):
    branch = branch or dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def at(t):
        buf = torch.empty(t.numel() + offset, dtype=t.dtype)
        v = buf[offset:].view(t.shape)
        v.copy_(t)
        return v

    x, b = at(torch.randn(rows, C).to(dtype)), at(torch.randn(rows, C).to(branch))
    w, bb = torch.randn(C).to(acc), torch.randn(C).to(acc)
    gy = at(torch.randn(rows, C).to(dtype))

    def step():
        h, y, mean, rstd = hops.add_layernorm_fwd(x, b, w, bb, 1e-5, None)
        hops.add_layernorm_bwd(None, gy, h, w, mean, rstd, branch if branch != dtype else None)

    # the row kernels (not the reduction of the backward's partial rows)
    return [r for r in _launches(hops, step) if "sum_partials_kernel" not in r[0]]


@pytest.mark.parametrize("dtype,branch", [(torch.bfloat16, None), (torch.float32, torch.bfloat16)], ids=str)
def test_kernel_add_layernorm_paths(hops, dtype, branch):
    """Rows in registers (2^k lanes per row, several rows per warp below C = 768 at 16-bit
    vectors) up to C = 1536, the larger capacity above 768; the wide kernels above 1536
    and for rows that are not 16-byte aligned; the partial rows grow with the rows."""
    hops.clear_options()

    def names(launches):
        return [n for n, _, _, _ in launches]

    small = _add_ln_launches(hops, 64, 96, dtype, branch)
    assert all("_reg_kernel" in n and "false>()" in n for n in names(small)), small
    big = _add_ln_launches(hops, 256, 96, dtype, branch)
    assert [g for _, g, _, _ in big] > [g for _, g, _, _ in small], (small, big)  # more blocks for more rows
    large = _add_ln_launches(hops, 4, 1536, dtype, branch)
    assert all("_reg_kernel" in n and "true>()" in n for n in names(large)), large
    wide = _add_ln_launches(hops, 4, 1600, dtype, branch)
    assert all("_reg_kernel" not in n and n.endswith("kVec>") for n in names(wide)), wide
    unaligned = _add_ln_launches(hops, 4, 96, dtype, branch, offset=1)
    assert all("_reg_kernel" not in n and n.endswith(", 1>") for n in names(unaligned)), unaligned


def test_kernel_bias_gelu_block_shape(hops):
    """bias + GELU at Swin-T's K = 384 (bf16): 48 16-byte vectors x 4 rows = 192 threads, no idle
    lane; few rows: 16-row blocks (19 of them for 300 rows) rather than 3 of 128."""
    hops.clear_options()
    z, bias = torch.randn(300, 384).to(torch.bfloat16), torch.randn(384)

    def step():
        hops.bias_gelu_fwd(z, bias)
        hops.bias_gelu_bwd(torch.randn_like(z), z, bias)

    runs = _launches(hops, step)
    assert len(runs) == 2 and all(block == [192, 1, 1] and grid == 19 for _, grid, block, _ in runs), runs


@sm90_grids
@pytest.mark.parametrize("B,chunk", [(12, 2), (40, 4)])
def test_kernel_attention_forward_images_per_block_by_waves(hops, monkeypatch, B, chunk):
    """The one-tile forward takes, from the target's images per block (B x windows x heads / 1024) up to 16,
    the largest with the fewest (waves of 4 x 132 resident blocks) x (images per block):
    Swin-T's stage 3 shape (4 windows of 7 x 7, 12 heads) at batch 12 runs as one wave of 288 blocks of 2
    images, not two of 576 blocks of 1; at batch 40, one of 480 blocks of 4, not four of 1,920.  Images are
    independent: the output and lse are bitwise those of one image per block (SWIN_EXT_ATTN_CHUNK=1)."""
    hops.clear_options()
    gen = torch.Generator().manual_seed(7)
    heads, d, ws = 12, 32, 7
    qkv = torch.randn(B, 14, 14, 3 * heads * d, generator=gen).to(torch.bfloat16)
    bias = torch.randn(heads, ws * ws, ws * ws, generator=gen)
    got = {}

    def fwd():
        got["out"] = hops.window_attention_fwd(qkv, bias, None, [ws, ws], [3, 3], d ** -0.5)

    runs = _launches(hops, fwd)
    assert [(n.split("<")[0].split("::")[-1], g) for n, g, _, _ in runs] == \
        [("attn_fwd_tile_kernel", -(-B // chunk) * 4 * heads)], runs
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "1")
    one = hops.window_attention_fwd(qkv, bias, None, [ws, ws], [3, 3], d ** -0.5)
    for g, r in zip(got["out"], one):
        assert torch.equal(g, r)


@pytest.mark.parametrize("B,chunk", [(20, 3), (32, 4)])
def test_kernel_attention_backward_images_per_block_by_waves(hops, monkeypatch, B, chunk):
    """The tile backward takes, from the target's images per block (B x windows x heads / 768) up to 16,
    the largest with the fewest (waves of 396 blocks: 132 SMs x 3, a constant, so that the bias gradient's
    bits do not depend on the GPU) x (images per block): Swin-T's stage 3 shape (4 windows of 7 x 7,
    12 heads) at batch 20 runs as 336 blocks of 3 images, not 960 of 1; at batch 32 as 384 of 4, not 768
    of 2.  Not an sm_90 grid: the same on every device (also under SWIN_HARNESS_ARCH=86).  Only the bias
    gradient's order of summation follows the chunk: dqkv is bitwise that of SWIN_EXT_ATTN_CHUNK=1, the
    table's gradient its partials summed in another order."""
    hops.clear_options()
    gen = torch.Generator().manual_seed(11)
    heads, d, ws = 12, 32, 7
    qkv = torch.randn(B, 14, 14, 3 * heads * d, generator=gen).to(torch.bfloat16)
    table = torch.randn(13 * 13, heads, generator=gen)
    go = torch.randn(B, 14, 14, heads * d, generator=gen).to(torch.bfloat16)
    _, lse = hops.window_attention_fwd(qkv, table, None, [ws, ws], [3, 3], d ** -0.5)
    got = {}

    def bwd():
        got["grads"] = hops.window_attention_bwd(go, qkv, table, None, lse, [ws, ws], [3, 3], d ** -0.5)

    runs = [(n.split("<")[0].split("::")[-1], g) for n, g, _, _ in _launches(hops, bwd)]
    assert ("attn_bwd_tile_kernel", -(-B // chunk) * 4 * heads) in runs, runs
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "1")
    one = hops.window_attention_bwd(go, qkv, table, None, lse, [ws, ws], [3, 3], d ** -0.5)
    assert torch.equal(got["grads"][0], one[0])
    assert got["grads"][1].shape == one[1].shape == table.shape
    torch.testing.assert_close(got["grads"][1], one[1], rtol=1e-5, atol=1e-4)
    assert not torch.equal(got["grads"][1], torch.zeros_like(one[1]))


@pytest.mark.parametrize("ws,d", [(7, 32), (8, 16), (4, 16)])
def test_kernel_table_gradient_of_one_block_is_the_scatter_add(hops, monkeypatch, ws, d):
    """With one block per head (one window, the batch in one chunk) the tile backward's table gradient is
    that block's dS sums binned once: bitwise the gathered form's gradient scatter-added into the table's
    rows, the order bias_bin_sum documents -- which the narrow binning (windows at most 8 wide, a row's
    pairs unrolled under predicates) keeps."""
    from swin_ext.layers.pos_bias import relative_position_index

    hops.clear_options()
    monkeypatch.setenv("SWIN_EXT_ATTN_CHUNK", "3")
    gen = torch.Generator().manual_seed(ws)
    B, heads, N = 3, 2, ws * ws
    qkv = torch.randn(B, ws, ws, 3 * heads * d, generator=gen).to(torch.bfloat16)
    table = torch.randn((2 * ws - 1) ** 2, heads, generator=gen)
    index = relative_position_index((ws, ws)).view(-1)
    full = table[index].view(N, N, heads).permute(2, 0, 1).contiguous()
    go = torch.randn(B, ws, ws, heads * d, generator=gen).to(torch.bfloat16)
    args = ([ws, ws], [0, 0], d ** -0.5)
    _, lse = hops.window_attention_fwd(qkv, table, None, *args)
    got = hops.window_attention_bwd(go, qkv, table, None, lse, *args)[1]
    dfull = hops.window_attention_bwd(go, qkv, full, None, lse, *args)[1].reshape(heads, -1)
    want = dfull.new_zeros(heads, table.shape[0]).scatter_add_(1, index.expand(heads, -1), dfull).t()
    assert got.abs().max() > 0
    assert torch.equal(got, want)


@pytest.mark.parametrize("scale,folded,dtype", [
    (0.25, True, torch.bfloat16), (3.0, True, torch.bfloat16), (2.0 ** -32, True, torch.bfloat16),
    (0.25, True, torch.float16), (3.0, True, torch.float16), (0.0, False, torch.bfloat16),
    (-0.3, False, torch.bfloat16), (1e-12, False, torch.bfloat16), (2.0 ** 33, False, torch.bfloat16),
    (1e-40, False, torch.bfloat16)])
def test_kernel_attention_scale_folded_into_the_tile(hops, scale, folded, dtype):
    """The one-tile forward and the tile backward hold (bias + mask) / scale as the initial accumulators of
    S = q.k and form the logits as S * scale * log2(e); the bf16 backward also forms dS times scale and
    unscales the bias gradient's sums (kScaledDS; not fp16, for its exponent range).  Only for
    2^-32 <= scale <= 2^32 (tile_folds_bias): any other scale runs the streaming forward and the key-tiled
    backward.  Either way out, lse and the gradients (q, k, v, the bias, the pad vector) are the CPU
    kernel's (shifted window 7 on a padded map)."""
    hops.clear_options()
    gen = torch.Generator().manual_seed(3)
    heads, d, ws = 2, 32, 7
    qkv = torch.randn(2, 10, 13, 3 * heads * d, generator=gen).to(dtype)
    bias = torch.randn(heads, ws * ws, ws * ws, generator=gen)
    pad = torch.randn(3 * heads * d, generator=gen).to(dtype)
    go = torch.randn(2, 10, 13, heads * d, generator=gen).to(dtype)
    args = (qkv, bias, pad, [ws, ws], [3, 3], scale)
    got = {}

    def step():
        got["out"] = hops.window_attention_fwd(*args)
        got["grads"] = hops.window_attention_bwd(go, qkv, bias, pad, got["out"][1], *args[3:])

    runs = [n.split("<")[0].split("::")[-1] for n, _, _, _ in _launches(hops, step)]
    kernels = ["attn_fwd_tile_kernel", "attn_bwd_tile_kernel"] if folded else \
        ["attn_fwd_stream_kernel", "attn_bwd_window_kernel"]
    assert [r for r in runs if r.startswith("attn_")] == kernels, runs
    want = torch.ops.swin_ext.window_attention_fwd(*args)
    torch.testing.assert_close(got["out"][0].float(), want[0].float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got["out"][1], want[1], rtol=1e-4, atol=1e-4)
    want_g = torch.ops.swin_ext.window_attention_bwd(go, qkv, bias, pad, want[1], *args[3:])
    for g, w in zip(got["grads"], want_g):
        tol = 3e-2 * max(w.abs().max().item(), 1e-6)
        torch.testing.assert_close(g.float(), w.float(), rtol=3e-2, atol=tol)


@sm90_grids
def test_kernel_add_layernorm_backward_groups_per_warp_by_waves(hops, monkeypatch):
    """The register backward's warps walk their row groups one after another, so its plan takes the
    fewest (waves of 2 x 132 resident blocks of 8 warps) x (groups per warp), from the target's down
    to half: Swin-T's stage 4 at batch 128 (6,272 rows of 768, one row a warp-iteration) runs as 262
    blocks of 3 groups, one wave, not 196 of 4; the forward (4 warps a block) keeps 392 of 4.
    SWIN_EXT_ADD_LN_BLOCKS (a fixed target) turns the choice off.  The gradients are the CPU
    kernel's."""
    hops.clear_options()
    gen = torch.Generator().manual_seed(5)
    rows, C = 6272, 768
    x, br = torch.randn(rows, C, generator=gen), torch.randn(rows, C, generator=gen).to(torch.bfloat16)
    w, b = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
    gy = torch.randn(rows, C, generator=gen).to(torch.bfloat16)
    got = {}

    def step():
        h, _, mean, rstd = hops.add_layernorm_fwd(x, br, w, b, 1e-5, torch.bfloat16)
        got["bwd"] = hops.add_layernorm_bwd(None, gy, h, w, mean, rstd, torch.bfloat16)

    def grids():
        return {n.split("<")[0].split("::")[-1]: g for n, g, _, _ in _launches(hops, step)}

    # (and the partial rows' reduction: 2 x 768 columns, 32 a block)
    assert grids() == {"add_ln_fwd_reg_kernel": 392, "add_ln_bwd_reg_kernel": 262, "sum_partials_kernel": 48}
    h, _, mean, rstd = torch.ops.swin_ext.add_layernorm_fwd(x, br, w, b, 1e-5, torch.bfloat16)
    want = torch.ops.swin_ext.add_layernorm_bwd(None, gy, h, w, mean, rstd, torch.bfloat16)
    for g, r in zip(got["bwd"], want):  # dh, dw, db in float32; dbranch in bfloat16 (one ulp: 2^-7 relative)
        tol = 1e-2 if g.dtype == torch.bfloat16 else 1e-3
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol)
    monkeypatch.setenv("SWIN_EXT_ADD_LN_BLOCKS", "512")
    assert grids()["add_ln_bwd_reg_kernel"] == 196


@sm90_grids
@pytest.mark.parametrize("B,H,blocks", [(32, 28, 523), (6, 20, 75)])
def test_kernel_merging_backward_groups_per_block_by_waves(hops, B, H, blocks):
    """The register backward of patch merging walks its pixel groups one after another, so its plan
    takes the fewest (waves of 4 x 132 resident blocks) x (groups per block), from 16 down to 8:
    6,272 pixels of 4C = 1,056 (one pixel per group, Swin-T's third merging in miniature) run as
    523 blocks of 12, one wave, not 392 of 16; 600 pixels, under a wave either way, as 75 of 8.
    The gradients are the CPU kernel's."""
    hops.clear_options()
    gen = torch.Generator().manual_seed(3)
    C = 264
    x = torch.randn(B, H, H, C, generator=gen)
    w, b = torch.randn(4 * C, generator=gen), torch.randn(4 * C, generator=gen)
    got = {}

    def step():
        y, mean, rstd = hops.patch_merging_fwd(x, w, b, 1e-5)
        got["gy"] = torch.randn(y.shape, generator=gen)
        got["bwd"] = hops.patch_merging_bwd(got["gy"], x, w, mean, rstd)

    runs = _launches(hops, step)
    grids = {name.split("<")[0].split("::")[-1]: grid for name, grid, _, _ in runs}
    assert grids["merge_bwd_reg_kernel"] == blocks, runs
    _, mean, rstd = torch.ops.swin_ext.patch_merging_fwd(x, w, b, 1e-5)
    want = torch.ops.swin_ext.patch_merging_bwd(got["gy"], x, w, mean, rstd)
    for g, r in zip(got["bwd"], want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_kernel_backward_partials_in_one_launch(hops, dtype):
    """The add+LN and merging backwards sum their dweight and dbias partial rows in one launch of the
    fixed-order reduction (``partials.cuh``), not an ATen ``sum`` each: two launches a call, and the
    sums are the CPU kernel's.  The attention backward sums the binned table gradient straight into
    the table's (rows, heads) layout (no transposing copy) and its padding vector's gradient into
    its k / v part (no ``cat``)."""
    from op_testing import ops_dispatched

    hops.clear_options()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 96, generator=gen).to(dtype)
    br = torch.randn(300, 96, generator=gen).to(torch.bfloat16)
    w, b = torch.randn(96, generator=gen), torch.randn(96, generator=gen)
    gy = torch.randn(300, 96, generator=gen).to(dtype)
    h, _, mean, rstd = hops.add_layernorm_fwd(x, br, w, b, 1e-5, None)
    got = {}

    def ln_bwd():
        got["ln"] = hops.add_layernorm_bwd(None, gy, h, w, mean, rstd, torch.bfloat16)

    runs = _launches(hops, ln_bwd)
    assert len(runs) == 2 and "add_ln_bwd" in runs[0][0] and "sum_partials_kernel" in runs[1][0], runs
    assert "aten::sum" not in ops_dispatched(ln_bwd, "aten::")
    want = torch.ops.swin_ext.add_layernorm_bwd(None, gy, h, w, mean, rstd, torch.bfloat16)
    for g, r in zip(got["ln"][2:], want[2:]):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)

    xm = torch.randn(2, 8, 8, 24, generator=gen).to(dtype)
    wm, bm = torch.randn(96, generator=gen), torch.randn(96, generator=gen)
    y, mean, rstd = hops.patch_merging_fwd(xm, wm, bm, 1e-5)
    gm = torch.randn(y.shape, generator=gen).to(y.dtype)

    def merge_bwd():
        got["merge"] = hops.patch_merging_bwd(gm, xm, wm, mean, rstd)

    runs = _launches(hops, merge_bwd)
    assert len(runs) == 2 and "merge_bwd" in runs[0][0] and "sum_partials_kernel" in runs[1][0], runs
    assert "aten::sum" not in ops_dispatched(merge_bwd, "aten::")
    want = torch.ops.swin_ext.patch_merging_bwd(gm, xm, wm, mean, rstd)
    for g, r in zip(got["merge"][2:], want[2:]):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)

    heads, d, ws = 2, 32, 7
    acc = torch.float32
    table = torch.randn((2 * ws - 1) ** 2, heads, generator=gen).to(acc)
    for pad in (None, torch.randn(3 * heads * d, generator=gen).to(dtype)):
        H = 14 if pad is None else 12  # 12: padded to 14
        qkv = torch.randn(2, H, H, 3 * heads * d, generator=gen).to(dtype)
        out, lse = hops.window_attention_fwd(qkv, table, pad, [ws, ws], [3, 3], d**-0.5)
        go = torch.randn(out.shape, generator=gen).to(dtype)

        def attn_bwd():
            got["attn"] = hops.window_attention_bwd(go, qkv, table, pad, lse, [ws, ws], [3, 3], d**-0.5)

        ops = ops_dispatched(attn_bwd, "aten::")
        assert not {"aten::clone", "aten::copy_", "aten::cat"} & set(ops), ops
        _, lse_ref = torch.ops.swin_ext.window_attention_fwd(qkv, table, pad, [ws, ws], [3, 3], d**-0.5)
        want = torch.ops.swin_ext.window_attention_bwd(go, qkv, table, pad, lse_ref, [ws, ws], [3, 3], d**-0.5)
        tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
        for g, r in zip(got["attn"][1:], want[1:]):
            assert g.shape == r.shape
            torch.testing.assert_close(g, r, **tol)


@sm90_grids
def test_kernel_bias_gelu_backward_avoids_a_short_last_wave(hops):
    """The backward's plan halves its 128-row blocks while the grid is one to four waves of the
    device's resident blocks (5 per SM, 132 SMs on the emulated sm_90: 660) and its last wave is
    less than half full: 89,600 rows (700 blocks of 128, 40 in the last wave) run as 2,800 blocks
    of 32.  The forward, one row pass per element with no partials, keeps 700.  The result is the
    float64 reference's, and the bias gradient is the sum of the smaller chunks' partials."""
    hops.clear_options()
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(89600, 8, generator=gen).to(torch.bfloat16)
    bias, gy = torch.randn(8, generator=gen), torch.randn(89600, 8, generator=gen).to(torch.bfloat16)
    got = {}

    def step():
        got["y"] = hops.bias_gelu_fwd(z, bias)
        got["dz"], got["db"] = hops.bias_gelu_bwd(gy, z, bias)

    runs = _launches(hops, step)
    grids = {name.split("<")[0].split("::")[-1]: grid for name, grid, _, _ in runs}
    assert grids == {"bias_gelu_fwd_kernel": 700, "bias_gelu_bwd_kernel": 2800}, runs
    u = z.double() + bias.double()
    gelu = 0.5 * u * (1 + torch.erf(u / 2**0.5))
    dgelu = 0.5 * (1 + torch.erf(u / 2**0.5)) + u * torch.exp(-0.5 * u * u) / (2 * torch.pi) ** 0.5
    dz = gy.double() * dgelu
    torch.testing.assert_close(got["y"].double(), gelu, rtol=8e-3, atol=1e-5)
    torch.testing.assert_close(got["dz"].double(), dz, rtol=8e-3, atol=1e-5)
    torch.testing.assert_close(got["db"].double(), dz.sum(0), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(
    os.environ.get("SWIN_HARNESS_ARCH") != "86", reason="runs in test_sm86_kernel_suite's child (SWIN_HARNESS_ARCH=86)"
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_kernel_shared_memory_fits_sm86(hops, dtype):
    """Windows up to 16 and head_dim up to 128 launch within the 99 KB of sm_86 / sm_89.

    Shared memory does not grow with the window (tiles stream over keys and
    rows); it is largest at the most warps per block, which N >= 64 reaches,
    so windows 4, 8 and 9 (the fused path and the streaming one) cover every
    window.  fp16 has bf16's layouts.  (A process of its own: a kernel's
    shared-memory attribute is set once per device, as on a GPU, whose limits
    do not change while it runs.)
    """
    hops.clear_options()
    seen = set()
    for ws in (4, 8, 9):
        for d in (16, 24, 32, 64, 100, 128):
            for name, _, block, smem in _launches(hops, lambda: _attention_step(hops, 1, ws, ws, ws, 1, d, dtype)):
                assert smem <= 101376, f"{name} (window {ws}, head_dim {d}) asks {smem} bytes"
                seen.add(name.split("<")[0].split("::")[-1])
    for name, _, block, smem in _launches(hops, lambda: _merging_step(hops, 2, 6, 6, 768, dtype)):
        assert smem <= 101376, (name, smem)
    if dtype == torch.bfloat16:
        want = {"attn_fwd_tile_kernel", "attn_fwd_stream_kernel", "attn_bwd_tile_kernel", "attn_bwd_window_kernel"}
    else:
        want = {"attn_fwd_kernel", "attn_bwd_fused_kernel", "attn_bwd_dq_kernel", "attn_bwd_dkv_kernel"}
    assert want <= seen, seen

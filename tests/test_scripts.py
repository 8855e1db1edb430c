"""The user-facing scripts: the gradient-check script covers every op, the benchmarks refuse bad arguments."""
import os
import sys

import pytest
import torch

import swin_ext

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark(name):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_gradcheck_script_covers_every_op(capsys):
    """benchmarks/gradcheck.py reads the op table's GRADCHECK rows, so it checks every op (the test
    suite runs the same rows); here one op end to end, its table and exit status."""
    gradcheck = _benchmark("gradcheck")
    assert set(gradcheck.GRADCHECK) == set(swin_ext.ops.OPS)
    assert gradcheck.main(["--devices", "cpu", "--ops", "bias_gelu"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| bias_gelu |")]
    assert len(rows) == len(gradcheck.GRADCHECK["bias_gelu"]) and all("| PASS |" in r for r in rows), out


@pytest.mark.parametrize("extra,text", [(["--stages", "5"], "invalid choice: 5"), (["--repeats", "0"], "must be >= 1"),
                                        (["--batch", "0"], "must be >= 1")])
def test_bench_ops_refuses_bad_argument(extra, text, capsys):
    bench_ops = _benchmark("bench_ops")
    with pytest.raises(SystemExit) as e:  # was: IndexError / ZeroDivisionError / --batch 0 silently became 8
        bench_ops.main(["--device", "cpu"] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {extra[0]}" in err and text in err


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("shift", [0, 2])
def test_bench_ops_sdpa_baseline_is_the_reference(v2, shift):
    """The op table's `sdpa` column computes the op's function (padded map, shifted and not): a
    baseline that broke (its V2 rows once raised TypeError and were silently dropped) fails here."""
    bench_ops = _benchmark("bench_ops")
    from swin_ext.ops import reference

    g = torch.Generator().manual_seed(11 + shift + 2 * v2)
    qkv = torch.randn(2, 10, 10, 3 * 16, generator=g, dtype=torch.float64)
    bias = torch.randn(2, 16, 16, generator=g, dtype=torch.float64)
    if v2:
        hs = torch.rand(2, generator=g, dtype=torch.float64) * 9 + 1
        got = bench_ops.sdpa_window_attention(qkv, bias, 4, shift, head_scale=hs)
        want = reference.window_attention_v2_reference(qkv, bias, hs, 4, shift)
    else:
        got = bench_ops.sdpa_window_attention(qkv, bias, 4, shift)
        want = reference.window_attention_reference(qkv, bias, 4, shift)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_bench_ops_sdpa_alone_computes_the_fused_function(capsys):
    """With only the SDPA baseline (gpu_check's A/B steps 4b and 4c), the fused op takes timm's bias as
    before: the table's rows are one function, so no 'differs from fused' warning (it once printed
    0.74 relative: the fused op ran on a random bias, the baseline on timm's)."""
    bench_ops = _benchmark("bench_ops")
    bench_ops.attention_cases("swin_t", 3, 1, torch.device("cpu"), torch.float32, False, ["sdpa"])
    bench_ops.attention_cases("swin_t", 3, 1, torch.device("cpu"), torch.float32, False, ["sdpa", "composite"])
    assert "differs from fused" not in capsys.readouterr().out


def test_host_overhead_script_times_every_path(capsys):
    """benchmarks/host_overhead.py (a gpu_check step): one row per op, every path timed."""
    host_overhead = _benchmark("host_overhead")
    assert host_overhead.main(["--calls", "2", "--step"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "---" not in ln]
    ops = [r for r in rows if r.split("|")[1].strip() in ("add+LN", "bias+GELU", "attention")]
    assert [r.split("|")[1].strip() for r in ops] == ["add+LN", "bias+GELU", "attention"]
    for r in ops:
        assert all(float(c) > 0 for c in r.strip("| ").split("|")[1:]), r
    # --step: the model's train step (eager) and inference forward, swin_ext and timm (no --compile: "-")
    steps = {r.split("|")[1].strip(): [c.strip() for c in r.strip("| ").split("|")[1:]] for r in rows
             if r.split("|")[1].strip() in ("swin_ext", "timm")}
    assert set(steps) == {"swin_ext", "timm"}, rows
    for cells in steps.values():
        assert cells[1] == "-" and float(cells[0]) > 0 and float(cells[2]) > 0, cells


def test_host_overhead_no_onednn_takes_f_linear(monkeypatch, capsys):
    """host_overhead.py --no-onednn times the host path of a CUDA step: swin_ext's Linears on F.linear, so
    both CPU-only GEMM custom ops (oneDNN's and swin_ext's own) are off, whatever the CPU's default."""
    from swin_ext.layers import config

    monkeypatch.setattr(config, "_ONEDNN_ENABLED", True)
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", True)
    host_overhead = _benchmark("host_overhead")
    assert host_overhead.main(["--calls", "2", "--no-onednn"]) == 0
    capsys.readouterr()
    assert not config.use_onednn() and not config.use_cpu_gemm()


def test_smoke_checks_every_op_and_fails_a_wrong_one(monkeypatch):
    """bench_ops --smoke (gpu_check's step 2): every op, the key-tiled attention (window 12 with its
    table, V2 window 16) among them, passes against the float64 reference; an attention that computes
    something else fails its rows and only those."""
    bench_ops = _benchmark("bench_ops")
    rows: list = []
    assert bench_ops.smoke(torch.device("cpu"), rows.append)
    names = [r.split("|")[1].strip() for r in rows[2:]]
    assert {"window_attention", "window_attention w12 table", "window_attention_v2 w16", "patch_merging",
            "add_layernorm", "bias_gelu"} <= set(names), names
    assert all("| pass (" in r for r in rows[2:]), rows
    real = swin_ext.window_attention
    monkeypatch.setattr(swin_ext, "window_attention", lambda q, b, *a: real(q, b * 1.5, *a))
    rows = []
    assert not bench_ops.smoke(torch.device("cpu"), rows.append)
    failed = {r.split("|")[1].strip() for r in rows[2:] if "| FAIL (" in r}
    assert failed == {"window_attention", "window_attention w12 table"}, rows


def test_measure_times_inner_calls_back_to_back():
    """_timing.measure with inner=k: every sample runs k calls and reports the time per call."""
    timing = _benchmark("_timing")
    calls = []
    r = timing.measure(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=4, inner=3)
    assert len(calls) == 2 + 4 * 3 and r["n"] == 4 and r["median"] > 0


def test_bench_model_profiles_only_after_every_wall_time(monkeypatch):
    """bench_model measures GPU busy time in a pass after all the wall times (a profiler session
    before a wall time would slow it), stops that pass at the deadline, and the benchmark
    processes tear CUPTI down after each session."""
    bench_model = _benchmark("bench_model")
    assert os.environ.get("TEARDOWN_CUPTI") == "1"
    profiled = []

    def fake_busy(fn, device, calls=3, label=""):
        fn()
        profiled.append(label)
        return 0.25

    monkeypatch.setattr(bench_model, "gpu_busy_time", fake_busy)
    ran = []
    entries = [{"gpu_s": None} for _ in range(3)]
    pending = [(e, f"m{i}", lambda i=i: ran.append(i)) for i, e in enumerate(entries)]
    assert bench_model.profile_pending(pending, torch.device("cpu")) == 3
    assert profiled == ["m0", "m1", "m2"] and ran == [0, 1, 2] and pending == []
    assert [e["gpu_s"] for e in entries] == [0.25] * 3

    late = [({"gpu_s": None}, "m", lambda: ran.append("late"))]
    assert bench_model.profile_pending(late, torch.device("cpu"), deadline=0.0) == 0
    assert ran[-1] != "late" and late == []


def test_host_issue_time_is_for_cuda_only():
    """The host-issue column exists only where host and device run apart (CUDA); on a CPU it is None,
    not a number that would read as a host time."""
    timing = _benchmark("_timing")
    calls = []
    assert timing.host_issue_time(lambda: calls.append(1), torch.device("cpu")) is None and not calls


def test_cpu_breakdown_sorts_each_op_into_its_category():
    """benchmarks/cpu_breakdown.py: a Linear GEMM, a swin_ext op, the optimizer's ops and the rest each
    land in their own category, and the categories add up to the profiled total."""
    cpu_breakdown = _benchmark("cpu_breakdown")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    x, z, b = torch.randn(256, 64), torch.randn(256, 64), torch.randn(64)

    def step():
        y = swin_ext.bias_gelu(lin(x), b)  # addmm, then the swin_ext op
        (y.exp() * z).sum().backward()  # the rest: exp, mul, sum and their backwards; mm for the GEMM's
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    r = cpu_breakdown.breakdown(step, iters=2)
    assert all(r[c] > 0 for c in cpu_breakdown.CATEGORIES), r
    assert abs(sum(r[c] for c in cpu_breakdown.CATEGORIES) - r["profiled total"]) < 1e-6 * r["profiled total"] + 1e-9
    without_opt = cpu_breakdown.breakdown(lambda: lin(x).sum().backward(), iters=2)
    assert without_opt["optimizer"] == 0 and without_opt["swin_ext kernels"] == 0 and without_opt["linear GEMMs"] > 0


def test_cpu_breakdown_counts_swin_ext_gemms_as_gemms(monkeypatch):
    """swin_ext's own CPU GEMM (and its autograd node, where the profiler puts the forward's time) is a
    linear GEMM for cpu_breakdown.py, not a swin_ext kernel."""
    from swin_ext.layers import config
    from swin_ext.layers.fast_linear import linear

    if not config._CPU_GEMM_KERNEL:
        pytest.skip("this build has no swin_ext CPU GEMM")
    monkeypatch.setattr(config, "_CPU_GEMM_ENABLED", True)
    monkeypatch.setattr(config, "_ONEDNN_ENABLED", False)
    cpu_breakdown = _benchmark("cpu_breakdown")
    x = torch.randn(512, 64, requires_grad=True)
    w = torch.randn(128, 64, requires_grad=True)
    r = cpu_breakdown.breakdown(lambda: linear(x, w).sum().backward(), iters=2)
    assert r["linear GEMMs"] > 0 and r["swin_ext kernels"] == 0, r


def test_bench_cpu_gemm_shapes_are_swin_t_linears():
    """benchmarks/bench_cpu_gemm.py times every Linear of Swin-T but the classifier, each as often as
    the model runs it."""
    from collections import Counter

    bench = _benchmark("bench_cpu_gemm")
    model = swin_ext.swin_t()
    want = Counter((m.in_features, m.out_features) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not n.startswith("head"))
    got = Counter()
    for _, tokens, k, n, count in bench.shapes(1):
        got[(k, n)] += count
        assert tokens in (3136, 784, 196, 49)
    assert got == want

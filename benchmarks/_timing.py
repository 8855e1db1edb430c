"""Shared timing helper for the benchmark scripts: warm-up, then the median of repeats."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, Optional

import torch

# Kineto leaves CUPTI attached after a profiler session unless TEARDOWN_CUPTI=1
# (pytorch/pytorch#144455), and an attached CUPTI keeps its callbacks on every
# later CUDA API call of the process: a wall time taken after a
# gpu_busy_time() would carry profiler overhead, milliseconds per step on a
# host-bound model.  Kineto reads the variable when a session ends, so setting
# it here covers every session of a benchmark process.  (torch itself turns
# teardown off only around CUDA graphs, which no benchmark here captures.)
os.environ.setdefault("TEARDOWN_CUPTI", "1")


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10,
            min_time_s: float = 0.0, inner: int = 1) -> Dict[str, float]:
    """Median / p20 / p80 seconds of ``fn()``; CUDA events on GPU, perf_counter on CPU.

    Each sample times ``inner`` calls back to back and divides: with ``inner > 1`` on a GPU the
    host queues the next call while the device runs the last, so a sample is the steady-state
    cost per call (the larger of the host's and the device's), as in a model; ``inner=1`` starts
    every call from an idle device, which adds the host's time before the first launch."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time_s:
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(inner):
                fn()
            e.record()
            torch.cuda.synchronize(device)
            times.append(s.elapsed_time(e) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median": statistics.median(times), "p20": q(0.2), "p80": q(0.8), "n": len(times)}


def gpu_busy_time(fn: Callable[[], object], device: torch.device, calls: int = 3, label: str = "") -> Optional[float]:
    """Seconds of device work (kernels, copies, memsets) per call of ``fn``, summed from the
    profiler's CUDA activity.  Beside the wall time per call (:func:`measure`), which a slow host
    (Python wrappers, autograd, launches) inflates when the kernels are short: wall >> busy means
    the call is host-bound.  None off CUDA, when the profiler gives nothing or fails (said, with
    ``label``): the column is optional.  Profile after the wall times of a process, not between
    them (``bench_model.py`` does): even with CUPTI torn down (above), a session costs its set-up."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    try:
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 - the profiler is optional: a "-" in its column
        print(f"# {label}: profiler failed: {type(e).__name__}: {str(e)[:100]}", flush=True)
        return None
    cuda = torch.autograd.DeviceType.CUDA
    total_us = 0.0
    for ev in prof.events():
        if getattr(ev, "device_type", None) == cuda:
            total_us += ev.time_range.elapsed_us()
    return total_us * 1e-6 / calls if total_us > 0 else None


def host_issue_time(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> Optional[float]:
    """Median seconds until ``fn()`` returns, each call started on an idle device: the host's time to
    issue the call's work (Python, dispatch, autograd, launches).  Beside the wall time and
    :func:`gpu_busy_time` it says what sets the pace: issue ~ wall > busy, the host, or a wait
    inside the call (the host then cannot return before the device; so can a full launch queue,
    about a thousand pending kernels); issue << wall ~ busy, the device.  None off CUDA (there
    the call is its own work)."""
    if device.type != "cuda":
        return None
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize(device)
    return statistics.median(times)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the heading of a CPU report."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

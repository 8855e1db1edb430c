"""Shared timing helper for the benchmark scripts: warm-up, then the median of repeats."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict

import torch


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10,
            min_time_s: float = 0.0) -> Dict[str, float]:
    """Median / p20 / p80 seconds of ``fn()``; CUDA events on GPU, perf_counter on CPU."""
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
            fn()
            e.record()
            torch.cuda.synchronize(device)
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median": statistics.median(times), "p20": q(0.2), "p80": q(0.8), "n": len(times)}

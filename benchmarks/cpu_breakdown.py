"""Where a CPU Swin-T step goes, swin_ext against timm, and what that leaves to win.

Profiles (``torch.profiler``, CPU) a float32 training step (forward, cross-entropy, backward, AdamW;
batch 4) and an inference forward (eval, inference_mode; batch 8) of ``swin_ext.swin_t()`` and timm's
``swin_tiny_patch4_window7_224`` (random weights: the times do not depend on them), and sums each
op's self time into:

* ``linear GEMMs``: the Linear layers' GEMMs, forward and backward (``aten::addmm``, ``aten::mm``,
  ``mkldnn::_linear_pointwise``: swin_ext's oneDNN path; ``swin_ext::linear_cpu_fwd`` / ``_bwd``:
  swin_ext's own CPU GEMMs, the default on an AVX2 or AVX-512 CPU);
* ``optimizer``: everything inside ``AdamW.step`` (the same torch code for both models);
* ``swin_ext kernels``: the other ``swin_ext::`` ops;
* ``rest``: everything else (timm's attention ``bmm`` / softmax, GELU, LayerNorm, copies; the patch
  embedding; autograd's own ops).

Both models run the same Linear shapes, so ``timm's step / (timm's linear GEMMs + optimizer)`` bounds
swin_ext's speed-up over timm wherever swin_ext's Linears take the same GEMM library (ATen's: the
default on a CPU without AVX-512, ``swin_ext.layers.onednn_preferred``; ``SWIN_EXT_ONEDNN_MLP=0``
elsewhere; ``SWIN_EXT_CPU_GEMM=0`` where swin_ext's own GEMMs would run): what swin_ext would reach
if everything it fuses cost nothing.  A speed-up target above that bound needs faster GEMMs than the
library's, not faster kernels (what swin_ext's own GEMMs are for).

    OMP_NUM_THREADS=2 python benchmarks/cpu_breakdown.py --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import make_runner  # noqa: E402

import swin_ext  # noqa: E402

from _timing import cpu_name, measure  # noqa: E402

GEMMS = ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise", "swin_ext::linear_cpu_fwd", "swin_ext::linear_cpu_bwd")
# The autograd node of swin_ext's CPU GEMM (Python autograd): the profiler puts the forward kernel's
# time in it, not in a swin_ext::linear_cpu_fwd event.
GEMM_NODE = "GeneratedBackwardFor_swin_ext_linear_cpu_fwd"
CATEGORIES = ("linear GEMMs", "optimizer", "swin_ext kernels", "rest")


def runner(impl: str, mode: str, batch: int) -> Callable[[], None]:
    """One iteration of ``impl`` (``swin_ext`` or ``timm``) in ``mode``: bench_model's runner (its input,
    labels, loss and AdamW step), float32 on the CPU."""
    torch.manual_seed(0)
    if impl == "timm":
        import timm

        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    else:
        model = swin_ext.swin_t()
    return make_runner(model, mode, batch, torch.float32, torch.device("cpu"))


def breakdown(fn: Callable[[], None], iters: int) -> Dict[str, float]:
    """Milliseconds per iteration of each category (self CPU time), and the profiled total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    out = dict.fromkeys(CATEGORIES, 0.0)
    # Events inside the optimizer step: its interval, then every event whose start falls in one.
    events = list(prof.events())
    steps = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step#")]
    total = 0.0
    for e in events:
        if e.name.startswith("Optimizer.") or e.name.startswith("ProfilerStep"):
            continue  # record_function ranges: their children carry the time
        self_us = e.self_cpu_time_total
        total += self_us
        start = e.time_range.start
        if any(a <= start < b for a, b in steps):
            out["optimizer"] += self_us
        elif e.name in GEMMS or e.name.startswith(GEMM_NODE):
            out["linear GEMMs"] += self_us
        elif e.name.startswith("swin_ext::"):
            out["swin_ext kernels"] += self_us
        else:
            out["rest"] += self_us
    res = {k: v / iters / 1e3 for k, v in out.items()}
    res["profiled total"] = total / iters / 1e3
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3, help="profiled iterations (default 3)")
    ap.add_argument("--repeats", type=int, default=5, help="timed iterations, median (default 5)")
    ap.add_argument("--md-out", default=None, help="append the tables here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gemm = ("oneDNN" if swin_ext.layers.use_onednn()
            else "swin_ext's CPU GEMMs" if swin_ext.layers.use_cpu_gemm() else "ATen (MKL)")
    lines = [f"CPU: {cpu_name()}, ATen capability {swin_ext.layers.config.CPU_CAPABILITY}, {args.threads} threads; "
             f"torch {torch.__version__}; swin_ext's Linear GEMMs on {gemm}.", ""]
    for mode, batch in (("train", 4), ("infer", 8)):
        rows = {}
        for impl in ("swin_ext", "timm"):
            fn = runner(impl, mode, batch)
            wall = measure(fn, torch.device("cpu"), warmup=2, repeats=args.repeats)["median"] * 1e3
            rows[impl] = {"wall": wall, **breakdown(fn, args.iters)}
        t = rows["timm"]
        floor = t["linear GEMMs"] + t["optimizer"]
        lines += [f"**{mode}, batch {batch}**, ms per iteration (wall: median of {args.repeats}; categories: "
                  f"self CPU time, mean of {args.iters} profiled):", "",
                  "| | wall | " + " | ".join(CATEGORIES) + " | profiled total |",
                  "|---|---:|" + "---:|" * (len(CATEGORIES) + 1)]
        for impl, r in rows.items():
            lines.append(f"| {impl} | {r['wall']:.1f} | " + " | ".join(f"{r[c]:.1f}" for c in CATEGORIES)
                         + f" | {r['profiled total']:.1f} |")
        lines += ["", f"speed-up over timm now {t['wall'] / rows['swin_ext']['wall']:.2f}x; the bound of a swin_ext "
                  f"on torch's GEMMs (timm's linear GEMMs + optimizer, {floor:.1f} ms, and nothing else): "
                  f"{t['wall'] / floor:.2f}x.", ""]
        print("\n".join(lines[-(len(rows) + 6):]), flush=True)
    text = "\n".join(lines)
    if args.md_out:
        with open(args.md_out, "a") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fused CPU inference MLP (``torch.ops.swin_ext.mlp_cpu_fwd``) against the unfused path it
replaces (fc1 on swin_ext's CPU GEMM with its bias, torch's GELU in place, fc2), in the model and
stage by stage.

* **model**: Swin-T float32 inference (eval, ``inference_mode``) at ``--batch``, the fused MLP on
  and off in interleaved rounds in one process (off: ``MLP_FUSED_MAX_WEIGHT = 0``, every MLP on
  the unfused path); ms per forward, median, and the ratio.
* **stages**: each stage's MLP shape (tokens as the model runs them: stage 1 in image chunks,
  :mod:`swin_ext.layers.chunking`), fused and unfused, with ``--evict`` MiB of other data written
  between calls so that neither starts with its operands in the cache, as in the model; ms per
  call and GFLOP/s by the two GEMMs' FLOPs.

    OMP_NUM_THREADS=2 python benchmarks/bench_cpu_mlp.py --threads 2 --batch 8
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swin_ext  # noqa: E402
from swin_ext.layers import config, fast_linear  # noqa: E402
from swin_ext.layers.chunking import inference_image_chunk  # noqa: E402

from _timing import cpu_name  # noqa: E402

# Swin-T at 224 px: (tokens per image, channels) per stage.
STAGES = ((3136, 96), (784, 192), (196, 384), (49, 768))


def _median_ms(samples):
    return statistics.median(samples) * 1e3


def bench_model(batch: int, rounds: int):
    torch.manual_seed(0)
    model = swin_ext.swin_t().eval()
    x = torch.randn(batch, 3, 224, 224)
    limit = fast_linear.MLP_FUSED_MAX_WEIGHT
    times = {"fused": [], "unfused": []}
    outs = {}
    try:
        with torch.inference_mode():
            for r in range(rounds + 1):  # round 0: warm-up
                for name, lim in (("fused", limit), ("unfused", 0)):
                    fast_linear.MLP_FUSED_MAX_WEIGHT = lim
                    t0 = time.perf_counter()
                    outs[name] = model(x)
                    if r:
                        times[name].append(time.perf_counter() - t0)
    finally:
        fast_linear.MLP_FUSED_MAX_WEIGHT = limit
    diff = float((outs["fused"] - outs["unfused"]).abs().max())
    return {k: _median_ms(v) for k, v in times.items()}, diff


def bench_stage(tokens: int, c: int, repeats: int, evict_mib: int):
    op = torch.ops.swin_ext
    g = torch.Generator().manual_seed(0)
    h = 4 * c
    x = torch.randn(tokens, c, generator=g)
    w1, b1 = torch.randn(h, c, generator=g) / c**0.5, torch.randn(h, generator=g)
    w2, b2 = torch.randn(c, h, generator=g) / h**0.5, torch.randn(c, generator=g)
    junk = torch.empty(evict_mib << 18)

    def unfused():
        y = op.linear_cpu_fwd(x, w1, b1)
        torch.ops.aten.gelu_(y)
        return op.linear_cpu_fwd(y, w2, b2)

    def fused():
        return op.mlp_cpu_fwd(x, w1, b1, w2, b2)

    times = {"fused": [], "unfused": []}
    for r in range(repeats + 2):
        for name, fn in (("fused", fused), ("unfused", unfused)):
            junk.fill_(float(r))
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    flops = 4 * tokens * c * h
    return {k: (_median_ms(v), flops / statistics.median(v) / 1e9) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=9, help="model rounds, each fused and unfused (default 9)")
    ap.add_argument("--repeats", type=int, default=15, help="calls per stage shape (default 15)")
    ap.add_argument("--evict", type=int, default=32, help="MiB written between stage calls (default 32)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not config._CPU_MLP_KERNEL:
        print("this build has no swin_ext::mlp_cpu_fwd")
        return 1
    if not config.use_cpu_gemm() or config.use_onednn():
        print("the model's MLPs are not on swin_ext's CPU GEMMs here (SWIN_EXT_CPU_GEMM=1 SWIN_EXT_ONEDNN_MLP=0)")
        return 1
    print(f"CPU: {cpu_name()}, ATen capability {config.CPU_CAPABILITY}, {args.threads} threads; torch "
          f"{torch.__version__}; float32; MLP_FUSED_MAX_WEIGHT = {fast_linear.MLP_FUSED_MAX_WEIGHT}\n")
    print("| stage MLP | tokens x in -> hidden | unfused, ms (GFLOP/s) | fused, ms (GFLOP/s) | unfused / fused |")
    print("|---|---|---:|---:|---:|")
    for i, (tok, c) in enumerate(STAGES):
        with torch.no_grad():  # the images per chunk that the model runs this stage in (0: all at once)
            images = inference_image_chunk(torch.empty(args.batch, tok, c), nn.Identity().eval())
        per_chunk = tok * (images or args.batch)
        r = bench_stage(per_chunk, c, args.repeats, args.evict)
        (tu, gu), (tf, gf) = r["unfused"], r["fused"]
        print(f"| s{i + 1} | {per_chunk} x {c} -> {4 * c} | {tu:.2f} ({gu:.0f}) | {tf:.2f} ({gf:.0f}) "
              f"| {tu / tf:.2f}x |")
    t, diff = bench_model(args.batch, args.rounds)
    print(f"\nSwin-T inference, batch {args.batch}, median of {args.rounds} interleaved rounds: unfused "
          f"{t['unfused']:.1f} ms, fused {t['fused']:.1f} ms ({t['unfused'] / t['fused']:.3f}x); "
          f"max |logit difference| {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

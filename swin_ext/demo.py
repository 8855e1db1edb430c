"""Fused-vs-reference speed table (the second half of the main job, after
``swin_ext.train`` on the digits): build check, Swin-T forward+backward on
the CPU, fused-vs-reference agreement and timing.

    python -m swin_ext.demo [--batch 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

import swin_ext


def _interleaved_medians(fns, repeats: int):
    """Median seconds of each function, timed in interleaved rounds (A, B, A, B, ...)
    after one warm-up each, so that a load change on the machine hits all alike."""
    for fn in fns:
        fn()
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    print("swin_ext", swin_ext.__version__, json.dumps(swin_ext.build_info()))
    torch.manual_seed(0)
    fused = swin_ext.swin_t(drop_path_rate=0.0)
    ref = copy.deepcopy(fused).set_backend("reference")
    n_params = sum(p.numel() for p in fused.parameters())
    print(f"Swin-T: {n_params:,} parameters, {fused.flops() / 1e9:.2f} GMACs at 224x224")

    x = torch.randn(args.batch, 3, 224, 224)
    # Agreement, forward and backward.
    out_f, out_r = fused(x), ref(x)
    out_f.square().mean().backward()
    out_r.square().mean().backward()
    dout = (out_f - out_r).abs().max().item()
    dgrad = max((a.grad - b.grad).abs().max().item() for a, b in zip(fused.parameters(), ref.parameters()))
    print(f"fused vs reference: max |logit diff| = {dout:.2e}, max |grad diff| = {dgrad:.2e}")

    models = (("fused", fused), ("reference", ref))

    def infer(model):
        def f():
            with torch.inference_mode():
                model(x)
        return f

    def step(model):
        def f():
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        return f

    for _, model in models:
        model.eval()
    t_inf = _interleaved_medians([infer(m) for _, m in models], args.repeats)
    for _, model in models:
        model.train()
    t_train = _interleaved_medians([step(m) for _, m in models], args.repeats)
    rows = [(name, ti, tt) for (name, _), ti, tt in zip(models, t_inf, t_train)]
    print(
        f"\nSwin-T on CPU, batch {args.batch}, {torch.get_num_threads()} threads "
        f"(median of {args.repeats} interleaved rounds):"
    )
    print("| backend | inference ms | img/s | fwd+bwd ms | img/s |")
    print("|---|---:|---:|---:|---:|")
    for name, ti, tt in rows:
        print(f"| {name} | {ti * 1e3:.1f} | {args.batch / ti:.1f} | {tt * 1e3:.1f} | {args.batch / tt:.1f} |")
    print(
        f"speed-up fused/reference: inference {rows[1][1] / rows[0][1]:.2f}x, training {rows[1][2] / rows[0][2]:.2f}x"
    )


if __name__ == "__main__":
    main()

"""The Swin Linears' float32 CPU GEMMs: swin_ext's (``torch.ops.swin_ext.linear_cpu_fwd`` / ``_bwd``)
against torch's (``addmm`` / ``mm``: MKL on x86), GFLOP/s per shape.

For each Linear of Swin-T (qkv, proj, fc1, fc2 of each stage, each merge's reduction) at the batch
given (tokens = batch x the stage's tokens per image), it times the forward (``x W^T + b``), the
input gradient (``dy W``) and the weight gradient (``dy^T x``) of both, each the median of
``--repeats`` calls after warm-up, the two alternating shape by shape.  The last row weights each
column by the model's FLOPs (the stages' block counts), as a step would.  The model-level effect
is bench_model.py's to measure (``SWIN_EXT_CPU_GEMM=0`` / ``1``).

    python benchmarks/bench_cpu_gemm.py --threads 2 --batch 4
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swin_ext  # noqa: E402,F401  (loads the ops)

from _timing import cpu_name, measure  # noqa: E402

# Swin-T at 224 px: (tokens per image, channels, blocks) per stage.
STAGES = ((3136, 96, 2), (784, 192, 2), (196, 384, 6), (49, 768, 2))


def shapes(batch: int):
    """(name, tokens, in, out, count per forward) for every Linear of Swin-T."""
    out = []
    for i, (tok, c, blocks) in enumerate(STAGES):
        m = tok * batch
        out += [(f"s{i + 1} qkv", m, c, 3 * c, blocks), (f"s{i + 1} proj", m, c, c, blocks),
                (f"s{i + 1} fc1", m, c, 4 * c, blocks), (f"s{i + 1} fc2", m, 4 * c, c, blocks)]
        if i + 1 < len(STAGES):
            out.append((f"s{i + 1} merge", tok // 4 * batch, 4 * c, 2 * c, 1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--md-out", default=None, help="write the table here (else print it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not hasattr(torch.ops.swin_ext, "linear_cpu_fwd"):
        print("this swin_ext build has no CPU GEMM op", file=sys.stderr)
        return 1
    op = torch.ops.swin_ext
    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    lines = [f"CPU: {cpu_name()}, ATen capability {swin_ext.layers.config.CPU_CAPABILITY}, {args.threads} threads, "
             f"torch {torch.__version__}; Swin-T Linears at batch {args.batch}, float32; GFLOP/s, median of "
             f"{args.repeats} (swin_ext / torch):", "",
             "| Linear | tokens x in -> out | forward | input gradient | weight gradient |",
             "|---|---|---:|---:|---:|"]
    totals = {k: [0.0, 0.0, 0.0] for k in ("fwd", "dgrad", "wgrad")}  # flops, swin_ext s, torch s
    for name, m, k, n, count in shapes(args.batch):
        x = torch.randn(m, k, generator=g)
        w = torch.randn(n, k, generator=g)
        b = torch.randn(n, generator=g)
        dy = torch.randn(m, n, generator=g)
        flops = 2.0 * m * k * n
        cases = {
            "fwd": (lambda: op.linear_cpu_fwd(x, w, b), lambda: torch.addmm(b, x, w.t())),
            "dgrad": (lambda: op.linear_cpu_bwd(dy, x, w, [True, False]), lambda: dy.mm(w)),
            "wgrad": (lambda: op.linear_cpu_bwd(dy, x, w, [False, True]), lambda: dy.t().mm(x)),
        }
        cells = []
        for key, (ours, theirs) in cases.items():
            t_ours = measure(ours, cpu, warmup=2, repeats=args.repeats)["median"]
            t_theirs = measure(theirs, cpu, warmup=2, repeats=args.repeats)["median"]
            tot = totals[key]
            tot[0] += flops * count
            tot[1] += t_ours * count
            tot[2] += t_theirs * count
            cells.append(f"{flops / t_ours / 1e9:.0f} / {flops / t_theirs / 1e9:.0f}")
        lines.append(f"| {name} | {m} x {k} -> {n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    cells = [f"**{t[0] / t[1] / 1e9:.0f} / {t[0] / t[2] / 1e9:.0f}** ({t[2] / t[1]:.2f}x)" for t in totals.values()]
    lines.append("| all, by the model's FLOPs | | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if args.md_out:
        with open(args.md_out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

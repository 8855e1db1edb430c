"""Op-level benchmark: swin_ext's fused kernels vs the plain-PyTorch reference composite.

Shapes are the attention/merging shapes of every Swin-T and Swin-B stage at
224 px.  Forward and forward+backward, median of repeats after warm-up; on
CUDA also the achieved GB/s (bytes of qkv read + output written, the minimum
traffic of a fused kernel).

    python benchmarks/bench_ops.py --device cpu --batch 8 --models swin_t --stages 0
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import measure  # noqa: E402

import swin_ext  # noqa: E402
from swin_ext import reference  # noqa: E402

MODELS = {
    "swin_t": dict(embed_dim=96, heads=(3, 6, 12, 24)),
    "swin_b": dict(embed_dim=128, heads=(4, 8, 16, 32)),
}


def attention_case(B, H, C, heads, ws, shift, device, dtype, backward):
    qkv = torch.randn(B, H, H, 3 * C, device=device, dtype=dtype, requires_grad=backward)
    bias = torch.randn(heads, ws * ws, ws * ws, device=device, dtype=torch.float32, requires_grad=backward)
    g = torch.randn(B, H, H, C, device=device, dtype=dtype)

    def run(fn):
        def f():
            out = fn(qkv, bias, ws, shift)
            if backward:
                torch.autograd.grad(out, (qkv, bias), g)
        return f

    return run(swin_ext.window_attention), run(reference.window_attention_reference), qkv.numel() * qkv.element_size() * 4 // 3


def merging_case(B, H, C, device, dtype, backward):
    x = torch.randn(B, H, H, C, device=device, dtype=dtype, requires_grad=backward)
    w = torch.randn(4 * C, device=device, requires_grad=backward)
    b = torch.randn(4 * C, device=device, requires_grad=backward)
    g = torch.randn(B, H // 2, H // 2, 4 * C, device=device, dtype=dtype)

    def run(fn):
        def f():
            y = fn(x, w, b, 1e-5)
            if backward:
                torch.autograd.grad(y, (x, w, b), g)
        return f

    return run(swin_ext.patch_merging), run(reference.patch_merging_reference), x.numel() * x.element_size() * 2


def _positive_int(s: str) -> int:
    """argparse type: an int >= 1 (0 is refused, not replaced by a default)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    ap.add_argument("--batch", type=_positive_int, default=None, help="default 8 on CPU, 64 on CUDA")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3], choices=[0, 1, 2, 3],
                    help="Swin stages, 0-based (default all four)")
    ap.add_argument("--repeats", type=_positive_int, default=10)
    ap.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"argument --device: {e}")
    dtype = getattr(torch, args.dtype)
    B = args.batch if args.batch is not None else (64 if device.type == "cuda" else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# swin_ext op benchmark  device={device}  dtype={args.dtype}  batch={B}  "
          f"threads={torch.get_num_threads()}  torch={torch.__version__}")
    if device.type == "cuda":
        print(f"# GPU: {torch.cuda.get_device_name(device)}")
    copy_gbs = None
    if device.type == "cuda":
        src = torch.empty(256 * 2**20, device=device, dtype=torch.float32)  # 1 GiB
        dst = torch.empty_like(src)
        t = measure(lambda: dst.copy_(src), device, repeats=args.repeats)["median"]
        copy_gbs = 2 * src.numel() * 4 / t / 1e9
        del src, dst
        print(f"# device copy bandwidth (read + write): {copy_gbs:.0f} GB/s")
    print("| op | model | stage | shape | pass | fused ms | reference ms | speed-up | fused GB/s | % of copy |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        spec = MODELS[name]
        for s in args.stages:
            H, C, heads = 56 >> s, spec["embed_dim"] << s, spec["heads"][s]
            shift = 3 if H > 7 else 0
            for backward in (False, True):
                cases = [("attention", f"{B}x{H}x{H}x{C} h{heads} s{shift}",
                          attention_case(B, H, C, heads, 7, shift, device, dtype, backward))]
                if s < 3:
                    cases.append(("merging", f"{B}x{H}x{H}x{C}", merging_case(B, H, C, device, dtype, backward)))
                for op, shape, (fused, ref, nbytes) in cases:
                    tf = measure(fused, device, repeats=args.repeats)["median"]
                    tr = measure(ref, device, repeats=args.repeats)["median"]
                    gbs = pct = "-"
                    if copy_gbs is not None and not backward:
                        gbs = f"{nbytes / tf / 1e9:.0f}"
                        pct = f"{100 * nbytes / tf / 1e9 / copy_gbs:.0f}%"
                    print(f"| {op} | {name} | {s + 1} | {shape} | {'fwd+bwd' if backward else 'fwd'} | "
                          f"{tf * 1e3:.2f} | {tr * 1e3:.2f} | {tr / tf:.2f}x | {gbs} | {pct} |", flush=True)


if __name__ == "__main__":
    main()

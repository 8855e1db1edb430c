"""Gradient check of every swin_ext operator on every available device, float64.

    python benchmarks/gradcheck.py                 # CPU, and CUDA when a GPU and the CUDA kernels are there
    python benchmarks/gradcheck.py --devices cpu

For each case: ``torch.autograd.gradcheck`` (finite differences against the
op's registered backward, for every differentiable input: qkv, bias and
qkv_pad; x, LayerNorm weight and bias) and, as a second opinion, the largest
difference between the op's gradients and autograd through the plain-PyTorch
reference composite (``swin_ext.reference``) for one random output
cotangent.  Prints a markdown table; the exit status is 1 if any check fails.
Double backward is not implemented by the ops and is not checked.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import swin_ext
from swin_ext import reference

F64 = torch.float64


def attention_cases() -> List[Tuple[str, Dict]]:
    # (name, dict(B, H, W, C, heads, ws, shift, pad))
    return [
        ("plain 4x4 ws2", dict(B=2, H=4, W=4, C=4, heads=2, ws=2, shift=0, pad=False)),
        ("shifted 6x6 ws3 s1", dict(B=1, H=6, W=6, C=4, heads=2, ws=3, shift=1, pad=False)),
        ("shifted 8x8 ws4 s2, 1 head", dict(B=1, H=8, W=8, C=3, heads=1, ws=4, shift=2, pad=False)),
        ("padded 3x5 ws2, qkv_pad", dict(B=2, H=3, W=5, C=4, heads=2, ws=2, shift=0, pad=True)),
        ("padded+shifted 5x7 ws3 s(1,2), qkv_pad", dict(B=1, H=5, W=7, C=4, heads=2, ws=3, shift=(1, 2), pad=True)),
        ("padded+shifted 5x7 ws3 s1, zero pad", dict(B=1, H=5, W=7, C=4, heads=1, ws=3, shift=1, pad=False)),
        ("map < window 2x3 ws4, qkv_pad", dict(B=1, H=2, W=3, C=2, heads=1, ws=4, shift=0, pad=True)),
    ]


def merging_cases() -> List[Tuple[str, Dict]]:
    return [
        ("even 4x4 C3", dict(B=2, H=4, W=4, C=3)),
        ("odd 5x3 C2", dict(B=1, H=5, W=3, C=2)),
        ("1x1 C2", dict(B=2, H=1, W=1, C=2)),
        ("odd 3x6 C4", dict(B=1, H=3, W=6, C=4)),
    ]


def _grads(fn: Callable, inputs: Sequence[torch.Tensor], cot: torch.Tensor) -> List[torch.Tensor]:
    xs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*xs)
    return list(torch.autograd.grad(out, xs, cot))


def check_attention(case: Dict, device: torch.device):
    g = torch.Generator().manual_seed(0)
    B, H, W, C, heads, ws = case["B"], case["H"], case["W"], case["C"], case["heads"], case["ws"]
    N = ws * ws
    qkv = torch.randn(B, H, W, 3 * C, generator=g, dtype=F64).to(device).requires_grad_(True)
    bias = torch.randn(heads, N, N, generator=g, dtype=F64).to(device).requires_grad_(True)
    pad = torch.randn(3 * C, generator=g, dtype=F64).to(device).requires_grad_(True) if case["pad"] else None
    shift, scale = case["shift"], 0.7
    inputs = (qkv, bias) + ((pad,) if pad is not None else ())

    def fused(q, b, *p):
        return swin_ext.window_attention(q, b, ws, shift, scale, p[0] if p else None)

    def ref(q, b, *p):
        return reference.window_attention_reference(q, b, ws, shift, scale, p[0] if p else None)

    return fused, ref, inputs, f"qkv {tuple(qkv.shape)}, bias {tuple(bias.shape)}" + (", qkv_pad" if pad is not None else "")


def check_merging(case: Dict, device: torch.device):
    g = torch.Generator().manual_seed(0)
    B, H, W, C = case["B"], case["H"], case["W"], case["C"]
    x = torch.randn(B, H, W, C, generator=g, dtype=F64).to(device).requires_grad_(True)
    w = (1 + 0.3 * torch.randn(4 * C, generator=g, dtype=F64)).to(device).requires_grad_(True)
    b = (0.3 * torch.randn(4 * C, generator=g, dtype=F64)).to(device).requires_grad_(True)

    def fused(x_, w_, b_):
        return swin_ext.patch_merging(x_, w_, b_, 1e-5)

    def ref(x_, w_, b_):
        return reference.patch_merging_reference(x_, w_, b_, 1e-5)

    return fused, ref, (x, w, b), f"x {tuple(x.shape)}"


def run_case(builder, case, device) -> Dict:
    fused, ref, inputs, desc = builder(case, device)
    t0 = time.perf_counter()
    try:
        ok = torch.autograd.gradcheck(fused, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=True)
        err = ""
    except Exception as e:  # noqa: BLE001 - report, continue with the other cases
        ok, err = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    t = time.perf_counter() - t0
    with torch.no_grad():
        out = fused(*inputs)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=F64).to(device)
    gf = _grads(fused, inputs, cot)
    gr = _grads(ref, inputs, cot)
    dref = max((a - b).abs().max().item() for a, b in zip(gf, gr))
    return {"desc": desc, "ok": ok and dref < 1e-9, "gradcheck": ok, "dref": dref, "time": t, "err": err}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when usable")
    args = ap.parse_args(argv)
    if not swin_ext.HAS_OPS:
        print("swin_ext's compiled ops are not built:", swin_ext.build_info().get("variant_reason"))
        return 1
    devices = args.devices
    if devices is None:
        devices = ["cpu"]
        if torch.cuda.is_available() and swin_ext.build_info().get("cuda"):
            devices.append("cuda")
        elif torch.cuda.is_available():
            print("note: a GPU is present but swin_ext was built without CUDA kernels; checking the CPU only")
    print(f"# swin_ext gradcheck, float64  torch {torch.__version__}  devices {devices}")
    print("| op | case | device | inputs | gradcheck | max abs grad diff vs reference | s |")
    print("|---|---|---|---|---|---:|---:|")
    failures = []
    for dev in devices:
        device = torch.device(dev)
        for op, builder, cases in (("window_attention", check_attention, attention_cases()),
                                   ("patch_merging", check_merging, merging_cases())):
            for name, case in cases:
                r = run_case(builder, case, device)
                status = "PASS" if r["gradcheck"] else "FAIL"
                print(f"| {op} | {name} | {dev} | {r['desc']} | {status} | {r['dref']:.1e} | {r['time']:.2f} |", flush=True)
                if not r["ok"]:
                    failures.append((op, name, dev, r["err"] or f"reference grad diff {r['dref']:.1e}"))
    if failures:
        print(f"\n{len(failures)} FAILED:")
        for f in failures:
            print("  ", " / ".join(f))
        return 1
    print("\nall passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

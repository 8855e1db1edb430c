"""Gradient check of every swin_ext operator on every available device, float64.

    python benchmarks/gradcheck.py           # every op; on the CPU, and CUDA when a GPU and the CUDA kernels are there
    python benchmarks/gradcheck.py --devices cpu --ops window_attention patch_merging

The cases are the ``GRADCHECK`` rows of the op table (``tests/op_testing.py``),
the ones the test suite runs: for each, ``torch.autograd.gradcheck`` of the
public wrapper (finite differences against its registered backward, for
every differentiable input), ``gradgradcheck`` where the row asks for
second order (that backward runs through the reference composite), and as a
second opinion the largest difference between the wrapper's gradients and
autograd through the plain-PyTorch reference (``swin_ext.ops.reference``) for
one random cotangent.  Prints a markdown table; the exit status is 1 if any
check fails.  Takes minutes on a 2-core CPU (full Jacobians).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import swin_ext  # noqa: E402

from op_testing import GRADCHECK, run_gradcheck  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when usable")
    ap.add_argument(
        "--ops", nargs="+", default=list(swin_ext.ops.OPS), choices=list(swin_ext.ops.OPS), help="default: every op"
    )
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
    print("| op | case | device | inputs | gradcheck | 2nd order | max abs grad diff vs reference | s |")
    print("|---|---|---|---|---|---|---:|---:|")
    failures = []
    for dev in devices:
        for op in args.ops:
            for case in GRADCHECK[op]:
                r = run_gradcheck(case, dev)
                status = "PASS" if r["gradcheck"] else "FAIL"
                print(
                    f"| {op} | {case.name} | {dev} | {r['inputs']} | {status} | "
                    f"{'yes' if case.second_order else '-'} | {r['dref']:.1e} | {r['seconds']:.2f} |",
                    flush=True,
                )
                if not r["ok"]:
                    failures.append((op, case.name, dev, r["err"] or f"reference grad diff {r['dref']:.1e}"))
    if failures:
        print(f"\n{len(failures)} FAILED:")
        for f in failures:
            print("  ", " / ".join(f))
        return 1
    print("\nall passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

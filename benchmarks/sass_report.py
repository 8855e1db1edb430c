"""Static GPU checks of the built extension: SASS and resources per kernel.

Reads ``swin_ext/_C*.so`` with ``cuobjdump`` (the CUDA toolkit's, or the copy
in triton's package under ``triton/backends/nvidia/bin/``) and reports, for
every kernel of one architecture (default sm_90): registers, stack frame,
local-memory spill instructions (STL/LDL), tensor-core instructions
(HMMA), 128-bit global loads/stores (LDG.E.128 / STG.E.128), total SASS
instructions, static shared memory, and the theoretical occupancy on an
H100 for a given dynamic shared-memory size.

    python benchmarks/sass_report.py                 # table of every kernel
    python benchmarks/sass_report.py --out benchmarks/results/sass_sm90.md
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_cuobjdump() -> Optional[str]:
    """cuobjdump from $CUDA_HOME, the PATH, or triton's bundled copy."""
    cands = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "bin", "cuobjdump"))
    w = shutil.which("cuobjdump")
    if w:
        cands.append(w)
    cands.append("/usr/local/cuda/bin/cuobjdump")
    for p in sys.path:
        cands.append(os.path.join(p, "triton", "backends", "nvidia", "bin", "cuobjdump"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def extension_path() -> Optional[str]:
    hits = sorted(glob.glob(os.path.join(ROOT, "swin_ext", "_C*.so")))
    return hits[0] if hits else None


def demangle(names: List[str]) -> Dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


@dataclass
class Kernel:
    mangled: str
    name: str = ""
    regs: int = 0
    stack: int = 0
    shared: int = 0
    local: int = 0
    instrs: int = 0
    counts: Dict[str, int] = field(default_factory=dict)

    @property
    def short(self) -> str:
        """kernel<Traits<dtype, head_dim>> in a compact form."""
        n = self.name
        m = re.match(r"void (?:swin_ext::cuda::(?:attn::)?)?(\w+)<(.*)>\(.*\)$", n)
        if not m:
            return n
        args = m.group(2)
        t = re.match(r"swin_ext::cuda::attn::Traits<(.*)>$", args.strip())
        if t:
            args = t.group(1)
        args = args.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
        args = args.replace("float", "fp32").replace("double", "fp64")
        return f"{m.group(1)}<{args.strip()}>"


_TRACKED = {
    "HMMA": r"\bHMMA\.",
    "LDG.128": r"\bLDG\.E\.(?:\w+\.)*128\b",
    "STG.128": r"\bSTG\.E\.(?:\w+\.)*128\b",
    "LDG": r"\bLDG\.",
    "STG": r"\bSTG\.",
    "LDS": r"\bLDS",
    "STS": r"\bSTS",
    "STL": r"\bSTL",
    "LDL": r"\bLDL",
    "FFMA": r"\bFFMA\b",
    "DFMA": r"\bDFMA\b",
    "SHFL": r"\bSHFL\.",
    "BAR": r"\bBAR\.",
}


def read_kernels(so: str, arch: str = "sm_90", cuobjdump: Optional[str] = None) -> List[Kernel]:
    cuobjdump = cuobjdump or find_cuobjdump()
    if cuobjdump is None:
        raise FileNotFoundError("no cuobjdump (CUDA toolkit or triton's bundled copy)")
    res = subprocess.run(
        [cuobjdump, "--dump-resource-usage", "-arch", arch, so], capture_output=True, text=True, check=True
    ).stdout
    kernels: Dict[str, Kernel] = {}
    cur = None
    for line in res.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            cur = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and cur is not None:
            cur.regs, cur.stack, cur.shared, cur.local = map(int, m.groups())
    sass = subprocess.run([cuobjdump, "-sass", "-arch", arch, so], capture_output=True, text=True, check=True).stdout
    cur = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        if cur is None or not re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+", line):
            continue
        instr = line.split("*/", 1)[1].split(";")[0].strip()
        if not instr:
            continue
        cur.instrs += 1
        for key, pat in _TRACKED.items():
            if re.search(pat, instr):
                cur.counts[key] = cur.counts.get(key, 0) + 1
    names = demangle(list(kernels))
    for k in kernels.values():
        k.name = names[k.mangled]
    return sorted(kernels.values(), key=lambda k: k.short)


# H100 (sm_90) limits for the theoretical occupancy.
H100 = dict(
    regs_per_sm=65536,
    max_warps=64,
    max_blocks=32,
    smem_per_sm=233472,
    smem_reserved=1024,
    reg_alloc=256,
    smem_alloc=128,
)


def occupancy(regs: int, threads: int, smem: int, dev=H100) -> float:
    """Fraction of the SM's warps resident (the CUDA occupancy calculator's rule)."""
    warps = (threads + 31) // 32
    regs_per_warp = ((max(regs, 1) * 32 + dev["reg_alloc"] - 1) // dev["reg_alloc"]) * dev["reg_alloc"]
    by_regs = dev["regs_per_sm"] // (regs_per_warp * warps)
    smem_blk = ((smem + dev["smem_reserved"] + dev["smem_alloc"] - 1) // dev["smem_alloc"]) * dev["smem_alloc"]
    by_smem = dev["smem_per_sm"] // smem_blk if smem_blk else dev["max_blocks"]
    blocks = min(by_regs, by_smem, dev["max_blocks"], dev["max_warps"] // warps)
    return blocks * warps / dev["max_warps"]


def table(kernels: List[Kernel]) -> str:
    cols = [
        "kernel",
        "instrs",
        "regs",
        "stack B",
        "STL/LDL",
        "HMMA",
        "LDG.128",
        "STG.128",
        "LDG",
        "STG",
        "FFMA",
        "DFMA",
        "SHFL",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k in kernels:
        c = k.counts
        lines.append(
            f"| `{k.short}` | {k.instrs} | {k.regs} | {k.stack} | {c.get('STL', 0)}/{c.get('LDL', 0)} | "
            f"{c.get('HMMA', 0)} | {c.get('LDG.128', 0)} | {c.get('STG.128', 0)} | {c.get('LDG', 0)} | "
            f"{c.get('STG', 0)} | {c.get('FFMA', 0)} | "
            f"{c.get('DFMA', 0)} | {c.get('SHFL', 0)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", default=None, help="extension library (default: swin_ext/_C*.so)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    a = ap.parse_args(argv)
    so = a.so or extension_path()
    if not so:
        print("no built extension (swin_ext/_C*.so)", file=sys.stderr)
        return 2
    ks = [k for k in read_kernels(so, a.arch) if a.filter in k.short]
    text = table(ks)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# SASS of {os.path.basename(so)} ({a.arch})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

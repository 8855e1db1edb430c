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
    python benchmarks/sass_report.py --streams      # add+LN / bias+GELU: instructions and bytes
                                                    # per element, est. H200 time vs the HBM floor
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


# --------------------------------------------------------------------------- streaming kernels
# add + LayerNorm and bias + GELU: instructions per element from the SASS of
# their row loops, bytes per element against the floor, and the estimated
# time per Swin-T training step on an H200 by the method of
# shared/notes/cuda-kernel-review-2026-12-03.md (section 2.1): time =
# max(bytes / bandwidth, warp-instructions / (132 SMs x IPC x clock)),
# optimistic (4.2 TB/s reached, IPC 3.4, 1.98 GHz) and pessimistic (3.8 TB/s,
# IPC 2.6, 1.755 GHz), floor = the op's own bytes at the 4.8 TB/s peak.
# ESTIMATES: nothing here ran on a GPU.

H200_PEAK = 4.8e12
H200_CASES = {"optimistic": (4.2e12, 3.4, 1.98e9), "pessimistic": (3.8e12, 2.6, 1.755e9)}
H200_SMS = 132
SWIN_T = dict(batch=128, stages=[(56, 96, 2), (28, 192, 2), (14, 384, 6), (7, 768, 2)])  # (H = W, C, depth)


@dataclass
class LoopCount:
    """The row loop of a streaming kernel: SASS instructions per trip and the elements a lane handles per trip."""

    kernel: Kernel
    body: int            # instructions of one trip (inner group-reduction loops counted lg times, see loop_count)
    elems: int           # elements per lane per trip
    cold: int            # instructions of the loop's rarely taken rescale block (counted in body: an upper bound)
    outside: int         # static instructions outside the row loop (once per thread)

    @property
    def per_elem(self) -> float:
        """Lane-instructions per element (= warp-instructions per 32 elements with every lane busy)."""
        return self.body / self.elems


def stream_elems(short: str) -> Optional[int]:
    """Elements per lane per row-loop trip: bias_gelu two rows of VEC, add_ln_*_reg NCH chunks of VEC."""
    m = re.match(r"bias_gelu_(?:fwd|bwd)_kernel<(.*)>$", short)
    if m:
        return 2 * int(m.group(1).split(",")[-1])
    m = re.match(r"add_ln_(?:fwd|bwd)_reg_kernel<(.*)>$", short)
    if m:
        vec, nch = (int(v) for v in m.group(1).split(",")[-2:])
        return vec * nch
    return None


def read_sass_instrs(so: str, kernels: List[Kernel], arch: str = "sm_90",
                     cuobjdump: Optional[str] = None) -> Dict[str, List[tuple]]:
    """(address, instruction text) per kernel, for the given kernels only (one cuobjdump call)."""
    if not kernels:
        return {}
    cuobjdump = cuobjdump or find_cuobjdump()
    out = subprocess.run([cuobjdump, "-sass", "-arch", arch, "-fun", ",".join(k.mangled for k in kernels), so],
                         capture_output=True, text=True, check=True).stdout
    res: Dict[str, List[tuple]] = {}
    cur = None
    for line in out.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = res.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if cur is not None and m:
            cur.append((int(m.group(1), 16), m.group(2).strip()))
    return res


def _loops(ins: List[tuple]) -> List[tuple]:
    """(first, last) instruction indices of every backward branch's loop."""
    idx = {a: i for i, (a, _) in enumerate(ins)}
    out = []
    for i, (a, t) in enumerate(ins):
        m = re.search(r"\bBRA(?:\.\w+)* (?:`\()?0x([0-9a-f]+)", t)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in idx:
            out.append((idx[int(m.group(1), 16)], i))
    return out


def row_loop(ins: List[tuple]) -> Optional[tuple]:
    """(first, last) index of the loop with the most global loads (the row loop of a streaming kernel)."""
    loops = _loops(ins)
    if not loops:
        return None
    return max(loops, key=lambda lp: (sum(opcode(ins[i][1]).startswith("LDG") for i in range(lp[0], lp[1] + 1)),
                                       lp[1] - lp[0]))


def opcode(text: str) -> str:
    """The instruction without its guard predicate (@P0, @!PT, @UP1 ...)."""
    return re.sub(r"^@!?U?P\w+\s+", "", text)


def loop_count(k: Kernel, ins: List[tuple], lg: int = 2) -> Optional[LoopCount]:
    """The row loop (the loop with the most 128-bit global loads), its trip cost.

    Inner loops (add_ln's group reductions over 2^lg lanes) are counted lg
    times; the rescale block of group_row_stats (entered only for rows above
    2^40, after a VOTE.ANY) is counted too and reported as `cold`, so `body`
    is an upper bound for the add_ln kernels and exact for bias_gelu (one
    straight trip of two rows).
    """
    elems = stream_elems(k.short)
    loops = _loops(ins)
    if elems is None or not loops:
        return None
    lo, hi = row_loop(ins)
    body = hi - lo + 1
    for a, b in loops:
        if lo < a and b < hi:  # an inner loop: lg trips instead of the one counted
            body += (max(lg, 1) - 1) * (b - a + 1)
    cold = 0
    for i in range(lo, hi):
        if ins[i][1].startswith("VOTE.ANY"):
            for j in range(i + 1, min(i + 8, hi)):
                m = re.match(r"@!?U?P\w+ BRA 0x([0-9a-f]+)", ins[j][1])
                if m:
                    tgt = int(m.group(1), 16)
                    cold = sum(1 for a, _ in ins[j + 1:hi] if a < tgt)
                    break
            break
    return LoopCount(k, body, elems, cold, len(ins) - (hi - lo + 1))


def _add_ln_rows_per_block(rows: int, lg: int) -> int:
    """add_ln_plan's rows per block (add_layernorm.cuh: kAddLnTargetBlocks 512, kAddLnMaxRowIters 16, 4 warps)."""
    per_iter = 4 * (32 >> lg)
    iters = min(16, -(-rows // (512 * per_iter)))
    return per_iter * iters


def _bias_gelu_rows_per_block(rows: int, K: int, vec: int = 8) -> int:
    """bias_gelu_plan's rows per block (bias_gelu.cuh: 128 halved to 16 while under 384 blocks, 192 threads)."""
    gx = -(-(K // vec) // 192)
    rpb = 128
    while rpb > 16 and gx * -(-rows // rpb) < 384:
        rpb //= 2
    return rpb


def stream_estimates(counts: Dict[str, LoopCount]) -> List[dict]:
    """Per op (add+LN, bias+GELU; fwd and bwd), Swin-T bf16 autocast training step at batch 128, H200."""
    def lc(prefix: str) -> Optional[LoopCount]:
        return next((c for name, c in counts.items() if name.startswith(prefix)), None)

    ops = [
        # name, kernel short-name prefix, floor bytes per element, extra per row (mean/rstd), partial rows?
        ("add+LN fwd", "add_ln_fwd_reg_kernel<fp32, bf16, bf16, fp32, 8, 3>", 12, 8, False),
        ("add+LN bwd", "add_ln_bwd_reg_kernel<fp32, bf16, bf16, fp32, 8, 3>", 16, 8, True),
        ("bias+GELU fwd", "bias_gelu_fwd_kernel<bf16, fp32, 8>", 4, 0, False),
        ("bias+GELU bwd", "bias_gelu_bwd_kernel<bf16, fp32, 8>", 6, 0, True),
    ]
    out = []
    for name, prefix, floor_b, row_b, partials in ops:
        c = lc(prefix)
        if c is None:
            continue
        gelu = name.startswith("bias")
        floor_bytes = actual_bytes = instr = 0.0
        for (hw, C, depth) in SWIN_T["stages"]:
            rows = SWIN_T["batch"] * hw * hw
            per_block = 1 if gelu else 2
            K = 4 * C if gelu else C
            elems = rows * K
            fb = elems * floor_b + rows * row_b
            if gelu:
                nparts = -(-rows // _bias_gelu_rows_per_block(rows, K))
            else:
                lg = 0
                while (3 << lg) * 8 < C:  # add_ln_plan: the smallest 2^lg with 2^lg * NCH * VEC >= C (NCH 3, VEC 8)
                    lg += 1
                nparts = -(-rows // _add_ln_rows_per_block(rows, lg))
            ab = fb + (2 * 4 * nparts * K * (2 if not gelu else 1) if partials else 0)  # written, then read by sum
            floor_bytes += depth * per_block * fb
            actual_bytes += depth * per_block * ab
            instr += depth * per_block * elems * c.per_elem / 32  # warp-instructions, every lane busy
        est = {}
        for case, (bw, ipc, clk) in H200_CASES.items():
            est[case] = max(actual_bytes / bw, instr / (H200_SMS * ipc * clk))
        floor_t = floor_bytes / H200_PEAK
        out.append(dict(op=name, kernel=c.kernel.short, regs=c.kernel.regs, per_elem=c.per_elem, cold=c.cold,
                        elems=c.elems, floor_b=floor_b, bytes_per_elem=actual_bytes / (floor_bytes / floor_b),
                        floor_ms=1e3 * floor_t, est_ms=(1e3 * est["optimistic"], 1e3 * est["pessimistic"]),
                        ratio=(est["optimistic"] / floor_t, est["pessimistic"] / floor_t)))
    return out


def stream_table(so: str, arch: str = "sm_90", kernels: Optional[List[Kernel]] = None) -> str:
    """Markdown: every add_ln register-path and bias_gelu kernel's loop cost, then the Swin-T estimate."""
    ks = [k for k in (kernels if kernels is not None else read_kernels(so, arch)) if stream_elems(k.short)]
    ins = read_sass_instrs(so, ks, arch)
    counts = {}
    for k in ks:
        lg = 2 if "add_ln" in k.short else 0
        c = loop_count(k, ins.get(k.mangled, []), lg)
        if c is not None:
            counts[k.short] = c
    lines = [
        "| kernel | regs | elements per lane per trip | SASS per trip | of it rescale path | instr per element |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in sorted(counts.items()):
        lines.append(f"| `{name}` | {c.kernel.regs} | {c.elems} | {c.body} | {c.cold} | {c.per_elem:.1f} |")
    lines += [
        "",
        "Swin-T bf16 (autocast) training step, batch 128, H200 -- ESTIMATED (no GPU): max(bytes / BW, "
        "warp-instr / (132 x IPC x f)), optimistic 4.2 TB/s, IPC 3.4, 1.98 GHz / pessimistic 3.8 TB/s, IPC 2.6, "
        "1.755 GHz; floor = the op's bytes at 4.8 TB/s.  add+LN: fp32 stream + bf16 branch -> bf16 y, 2 per block, "
        "statistics included in the floor; bytes also count the dweight / dbias partials (written and summed).",
        "",
        "| op | kernel | instr per element (lane) | warp-instr per element | B per element (floor) | floor ms "
        "| est. ms | x floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in stream_estimates(counts):
        lines.append(f"| {r['op']} | `{r['kernel']}` | {r['per_elem']:.1f} | {r['per_elem'] / 32:.2f} | "
                     f"{r['bytes_per_elem']:.2f} ({r['floor_b']}) | {r['floor_ms']:.3f} | "
                     f"{r['est_ms'][0]:.3f}-{r['est_ms'][1]:.3f} | {r['ratio'][0]:.2f}-{r['ratio'][1]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", default=None, help="extension library (default: swin_ext/_C*.so)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    ap.add_argument("--streams", action="store_true",
                    help="only the add+LN / bias+GELU loop table and the Swin-T H200 estimate")
    a = ap.parse_args(argv)
    so = a.so or extension_path()
    if not so:
        print("no built extension (swin_ext/_C*.so)", file=sys.stderr)
        return 2
    ks = [k for k in read_kernels(so, a.arch) if a.filter in k.short]
    text = stream_table(so, a.arch, ks) if a.streams else table(ks) + "\n\n" + stream_table(so, a.arch, ks)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# SASS of {os.path.basename(so)} ({a.arch})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

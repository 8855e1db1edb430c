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
    python benchmarks/sass_report.py --dyn           # dynamic instruction estimate of the
                                                     # attention forward and backward (Swin-T
                                                     # path), the step in G and est. ms
    python benchmarks/sass_report.py --floors        # add+LN, bias+GELU, merging: bytes and
                                                     # instructions per element vs the HBM floor
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
from typing import Dict, List, Optional, Tuple

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
        """kernel<Traits<dtype, head_dim[, v1|v2]>[, resident|streamed]> in a compact form."""
        n = self.name
        m = re.match(r"void (?:[\w:]*::)?(\w+)<(.*)>\(.*\)$", n)
        if not m:
            return n
        args = m.group(2)
        # the backward's key-tiled kernel: <BwdMmaTraits<...>, dQ resident in shared memory or streamed>
        kind = ""
        if m.group(1) == "attn_bwd_window_kernel":
            b = re.match(r"(.*),\s*(true|false)\s*$", args)
            if b:
                args, kind = b.group(1), ", resident" if b.group(2) == "true" else ", streamed"
        t = re.match(r"swin_ext::cuda::attn::(?:bwd::BwdMma(Lean)?|FwdMma)?Traits<(.*)>$", args.strip())
        if t:
            # the backward tile kernel's four-blocks-per-SM form: V1, head_dim 32 (BwdMmaLeanTraits<T>)
            args = f"{t.group(2)}, 32, false, lean" if t.group(1) else t.group(2)
        args = args.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
        args = args.replace("float", "fp32").replace("double", "fp64")
        args = args.replace("false", "v1").replace("true", "v2")  # the Mma traits' Swin V2 flag
        return f"{m.group(1)}<{args.strip()}{kind}>"


_TRACKED = {
    "HMMA": r"\bHMMA\.",
    "HMMA.16816": r"\bHMMA\.16816\.",
    "LDSM": r"\bLDSM\.",
    "MOVM": r"\bMOVM\.",
    "LD.generic": r"(?<![\w.])LD\.",  # generic-address loads / stores (shared memory through them is slow)
    "ST.generic": r"(?<![\w.])ST\.",
    "LDGSTS": r"\bLDGSTS\.",
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


def loop_count(k: Kernel, ins: List[tuple], lg: int = 2, elems: Optional[int] = None) -> Optional[LoopCount]:
    """The row loop (the loop with the most 128-bit global loads), its trip cost.

    Inner loops (add_ln's group reductions over 2^lg lanes) are counted lg
    times; the rescale block of group_row_stats (entered only for rows above
    2^40, after a VOTE.ANY) is counted too and reported as `cold`, so `body`
    is an upper bound for the add_ln kernels and exact for bias_gelu (one
    straight trip of two rows).
    """
    elems = elems or stream_elems(k.short)
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


def _fewest_wave_steps(items: int, per_step: int, most: int, fewest: int, resident: int) -> int:
    """fewest_wave_steps (common.cuh): the steps per block in [fewest, most] with the fewest (waves of
    ``resident`` blocks) x (steps per block), the most on a tie."""
    def cost(s: int) -> int:
        return -(-(-(-items // (per_step * s))) // resident) * s

    best = most
    for s in range(most - 1, max(fewest, 1) - 1, -1):
        if cost(s) < cost(best):
            best = s
    return best


def _add_ln_rows_per_block(rows: int, lg: int, backward: bool = False) -> int:
    """add_ln_plan's rows per block (add_layernorm.cuh: kAddLnTargetBlocks 512, kAddLnMaxRowIters 16, groups
    per warp from the target at 4 warps a block; the backward's blocks have 8 warps (kAddLnBwdWarps) and its
    groups per warp come from add_ln_bwd_iters: 2 blocks per SM on the H200, the small capacity)."""
    iters = min(16, -(-rows // (512 * 4 * (32 >> lg))))
    if not backward:
        return 4 * (32 >> lg) * iters
    per_iter = 8 * (32 >> lg)
    return per_iter * _fewest_wave_steps(rows, per_iter, iters, (iters + 1) // 2, 2 * H200_SMS)


def _bias_gelu_rows_per_block(rows: int, K: int, vec: int = 8, backward: bool = False) -> int:
    """bias_gelu_plan's rows per block (bias_gelu.cuh: 128 halved to 16 while under 384 blocks, 192 threads;
    the backward also while its grid is 1-4 waves of 5 blocks per SM with the last wave under half full)."""
    gx = -(-(K // vec) // 192)
    rpb = 128
    blocks = lambda: gx * -(-rows // rpb)  # noqa: E731
    while rpb > 16 and blocks() < 384:
        rpb //= 2
    resident = 5 * H200_SMS if backward else 0
    while resident and rpb > 16 and resident < blocks() < 4 * resident and 0 < blocks() % resident < resident // 2:
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
                nparts = -(-rows // _bias_gelu_rows_per_block(rows, K, backward=True))
            else:
                lg = 0
                while (3 << lg) * 8 < C:  # add_ln_plan: the smallest 2^lg with 2^lg * NCH * VEC >= C (NCH 3, VEC 8)
                    lg += 1
                nparts = -(-rows // _add_ln_rows_per_block(rows, lg, backward=True))
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

# --------------------------------------------------------------------------- dynamic estimate
#
# Static SASS x loop trip counts, per kernel path (the method of the
# 2026-12-03 review's sass_dyn.py, made robust to source edits): the kernel
# source marks, in comments on the lines the SASS is attributed to,
#   // sass-dyn: trips=<expr>   the loop whose back edge this line's
#                               instructions close runs <expr> times
#                               (names: images, warps, threads, N, d, keys,
#                               keytiles; the backward's also kWarps, kThreads,
#                               kDPad, kNT, and the window (wt, wh, ww) and its
#                               bias table's bias_rows); `trips(a; b; c)` (the
#                               backward's spelling) gives the nested loops of a
#                               helper inlined on that line, innermost first
#   // sass-dyn: skip           code off the costed path (scalar fallbacks)
# or, in bwd_mma_kernel.cuh, the same as // sass: trips(<expr>), // sass:
# image-loop (trips=images) and // sass: skip(<path>) over the block the line
# opens (dyn_markers reads both spellings; one counter, dynamic_count).
# Every instruction is counted once per execution of the loops around it
# (their trips multiplied); instructions with a skip line anywhere in their
# inline chain are not counted; a loop without a marker counts once.
# Branches inside the costed path are all taken as executed (an upper bound).


@dataclass
class Instr:
    op: str
    text: str
    chain: List[tuple]  # (file basename, line), innermost first
    # The control code's stall count (``nvdisasm -hex``; 0 without it): cycles before the warp may
    # issue its next instruction, set by ptxas for the fixed-latency dependences it scheduled.
    stall: int = 0


def control_stall(hi: int) -> int:
    """The stall count of an sm_70+ instruction from the high 64-bit word of its 128-bit encoding:
    bits 105-108 of the instruction (41-44 of the word), the cycles the warp waits before issuing its
    next instruction (the rest of the control code: yield, the write / read scoreboards and the
    scoreboards it waits on, operand reuse).  A warp's fixed-latency dependences show up here, as
    ncu's ``stall_wait`` (cycles per issued instruction ~ this count minus the one cycle of issue)."""
    return (hi >> 41) & 0xF


def find_nvdisasm(cuobjdump: Optional[str] = None) -> Optional[str]:
    found = [shutil.which("nvdisasm") or ""]
    for c in ([os.path.join(os.path.dirname(cuobjdump), "nvdisasm")] if cuobjdump else []) + found:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def disassemble_with_lines(so: str, arch: str, workdir: str, cuobjdump: Optional[str] = None,
                           name_filter: str = "attention") -> Dict[str, str]:
    """cubin name -> path of its ``nvdisasm -c -gi -hex`` listing (SASS with inlined source lines and
    the encodings)."""
    cuobjdump = cuobjdump or find_cuobjdump()
    nvdisasm = find_nvdisasm(cuobjdump)
    if cuobjdump is None or nvdisasm is None:
        raise FileNotFoundError("needs cuobjdump and nvdisasm (CUDA toolkit or triton's bundled copies)")
    subprocess.run([cuobjdump, "-xelf", "all", os.path.abspath(so)], cwd=workdir, capture_output=True, check=True)
    out = {}
    for cubin in sorted(glob.glob(os.path.join(workdir, f"*{arch}*.cubin"))):
        if name_filter not in os.path.basename(cubin):
            continue
        path = cubin[: -len(".cubin")] + ".gi.sass"
        with open(path, "w") as f:  # -hex: the encodings, for the control codes' stall counts
            subprocess.run([nvdisasm, "-c", "-gi", "-hex", cubin], stdout=f, check=True)
        out[os.path.basename(cubin)] = path
    return out


def bwd_unit(dt: str, arch: str, head_dim: int = 32) -> str:
    """The cubin of the tensor-core backward of ``dt`` at ``head_dim``: one translation unit per
    (head_dim, dtype), ``csrc/cuda/attention/attention_bwd_hdim<D>_<dt>.cu``; the forward is in
    ``attention_<dt>.cu``."""
    return f"attention_bwd_hdim{head_dim}_{dt}.{arch}.cubin"


def parse_gi(path: str, name_substr: str):
    """Instructions (with inline chains) and labels of the first kernel whose mangled name contains name_substr."""
    ins: List[Instr] = []
    labels: Dict[str, int] = {}
    cur = None
    chain: List[tuple] = []
    fresh = True
    high_next = False
    found = None
    with open(path) as f:
        for line in f:
            if line.startswith(".text."):
                cur = line[6:].split(":")[0].strip()
                if found is not None and cur != found:
                    break
                if found is None and name_substr in cur:
                    found = cur
                continue
            if found is None or cur != found:
                continue
            m = re.match(r'\s*//## File "([^"]+)", line (\d+)', line)
            if m:
                if fresh:
                    chain, fresh = [], False
                chain.append((os.path.basename(m.group(1)), int(m.group(2))))
                continue
            m = re.match(r"^(\.L_x_\d+):", line)
            if m:
                labels[m.group(1)] = len(ins)
                continue
            m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
            if m:
                fresh = True
                text = m.group(1).strip()
                op = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]
                ins.append(Instr(op, text, list(chain)))
                high_next = True  # with -hex: the encoding's high word is the next line
                continue
            m = re.match(r"\s*/\* (0x[0-9a-f]{16}) \*/\s*$", line)
            if m and ins and high_next:
                ins[-1].stall = control_stall(int(m.group(1), 16))
            high_next = False
    return found, ins, labels


def block_lines(src: str, pattern: str) -> List[int]:
    """1-based lines of the block that the first line matching ``pattern`` opens, from that line
    to the brace matching the first ``{`` on it or after it (a signature may span lines)."""
    with open(src) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            j = next(k for k in range(i, len(lines)) if "{" in lines[k].split("//")[0])
            return list(range(i + 1, _extent(lines, j) + 2))
    raise ValueError(f"no line matching {pattern!r} in {src}")


def branches_in(ins: List[Instr], kernel_file: str, lines) -> Dict[str, List[int]]:
    """Of the instructions whose innermost frame in ``kernel_file`` is on one of ``lines``: the
    source line of each branch (BRA) and divergence marker (BSSY / BSYNC), by op, and under
    "all" the line of every instruction (so that a caller can tell the block was compiled)."""
    want = set(lines)
    out: Dict[str, List[int]] = {"all": [], "BRA": [], "BSSY": [], "BSYNC": []}
    for x in ins:
        line = next((ln for f, ln in x.chain if f == kernel_file), None)
        if line not in want:
            continue
        out["all"].append(line)
        op = x.op.split(".")[0]
        if op in out:
            out[op].append(line)
    return out


def _extent(lines: List[str], i: int) -> int:
    """0-based last line of the block a marker on line i covers: brace-matched from the
    line's last ``{``, or the one statement (a loop or ``if`` header's own ``;`` are
    inside its parentheses)."""
    code = lines[i].split("//")[0]
    if "{" not in code:
        j, code = i, re.sub(r"^\s*(for|while|if)\s*\(.*\)", "", code)
        while ";" not in code and j + 1 < len(lines):
            j += 1
            code = lines[j].split("//")[0]
        return j
    depth, j, text = 0, i, code[code.rfind("{"):]
    while True:
        for ch in text:
            depth += (ch == "{") - (ch == "}")
            if depth == 0:
                return j
        j += 1
        if j >= len(lines):
            raise ValueError(f"unbalanced braces after line {i + 1}")
        text = lines[j].split("//")[0]


def dyn_markers(src: str) -> Dict[int, str]:
    """line -> marker (``trips=<expr>`` or ``skip``), from either spelling:

    * ``// sass-dyn: trips=<expr>`` / ``skip`` (that line) / ``skip-begin`` ... ``skip-end``
      (the lines between), as in fwd_mma_kernel.cuh;
    * ``// sass-dyn: when=<expr>`` on a line that opens a block (an ``if`` whose condition the
      launch geometry decides): the block's body, brace-matched, is on the costed path only where
      ``<expr>`` holds in the counter's environment (the line itself, the test, always is), as in
      patch_merging.cuh's group reduction across warps;
    * ``// sass: trips(<expr>)``, ``// sass: image-loop`` (= ``trips=images``) and
      ``// sass: skip(<path>)`` (the block the line opens, brace-matched, or its one
      statement), as in bwd_mma_kernel.cuh.
    """
    out: Dict[int, str] = {}
    begin = None
    with open(src) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines, 1):
        m = re.search(r"//\s*sass-dyn:\s*(.+?)\s*$", line)
        mk = m.group(1) if m else None
        if mk == "skip-begin":
            begin = i
        elif mk == "skip-end" and begin is not None:
            for k in range(begin, i + 1):
                out[k] = "skip"
            begin = None
        elif mk and mk.startswith("when="):
            for k in range(i + 1, _extent(lines, i - 1) + 2):
                if k in out:
                    raise ValueError(f"{src}:{k}: a marker inside the `when` block of line {i} (not supported)")
                out[k] = mk
        elif mk and out.get(i, "").startswith("when="):
            raise ValueError(f"{src}:{i}: a marker inside a `when` block (not supported)")
        elif mk:
            out[i] = mk
        m = re.search(r"//\s*sass:\s*(image-loop|skip\(\w+\)|trips\(([^)]*)\))", line)
        if not m:
            continue
        if m.group(1) == "image-loop" and out.get(i) != "skip":
            out[i] = "trips=images"
        elif m.group(2) is not None and out.get(i) != "skip":
            out[i] = f"trips={m.group(2)}"
        else:
            for k in range(i, _extent(lines, i - 1) + 2):
                out[k] = "skip"
    return out


_DYN_CATS = [("HMMA", r"^HMMA"), ("LDSM", r"^LDSM"), ("MOVM", r"^MOVM"), ("LD.E", r"^LD\.E"), ("ST.E", r"^ST\.E"),
             ("LDS", r"^LDS(?!M)"), ("STS", r"^STS"), ("LDGSTS", r"^LDGSTS"), ("LDG", r"^LDG(?!STS|DEPBAR)"),
             ("STG", r"^STG"), ("SHFL", r"^SHFL"), ("BAR", r"^BAR"), ("MUFU", r"^MUFU"),
             ("FP", r"^(FFMA|FMUL|FADD|FMNMX|FSETP|FSEL|F2F|F2FP)"), ("BRA", r"^BRA")]


def check_lines_are_code(ins: List[Instr], kernel_file: str, src: str) -> None:
    """Raise unless every line of ``src`` the SASS is attributed to holds code: a
    listing of another version of the source (a stale build) would put the
    ``sass-dyn`` markers on the wrong loops and silently give wrong counts."""
    with open(src) as f:
        text = f.read().splitlines()
    bad = set()
    for x in ins:
        for f_, l_ in x.chain:
            if f_ != kernel_file:
                continue
            code = text[l_ - 1].split("//", 1)[0].strip() if 0 < l_ <= len(text) else ""
            if code in ("", "#pragma unroll"):  # (a closing brace holds the exit)
                bad.add(l_)
    if bad:
        raise ValueError(f"SASS attributed to lines of {kernel_file} without code ({sorted(bad)[:8]}): "
                         "the extension was not built from this source -- rebuild it")


def path_weights(ins: List[Instr], labels: Dict[str, int], kernel_file: str, markers: Dict[int, str],
                 env: Dict[str, float]):
    """(executions of each instruction on the costed path, loops): its loops' trips multiplied, 0 for
    the instructions on a skip line, on a ``when`` line whose condition is false in ``env``, or after
    the last EXIT."""
    skip_lines = {ln for ln, m in markers.items()
                  if m == "skip" or (m.startswith("when=")
                                     and not eval(m[len("when="):], {"__builtins__": {}}, dict(env)))}  # noqa: S307

    def outer(ch):
        for f_, l_ in reversed(ch):
            if f_ == kernel_file:
                return l_
        return None

    # The kernel's code ends at its last EXIT: what ptxas places after it are the
    # out-of-line convergence stubs (WARPSYNC.COLLECTIVE re-runs of a shuffle or
    # vote, entered only by a diverged warp, never on these warp-uniform paths)
    # and the trailing self-branch: not counted, and no loop.
    end = max((i for i, x in enumerate(ins) if x.op == "EXIT"), default=len(ins) - 1) + 1
    loops = []
    for i, x in enumerate(ins[:end]):
        if not x.op.startswith("BRA"):
            continue
        m = re.search(r"`\((\.L_x_\d+)\)", x.text)
        if not m or m.group(1) not in labels or labels[m.group(1)] > i:
            continue
        loops.append([labels[m.group(1)], i, {l_ for f_, l_ in x.chain if f_ == kernel_file}, 1.0, None])
    # A trips marker belongs to the innermost loop whose back edge comes from its
    # line (at any inline level: markers may sit in the file's helpers), else to
    # the innermost loop that holds an instruction of its line (the loop's own
    # increment and test: `for` lines carry them).
    for line, mk in markers.items():
        if not mk.startswith("trips="):
            continue
        inside = [lp for lp in loops if line in lp[2]] or [
            lp for lp in loops if any(outer(ins[k].chain) == line for k in range(lp[0], lp[1] + 1))]
        if not inside:
            if any(outer(x.chain) == line for x in ins):  # the line is this kernel's, but loops nowhere
                raise ValueError(f"{kernel_file}:{line}: marker {mk!r} is in no loop of the SASS -- "
                                 "is the extension built from this source?")
            continue  # another kernel's loop
        exprs = mk[len("trips="):].split(";")
        if len(exprs) == 1:
            chosen = [min(inside, key=lambda lp: lp[1] - lp[0])]
        else:
            # `trips(a; b; c)`: the nested loops of a helper inlined on this line (their
            # back edges come from it), innermost first -- exactly that many, nested.
            chosen = sorted([lp for lp in loops if line in lp[2]], key=lambda lp: lp[1] - lp[0])
            nested = all(o[0] <= i_[0] and i_[1] <= o[1] for i_, o in zip(chosen, chosen[1:]))
            if len(chosen) != len(exprs) or not nested:
                raise ValueError(f"{kernel_file}:{line}: marker {mk!r} names {len(exprs)} nested loops, the SASS "
                                 f"has {len(chosen)} loops from that line{'' if nested else ' (not nested)'}")
        for lp, expr in zip(chosen, exprs):
            lp[3] = float(eval(expr, {"__builtins__": {}}, dict(env)))  # noqa: S307 - our own markers
            lp[4] = mk
    mult = [1.0] * len(ins)
    for j, i, _, trips, _ in loops:
        for k in range(j, i + 1):
            mult[k] *= trips
    for k, x in enumerate(ins):
        if k >= end or any(f_ == kernel_file and l_ in skip_lines for f_, l_ in x.chain):
            mult[k] = 0.0
    return mult, loops


def dynamic_count(ins: List[Instr], labels: Dict[str, int], kernel_file: str, markers: Dict[int, str],
                  env: Dict[str, float]):
    """(total warp-instructions per warp, counts by category, loops) of one kernel path; category
    ``stall``: the control codes' stall cycles over the path (Instr.stall, 0 without ``-hex``)."""
    mult, loops = path_weights(ins, labels, kernel_file, markers, env)
    total = 0.0
    cats: Dict[str, float] = {}
    for k, x in enumerate(ins):
        if not mult[k]:
            continue
        total += mult[k]
        cats["stall"] = cats.get("stall", 0.0) + mult[k] * x.stall  # fixed-latency cycles (control codes)
        for cat, pat in _DYN_CATS:
            if re.match(pat, x.op):
                cats[cat] = cats.get(cat, 0.0) + mult[k]
                break
    return total, cats, loops


# Swin-T at 224 px: (stage, blocks, windows per image, heads); window 7, head_dim 32.
SWIN_T_STAGES = [(1, 2, 64, 3), (2, 2, 16, 6), (3, 6, 4, 12), (4, 2, 1, 24)]
FWD_TARGET_BLOCKS = 1024  # csrc/cuda/attention/launch_template.cuh, plan_fwd (its cap: FWD_MAX_CHUNK below)
_MANGLED_T = {"bf16": "13__nv_bfloat16", "fp16": "6__half"}


def fwd_chunk(B: int, windows_heads: int, resident: int = 4 * H200_SMS) -> int:
    """Images per block of the one-tile forward (launch_template.cuh's fwd_chunk: from the target's up to
    FWD_MAX_CHUNK, the largest with the fewest (waves of ``resident`` blocks) x (images per block); the
    forward's 4 blocks per SM on the H200's SMs)."""
    most = min(FWD_MAX_CHUNK, max(B, 1))
    best = max(1, min(most, B * windows_heads // FWD_TARGET_BLOCKS))

    def cost(c: int) -> int:
        return -(-(-(-B // c) * windows_heads) // resident) * c

    for c in range(best + 1, most + 1):
        if cost(c) <= cost(best):
            best = c
    return best


def parse_gi_all(path: str, name_substrs: List[str]):
    return {sub: parse_gi(path, sub) for sub in name_substrs}


def stall_lines(ins: List[Instr], labels: Dict[str, int], kernel_file: str, markers: Dict[int, str],
                env: Dict[str, float]) -> List[tuple]:
    """Where a kernel's image loop spends its fixed-latency stall cycles: (kernel_file line, innermost
    file:line, warp-instructions, stall cycles, {op: count}) per warp and image, most cycles first --
    the loop body being the difference between the counts at two and at one image."""
    one = path_weights(ins, labels, kernel_file, markers, dict(env, images=1))[0]
    two = path_weights(ins, labels, kernel_file, markers, dict(env, images=2))[0]
    agg: Dict[tuple, list] = {}
    for k, x in enumerate(ins):
        n = two[k] - one[k]
        if n <= 0:
            continue
        outer = next((l_ for f_, l_ in reversed(x.chain) if f_ == kernel_file), None)
        inner = f"{x.chain[0][0]}:{x.chain[0][1]}" if x.chain else "?"
        a = agg.setdefault((outer, inner), [0.0, 0.0, {}])
        a[0] += n
        a[1] += n * x.stall
        a[2][x.op] = a[2].get(x.op, 0.0) + n
    return sorted(((o, i, n, st, ops) for (o, i), (n, st, ops) in agg.items()), key=lambda r: -r[3])


def stall_summary(ins: List[Instr], labels: Dict[str, int], kernel_file: str, markers: Dict[int, str],
                  env: Dict[str, float], images: int) -> Tuple[dict, str]:
    """The fixed-latency stall cycles (control codes) of a kernel with an image loop: per warp and image
    in the loop, and per instruction over a block of ``images`` images; (numbers, a sentence)."""
    one_n, one, _ = dynamic_count(ins, labels, kernel_file, markers, dict(env, images=1))
    two_n, two, _ = dynamic_count(ins, labels, kernel_file, markers, dict(env, images=2))
    blk_n, blk, _ = dynamic_count(ins, labels, kernel_file, markers, dict(env, images=images))
    body_n, body_s = two_n - one_n, two["stall"] - one["stall"]
    mean = blk["stall"] / blk_n
    d = dict(body_instr=body_n, body_stall=body_s, block_mean=mean)
    return d, (f"Fixed-latency stall cycles (the control codes' stall counts over the same path): "
               f"**{body_s:.0f}** per warp and image in the loop ({body_s / body_n:.2f} per instruction); "
               f"over a block of {images} images {mean:.2f} per instruction: {mean - 1:.2f} cycles of fixed-latency "
               "wait per issued instruction, what ncu calls `stall_wait` (on stop 30's build the H200's ncu read "
               "0.08-0.12 above this count in the tile kernels: `attn_bwd_stalls_sm90_2026-12-05.md`).")


# The review of 2026-12-03 (shared/notes/cuda-kernel-review-2026-12-03.md): the SIMT/WMMA forward it
# costed, per warp per (image, window, head), and its per-step totals (G warp-instructions, batch 128).
REVIEW_FWD_PER_WARP = {"bf16": 3585, "fp16": 3482}
REVIEW_STEP_G = dict(fwd=1.67, bwd=3.32, total=5.0)
FWD_WARPS = 4  # FwdMmaTraits::kWarps: warps per block, all four own rows at N = 49 (rows 48..63 of warp 3)


def hmma_by_hand(d: int = 32, keys: int = 64) -> int:
    """mma.sync m16n8k16 per warp (16 query rows) and key tile: S = Q K^T is (keys / 8) n-tiles x (d / 16)
    k-steps, O += P V is (keys / 16) k-steps x (d / 8) n-tiles."""
    return (keys // 8) * (d // 16) + (keys // 16) * (d // 8)


def forward_dynamic_report(so: str, arch: str = "sm_90", batch: int = 128,
                           kernels: Optional[List[Kernel]] = None, listings: Optional[Dict[str, str]] = None,
                           stats: Optional[dict] = None) -> str:
    """Markdown: the estimated dynamic warp-instructions per warp and per (image,
    window, head) of the tensor-core forward on the Swin-T path (bf16 / fp16,
    head_dim 32, window 7, V1, 16-byte vector path), per stage at ``batch``,
    plus SwinV2 window 8 (one tile) and window 12 / 16 / 24 (streamed key tiles),
    and the forward kernels' registers and local memory (``kernels``: read_kernels(so, arch), if at hand).
    ``listings``: disassemble_with_lines' result, if at hand; ``stats`` (a dict) receives
    ``fwd[dtype] = [(stage, images per block, per warp per unit)]`` for the step model."""
    import contextlib
    import tempfile

    kernel_file = "fwd_mma_kernel.cuh"
    src = os.path.join(ROOT, "csrc", "cuda", "attention", kernel_file)
    markers = dyn_markers(src)
    hand = hmma_by_hand()
    lines = [
        f"# Dynamic warp-instruction estimate of the attention forward ({arch})",
        "",
        f"Written by `PYTHONPATH=$PWD python benchmarks/sass_report.py --dyn --batch {batch}` (also by",
        "`tests/test_sass.py::test_attention_forward_instruction_estimate`) from `nvdisasm -c -gi -hex` of the built",
        "extension: static SASS x loop trip counts (the loops and the paths off the costed one are marked",
        "`sass-dyn:` in `csrc/cuda/attention/fwd_mma_kernel.cuh`; the tool refuses a listing whose line",
        "attribution does not fit the source, i.e. a stale build).  Every branch inside the costed path is",
        "counted as taken (an upper bound: e.g. both arms of the prefetch test, and the shift-mask code of the",
        "bias staging for every window).  **Per warp**: one warp's instructions per block divided by the images",
        "of the block (the block's once-only work -- token table, gather offsets, bias + mask tile, prefill --",
        f"spread over them); **per unit**: the {FWD_WARPS} warps of an (image, window, head) together.",
        "",
        "Cross-check by hand (head_dim 32, N = 49 padded to 64 rows and keys): per warp (16 rows) S = Q K^T is",
        f"8 n-tiles x 2 k-steps = 16 mma and O += P V 4 k-steps x 4 n-tiles = 16 mma, {hand} per warp; per",
        f"(image, window, head) {FWD_WARPS} x {hand} = {FWD_WARPS * hand} = 64 "
        "(Q K^T: (64/16) (64/8) (32/16)) + 64 (P V).",
        "The HMMA column is the tool's count; it must equal the hand count (the test asserts it).",
        "",
    ]
    fwd_names = ("attn_fwd_tile_kernel", "attn_fwd_stream_kernel")
    kernels = [k for k in (kernels or read_kernels(so, arch)) if k.short.startswith(fwd_names)]
    lines += ["## Registers and local memory (cuobjdump --dump-resource-usage)", "",
              "Limit (issue 19, item 5): <= 128 registers per thread "
              "(4 blocks of 128 threads, 25% occupancy on sm_90),",
              "no stack frame, no STL / LDL.", "",
              "| kernel | registers | stack B | local B | STL / LDL |", "|---|---:|---:|---:|---:|"]
    for k in kernels:
        lines.append(f"| `{k.short}` | {k.regs} | {k.stack} | {k.local} | "
                     f"{k.counts.get('STL', 0)} / {k.counts.get('LDL', 0)} |")
    lines.append("")
    step_g = {}
    video_fwd: Dict[str, tuple] = {}
    stats = {} if stats is None else stats
    with (contextlib.nullcontext(None) if listings else tempfile.TemporaryDirectory()) as tmp:
        listings = listings or disassemble_with_lines(so, arch, tmp)
        for dt, mt in _MANGLED_T.items():
            path = listings.get(f"attention_{dt}.{arch}.cubin")
            if path is None:
                lines.append(f"no attention_{dt} cubin for {arch}")
                continue
            subs = {
                "tile_v1": f"attn_fwd_tile_kernelINS1_12FwdMmaTraitsI{mt}Li32ELb0E",
                "tile_v2": f"attn_fwd_tile_kernelINS1_12FwdMmaTraitsI{mt}Li32ELb1E",
                "stream_v1": f"attn_fwd_stream_kernelINS1_12FwdMmaTraitsI{mt}Li32ELb0E",
            }
            parsed = parse_gi_all(path, list(subs.values()))
            for _, ins_, _ in parsed.values():
                check_lines_are_code(ins_, kernel_file, src)
            _, ins, labels = parsed[subs["tile_v1"]]
            base = dict(warps=FWD_WARPS, threads=32 * FWD_WARPS, keytiles=1)
            lines += [f"## {dt}, Swin-T (window 7, N = 49, head_dim 32), batch {batch}: attn_fwd_tile_kernel", "",
                      "| stage | (image, window, head) units | images per block | per warp per block | "
                      "per warp per unit | per unit | HMMA per warp per unit (by hand: "
                      f"{hand}) | LDSM | SHFL | MUFU | BAR |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            tot_units, tot_instr = 0, 0.0
            for stage, nblk, nw, heads in SWIN_T_STAGES:
                chunk = fwd_chunk(batch, nw * heads)
                total, cats, _ = dynamic_count(ins, labels, kernel_file, markers, dict(base, images=chunk))
                units = nblk * batch * nw * heads
                per = total / chunk
                stats.setdefault("fwd", {}).setdefault(dt, []).append((stage, chunk, per))
                tot_units += units
                tot_instr += units * per * FWD_WARPS
                lines.append(f"| {stage} | {units} | {chunk} | {total:.0f} | **{per:.0f}** | {FWD_WARPS * per:.0f} | "
                             + " | ".join(f"{cats.get(c, 0) / chunk:.0f}"
                                          for c in ("HMMA", "LDSM", "SHFL", "MUFU", "BAR")) + " |")
            step_g[dt] = tot_instr / 1e9
            old = REVIEW_FWD_PER_WARP[dt]
            avg = tot_instr / tot_units / FWD_WARPS
            lines += ["", f"Swin-T forward, batch {batch} ({tot_units} units): **{avg:.0f}** "
                      "warp-instructions per warp per "
                      f"unit on average, **{step_g[dt]:.3f} G** per forward; the review's kernel: ~{old} per warp, "
                      f"{4 * old * tot_units / 1e9:.2f} G ({old / avg:.1f}x this one).", ""]
            st, st_line = stall_summary(ins, labels, kernel_file, markers, base, fwd_chunk(batch, 64 * 3))
            stats.setdefault("fwd_stall", {})[dt] = st
            lines += [st_line, ""]
            # Other paths: the V2 one-tile kernel, and the streamed key tiles (one block per 64 query rows).
            lines += [f"### {dt}, other windows (head_dim 32)", "",
                      "| path | kernel | images per block | key tiles | per warp per block | per warp per image | "
                      "per (image, window, head) | HMMA per warp per block (by hand) |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            _, ins2, lab2 = parsed[subs["tile_v2"]]
            for chunk in (1, 8):
                total, cats, _ = dynamic_count(ins2, lab2, kernel_file, markers, dict(base, images=chunk))
                lines.append(f"| SwinV2 window 8 (N = 64) | tile, V2 | {chunk} | 1 | {total:.0f} | "
                             f"{total / chunk:.0f} | "
                             f"{FWD_WARPS * total / chunk:.0f} | {cats.get('HMMA', 0):.0f} ({hand * chunk}) |")
            _, ins3, lab3 = parsed[subs["stream_v1"]]
            hand_str = hmma_by_hand(32, STREAM_KEYS)
            for ws, n in [(f"window {w}", w * w) for w in (12, 16, 24)] + [("Video Swin (8, 7, 7)", VIDEO_N)]:
                kt, rb = -(-n // STREAM_KEYS), -(-n // 64)  # key tiles, row blocks (64 query rows each)
                total, cats, _ = dynamic_count(ins3, lab3, kernel_file, markers,
                                               dict(base, images=1, keytiles=kt, keys=STREAM_KEYS, N=n))
                if n == VIDEO_N:
                    video_fwd[dt] = (total, cats)
                lines.append(f"| {ws} (N = {n}) | stream, V1 | 1 | {kt} | {total:.0f} | {total:.0f} | "
                             f"{FWD_WARPS * rb * total:.0f} ({rb} row blocks) | "
                             f"{cats.get('HMMA', 0):.0f} ({hand_str * kt}) |")
            lines += ["", f"(The stream kernel's key tiles are {STREAM_KEYS} keys at head_dim 32.  Its rows count "
                      "every warp of every row block as active: an upper bound at N = 144, whose last row block "
                      "holds 16 rows, and at N = 392, whose last holds 8.)", ""]
        lines += video_swin_report(arch, video_fwd, listings)
    for dt, g in step_g.items():
        stats.setdefault("fwd_g", {})[dt] = g
    lines += ["The issue's target: <= 900 warp-instructions per warp in the forward.  The backward and the",
              "whole step (forward + backward, in G warp-instructions and in estimated ms against the review's",
              "~5.0 G and the attention's HBM floor): `attn_bwd_dyn_" + arch.replace("_", "") + ".md`, written by",
              "the same command.",
              ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- backward, and the step

BWD_WARPS = 4  # BwdMmaTraits::kWarps: launched always; at N = 49 all four own rows (rows 48..63 of warp 3)


def _launch_constants() -> Tuple[int, int, int, int]:
    """choose_chunk's kTargetBlocks, kMaxChunk, kMaxBiasPartials and kBwdWaveSlots, read from
    launch_template.cuh (so that the estimate cannot drift from the planner)."""
    src = open(os.path.join(ROOT, "csrc", "cuda", "attention", "launch_template.cuh")).read()
    target = int(re.search(r"constexpr int kTargetBlocks = (\d+);", src).group(1))
    chunk = int(re.search(r"constexpr int kMaxChunk = (\d+);", src).group(1))
    parts = 1 << int(re.search(r"kMaxBiasPartials = int64_t\(1\) << (\d+);", src).group(1))
    sms, per_sm = map(int, re.search(r"constexpr int64_t kBwdWaveSlots = (\d+) \* (\d+);", src).groups())
    return target, chunk, parts, sms * per_sm


BWD_TARGET_BLOCKS, BWD_MAX_CHUNK, BWD_MAX_PARTIALS, BWD_WAVE_SLOTS = _launch_constants()  # launch_template.cuh
FWD_MAX_CHUNK = BWD_MAX_CHUNK  # plan_fwd's cap is the same kMaxChunk
BWD_TILE_BLOCKS_PER_SM = 3  # BwdMmaTraits::kTileMinBlocks at head_dim 32 (<= 168 registers)
FWD_TILE_BLOCKS_PER_SM = 4  # FwdMmaTraits: <= 128 registers, 4 blocks of 128 threads
# The review's fused WMMA backward, per warp per image (+ ~650 per block), and the issue's targets.
REVIEW_BWD_PER_WARP_IMAGE = {"bf16": 7100, "fp16": 6350}
TARGET_FWD_PER_WARP, TARGET_BWD_PER_WARP_IMAGE = 900, 2200
# The review's H200 model (shared/notes/cuda-kernel-review-2026-12-03.md, section 2.1, step_model_h200.py):
# time = max(warp-instructions / (SMs x IPC x clock), bytes / bandwidth) / wave efficiency, optimistic and
# pessimistic; the bias-gradient partials written by the kernel and summed by the glue on top.
ATT_MODEL = dict(peak=4.8e12, bw=(4.2e12, 3.8e12), bw_ew=(3.9e12, 3.4e12), ipc=(3.2, 2.0),
                 clk=(1.98e9, 1.755e9), sms=132, launch=8e-6)
REVIEW_ATT_MS = (6.6, 11.8)  # the review's attention per step (its 5.0 G), H200
REVIEW_ATT_FLOOR_MS = 0.85


# The models pass the relative-position bias as its table ((2ws - 1)^2, heads): the tile backward bins
# its gradient into the table's rows, partials (chunks, windows, heads, rows) (bias_table_kernels.cuh).
SWIN_T_BIAS_ROWS = 13 * 13
# The `sass:` markers' variables for the tile backward on the Swin-T path (window 7, head_dim 32).
SWIN_T_BWD_ENV = dict(kWarps=BWD_WARPS, kThreads=32 * BWD_WARPS, kDPad=32, kNT=8, N=49, warps=BWD_WARPS,
                      threads=32 * BWD_WARPS, keytiles=1, wt=1, wh=7, ww=7, bias_rows=SWIN_T_BIAS_ROWS)


def bwd_tile_kernel(dt: str, head_dim: int = 32, v2: bool = False) -> str:
    """The mangled-name part that picks the tensor-core tile backward (BwdMmaTraits) of ``dt``."""
    return f"attn_bwd_tile_kernelINS2_12BwdMmaTraitsI{_MANGLED_T[dt]}Li{head_dim}ELb{int(v2)}EEEEEv"


def tile_bwd_stall_lines(listing: str, dt: str = "bf16", top: int = 30) -> List[str]:
    """The ``top`` source lines of the Swin-T tile backward's image loop by fixed-latency stall cycles
    (stall_lines), as text."""
    kernel_file = "bwd_mma_kernel.cuh"
    src = os.path.join(ROOT, "csrc", "cuda", "attention", kernel_file)
    markers = dyn_markers(src)
    found, ins, labels = parse_gi(listing, bwd_tile_kernel(dt))
    if found is None:
        raise ValueError(f"no V1 head_dim 32 tile backward in {listing}")
    check_lines_are_code(ins, kernel_file, src)
    rows = stall_lines(ins, labels, kernel_file, markers, SWIN_T_BWD_ENV)
    n_all, st_all = sum(r[2] for r in rows), sum(r[3] for r in rows)
    out = [f"{dt} tile backward, image loop: {n_all:.0f} warp-instructions, {st_all:.0f} stall cycles per warp and "
           "image; by line of " + kernel_file + " (innermost frame):"]
    for line, inner, n, st, ops in rows[:top]:
        top_ops = ", ".join(f"{o} {c:.0f}" for o, c in sorted(ops.items(), key=lambda t: -t[1])[:4])
        out.append(f"  {line} ({inner}): {n:.0f} instr, {st:.0f} cycles ({st / n:.2f} each) -- {top_ops}")
    return out


def bwd_chunk(B: int, windows_heads: int, N: int = 49, slots: int = BWD_WAVE_SLOTS) -> int:
    """Images per backward block (launch_template.cuh, choose_chunk); slots: the tile kernel's notional
    resident blocks (kBwdWaveSlots), 0 for the other kernels."""
    most = min(BWD_MAX_CHUNK, max(B, 1))
    chunk = max(1, min(most, B * windows_heads // BWD_TARGET_BLOCKS))
    if slots > 0:
        def cost(c: int) -> int:
            return -(-(-(-B // c) * windows_heads) // slots) * c
        for c in range(chunk + 1, most + 1):
            if cost(c) <= cost(chunk):
                chunk = c
    while chunk < B and -(-B // chunk) * windows_heads * N * N > BWD_MAX_PARTIALS:
        chunk *= 2
    return min(max(chunk, 1), max(B, 1))


def bwd_hmma_by_hand(d: int = 32, keys: int = 64) -> int:
    """mma.sync m16n8k16 per warp and (query tile, key tile) of the backward: S = Q K^T and dP = dO V^T
    (keys / 8) n-tiles x (d / 16) k-steps each; dQ += dS K (keys / 16) k-steps x (d / 8) n-tiles; for the
    warp's 16 keys over the tile's query rows (as many as keys) dV = P^T dO and dK = dS^T Q, each
    (keys / 16) k-steps x (d / 8) n-tiles."""
    s = (keys // 8) * (d // 16)
    dq = (keys // 16) * (d // 8)
    return 2 * s + dq + 2 * (keys // 16) * (d // 8)


def _waves_eff(blocks: int, per_sm: int, sms: int = 132) -> float:
    w = blocks / (sms * per_sm)
    return w / -(-w // 1) if w > 0 else 1.0


def _blocks_by_regs(regs: int, warps: int = 4) -> int:
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    return max(1, H100["regs_per_sm"] // (per_warp * warps))


def attention_step_model(fwd: List[tuple], bwd: List[tuple], batch: int = 128, fwd_per_sm: int = 4,
                         bwd_per_sm: int = 3, N: int = 49, bias_rows: int = SWIN_T_BIAS_ROWS) -> dict:
    """The review's H200 model of the Swin-T attention per training step (bf16, window 7, head_dim 32).
    fwd / bwd: per stage (images per block, warp-instructions per warp per (image, window, head)),
    in the order of SWIN_T_STAGES.  The bias is the relative-position table (the models pass it): the
    backward's partials are (chunks, windows, heads, bias_rows) float32 (bias_rows = N * N: the
    gathered (heads, N, N) form's).  Returns counts (G warp-instructions) and model outputs (seconds:
    ``att`` forward + backward and ``att_fwd`` the forward alone, optimistic and pessimistic)."""
    m = ATT_MODEL
    out = dict(fwd_g=0.0, bwd_g=0.0, floor=0.0, att=[0.0, 0.0], att_fwd=[0.0, 0.0], floor_fwd=0.0, issue=[0.0, 0.0],
               ideal=0.0, stages=[])
    for (stage, depth, nw, heads), (hw, C, _), (fc, fper), (bc, bper) in zip(SWIN_T_STAGES, SWIN_T["stages"], fwd,
                                                                              bwd):
        T = batch * hw * hw
        E, wh = T * C, nw * heads
        units = batch * wh
        fi, bi = units * 4 * fper, units * 4 * bper
        fwd_b, bwd_b = E * 8 + T * heads * 4, E * 14 + T * heads * 4  # q, k, v in, o out, lse; + dO, dq/dk/dv
        nchunk = -(-batch // bc)
        part = nchunk * wh * bias_rows * 4  # the bias-gradient partials (float32), written, then summed
        fblocks, bblocks = -(-batch // fc) * wh, nchunk * wh
        out["fwd_g"] += depth * fi / 1e9
        out["bwd_g"] += depth * bi / 1e9
        out["floor"] += depth * (fwd_b + bwd_b) / m["peak"]
        out["floor_fwd"] += depth * fwd_b / m["peak"]
        out["ideal"] += depth * (fi + bi) / (m["sms"] * 4.0 * m["clk"][0])
        row = dict(stage=stage, fwd_instr=fi, bwd_instr=bi, part_mb=part / 1e6, bwd_blocks=bblocks,
                   fwd_blocks=fblocks, ms=[])
        for k in (0, 1):
            rate = m["sms"] * m["ipc"][k] * m["clk"][k]
            tf = max(fi / rate, fwd_b / m["bw"][k]) / _waves_eff(fblocks, fwd_per_sm)
            tb = (max(bi / rate, (bwd_b + part) / m["bw"][k]) / _waves_eff(bblocks, bwd_per_sm)
                  + 2 * part / m["bw_ew"][k] + m["launch"])
            out["att"][k] += depth * (tf + tb)
            out["att_fwd"][k] += depth * tf  # inference: the forward alone
            out["issue"][k] += depth * (fi + bi) / rate
            row["ms"].append(1e3 * depth * (tf + tb))
        out["stages"].append(row)
    return out


def backward_dynamic_report(so: str, arch: str = "sm_90", batch: int = 128,
                            kernels: Optional[List[Kernel]] = None, listings: Optional[Dict[str, str]] = None,
                            stats: Optional[dict] = None) -> str:
    """Markdown: the estimated dynamic warp-instructions per warp per image of the tensor-core backward
    on the Swin-T path (attn_bwd_tile_kernel, bf16 / fp16, head_dim 32, window 7, V1, vector path,
    unpadded map), per stage at ``batch``; the key-tiled kernel at window 12 for reference; and, with
    the forward's counts (``stats["fwd"]`` from forward_dynamic_report, computed here if absent), the
    Swin-T attention per training step in G warp-instructions and in the review's H200 model."""
    import contextlib
    import tempfile

    kernel_file = "bwd_mma_kernel.cuh"
    src = os.path.join(ROOT, "csrc", "cuda", "attention", kernel_file)
    markers = dyn_markers(src)
    hand = bwd_hmma_by_hand()
    kernels = kernels or read_kernels(so, arch)
    stats = {} if stats is None else stats
    tag = arch.replace("_", "")
    lines = [
        f"# Dynamic warp-instruction estimate of the attention backward, and the step ({arch})",
        "",
        f"Written by `PYTHONPATH=$PWD python benchmarks/sass_report.py --dyn --batch {batch}` (with",
        f"`attn_fwd_dyn_{tag}.md`; also by `tests/test_sass.py::test_attention_backward_instruction_estimate`)",
        "from `nvdisasm -c -gi -hex` of the built extension, by the forward's counter: static SASS x loop trip",
        "counts, the loops and the paths off the costed one marked `sass:` in",
        "`csrc/cuda/attention/bwd_mma_kernel.cuh` (`image-loop`, `trips(...)`, `skip(scalar)`,",
        "`skip(padded)`, `skip(gathered)`: the costed path takes the bias as the relative-position table, as the",
        "models pass it, and bins its gradient into the table's rows once per block); the tool refuses a",
        "listing whose line attribution does not fit the source (a stale",
        "build).  Every branch inside the costed path is counted as taken: an upper bound (e.g. the n-tiles",
        "past N = 49 that break out at run time, the prefetch of the next image on the block's last one).",
        "",
        "**Counts** (from the SASS): the warp-instruction columns and the G per step.  **Model outputs**",
        "(no GPU ran): every ms and every ratio to the floor.  **Per warp per image**: one warp's",
        "instructions per block divided by the images of the block (the block's once-only work -- token",
        "table, bias + mask tile in fragment order from the table, the bias gradient binned into the table's",
        "rows -- spread over them).",
        "",
        "Cross-check by hand (head_dim 32, N = 49 padded to one 64-key tile): per warp and image S = Q K^T",
        "and dP = dO V^T are 8 n-tiles x 2 k-steps each (32 mma), dQ += dS K 4 k-steps x 4 n-tiles (16), and",
        "for the warp's 16 keys over the 64 query rows dV = P^T dO and dK = dS^T Q 4 x 4 each (32):",
        f"**{hand}** per warp per image.  The HMMA column is the tool's count; the test asserts it equals the",
        "hand count.",
        "",
    ]
    bwd_names = ("attn_bwd_tile_kernel", "attn_bwd_window_kernel")
    ks = [k for k in kernels if k.short.startswith(bwd_names) and ", 32," in k.short]
    lines += ["## Registers and local memory (cuobjdump --dump-resource-usage), head_dim 32", "",
              "Limit (issue 19, item 5): <= 168 registers (3 blocks of 128 threads per SM), no local memory; "
              "the key-tiled kernel (>= 78 KB of shared memory at head_dim 32: 2 blocks per SM) <= 255, "
              "which its shared memory leaves it.", "",
              "| kernel | registers | stack B | STL / LDL | blocks per SM by registers |", "|---|---:|---:|---:|---:|"]
    for k in ks:
        lines.append(f"| `{k.short}` | {k.regs} | {k.stack} | {k.counts.get('STL', 0)} / {k.counts.get('LDL', 0)} | "
                     f"{_blocks_by_regs(k.regs)} |")
    lines.append("")
    cats = ("HMMA", "LDSM", "SHFL", "MUFU", "BAR", "LDGSTS", "STG", "LDS", "STS")
    with (contextlib.nullcontext(None) if listings else tempfile.TemporaryDirectory()) as tmp:
        listings = listings or disassemble_with_lines(so, arch, tmp)
        if "fwd" not in stats:
            forward_dynamic_report(so, arch, batch, kernels, listings, stats)
        for dt, mt in _MANGLED_T.items():
            unit = bwd_unit(dt, arch)
            path = listings.get(unit)
            if path is None:
                lines.append(f"no {unit} for {arch}")
                continue
            subs = {
                "tile": bwd_tile_kernel(dt),
                "tile4": f"attn_bwd_tile_kernelINS2_16BwdMmaLeanTraitsI{mt}EEEEv",
                "resident": f"attn_bwd_window_kernelINS2_12BwdMmaTraitsI{mt}Li32ELb0EEELb1EEEv",
                "streamed": f"attn_bwd_window_kernelINS2_12BwdMmaTraitsI{mt}Li32ELb0EEELb0EEEv",
            }
            parsed = parse_gi_all(path, list(subs.values()))
            for name, (found, ins_, _) in parsed.items():
                if found is None or not ins_:
                    raise ValueError(f"no kernel {name} in {unit}")
                check_lines_are_code(ins_, kernel_file, src)
            _, ins, labels = parsed[subs["tile"]]
            env = SWIN_T_BWD_ENV
            one, _, _ = dynamic_count(ins, labels, kernel_file, markers, dict(env, images=1))
            two, _, _ = dynamic_count(ins, labels, kernel_file, markers, dict(env, images=2))
            body, once = two - one, 2 * one - two
            st, st_line = stall_summary(ins, labels, kernel_file, markers, env, bwd_chunk(batch, 64 * 3))
            stats.setdefault("bwd_stall", {})[dt] = st
            lines += [f"## {dt}, Swin-T (window 7, N = 49, head_dim 32), batch {batch}: attn_bwd_tile_kernel", "",
                      f"Image loop body **{body:.0f}** warp-instructions per warp and image; outside it {once:.0f} "
                      "per warp and block.", "", st_line, "",
                      "| stage | (image, window, head) units | images per block | blocks | per warp per block | "
                      f"**per warp per image** | per unit (4 warps) | HMMA per warp per image (by hand: {hand}) | "
                      + " | ".join(cats[1:]) + " |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(cats) - 1)]
            tot_units, tot_instr, per_stage = 0, 0.0, []
            for stage, nblk, nw, heads in SWIN_T_STAGES:
                chunk = bwd_chunk(batch, nw * heads)
                total, c, _ = dynamic_count(ins, labels, kernel_file, markers, dict(env, images=chunk))
                per = total / chunk
                units = nblk * batch * nw * heads
                tot_units += units
                tot_instr += units * BWD_WARPS * per
                per_stage.append((chunk, per))
                lines.append(f"| {stage} | {units} | {chunk} | {-(-batch // chunk) * nw * heads} | {total:.0f} | "
                             f"**{per:.0f}** | {BWD_WARPS * per:.0f} | "
                             + " | ".join(f"{c.get(x, 0) / chunk:.0f}" for x in cats) + " |")
            stats.setdefault("bwd", {})[dt] = per_stage
            _, ins4, lab4 = parsed[subs["tile4"]]
            one4, _, _ = dynamic_count(ins4, lab4, kernel_file, markers, dict(env, images=1))
            two4, _, _ = dynamic_count(ins4, lab4, kernel_file, markers, dict(env, images=2))
            k4 = [k for k in ks if k.short == f"attn_bwd_tile_kernel<{dt}, 32, v1, lean>"]
            st4, _ = stall_summary(ins4, lab4, kernel_file, markers, env, bwd_chunk(batch, 64 * 3))
            lines += ["", f"The four-blocks-per-SM form (`SWIN_EXT_ATTN_BWD=tile4`, one image in flight, "
                      f"{k4[0].regs if k4 else '?'} registers): image loop body **{two4 - one4:.0f}** "
                      f"warp-instructions per warp and image (this kernel: {body:.0f}); outside it "
                      f"{2 * one4 - two4:.0f} per warp and block; {st4['body_stall']:.0f} stall cycles per warp and "
                      f"image in the loop (this kernel: {st['body_stall']:.0f}), {st4['block_mean']:.2f} per "
                      "instruction over a block at stage 1."]
            avg = tot_instr / tot_units / BWD_WARPS
            old = REVIEW_BWD_PER_WARP_IMAGE[dt]
            over = [str(st) for (st, *_), (_, p) in zip(SWIN_T_STAGES, per_stage) if p > TARGET_BWD_PER_WARP_IMAGE]
            lines += ["", f"Swin-T backward, batch {batch} ({tot_units} units): **{avg:.0f}** warp-instructions per "
                      f"warp per image on average, **{tot_instr / 1e9:.3f} G** per backward (a count).  The issue's "
                      f"target <= {TARGET_BWD_PER_WARP_IMAGE:,} per warp per image: the image loop ({body:.0f}, the "
                      f"quantity of the review's ~{old:,} per image + ~650 per block, {old / body:.1f}x this one) "
                      + ("meets it" if body <= TARGET_BWD_PER_WARP_IMAGE else "does NOT meet it")
                      + ("; with the block's once-only work spread over its images every stage meets it" if not over
                         else f"; with the block's once-only work spread over its images stage(s) {', '.join(over)} "
                         "do not (few images per block)") + ".", ""]
            # The key-tiled kernel at window 12 (N = 144: 3 key tiles x 3 query tiles per image).
            lines += [f"### {dt}, window 12 (N = 144, head_dim 32), for reference: attn_bwd_window_kernel", "",
                      "One block per (window, head, chunk of images); per image two passes over the 3 key tiles "
                      "x 3 query tiles: the D pass (S and dP, D = rowsum(P o dP): 32 HMMA per warp and pair) and "
                      "the main pass (S, dP, dQ, dV, dK: 80).  Everything the backward does is counted: there is "
                      "no pre-pass and no recomputed forward.  The last key tile holds 16 keys and the last query "
                      "tile 16 rows: counted whole (upper bound).",
                      "",
                      "| kernel (dQ of the window) | images per block | per warp per block | per warp per image | "
                      "per (image, window, head) (4 warps) | HMMA per warp per image (by hand: "
                      f"({hand} + 32) x 3 x 3 = {9 * (hand + 32)}) |",
                      "|---|---:|---:|---:|---:|---:|"]
            for kind in ("resident", "streamed"):
                _, ins2, lab2 = parsed[subs[kind]]
                for chunk in (1, 8):
                    total, c, _ = dynamic_count(ins2, lab2, kernel_file, markers,
                                                dict(env, images=chunk, keytiles=3, N=144, wh=12, ww=12,
                                                     bias_rows=23 * 23))
                    lines.append(f"| {kind} | {chunk} | {total:.0f} | {total / chunk:.0f} | "
                                 f"{BWD_WARPS * total / chunk:.0f} | {c.get('HMMA', 0) / chunk:.0f} |")
            lines.append("")
    if "bf16" in stats.get("bwd", {}) and "bf16" in stats.get("fwd", {}):
        fwd = [(c, p) for _, c, p in stats["fwd"]["bf16"]]
        tile = [k for k in ks if k.short == "attn_bwd_tile_kernel<bf16, 32, v1>"]
        fwdk = [k for k in kernels if k.short.startswith("attn_fwd_tile_kernel<bf16, 32, v1")]
        bps = min(BWD_TILE_BLOCKS_PER_SM, _blocks_by_regs(tile[0].regs)) if tile else BWD_TILE_BLOCKS_PER_SM
        fps = min(FWD_TILE_BLOCKS_PER_SM, _blocks_by_regs(fwdk[0].regs)) if fwdk else FWD_TILE_BLOCKS_PER_SM
        mdl = attention_step_model(fwd, stats["bwd"]["bf16"], batch, fps, bps)
        stats["model"] = mdl
        tot_g = mdl["fwd_g"] + mdl["bwd_g"]
        m = ATT_MODEL
        lines += [f"## The Swin-T bf16 training step at batch {batch}: attention forward + backward", "",
                  "Counts (G warp-instructions, from the two tables: the forward's per stage from "
                  f"`attn_fwd_dyn_{tag}.md`):", "",
                  "| | forward G | backward G | step G | the review's (fwd / bwd / step) | step vs review |",
                  "|---|---:|---:|---:|---|---:|",
                  f"| bf16 | {mdl['fwd_g']:.3f} | {mdl['bwd_g']:.3f} | **{tot_g:.3f}** | {REVIEW_STEP_G['fwd']} / "
                  f"{REVIEW_STEP_G['bwd']} / {REVIEW_STEP_G['total']} | {tot_g / REVIEW_STEP_G['total']:.2f}x |",
                  "",
                  "Model outputs (ESTIMATED, no GPU; the review's H200 model, "
                  "`shared/notes/cuda-kernel-review-2026-12-03.md` section 2.1): per layer time = max(warp-"
                  f"instructions / ({m['sms']} SMs x IPC x clock), bytes / bandwidth) / wave efficiency, with IPC "
                  f"{m['ipc'][0]} / {m['ipc'][1]} warp-instructions per clock per SM (of 4 issue slots), clock "
                  f"{m['clk'][0] / 1e9:.3g} / {m['clk'][1] / 1e9:.4g} GHz, streaming bandwidth "
                  f"{m['bw'][0] / 1e12:.1f} / {m['bw'][1] / 1e12:.1f} TB/s (optimistic / pessimistic); bytes: "
                  "forward 8 B per token-channel (q, k, v in, o out, bf16) + the float32 lse per (token, head), "
                  "backward 14 B (+ dO in, dq, dk, dv out) + lse, plus the bias-gradient partials (float32 "
                  f"(chunks, windows, heads, {SWIN_T_BIAS_ROWS}): the models pass the relative-position table, whose "
                  "rows the kernel bins the gradient into; (chunks, windows, heads, 49, 49) with the gathered bias), "
                  "written by the kernel and read by the glue's sum at "
                  f"{m['bw_ew'][0] / 1e12:.1f} / {m['bw_ew'][1] / 1e12:.1f} TB/s, {1e6 * m['launch']:.0f} us per sum); "
                  f"wave efficiency at {fps} forward / {bps} backward blocks per SM (by registers and the traits' "
                  "launch bounds); HBM floor = the forward's and backward's bytes at the 4.8 TB/s peak.", "",
                  "| stage | forward warp-instr per layer (count) | backward (count) | backward blocks | "
                  "partials MB | est. ms per step, fwd + bwd (opt. - pess.) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in mdl["stages"]:
            lines.append(f"| {r['stage']} | {r['fwd_instr'] / 1e6:.1f} M | {r['bwd_instr'] / 1e6:.1f} M | "
                         f"{r['bwd_blocks']} | {r['part_mb']:.1f} | {r['ms'][0]:.3f} - {r['ms'][1]:.3f} |")
        flo = 1e3 * mdl["floor"]
        att = [1e3 * x for x in mdl["att"]]
        iss = [1e3 * x for x in mdl["issue"]]
        met = "met" if att[1] <= 2 * flo else ("met under the optimistic assumptions only" if att[0] <= 2 * flo
                                               else "NOT met")
        lines += ["",
                  "| per training step | optimistic | pessimistic |", "|---|---:|---:|",
                  f"| attention fwd + bwd, est. ms (model) | **{att[0]:.2f}** | **{att[1]:.2f}** |",
                  f"| of it issue time alone, est. ms (model) | {iss[0]:.2f} | {iss[1]:.2f} |",
                  f"| HBM floor, ms (bytes at 4.8 TB/s) | {flo:.2f} | {flo:.2f} |",
                  f"| ratio to the floor (model) | **{att[0] / flo:.2f}x** | **{att[1] / flo:.2f}x** |",
                  f"| the review's kernels (its 5.0 G), ms / ratio | {REVIEW_ATT_MS[0]} / "
                  f"{REVIEW_ATT_MS[0] / REVIEW_ATT_FLOOR_MS:.1f}x | {REVIEW_ATT_MS[1]} / "
                  f"{REVIEW_ATT_MS[1] / REVIEW_ATT_FLOOR_MS:.1f}x |",
                  "",
                  f"At a perfect 4 warp-instructions per clock per SM at {m['clk'][0] / 1e9:.3g} GHz the issue "
                  f"time alone would be {1e3 * mdl['ideal']:.2f} ms.  The issue's target (attention forward + "
                  f"backward <= 2x its HBM floor, <= 1.7 ms per step; the review's floor {REVIEW_ATT_FLOOR_MS} ms, "
                  f"this model's {flo:.2f} ms): {met}.", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the rest of the step vs its floors
#
# add+LN, bias+GELU and patch merging at the Swin-T bf16 (autocast) training step, batch 128 (issue 20):
# the bytes each op must move (its inputs read once, its outputs written once, at their dtypes: the
# HBM floor) against the bytes the kernel design moves (the floor plus the dweight / dbias partial rows
# it writes and the glue's sum reads back), instructions per element from the SASS of the kernel the
# model runs, and the review's H200 model (stream kernels: IPC 3.4 / 2.6) before and now.

@dataclass
class TensorIO:
    """One tensor an op reads or writes: elements and bytes per element."""

    name: str
    numel: int
    size: int
    write: bool = False

    @property
    def nbytes(self) -> int:
        return self.numel * self.size


F32, BF16 = 4, 2


def op_tensors(op: str, B: int, H: int, W: int, C: int) -> List[TensorIO]:
    """The inputs and outputs of one call of ``op`` at the autocast dtypes the Swin-T model uses (float32
    residual stream and LayerNorm parameters, bf16 Linear outputs): the op schemas of csrc/op_schemas.h.
    (B, H, W, C) is the op's input map (merging: before the 2x2 gather; bias+GELU: C is fc1's 4C)."""
    rows, E = B * H * W, B * H * W * C
    if op == "add+LN fwd":
        return [TensorIO("x", E, F32), TensorIO("branch", E, BF16), TensorIO("weight", C, F32),
                TensorIO("bias", C, F32), TensorIO("h", E, F32, True), TensorIO("y", E, BF16, True),
                TensorIO("mean", rows, F32, True), TensorIO("rstd", rows, F32, True)]
    if op == "add+LN bwd":
        return [TensorIO("grad_h", E, F32), TensorIO("grad_y", E, BF16), TensorIO("h", E, F32),
                TensorIO("weight", C, F32), TensorIO("mean", rows, F32), TensorIO("rstd", rows, F32),
                TensorIO("dh", E, F32, True), TensorIO("dbranch", E, BF16, True), TensorIO("dweight", C, F32, True),
                TensorIO("dbias", C, F32, True)]
    if op == "bias+GELU fwd":
        return [TensorIO("z", E, BF16), TensorIO("bias", C, F32), TensorIO("y", E, BF16, True)]
    if op == "bias+GELU bwd":
        return [TensorIO("grad_y", E, BF16), TensorIO("z", E, BF16), TensorIO("bias", C, F32),
                TensorIO("dz", E, BF16, True), TensorIO("dbias", C, F32, True)]
    P = B * ((H + 1) // 2) * ((W + 1) // 2)
    if op == "merging fwd":
        return [TensorIO("x", E, F32), TensorIO("branch", E, BF16), TensorIO("weight", 4 * C, F32),
                TensorIO("bias", 4 * C, F32), TensorIO("y", P * 4 * C, BF16, True), TensorIO("mean", P, F32, True),
                TensorIO("rstd", P, F32, True)]
    if op == "merging bwd":
        return [TensorIO("grad_out", P * 4 * C, BF16), TensorIO("x", E, F32), TensorIO("weight", 4 * C, F32),
                TensorIO("mean", P, F32), TensorIO("rstd", P, F32), TensorIO("branch", E, BF16),
                TensorIO("dx", E, F32, True), TensorIO("dbranch", E, BF16, True),
                TensorIO("dweight", 4 * C, F32, True), TensorIO("dbias", 4 * C, F32, True)]
    raise ValueError(op)


def _merge_geometry(C: int, backward: bool, vec: int = 8) -> tuple:
    """merge_plan's register path at 4C: (log2G, nch, lanes-busy fraction)."""
    chunks = 4 * C // vec
    nch_max = (16 if backward else 24) // vec  # kMergeBwdElems / kMergeFwdElems
    lg = 0
    while (1 << lg) * nch_max < chunks:
        lg += 1
    nch = -(-chunks // (1 << lg))
    return lg, nch, chunks / ((1 << lg) * nch)


def _merge_bwd_iters(P: int, groups: int) -> int:
    """merge_bwd_iters (patch_merging.cuh): pixel groups per register-backward block, from 16 down to 8
    (4 blocks per SM on the H200)."""
    return _fewest_wave_steps(P, groups, 16, 8, 4 * H200_SMS)


def op_partial_bytes(op: str, B: int, H: int, W: int, C: int) -> int:
    """Bytes the design moves beyond the floor: the float32 dweight / dbias partial rows of the backward
    kernels (one row pair per block; bias+GELU: dbias only), written by the kernel and read by the glue's sum."""
    rows = B * H * W
    if op == "add+LN bwd":
        lg = 0
        while (3 << lg) * 8 < C:  # add_ln_plan: smallest 2^lg lanes with 2^lg * NCH (3) * VEC (8) >= C
            lg += 1
        return 2 * 2 * F32 * C * -(-rows // _add_ln_rows_per_block(rows, lg, backward=True))
    if op == "bias+GELU bwd":
        return 2 * F32 * C * -(-rows // _bias_gelu_rows_per_block(rows, C, backward=True))
    if op == "merging bwd":
        lg, _, _ = _merge_geometry(C, True)
        P = B * ((H + 1) // 2) * ((W + 1) // 2)
        groups = max(1, 128 >> lg)
        blocks = -(-P // (groups * _merge_bwd_iters(P, groups)))  # one partial row pair per block
        return 2 * 2 * F32 * 4 * C * blocks
    return 0


# Per Swin-T step: (op, kernel the model runs, calls per transformer block or None for the 3 mergings).
FLOOR_OPS = [
    ("add+LN fwd", "add_ln_fwd_reg_kernel<fp32, bf16, bf16, fp32, 8, 3>", 2),
    ("add+LN bwd", "add_ln_bwd_reg_kernel<fp32, bf16, bf16, fp32, 8, 3>", 2),
    ("bias+GELU fwd", "bias_gelu_fwd_kernel<bf16, fp32, 8>", 1),
    ("bias+GELU bwd", "bias_gelu_bwd_kernel<bf16, fp32, 8>", 1),
    ("merging fwd", "merge_fwd_reg_kernel<fp32, bf16, bf16, 8, 3>", None),
    ("merging bwd", "merge_bwd_reg_kernel<fp32, bf16, bf16, 8, 2>", None),
]
# The issue's targets (x the floor, H200 estimate) per op family.
FLOOR_TARGETS = {"add+LN": 1.15, "bias+GELU": 1.2, "merging": 1.5}
# The review's numbers (shared/notes/cuda-kernel-review-2026-12-03.md: section 1.4 and problems P2 / P6 / P7;
# section 2.2 per step, H200, fwd + bwd): bytes per element moved, warp-instructions per element, and
# its est. ms (optimistic, pessimistic) against its floor ms.  Merging: per input element, with the
# separate residual add (fp32 + bf16 -> fp32), the fp32 merge and the autocast cast; its fused-design
# floor counted 8 + 12 B per input element (no separate branch gradient).
REVIEW_FLOORS = {
    "add+LN": dict(bytes="12 / 16.25", instr="~3.6 / ~3.3 (350 / 320 per 96-channel row)", ms=(2.65, 3.37),
                   floor=2.14),
    "bias+GELU": dict(bytes="4 / 6.03", instr="0.96 / 1.44 (247 / 369 per 256)", ms=(1.98, 2.93), floor=1.53),
    "merging": dict(bytes="24 / 24", instr="~2.1 / ~2.6", ms=(0.84, 1.08), floor=0.28),
}


def floors_rows(so: str, arch: str = "sm_90", kernels: Optional[List[Kernel]] = None, batch: int = 128) -> List[dict]:
    """Per op of FLOOR_OPS, summed over a Swin-T bf16 training step at ``batch``: floor and design bytes,
    elements, warp-instructions (from the SASS), H200 floor and estimated ms, ratio."""
    ks = kernels if kernels is not None else read_kernels(so, arch)
    by_short = {k.short: k for k in ks}
    want = [by_short[name] for _, name, _ in FLOOR_OPS if name in by_short]
    ins = read_sass_instrs(so, want, arch)
    merge_stages = [(hw, C) for hw, C, _ in SWIN_T["stages"][:3]]
    import tempfile

    src = os.path.join(ROOT, "csrc", "cuda", "patch_merging.cuh")
    merge_markers = dyn_markers(src)
    merge_ins = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the kernels' unit (patch_merging_cuda.<arch>.cubin is the op's ATen glue: no project kernels)
        cubin = f"patch_merging_kernels.{arch}.cubin"
        listing = disassemble_with_lines(so, arch, tmp, name_filter="patch_merging_kernels").get(cubin)
        if listing is None:
            raise ValueError(f"no {cubin} in {os.path.basename(so)}")
        for k in want:
            if k.short.startswith("merge_"):
                found, mi, labels = parse_gi(listing, k.mangled)
                if found is None:
                    raise ValueError(f"no {k.short} in the patch_merging cubin")
                check_lines_are_code(mi, "patch_merging.cuh", src)
                merge_ins[k.mangled] = (mi, labels)
    out = []
    for op, name, per_block in FLOOR_OPS:
        k = by_short.get(name)
        if k is None:
            raise ValueError(f"no kernel {name} in {os.path.basename(so)} ({arch})")
        code = ins.get(k.mangled, [])
        calls = ([(hw, C * (4 if op.startswith("bias") else 1), depth * per_block) for hw, C, depth in SWIN_T["stages"]]
                 if per_block else [(hw, C, 1) for hw, C in merge_stages])
        floor_b = design_b = elems = instr = 0.0
        per_elem = []
        for hw, C, n in calls:
            t = op_tensors(op, batch, hw, hw, C)
            fb = sum(x.nbytes for x in t)
            e = batch * hw * hw * C
            if op.startswith("add+LN"):
                lg = 0
                while (3 << lg) * 8 < C:
                    lg += 1
                c = loop_count(k, code, lg)
                pe, busy = c.per_elem, 1.0
            elif op.startswith("bias"):
                c = loop_count(k, code, 0)
                pe, busy = c.per_elem, 1.0
            else:  # merging: the dynamic counter over patch_merging.cuh's sass-dyn markers
                bwd = op.endswith("bwd")
                lg, nch, busy = _merge_geometry(C, bwd)
                groups = max(1, 128 >> lg)
                iters = _merge_bwd_iters(batch * hw * hw // 4, groups) if bwd else 16  # output pixels (hw even)
                env = dict(bfly=min(lg, 5), wpg=max(1, 1 << max(lg - 5, 0)), iters=iters, groups=groups,
                           c4_threads=-(-4 * C // 128))
                total, _, _ = dynamic_count(merge_ins[k.mangled][0], merge_ins[k.mangled][1], "patch_merging.cuh",
                                            merge_markers, env)
                pe = total / ((iters if bwd else 1) * 8 * nch)  # per thread: iters x chunks x VEC (fwd: one pixel)
            pe /= busy  # lanes without a chunk still issue the trip
            per_elem.append(pe)
            floor_b += n * fb
            design_b += n * (fb + op_partial_bytes(op, batch, hw, hw, C))
            elems += n * e
            instr += n * e * pe / 32  # warp-instructions
        est = []
        for bw, ipc, clk in H200_CASES.values():
            est.append(max(design_b / bw, instr / (H200_SMS * ipc * clk)))
        floor_t = floor_b / H200_PEAK
        out.append(dict(op=op, kernel=name, regs=k.regs, floor_bytes=floor_b, design_bytes=design_b, elems=elems,
                        per_elem=(min(per_elem), max(per_elem)), warp_per_elem=instr / elems,
                        floor_ms=1e3 * floor_t, est_ms=(1e3 * est[0], 1e3 * est[1]),
                        ratio=(est[0] / floor_t, est[1] / floor_t),
                        bound=["issue" if instr / (H200_SMS * ipc * clk) > design_b / bw else "memory"
                               for bw, ipc, clk in H200_CASES.values()]))
    return out


def floors_report(so: str, arch: str = "sm_90", kernels: Optional[List[Kernel]] = None, batch: int = 128,
                  rows: Optional[List[dict]] = None) -> str:
    """Markdown of floors_rows (``rows``: its result, if at hand)."""
    rows = rows or floors_rows(so, arch, kernels, batch)
    opt, pes = H200_CASES["optimistic"], H200_CASES["pessimistic"]
    lines = [
        f"# The rest of the step against its HBM floors: add+LN, bias+GELU, patch merging ({arch})",
        "",
        "Written by `PYTHONPATH=$PWD python benchmarks/sass_report.py --floors` (also by",
        "`tests/test_sass.py::test_step_floors`) from the built extension's SASS.  Swin-T bf16 (autocast)",
        f"training step at batch {batch}, 224 px: add+LN twice per transformer block, bias+GELU once (fc1's",
        "4C hidden map), the 3 patch mergings with the stage's pending residual branch.",
        "",
        "* **Counts**: bytes (from the op's tensors: each input read once and each output written once at",
        "  the dtype the model runs -- float32 residual stream and LayerNorm parameters, bf16 Linear",
        "  outputs -- is the **floor**; the **design** adds what the kernels move beyond it: the float32",
        "  dweight / dbias partial rows of the backward kernels, written and read back by the glue's sum)",
        "  and SASS instructions per element (the row loop's trip of the kernel the model runs, divided by",
        "  the elements a lane handles per trip and the fraction of lanes with data; inner group-reduction",
        "  loops counted log2(lanes) times, every branch as taken: an upper bound; merging's forward has no",
        "  row loop: the whole kernel per pixel).  Elements: of the op's main map (merging: its input map).",
        "* **Model outputs** (ESTIMATED, no GPU; the review's method, section 2.1): time = max(design bytes /",
        f"  bandwidth, warp-instructions / (132 SMs x IPC x clock)), optimistic {opt[0] / 1e12:.1f} TB/s, IPC "
        f"{opt[1]}, {opt[2] / 1e9:.3g} GHz / pessimistic {pes[0] / 1e12:.1f} TB/s, IPC {pes[1]}, "
        f"{pes[2] / 1e9:.4g} GHz; floor time = floor bytes at the {H200_PEAK / 1e12:.1f} TB/s peak.  A kernel",
        f"  at its floor's bytes is still {H200_PEAK / opt[0]:.2f}-{H200_PEAK / pes[0]:.2f}x by these "
        "bandwidth assumptions.",
        "",
        "## Now (this build)",
        "",
        "| op | kernel | regs | floor B / element | design B / element | SASS / element (lane) | "
        "warp-instr / element | floor ms | est. ms | x floor | bound |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        pe = r["per_elem"]
        pe_s = f"{pe[0]:.1f}" if abs(pe[1] - pe[0]) < 0.05 else f"{pe[0]:.1f}-{pe[1]:.1f}"
        lines.append(f"| {r['op']} | `{r['kernel']}` | {r['regs']} | {r['floor_bytes'] / r['elems']:.2f} | "
                     f"{r['design_bytes'] / r['elems']:.2f} | {pe_s} | {r['warp_per_elem']:.2f} | "
                     f"{r['floor_ms']:.3f} | {r['est_ms'][0]:.3f}-{r['est_ms'][1]:.3f} | "
                     f"{r['ratio'][0]:.2f}-{r['ratio'][1]:.2f} | {'/'.join(dict.fromkeys(r['bound']))} |")
    lines += ["", "## Before (the review) and now, fwd + bwd per step, against the issue's targets", "",
              "| ops | review: B / element (fwd / bwd) | review: warp-instr / element | review: est. ms (floor) | "
              "review: x floor | now: est. ms (floor) | now: x floor | target | met |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for fam, tgt in FLOOR_TARGETS.items():
        rs = [r for r in rows if r["op"].startswith(fam)]
        fl = sum(r["floor_ms"] for r in rs)
        est = [sum(r["est_ms"][i] for r in rs) for i in (0, 1)]
        rv = REVIEW_FLOORS[fam]
        ratio = (est[0] / fl, est[1] / fl)
        at_floor = H200_PEAK / pes[0]  # the pessimistic ratio of a kernel that moves exactly its floor's bytes
        met = ("yes" if ratio[1] <= tgt else
               f"optimistic (pessimistic: no kernel can, {at_floor:.2f}x at the floor's bytes)"
               if ratio[0] <= tgt and tgt < at_floor else "optimistic only" if ratio[0] <= tgt else "no")
        lines.append(f"| {fam} | {rv['bytes']} | {rv['instr']} | {rv['ms'][0]}-{rv['ms'][1]} ({rv['floor']}) | "
                     f"{rv['ms'][0] / rv['floor']:.1f}-{rv['ms'][1] / rv['floor']:.1f} | "
                     f"{est[0]:.2f}-{est[1]:.2f} ({fl:.2f}) | {ratio[0]:.3f}-{ratio[1]:.3f} | <= {tgt} | {met} |")
    lines += ["", "The review's merging floor (0.28 ms) counted 8 + 12 B per input element; the op returns the",
              "branch's gradient too (bf16, 2 B), and the statistics (mean, rstd) are part of its contract, so",
              "the floor here is the op's own tensors (the ratio is against that).  The review's add+LN and",
              "bias+GELU floors are the same tensors (28 and 10 B per element).", ""]
    return "\n".join(lines) + "\n"


# Video Swin (swin3d_t) stage 1: window (8, 7, 7), 3 heads of head_dim 32, 2 blocks; at batch 8 of
# 32 x 224 x 224 clips (patch 2 x 4 x 4) the map is 16 x 56 x 56: 2 x 8 x 8 = 128 windows per clip.
VIDEO_N, VIDEO_KEYTILES = 392, 7  # the backward's 64-key tiles; also the forward's 64-row blocks
# The streaming forward's key tile at head_dim 32 (FwdMmaTraits::kStrKeys).
STREAM_KEYS = 32
SWIN3D_T_STAGE1 = dict(blocks=2, batch=8, windows=128, heads=3)


def video_swin_report(arch: str, video_fwd: Dict[str, tuple], listings: Dict[str, str]) -> List[str]:
    """Markdown: the N = 392 forward (stream kernel, 13 key tiles x 7 row blocks; ``video_fwd[dtype]`` =
    its (per warp per block, categories) from forward_dynamic_report) and the key-tiled backward (dQ in
    shared memory, 7 x 7 (key, query) tile steps per image, counted here by the same counter) per (clip,
    window, head), and per swin3d_t stage-1 step (batch 8 of 32 x 224 x 224)."""
    if not video_fwd:
        return []
    kernel_file = "bwd_mma_kernel.cuh"
    src = os.path.join(ROOT, "csrc", "cuda", "attention", kernel_file)
    markers = dyn_markers(src)
    st = SWIN3D_T_STAGE1
    units = st["blocks"] * st["batch"] * st["windows"] * st["heads"]
    kt = VIDEO_KEYTILES
    fkt = -(-VIDEO_N // STREAM_KEYS)  # the forward's key tiles
    # per warp and image: the tile kernel's 80 per (key, query) tile step, plus the D pass's 32 (S, dP)
    bwd_hand = (bwd_hmma_by_hand() + 32) * kt * kt
    # The planner's images per backward block at this shape (launch_template.cuh choose_chunk): the
    # (windows, heads, N, N) partial of one chunk (59 M floats) exceeds the 2^25 bound, so chunk = batch.
    chunk = st["batch"]
    lines = [f"## Video Swin: swin3d_t stage 1 (window (8, 7, 7), N = {VIDEO_N}, 3 heads, head_dim 32, V1)", "",
             f"Forward: `attn_fwd_stream_kernel`, {kt} row blocks of 64 queries x {fkt} key tiles of "
             f"{STREAM_KEYS} per "
             f"(clip, window, head), 4 warps a block.  Backward: `attn_bwd_window_kernel` (the window's dQ in "
             f"shared memory, 127 KB at N = 392 on sm_90), {kt} x {kt} (key tile, query tile) steps per image, "
             f"{chunk} images per block (`choose_chunk` at batch {st['batch']}), each with the D pass "
             "(D = rowsum(P o dP)) before the main pass, both counted.  Stage 1 at batch "
             f"{st['batch']} of 32 x 224 x 224 clips: 16 x 56 x 56 tokens, {st['windows']} windows per clip, "
             f"{units} (clip, window, head) units over its {st['blocks']} blocks.  Upper bounds (every warp of the "
             "last, partial tiles counted active).", "",
             "| dtype | pass | per warp per block | per warp per (clip, window, head) | per (clip, window, head) | "
             "HMMA per warp per unit (by hand) | stage-1 step G |", "|---|---|---:|---:|---:|---:|---:|"]
    for dt, (total, cats) in video_fwd.items():
        per_unit = 4 * kt * total
        lines.append(f"| {dt} | forward | {total:.0f} | {kt * total:.0f} | {per_unit:.0f} | "
                     f"{kt * cats.get('HMMA', 0):.0f} ({kt * fkt * hmma_by_hand(32, STREAM_KEYS)}) | "
                     f"{units * per_unit / 1e9:.3f} |")
        path = listings.get(bwd_unit(dt, arch))
        name = f"attn_bwd_window_kernelINS2_12BwdMmaTraitsI{_MANGLED_T[dt]}Li32ELb0EEELb1EEEv"
        found, ins, labels = parse_gi_all(path, [name])[name] if path else (None, [], {})
        if found is None or not ins:
            lines.append(f"| {dt} | backward | (no `attn_bwd_window_kernel` in this build) | | | | |")
            continue
        check_lines_are_code(ins, kernel_file, src)
        env = dict(kWarps=BWD_WARPS, kThreads=32 * BWD_WARPS, kDPad=32, kNT=8, N=VIDEO_N, warps=BWD_WARPS,
                   threads=32 * BWD_WARPS, keytiles=kt, images=chunk, wt=8, wh=7, ww=7, bias_rows=15 * 13 * 13)
        tot_b, cb, _ = dynamic_count(ins, labels, kernel_file, markers, env)
        per_warp = tot_b / chunk
        lines.append(f"| {dt} | backward | {tot_b:.0f} | {per_warp:.0f} | {BWD_WARPS * per_warp:.0f} | "
                     f"{cb.get('HMMA', 0) / chunk:.0f} ({bwd_hand}) | {units * BWD_WARPS * per_warp / 1e9:.3f} |")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", default=None, help="extension library (default: swin_ext/_C*.so)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    ap.add_argument("--streams", action="store_true",
                    help="only the add+LN / bias+GELU loop table and the Swin-T H200 estimate")
    ap.add_argument("--dyn", action="store_true",
                    help="the dynamic warp-instruction estimate of the attention forward and backward (Swin-T "
                         "path) and the step instead; --out defaults to benchmarks/results/attn_fwd_dyn_<arch>.md, "
                         "--out-bwd to benchmarks/results/attn_bwd_dyn_<arch>.md")
    ap.add_argument("--out-bwd", default=None, help="--dyn: where the backward's report goes")
    ap.add_argument("--floors", action="store_true",
                    help="the rest of the step (add+LN, bias+GELU, patch merging; fwd and bwd) against its HBM "
                         "floors, before and now; --out defaults to benchmarks/results/step_floors_<arch>.md")
    ap.add_argument("--batch", type=int, default=128, help="batch of the --dyn estimate")
    ap.add_argument("--stall-lines", type=int, default=0, metavar="N",
                    help="print the N source lines with the most fixed-latency stall cycles in the image loop of "
                         "the Swin-T tile backward (bf16, head_dim 32, V1) and stop")
    a = ap.parse_args(argv)
    so = a.so or extension_path()
    if not so:
        print("no built extension (swin_ext/_C*.so)", file=sys.stderr)
        return 2
    if a.stall_lines:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            unit = bwd_unit("bf16", a.arch)
            listing = disassemble_with_lines(so, a.arch, tmp, name_filter=unit[: -len(".cubin")]).get(unit)
            if listing is None:
                print(f"no {bwd_unit('bf16', a.arch)} in {so}", file=sys.stderr)
                return 2
            print("\n".join(tile_bwd_stall_lines(listing, "bf16", a.stall_lines)))
        return 0
    if a.dyn:
        import tempfile

        tag = a.arch.replace("_", "")
        res = os.path.join(ROOT, "benchmarks", "results")
        ks = read_kernels(so, a.arch)
        stats: dict = {}
        with tempfile.TemporaryDirectory() as tmp:
            listings = disassemble_with_lines(so, a.arch, tmp)
            fwd = forward_dynamic_report(so, a.arch, a.batch, ks, listings, stats)
            bwd = backward_dynamic_report(so, a.arch, a.batch, ks, listings, stats)
        for text, out in ((fwd, a.out or os.path.join(res, f"attn_fwd_dyn_{tag}.md")),
                          (bwd, a.out_bwd or os.path.join(res, f"attn_bwd_dyn_{tag}.md"))):
            print(text)
            with open(out, "w") as f:
                f.write(text)
        return 0
    if a.floors:
        text = floors_report(so, a.arch)
        print(text)
        with open(a.out or os.path.join(ROOT, "benchmarks", "results", f"step_floors_{a.arch.replace('_', '')}.md"),
                  "w") as f:
            f.write(text)
        return 0
    ks = [k for k in read_kernels(so, a.arch) if a.filter in k.short]
    text = stream_table(so, a.arch, ks) if a.streams else table(ks) + "\n\n" + stream_table(so, a.arch, ks)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# SASS of {os.path.basename(so)} ({a.arch})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

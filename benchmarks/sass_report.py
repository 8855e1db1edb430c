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
                                                     # attention forward (Swin-T path)
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
        t = re.match(r"swin_ext::cuda::attn::(?:bwd::BwdMma|FwdMma)?Traits<(.*)>$", args.strip())
        if t:
            args = t.group(1)
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

# --------------------------------------------------------------------------- dynamic estimate
#
# Static SASS x loop trip counts, per kernel path (the method of the
# 2026-12-03 review's sass_dyn.py, made robust to source edits): the kernel
# source marks, in comments on the lines the SASS is attributed to,
#   // sass-dyn: trips=<expr>   the loop whose back edge this line's
#                               instructions close runs <expr> times
#                               (names: images, warps, threads, N, d, keys)
#   // sass-dyn: skip           code off the costed path (scalar fallbacks)
# Every instruction is counted once per execution of the loops around it
# (their trips multiplied); instructions with a skip line anywhere in their
# inline chain are not counted; a loop without a marker counts once.
# Branches inside the costed path are all taken as executed (an upper bound).


@dataclass
class Instr:
    op: str
    text: str
    chain: List[tuple]  # (file basename, line), innermost first


def find_nvdisasm(cuobjdump: Optional[str] = None) -> Optional[str]:
    found = [shutil.which("nvdisasm") or ""]
    for c in ([os.path.join(os.path.dirname(cuobjdump), "nvdisasm")] if cuobjdump else []) + found:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def disassemble_with_lines(so: str, arch: str, workdir: str, cuobjdump: Optional[str] = None,
                           name_filter: str = "attention") -> Dict[str, str]:
    """cubin name -> path of its ``nvdisasm -c -gi`` listing (SASS with inlined source lines)."""
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
        with open(path, "w") as f:
            subprocess.run([nvdisasm, "-c", "-gi", cubin], stdout=f, check=True)
        out[os.path.basename(cubin)] = path
    return out


def parse_gi(path: str, name_substr: str):
    """Instructions (with inline chains) and labels of the first kernel whose mangled name contains name_substr."""
    ins: List[Instr] = []
    labels: Dict[str, int] = {}
    cur = None
    chain: List[tuple] = []
    fresh = True
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
    return found, ins, labels


def dyn_markers(src: str) -> Dict[int, str]:
    """line -> marker; the lines between ``skip-begin`` and ``skip-end`` are ``skip``."""
    out: Dict[int, str] = {}
    begin = None
    with open(src) as f:
        for i, line in enumerate(f, 1):
            m = re.search(r"//\s*sass-dyn:\s*(.+?)\s*$", line)
            mk = m.group(1) if m else None
            if mk == "skip-begin":
                begin = i
            elif mk == "skip-end" and begin is not None:
                for k in range(begin, i + 1):
                    out[k] = "skip"
                begin = None
            elif mk:
                out[i] = mk
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


def dynamic_count(ins: List[Instr], labels: Dict[str, int], kernel_file: str, markers: Dict[int, str],
                  env: Dict[str, float]):
    """(total warp-instructions per warp, counts by category, loops) of one kernel path."""
    skip_lines = {ln for ln, m in markers.items() if m == "skip"}

    def outer(ch):
        for f_, l_ in reversed(ch):
            if f_ == kernel_file:
                return l_
        return None

    loops = []
    for i, x in enumerate(ins):
        if not x.op.startswith("BRA"):
            continue
        m = re.search(r"`\((\.L_x_\d+)\)", x.text)
        if not m or m.group(1) not in labels or labels[m.group(1)] > i:
            continue
        loops.append([labels[m.group(1)], i, outer(x.chain), 1.0, None])
    # A trips marker belongs to the innermost loop that holds an instruction of
    # its line (the loop's own increment and test: `for` lines carry them).
    for line, mk in markers.items():
        if not mk.startswith("trips="):
            continue
        inside = [lp for lp in loops if any(outer(ins[k].chain) == line for k in range(lp[0], lp[1] + 1))]
        if not inside:
            if any(outer(x.chain) == line for x in ins):  # the line is this kernel's, but loops nowhere
                raise ValueError(f"{kernel_file}:{line}: marker {mk!r} is in no loop of the SASS -- "
                                 "is the extension built from this source?")
            continue  # another kernel's loop
        lp = min(inside, key=lambda lp: lp[1] - lp[0])
        lp[3] = float(eval(mk[len("trips="):], {"__builtins__": {}}, dict(env)))  # noqa: S307 - our own markers
        lp[4] = mk
    mult = [1.0] * len(ins)
    for j, i, _, trips, _ in loops:
        for k in range(j, i + 1):
            mult[k] *= trips
    total = 0.0
    cats: Dict[str, float] = {}
    for k, x in enumerate(ins):
        if any(f_ == kernel_file and l_ in skip_lines for f_, l_ in x.chain):
            continue
        total += mult[k]
        for cat, pat in _DYN_CATS:
            if re.match(pat, x.op):
                cats[cat] = cats.get(cat, 0.0) + mult[k]
                break
    return total, cats, loops


# Swin-T at 224 px: (stage, blocks, windows per image, heads); window 7, head_dim 32.
SWIN_T_STAGES = [(1, 2, 64, 3), (2, 2, 16, 6), (3, 6, 4, 12), (4, 2, 1, 24)]
FWD_TARGET_BLOCKS, FWD_MAX_CHUNK = 1024, 8  # csrc/cuda/attention/launch_template.cuh, plan_fwd
_MANGLED_T = {"bf16": "13__nv_bfloat16", "fp16": "6__half"}


def fwd_chunk(B: int, windows_heads: int) -> int:
    """Images per block of the one-tile forward (plan_fwd's rule)."""
    return max(1, min(FWD_MAX_CHUNK, B * windows_heads // FWD_TARGET_BLOCKS))


def parse_gi_all(path: str, name_substrs: List[str]):
    return {sub: parse_gi(path, sub) for sub in name_substrs}


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
                           kernels: Optional[List[Kernel]] = None) -> str:
    """Markdown: the estimated dynamic warp-instructions per warp and per (image,
    window, head) of the tensor-core forward on the Swin-T path (bf16 / fp16,
    head_dim 32, window 7, V1, 16-byte vector path), per stage at ``batch``,
    plus SwinV2 window 8 (one tile) and window 12 / 16 / 24 (streamed key tiles),
    and the forward kernels' registers and local memory (``kernels``: read_kernels(so, arch), if at hand)."""
    import tempfile

    kernel_file = "fwd_mma_kernel.cuh"
    src = os.path.join(ROOT, "csrc", "cuda", "attention", kernel_file)
    markers = dyn_markers(src)
    hand = hmma_by_hand()
    lines = [
        f"# Dynamic warp-instruction estimate of the attention forward ({arch})",
        "",
        f"Written by `PYTHONPATH=$PWD python benchmarks/sass_report.py --dyn --batch {batch}` (also by",
        "`tests/test_sass.py::test_attention_forward_instruction_estimate`) from `nvdisasm -c -gi` of the built",
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
    with tempfile.TemporaryDirectory() as tmp:
        listings = disassemble_with_lines(so, arch, tmp)
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
            for ws in (12, 16, 24):
                n = ws * ws
                kt = (n + 63) // 64
                total, cats, _ = dynamic_count(ins3, lab3, kernel_file, markers, dict(base, images=1, keytiles=kt))
                lines.append(f"| window {ws} (N = {n}) | stream, V1 | 1 | {kt} | {total:.0f} | {total:.0f} | "
                             f"{FWD_WARPS * kt * total:.0f} ({kt} row blocks) | "
                             f"{cats.get('HMMA', 0):.0f} ({hand * kt}) |")
            total3, cats3, _ = dynamic_count(ins3, lab3, kernel_file, markers,
                                             dict(base, images=1, keytiles=VIDEO_KEYTILES))
            video_fwd[dt] = (total3, cats3)
            lines.append(f"| Video Swin (8, 7, 7) (N = {VIDEO_N}) | stream, V1 | 1 | {VIDEO_KEYTILES} | {total3:.0f} | "
                         f"{total3:.0f} | {FWD_WARPS * VIDEO_KEYTILES * total3:.0f} ({VIDEO_KEYTILES} row blocks) | "
                         f"{cats3.get('HMMA', 0):.0f} ({hand * VIDEO_KEYTILES}) |")
            lines += ["", "(The stream kernel's rows count every warp of every row block as active: "
                      "an upper bound at N = 144, whose last row block holds 16 rows, and at N = 392, whose last "
                      "holds 8.)", ""]
    if "bf16" in step_g:
        lines += ["## Per Swin-T training step (batch 128), against the review", "",
                  f"The review estimated ~{REVIEW_STEP_G['total']} G warp-instructions of attention per step "
                  f"(forward {REVIEW_STEP_G['fwd']} G, backward {REVIEW_STEP_G['bwd']} G).  With this forward and the "
                  "backward the review costed (the register-resident backward is separate work):", "",
                  "| dtype | forward G (this) | forward G (review) | backward G (review) | step G | step vs review |",
                  "|---|---:|---:|---:|---:|---:|"]
        for dt, g in step_g.items():
            if dt != "bf16":  # the review's step totals are bf16's
                continue
            tot = g + REVIEW_STEP_G["bwd"]
            lines.append(f"| {dt} | {g:.3f} | {REVIEW_STEP_G['fwd']} | {REVIEW_STEP_G['bwd']} | {tot:.2f} | "
                         f"{tot / REVIEW_STEP_G['total']:.2f}x |")
        lines += ["", "The issue's targets: <= 900 warp-instructions per warp in the forward "
                  "(met at every stage above) and <= 2,200 per warp per image in the backward "
                  "(the backward's work).", ""]
    lines += video_swin_report(so, arch, video_fwd)
    return "\n".join(lines) + "\n"


# Video Swin (swin3d_t) stage 1: window (8, 7, 7), 3 heads of head_dim 32, 2 blocks; at batch 8 of
# 32 x 224 x 224 clips (patch 2 x 4 x 4) the map is 16 x 56 x 56: 2 x 8 x 8 = 128 windows per clip.
VIDEO_N, VIDEO_KEYTILES = 392, 7
SWIN3D_T_STAGE1 = dict(blocks=2, batch=8, windows=128, heads=3)


def video_swin_report(so: str, arch: str, video_fwd: Dict[str, tuple]) -> List[str]:
    """Markdown: the N = 392 forward (stream kernel, 7 key tiles x 7 row blocks) and key-tiled backward
    (dQ in shared memory, 7 x 7 (key, query) tile steps per image) per (clip, window, head), and per
    swin3d_t stage-1 step (batch 8 of 32 x 224 x 224)."""
    if not video_fwd:
        return []
    import sass_dyn_bwd  # (imports this module: not at the top)

    st = SWIN3D_T_STAGE1
    units = st["blocks"] * st["batch"] * st["windows"] * st["heads"]
    kt = VIDEO_KEYTILES
    # Backward, by hand, per warp and (key tile, query tile) step: S = Q K^T and dP = dO V^T 8 n-tiles x 2
    # k-steps each, dQ += dS K 4 k-steps x 4 n-tiles, dV += P^T dO and dK += dS^T Q the same: 5 x 16.
    bwd_hand = 5 * 16 * kt * kt
    # The planner's images per backward block at this shape (launch_template.cuh choose_chunk): the
    # (windows, heads, N, N) partial of one chunk (59 M floats) exceeds the 2^25 bound, so chunk = batch.
    chunk = st["batch"]
    lines = [f"## Video Swin: swin3d_t stage 1 (window (8, 7, 7), N = {VIDEO_N}, 3 heads, head_dim 32, V1)", "",
             f"Forward: `attn_fwd_stream_kernel`, {kt} row blocks of 64 queries x {kt} key tiles of 64 per "
             f"(clip, window, head), 4 warps a block.  Backward: `attn_bwd_window_kernel` (the window's dQ in "
             f"shared memory, 127 KB at N = 392 on sm_90), {kt} x {kt} (key tile, query tile) steps per image, "
             f"{chunk} images per block (`choose_chunk` at batch {st['batch']}).  Stage 1 at batch {st['batch']} "
             f"of 32 x 224 x 224 clips: 16 x 56 x 56 tokens, {st['windows']} windows per clip, "
             f"{units} (clip, window, head) units over its {st['blocks']} blocks.  Upper bounds (every warp of the "
             "last, partial tiles counted active; the backward's per-key-tile and per-image epilogues counted on "
             "every step).", "",
             "Forward: one warp's instructions per block (one row block, 7 key tiles), times the 7 row blocks "
             "(per warp per unit), times 4 warps (per unit).  Backward: per warp per block of "
             f"{chunk} images, per warp and image (the block's rest amortised), times 4 warps.", "",
             "| dtype | pass | per warp per block | per warp per (clip, window, head) | per (clip, window, head) | "
             "HMMA per warp per unit (by hand) | stage-1 step G |", "|---|---|---:|---:|---:|---:|---:|"]
    note = []
    try:
        bwd = dict(sass_dyn_bwd.swin3d_backward_estimate(so, arch, VIDEO_N))
    except (ValueError, FileNotFoundError) as e:  # no such kernel in this build, no nvdisasm
        bwd, note = {}, ["", f"(backward estimate unavailable: {e})"]
    for dt, (total, cats) in video_fwd.items():
        per_unit = 4 * kt * total
        lines.append(f"| {dt} | forward | {total:.0f} | {kt * total:.0f} | {per_unit:.0f} | "
                     f"{kt * cats.get('HMMA', 0):.0f} ({kt * kt * hmma_by_hand()}) | {units * per_unit / 1e9:.3f} |")
        if dt in bwd:
            e = bwd[dt]
            per_warp = e.amortized(chunk)
            lines.append(f"| {dt} | backward | {e.per_image * chunk + e.per_block:.0f} | {per_warp:.0f} | "
                         f"{4 * per_warp:.0f} | {e.mix.get('HMMA', 0):.0f} ({bwd_hand}) | "
                         f"{units * 4 * per_warp / 1e9:.3f} |")
    return lines + note + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", default=None, help="extension library (default: swin_ext/_C*.so)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    ap.add_argument("--streams", action="store_true",
                    help="only the add+LN / bias+GELU loop table and the Swin-T H200 estimate")
    ap.add_argument("--dyn", action="store_true",
                    help="the dynamic warp-instruction estimate of the attention forward (Swin-T path) instead; "
                         "--out defaults to benchmarks/results/attn_fwd_dyn_<arch>.md")
    ap.add_argument("--batch", type=int, default=128, help="batch of the --dyn estimate")
    a = ap.parse_args(argv)
    so = a.so or extension_path()
    if not so:
        print("no built extension (swin_ext/_C*.so)", file=sys.stderr)
        return 2
    if a.dyn:
        text = forward_dynamic_report(so, a.arch, a.batch)
        print(text)
        out = a.out or os.path.join(ROOT, "benchmarks", "results", f"attn_fwd_dyn_{a.arch.replace('_', '')}.md")
        with open(out, "w") as f:
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

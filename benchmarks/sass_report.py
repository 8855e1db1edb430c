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
        """kernel<dtype, head_dim[, v2][, resident|streamed]> in a compact form.

        ``Traits<T, D>`` and the tensor-core traits ``*MmaTraits<T, D, V2>``
        become ``T, D`` (``, v2`` for Swin V2); the key-tiled backward's
        second argument (dQ in shared memory or in the workspace) becomes
        ``resident`` / ``streamed``.
        """
        n = self.name
        m = re.match(r"void (?:[\w:]*::)?(\w+)<(.*)>\(.*\)$", n)
        if not m:
            return n
        name, args = m.group(1), re.sub(r"swin_ext::cuda::(?:\w+::)*", "", m.group(2))

        def traits(t: "re.Match[str]") -> str:
            parts = [p.strip() for p in t.group(1).split(",")]
            return ", ".join(parts[:2] + (["v2"] if parts[2:] == ["true"] else []))

        args = re.sub(r"\w*Traits<([^<>]*)>", traits, args).replace(" >", ">")
        if name == "attn_bwd_window_kernel":
            args = re.sub(r",\s*(true|false)\s*$", lambda b: ", resident" if b.group(1) == "true" else ", streamed", args)
        args = args.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
        args = args.replace("float", "fp32").replace("double", "fp64")
        return f"{name}<{args.strip()}>"


_TRACKED = {
    "HMMA": r"\bHMMA\.",
    "HMMA.16816": r"\bHMMA\.16816\.",
    "LDSM": r"\bLDSM\.",
    "MOVM": r"\bMOVM\b",
    "LDGSTS.128": r"\bLDGSTS\.E\.(?:\w+\.)*128\b",  # cp.async, 16 bytes
    "LD.E": r"\bLD\.E\b",  # generic-address loads (shared memory through a generic pointer)
    "ST.E": r"\bST\.E\b",
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
    res = subprocess.run([cuobjdump, "--dump-resource-usage", "-arch", arch, so], capture_output=True, text=True, check=True).stdout
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
H100 = dict(regs_per_sm=65536, max_warps=64, max_blocks=32, smem_per_sm=233472, smem_reserved=1024, reg_alloc=256, smem_alloc=128)


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
    cols = ["kernel", "instrs", "regs", "stack B", "STL/LDL", "HMMA", "LDG.128", "STG.128", "LDG", "STG", "FFMA", "DFMA", "SHFL"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k in kernels:
        c = k.counts
        lines.append(
            f"| `{k.short}` | {k.instrs} | {k.regs} | {k.stack} | {c.get('STL', 0)}/{c.get('LDL', 0)} | {c.get('HMMA', 0)} | "
            f"{c.get('LDG.128', 0)} | {c.get('STG.128', 0)} | {c.get('LDG', 0)} | {c.get('STG', 0)} | {c.get('FFMA', 0)} | "
            f"{c.get('DFMA', 0)} | {c.get('SHFL', 0)} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- dynamic estimate
#
# A dynamic warp-instruction estimate of one kernel path from its SASS with
# source-line information (``nvdisasm -c -gi``), the method of the 2026-12-03
# review (shared/notes/cuda-review-2026-12-03/sass_dyn.py): basic blocks are
# cut at labels and after branches; a block runs or is skipped by the source
# lines of its instructions; runtime loops (backward branches) multiply their
# bodies by their trip counts.  The kernel source says which lines are which
# with ``// sass:`` comments (so no line number is hard-coded here):
#
#   // sass: image-loop       the loop over the images of a block: its body is
#                             the per-image cost, the rest is per block
#   // sass: skip(<path>)     a path the costed case does not take (scalar
#                             fallbacks, padded maps)
#   // sass: trips(<expr>)    a runtime loop's trip count (kWarps, kThreads,
#                             kDPad, kNT, N)
#
# A marker on a line that opens a block covers the block (brace-matched);
# otherwise the statement.  Unrolled loops that break at run time (n-tiles
# past N) are counted whole: an upper bound where N is not a multiple of 8
# (N = 49 runs 7 of the 8 key n-tiles of S and dP).


def nvdisasm_path() -> Optional[str]:
    tool = find_cuobjdump()
    if tool:
        cand = os.path.join(os.path.dirname(tool), "nvdisasm")
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    w = shutil.which("nvdisasm")
    return w


def gi_sass(so: str, cubin: str, arch: str = "sm_90") -> str:
    """``nvdisasm -c -gi`` of one embedded cubin (e.g. ``attention_bf16``) of the library."""
    import tempfile

    cuobjdump, nvdisasm = find_cuobjdump(), nvdisasm_path()
    if cuobjdump is None or nvdisasm is None:
        raise FileNotFoundError("no cuobjdump / nvdisasm (CUDA toolkit or triton's bundled copy)")
    name = f"{cubin}.{arch}.cubin"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([cuobjdump, "-xelf", name, so], cwd=tmp, capture_output=True, check=True)
        return subprocess.run([nvdisasm, "-c", "-gi", os.path.join(tmp, name)], capture_output=True, text=True,
                              check=True).stdout


def parse_gi(text: str, kernel_substring: str):
    """(instructions, labels) of the kernel whose mangled name contains the substring: instruction =
    (op, text, frames) with frames the (file, line) inline chain, innermost first."""
    insts, labels, chain, fresh, cur = [], {}, [], True, None
    for line in text.splitlines():
        if line.startswith(".text."):
            cur = line[6:].split(":")[0]
            continue
        if cur is None or kernel_substring not in cur:
            continue
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?', line)
        if m:
            if fresh:
                chain, fresh = [], False
            chain.append((os.path.basename(m.group(1)), int(m.group(2))))
            if m.group(3):
                chain.append((os.path.basename(m.group(3)), int(m.group(4))))
            continue
        m = re.match(r"^(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(insts)
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?);", line)
        if m:
            fresh = True
            text_ = m.group(2).strip()
            op = re.sub(r"^@!?U?P\w+\s+", "", text_).split()[0]
            insts.append((op, text_, list(dict.fromkeys(chain))))
    return insts, labels


def source_markers(path: str) -> Dict[str, List]:
    """The ``// sass:`` markers of a source file: {"image": [(a, b)], "skip": [(a, b, path)],
    "trips": [(a, b, expr)]} with 1-based inclusive line ranges."""
    lines = open(path).read().splitlines()

    def extent(i: int) -> int:
        code = lines[i].split("//")[0]
        if "{" not in code:  # one statement (a loop header's own `;` are inside its parentheses)
            j, code = i, re.sub(r"^\s*(for|while|if)\s*\(.*\)", "", code)
            while ";" not in code:
                j += 1
                code = lines[j].split("//")[0]
            return j
        depth, j, col = 0, i, code.rfind("{")
        text = code[col:]
        while True:
            for ch in text:
                depth += (ch == "{") - (ch == "}")
                if depth == 0:
                    return j
            j += 1
            text = lines[j].split("//")[0]

    out: Dict[str, List] = {"image": [], "skip": [], "trips": []}
    for i, l in enumerate(lines):
        m = re.search(r"//\s*sass:\s*(image-loop|skip\((\w+)\)|trips\(([^)]*)\))", l)
        if not m:
            continue
        rng = (i + 1, extent(i) + 1)
        if m.group(1) == "image-loop":
            out["image"].append(rng)
        elif m.group(2):
            out["skip"].append(rng + (m.group(2),))
        else:
            out["trips"].append(rng + (m.group(3),))
    return out


@dataclass
class DynEstimate:
    per_image: float   # warp-instructions of one warp's image-loop iteration
    per_block: float   # warp-instructions of one warp outside the image loop (prologue, epilogue)
    static: int        # SASS instructions of the kernel
    mix: Dict[str, float] = field(default_factory=dict)  # per image, by class

    def amortized(self, chunk: int) -> float:
        """Per warp and image, with `chunk` images per block."""
        return self.per_image + self.per_block / max(chunk, 1)


_MIX = [("HMMA", r"^HMMA"), ("LDSM", r"^LDSM"), ("LDS", r"^LDS"), ("STS", r"^STS"), ("LDGSTS", r"^LDGSTS"),
        ("LDG", r"^LDG"), ("STG", r"^STG"), ("BAR", r"^BAR"), ("SHFL", r"^SHFL"), ("MUFU", r"^MUFU"),
        ("FP", r"^(FFMA|FMUL|FADD|FMNMX|FSETP|FSEL|F2F|F2FP)"), ("LD.E/ST.E", r"^(LD|ST)\.E")]


def dynamic_estimate(gi_text: str, kernel_substring: str, source: str, skip_paths=("scalar", "padded"),
                     consts: Optional[Dict[str, int]] = None) -> DynEstimate:
    """Dynamic warp-instructions per warp of one kernel path (see the section comment)."""
    import collections

    insts, labels = parse_gi(gi_text, kernel_substring)
    if not insts:
        raise ValueError(f"no kernel matching {kernel_substring!r}")
    src = os.path.basename(source)
    marks = source_markers(source)
    consts = dict(consts or {})

    def in_ranges(line, rngs):
        return any(a <= line <= b for a, b, *_ in rngs)

    def frames(ch):
        return [ln for f, ln in ch if f == src]

    skip_rngs = [r for r in marks["skip"] if r[2] in skip_paths]
    skip = [any(in_ranges(ln, skip_rngs) for ln in frames(ch)) for _, _, ch in insts]
    image = [bool(frames(ch)) and in_ranges(frames(ch)[-1], marks["image"]) for _, _, ch in insts]
    # Basic blocks: a block is skipped when most of its instructions are.
    starts = sorted(set(labels.values()) | {0} | {i + 1 for i, (op, _, _) in enumerate(insts)
                                                  if op.startswith(("BRA", "EXIT", "RET", "BREAK", "JMP"))
                                                  and i + 1 < len(insts)})
    run = [True] * len(insts)
    for k, a in enumerate(starts):
        b = starts[k + 1] if k + 1 < len(starts) else len(insts)
        own = [i for i in range(a, b) if insts[i][2]]
        if own and sum(skip[i] for i in own) * 2 >= len(own):
            for i in range(a, b):
                run[i] = False
    # Runtime loops: backward branches whose body lies mostly in a trips(...) range.
    mult = [1.0] * len(insts)
    for i, (op, text_, _) in enumerate(insts):
        if not op.startswith("BRA"):
            continue
        m = re.search(r"`\((\.L_x_\d+)\)", text_)
        if not m or m.group(1) not in labels or labels[m.group(1)] > i:
            continue
        body = range(labels[m.group(1)], i + 1)
        for a, b, expr in marks["trips"]:
            inside = sum(1 for x in body if any(a <= ln <= b for ln in frames(insts[x][2])))
            if inside * 2 >= len(body):
                trips = float(eval(expr, {"__builtins__": {}}, consts))
                for x in body:
                    mult[x] = max(mult[x], trips)
    per_image = per_block = 0.0
    mix = collections.Counter()
    for i, (op, _, _) in enumerate(insts):
        if not run[i]:
            continue
        if image[i]:
            per_image += mult[i]
            for k, pat in _MIX:
                if re.match(pat, op):
                    mix[k] += mult[i]
                    break
        else:
            per_block += mult[i]
    return DynEstimate(per_image, per_block, len(insts), dict(mix))


# Swin-T (window 7, head_dim 32) at batch 128: (image, window, head) units per
# image and the images per backward block the planner picks, per stage
# (launch_template.cuh choose_chunk: 2048 target blocks, at most 8).
SWIN_T_STAGES = [  # (blocks = depth, windows per image, heads)
    (2, 64, 3), (2, 16, 6), (6, 4, 12), (2, 1, 24)]


def swin_t_chunks(batch: int = 128) -> List[tuple]:
    """[(units per image, chunk)] of the Swin-T stages at `batch`."""
    out = []
    for depth, nw, heads in SWIN_T_STAGES:
        chunk = max(1, min(8, batch * nw * heads // 2048))
        out.append((depth * nw * heads, chunk))
    return out


def swin_t_backward_estimate(so: str, arch: str = "sm_90") -> List[tuple]:
    """[(dtype, DynEstimate, Swin-T-weighted per warp per image)] of the tile backward, head_dim 32, V1."""
    src = os.path.join(ROOT, "csrc", "cuda", "attention", "bwd_mma_kernel.cuh")
    consts = dict(kWarps=4, kThreads=128, kDPad=32, kNT=8, N=49)
    out = []
    for dtype, tag, mangled in (("bf16", "attention_bf16", "13__nv_bfloat16Li32ELb0E"), ("fp16", "attention_fp16", "6__halfLi32ELb0E")):
        est = dynamic_estimate(gi_sass(so, tag, arch), f"attn_bwd_tile_kernelINS2_12BwdMmaTraitsI{mangled}", src,
                               consts=consts)
        units = swin_t_chunks()
        weighted = sum(u * est.amortized(c) for u, c in units) / sum(u for u, _ in units)
        out.append((dtype, est, weighted))
    return out


def dyn_table(rows) -> str:
    lines = ["| kernel | static SASS | per image (loop body) | per block (outside) | chunk 8 | chunk 1 | Swin-T weighted |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for dtype, est, w in rows:
        lines.append(f"| `attn_bwd_tile_kernel<{dtype}, 32>` | {est.static} | {est.per_image:.0f} | {est.per_block:.0f} | "
                     f"{est.amortized(8):.0f} | {est.amortized(1):.0f} | {w:.0f} |")
    lines += ["", "Per-image instruction mix (warp-instructions per warp):", ""]
    keys = [k for k, _ in _MIX]
    lines.append("| kernel | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for dtype, est, _ in rows:
        lines.append(f"| `attn_bwd_tile_kernel<{dtype}, 32>` | " + " | ".join(f"{est.mix.get(k, 0):.0f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", default=None, help="extension library (default: swin_ext/_C*.so)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    ap.add_argument("--dyn", default=None, metavar="FILE",
                    help="write the dynamic warp-instruction estimate of the Swin-T backward (bf16 / fp16 tile "
                         "kernel, head_dim 32, window 7) to FILE (e.g. benchmarks/results/sass_dyn_sm90.md)")
    a = ap.parse_args(argv)
    so = a.so or extension_path()
    if not so:
        print("no built extension (swin_ext/_C*.so)", file=sys.stderr)
        return 2
    if a.dyn:
        text = dyn_table(swin_t_backward_estimate(so, a.arch))
        print(text)
        with open(a.dyn, "w") as f:
            f.write(f"# Dynamic warp-instruction estimate, Swin-T attention backward ({a.arch})\n\n"
                    "Written by `python benchmarks/sass_report.py --dyn <file>` from `nvdisasm -c -gi` of the built\n"
                    "extension: static SASS of the path a Swin-T launch takes (window 7, N = 49, head_dim 32, V1,\n"
                    "16-byte vector path, unpadded map) times loop trip counts, per warp.  The image loop body is\n"
                    "the per-image cost; the prologue and epilogue are per block, amortised over the images of a\n"
                    "block (the planner's chunk: 8, 6, 3, 1 for the four stages at batch 128).  An estimate: branch\n"
                    "outcomes come from source attribution, not simulation (see the section comment in\n"
                    "benchmarks/sass_report.py).\n\n" + text + "\n")
        return 0
    ks = [k for k in read_kernels(so, a.arch) if a.filter in k.short]
    text = table(ks)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# SASS of {os.path.basename(so)} ({a.arch})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dynamic warp-instruction estimate of the Swin-T attention backward (sm_90).

From ``nvdisasm -c -gi`` of the built extension: the static SASS of the
path a Swin-T launch takes through ``attn_bwd_tile_kernel`` (window 7,
N = 49, head_dim 32, V1, vector path, unpadded map) times the loop trip
counts given by ``// sass:`` markers in ``csrc/cuda/attention/bwd_mma_kernel.cuh``.
(The forward's estimate, with its own ``// sass-dyn:`` markers, is
``sass_report.py --dyn``.)

    python benchmarks/sass_dyn_bwd.py benchmarks/results/attn_bwd_dyn_sm90.md
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_report import ROOT, extension_path, find_cuobjdump  # noqa: E402

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
        return subprocess.run(
            [nvdisasm, "-c", "-gi", os.path.join(tmp, name)], capture_output=True, text=True, check=True
        ).stdout


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
    for i, line in enumerate(lines):
        m = re.search(r"//\s*sass:\s*(image-loop|skip\((\w+)\)|trips\(([^)]*)\))", line)
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
    per_image: float  # warp-instructions of one warp's image-loop iteration
    per_block: float  # warp-instructions of one warp outside the image loop (prologue, epilogue)
    static: int  # SASS instructions of the kernel
    mix: Dict[str, float] = field(default_factory=dict)  # per image, by class

    def amortized(self, chunk: int) -> float:
        """Per warp and image, with `chunk` images per block."""
        return self.per_image + self.per_block / max(chunk, 1)


_MIX = [
    ("HMMA", r"^HMMA"),
    ("LDSM", r"^LDSM"),
    ("LDS", r"^LDS"),
    ("STS", r"^STS"),
    ("LDGSTS", r"^LDGSTS"),
    ("LDG", r"^LDG"),
    ("STG", r"^STG"),
    ("BAR", r"^BAR"),
    ("SHFL", r"^SHFL"),
    ("MUFU", r"^MUFU"),
    ("FP", r"^(FFMA|FMUL|FADD|FMNMX|FSETP|FSEL|F2F|F2FP)"),
    ("LD.E/ST.E", r"^(LD|ST)\.E"),
]


def dynamic_estimate(
    gi_text: str,
    kernel_substring: str,
    source: str,
    skip_paths=("scalar", "padded"),
    consts: Optional[Dict[str, int]] = None,
) -> DynEstimate:
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
    starts = sorted(
        set(labels.values())
        | {0}
        | {
            i + 1
            for i, (op, _, _) in enumerate(insts)
            if op.startswith(("BRA", "EXIT", "RET", "BREAK", "JMP")) and i + 1 < len(insts)
        }
    )
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
    (2, 64, 3),
    (2, 16, 6),
    (6, 4, 12),
    (2, 1, 24),
]


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
    for dtype, tag, mangled in (
        ("bf16", "attention_bf16", "13__nv_bfloat16Li32ELb0E"),
        ("fp16", "attention_fp16", "6__halfLi32ELb0E"),
    ):
        est = dynamic_estimate(
            gi_sass(so, tag, arch), f"attn_bwd_tile_kernelINS2_12BwdMmaTraitsI{mangled}", src, consts=consts
        )
        units = swin_t_chunks()
        weighted = sum(u * est.amortized(c) for u, c in units) / sum(u for u, _ in units)
        out.append((dtype, est, weighted))
    return out


# Video Swin's window (8, 7, 7): N = 392, 7 key tiles of 64 (the last one 8 keys), head_dim 32.
VIDEO_N = 392


def swin3d_backward_estimate(so: str, arch: str = "sm_90", n: int = VIDEO_N) -> List[tuple]:
    """[(dtype, DynEstimate)] of the key-tiled backward (``attn_bwd_window_kernel``, the window's dQ in
    shared memory, head_dim 32, V1) at window size ``n``: per warp, the image loop body (every key tile x
    every query tile: the ``// sass: trips(nkt)`` / ``trips(nkt * nkt)`` markers) and the per-block rest.
    An upper bound: the once-per-key-tile and once-per-image epilogues inside the query-tile loop are
    counted on every step, and every warp as active in the last (partial) tiles."""
    src = os.path.join(ROOT, "csrc", "cuda", "attention", "bwd_mma_kernel.cuh")
    nkt = (n + 63) // 64
    consts = dict(kWarps=4, kThreads=128, kDPad=32, kNT=8, N=n, nkt=nkt)
    out = []
    for dtype, tag, mangled in (
        ("bf16", "attention_bf16", "13__nv_bfloat16Li32ELb0EEELb1E"),
        ("fp16", "attention_fp16", "6__halfLi32ELb0EEELb1E"),
    ):
        est = dynamic_estimate(
            gi_sass(so, tag, arch), f"attn_bwd_window_kernelINS2_12BwdMmaTraitsI{mangled}", src, consts=consts
        )
        out.append((dtype, est))
    return out


def dyn_table(rows) -> str:
    lines = [
        "| kernel | static SASS | per image (loop body) | per block (outside) | chunk 8 | chunk 1 | Swin-T weighted |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype, est, w in rows:
        lines.append(
            f"| `attn_bwd_tile_kernel<{dtype}, 32>` | {est.static} | {est.per_image:.0f} | {est.per_block:.0f} | "
            f"{est.amortized(8):.0f} | {est.amortized(1):.0f} | {w:.0f} |"
        )
    lines += ["", "Per-image instruction mix (warp-instructions per warp):", ""]
    keys = [k for k, _ in _MIX]
    lines.append("| kernel | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for dtype, est, _ in rows:
        lines.append(
            f"| `attn_bwd_tile_kernel<{dtype}, 32>` | " + " | ".join(f"{est.mix.get(k, 0):.0f}" for k in keys) + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    so = extension_path()
    if not so:
        print("no built extension (swin_ext/_C*.so)", file=sys.stderr)
        return 2
    text = dyn_table(swin_t_backward_estimate(so))
    print(text)
    if argv:
        with open(argv[0], "w") as f:
            f.write(
                "# Dynamic warp-instruction estimate, Swin-T attention backward (sm_90)\n\n"
                "Written by `python benchmarks/sass_dyn_bwd.py <file>` from `nvdisasm -c -gi` of the built\n"
                "extension: static SASS of the path a Swin-T launch takes (window 7, N = 49, head_dim 32, V1,\n"
                "16-byte vector path, unpadded map) times loop trip counts, per warp.  The image loop body is\n"
                "the per-image cost; the prologue and epilogue are per block, amortised over the images of a\n"
                "block (the planner's chunk).  An estimate: branch outcomes come from source attribution, not\n"
                "simulation.\n\n" + text + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Static GPU checks of the built extension (no GPU needed).

Reads the sm_90 SASS of ``swin_ext._C`` with ``cuobjdump`` (the toolkit's or
the copy in triton's package) and fails unless

* every bf16 / fp16 attention kernel issues tensor-core instructions (HMMA); the
  forward kernels are register-resident (mma.sync HMMA.16816 + ldmatrix, no MOVM,
  no generic LD/ST, <= 128 registers) and their dynamic instruction estimate on
  the Swin-T path stays under 900 per warp (``benchmarks/results/attn_fwd_dyn_sm90.md``),
* every attention kernel and every vectorised merging kernel moves rows
  with 128-bit global loads and stores (LDG.E.128 / STG.E.128), and
  patch merging's register kernels fit 4 blocks of 128 threads per SM,
* no kernel has a stack frame or spills to local memory (STL / LDL).

It writes the per-kernel table -- SASS instructions, registers, dynamic
shared memory and theoretical H100 occupancy at Swin-T's window (7, head_dim
32; launch shapes read from the CPU harness's launch log) -- to
``benchmarks/results/sass_sm90.md``.
"""
from __future__ import annotations

import os
import re
import sys

import pytest
import torch

import swin_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sass_report  # noqa: E402
import step_estimate  # noqa: E402

# Disassembling the extension takes minutes on 2 cores: the slow tier.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (swin_ext.HAS_OPS and swin_ext.build_info()["cuda"]),
                       reason="swin_ext was built without CUDA kernels (nothing to disassemble)"),
]


@pytest.fixture(scope="module")
def kernels():
    tool = sass_report.find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit, or triton's copy under triton/backends/nvidia/bin/)")
    if "9.0" not in swin_ext.build_info()["cuda_archs"]:
        pytest.skip(f"the extension has no sm_90 code (archs {swin_ext.build_info()['cuda_archs']!r})")
    ks = sass_report.read_kernels(swin_ext._C.__file__, "sm_90", tool)
    ks = [k for k in ks if k.short.startswith(("attn_", "merge_", "add_ln_", "bias_gelu_"))]
    assert ks, "no swin_ext kernels in the extension's sm_90 code"
    return ks


def _dtype_of(k) -> str:
    return k.short.split("<", 1)[1].split(",")[0].strip()


MMA_FWD = ("attn_fwd_tile_kernel", "attn_fwd_stream_kernel")
MMA_BWD = ("attn_bwd_tile_kernel", "attn_bwd_window_kernel")


def test_tensor_core_kernels_use_hmma(kernels):
    attn = [k for k in kernels if k.short.startswith("attn_")]
    # backward: the SIMT fused / dq / dk-dv kernels for fp32 / fp64 x 5 head_dim paths,
    # for bf16 / fp16 (V1, V2) the mma tile kernel of head_dims 16 / 32 / 64 and the
    # key-tiled one (dQ resident or streamed) of all 5 paths, and the tile kernel's
    # four-blocks-per-SM form (V1, head_dim 32);
    # forward: the SIMT kernel for fp32 / fp64, and for bf16 / fp16 (V1, V2) the
    # one-tile mma kernel of the 4 specialised head_dims and the streaming one of all 5 paths
    n_bwd = 3 * 2 * 5 + 2 * (2 * (3 + 2 * 5) + 1)
    assert len(attn) == n_bwd + 2 * 5 + 2 * 2 * (4 + 5), [k.short for k in attn]
    for k in attn:
        if _dtype_of(k) in ("bf16", "fp16"):
            assert k.counts.get("HMMA", 0) > 0, f"{k.short}: no tensor-core instruction"
        else:
            assert k.counts.get("HMMA", 0) == 0, f"{k.short}: fp32/fp64 are SIMT"


def test_attention_forward_is_register_resident(kernels):
    """Every bf16 / fp16 attention forward kernel: mma.sync m16n8k16 (HMMA.16816) fed by
    ldmatrix (LDSM), no MOVM transposes, no generic-address LD/ST (shared memory is
    addressed as shared), no local memory, at most 128 registers (>= 25% occupancy
    on sm_90 at 128 threads)."""
    fwd = [k for k in kernels if k.short.startswith(MMA_FWD)]
    assert len(fwd) == 2 * 2 * (4 + 5), [k.short for k in fwd]  # V1/V2 x 2 dtypes x (tile: 4 head_dims + stream: 5)
    for k in fwd:
        c = k.counts
        assert c.get("HMMA.16816", 0) > 0 and c.get("HMMA.16816", 0) == c.get("HMMA", 0), (k.short, c)
        assert c.get("LDSM", 0) > 0, f"{k.short}: no ldmatrix"
        assert c.get("MOVM", 0) == 0, f"{k.short}: {c['MOVM']} MOVM"
        assert c.get("LD.generic", 0) == 0 and c.get("ST.generic", 0) == 0, (k.short, c)
        assert k.stack == 0 and c.get("STL", 0) == 0 and c.get("LDL", 0) == 0, k.short
        assert k.regs <= 128, f"{k.short}: {k.regs} registers"
        assert c.get("LDGSTS", 0) > 0, f"{k.short}: no cp.async"


def test_attention_backward_is_register_resident(kernels):
    """Every bf16 / fp16 attention backward kernel (the tile kernel, N <= 64, and the
    key-tiled one): mma.sync m16n8k16 fed by ldmatrix (.trans for P^T and dS^T), no
    MOVM, no local memory, rows gathered by cp.async; at Swin's head_dims (16, 32)
    the tile kernel at most 168 registers (3 blocks of 128 threads per SM); the
    key-tiled kernel at most as many as still let an SM hold the blocks its shared
    memory allows (head_dim 16, 54 KB: 3 blocks, 168 registers; from head_dim 32,
    >= 78 KB: 2 blocks, 255, which its S and dP over every n-tile take); the tile kernel's
    four-blocks-per-SM form (``SWIN_EXT_ATTN_BWD=tile4``) at most 128; no generic-address
    LD/ST in any of them (global memory as LDG / STG, shared as LDS / STS).  Not yet met, so
    not asserted (see benchmarks/results/attn_bwd_resources_sm90.md): the V2 tile kernel at
    head_dim 64 (217 registers)."""
    bwd = [k for k in kernels if k.short.startswith(MMA_BWD)]
    shapes = _launch_shapes()
    # dtypes x (V1/V2 x (tile: 3 + key-tiled: 2 x 5) + the tile kernel's lean form)
    assert len(bwd) == 2 * (2 * (3 + 2 * 5) + 1), [k.short for k in bwd]
    lean = [k for k in bwd if k.short.endswith(", lean>")]
    assert sorted(k.short for k in lean) == [f"attn_bwd_tile_kernel<{dt}, 32, v1, lean>" for dt in ("bf16", "fp16")]
    for k in lean:
        assert k.regs <= 128, f"{k.short}: {k.regs} registers (4 blocks of 128 threads per SM)"
    for k in bwd:
        c = k.counts
        assert c.get("HMMA.16816", 0) > 0 and c.get("HMMA.16816", 0) == c.get("HMMA", 0), (k.short, c)
        assert c.get("LDSM", 0) > 0, f"{k.short}: no ldmatrix"
        assert c.get("MOVM", 0) == 0, f"{k.short}: {c['MOVM']} MOVM"
        assert k.stack == 0 and c.get("STL", 0) == 0 and c.get("LDL", 0) == 0, k.short
        assert c.get("LDGSTS", 0) > 0, f"{k.short}: no cp.async"
        hd = int(k.short.split(",")[1])  # (0: the generic head_dim, up to 128)
        if k.short.startswith("attn_bwd_window_kernel"):
            assert k.regs <= (168 if hd == 16 else 255), f"{k.short}: {k.regs} registers"
            shape = shapes.get(("attn_bwd_window_kernel", k.short.split("<")[1].split(",")[0], hd))
            # (head_dim 16: 4 blocks by shared memory, 3 by design. The shape is the harness's launch
            # log; without it the table says n/a too.)
            if hd != 16 and shape is not None:
                thr, smem = shape
                assert sass_report.occupancy(k.regs, thr, smem) == sass_report.occupancy(1, thr, smem), \
                    f"{k.short}: {k.regs} registers cost occupancy at {smem} B of shared memory"
        elif 0 < hd <= 32:
            assert k.regs <= 168, f"{k.short}: {k.regs} registers"
        assert c.get("LD.generic", 0) == 0 and c.get("ST.generic", 0) == 0, (k.short, c)


@pytest.fixture(scope="module")
def listings(tmp_path_factory):
    """cubin name -> its `nvdisasm -c -gi -hex` listing (SASS with inlined source lines and the
    encodings), one disassembly."""
    if sass_report.find_nvdisasm(sass_report.find_cuobjdump()) is None:
        pytest.skip("no nvdisasm")
    return sass_report.disassemble_with_lines(swin_ext._C.__file__, "sm_90", str(tmp_path_factory.mktemp("gi")))


@pytest.fixture(scope="module")
def dyn(kernels, listings):
    """(forward report, backward report, stats) of benchmarks/sass_report.py --dyn."""
    so = swin_ext._C.__file__
    stats: dict = {}
    fwd = sass_report.forward_dynamic_report(so, "sm_90", 128, kernels, listings, stats)
    bwd = sass_report.backward_dynamic_report(so, "sm_90", 128, kernels, listings, stats)
    return fwd, bwd, stats


def test_attention_forward_instruction_estimate(dyn):
    """The dynamic warp-instruction estimate of the Swin-T forward (static SASS x loop
    trips, benchmarks/sass_report.py --dyn) stays under 900 per warp per (image,
    window, head) at every stage (the SIMT/WMMA kernel it replaced: ~3,590)."""
    text = dyn[0]
    # | stage | units | images per block | per warp per block | **per warp per unit** | per unit | HMMA | ...
    rows = re.findall(r"\| \d \| \d+ \| \d+ \| \d+ \| \*\*(\d+)\*\* \| \d+ \| (\d+) \|", text)
    assert len(rows) == 2 * 4, text  # bf16, fp16 x 4 stages
    # The loop trips were applied: the tool's HMMA per warp and image is the hand count (S = Q K^T:
    # 8 n-tiles x 2 k-steps, O += P V: 4 k-steps x 4 n-tiles).  The old table (the image loop's
    # trips lost) said 4 at 8 images per block.
    assert sass_report.hmma_by_hand(32, 64) == 32
    assert all(int(hmma) == 32 for _, hmma in rows), text
    assert max(int(per) for per, _ in rows) <= 900, text
    # the streamed key tiles of 32 keys: 16 HMMA per warp and key tile (window 12: 5 tiles ... window 24: 18)
    assert sass_report.STREAM_KEYS == 32 and sass_report.hmma_by_hand(32, 32) == 16
    streamed = re.findall(r"\| window \d+ \(N = \d+\) \| stream, V1 \| 1 \| (\d+) \|.*\| (\d+) \((\d+)\) \|", text)
    assert len(streamed) == 2 * 3 and all(int(h) == int(e) == 16 * int(kt) for kt, h, e in streamed), text
    assert [int(kt) for kt, _, _ in streamed[:3]] == [5, 8, 18], text
    # Video Swin's (8, 7, 7), N = 392: 13 key tiles per row block, 16 HMMA each
    video = re.findall(r"\| Video Swin \(8, 7, 7\) \(N = 392\) \| stream, V1 \| 1 \| 13 \|.*\| (\d+) \((\d+)\) \|",
                       text)
    assert len(video) == 2 and all(int(h) == int(e) == 16 * 13 for h, e in video), text
    # ... and its key-tiled backward: per (key tile, query tile) pair 2 x 16 HMMA per warp in the
    # D pass (S, dP) and 5 x 16 in the main pass, 7 x 7 pairs
    vbwd = re.findall(r"\| (?:bf16|fp16) \| backward \|.*\| (\d+) \((\d+)\) \| [\d.]+ \|", text)
    assert len(vbwd) == 2 and all(int(h) == int(e) == (32 + 80) * 49 for h, e in vbwd), text
    with open(os.path.join(ROOT, "benchmarks", "results", "attn_fwd_dyn_sm90.md"), "w") as f:
        f.write(text)


def test_attention_backward_instruction_estimate(dyn):
    """The backward's dynamic estimate (the forward's counter over bwd_mma_kernel.cuh's
    `sass:` markers): the tool's HMMA per warp per image is the hand count from the tile
    shapes (80 at head_dim 32 and one 64-key tile; the key-tiled kernel at window 12:
    32 (its D pass) + 80 per (query tile, key tile), 9 per image), the step's backward G is the table's
    rows summed, and the Swin-T tile kernel's image loop stays within the issue's 2,200
    per warp per image (the WMMA kernel it replaced: ~7,100)."""
    _, text, stats = dyn
    assert sass_report.bwd_hmma_by_hand(32, 64) == 80
    # | stage | units | images per block | blocks | per warp per block | **per warp per image** | per unit | HMMA |
    rows = re.findall(r"\| (\d) \| (\d+) \| (\d+) \| \d+ \| \d+ \| \*\*(\d+)\*\* \| \d+ \| (\d+) \|", text)
    assert len(rows) == 2 * 4, text  # bf16, fp16 x 4 stages
    assert all(int(hmma) == 80 for *_, hmma in rows), text
    # the key-tiled kernel, dQ resident / streamed, 1 and 8 images per block
    window = re.findall(r"\| (resident|streamed) \| (\d+) \| \d+ \| \d+ \| \d+ \| (\d+) \|", text)
    assert len(window) == 2 * 2 * 2 and all(int(h) == (32 + 80) * 9 for *_, h in window), text
    # the step's backward G is the bf16 rows: units x 4 warps x per warp per image (rounded per row)
    bf16 = rows[:4]
    g = sum(int(units) * 4 * int(per) for _, units, _, per, _ in bf16) / 1e9
    assert stats["model"]["bwd_g"] == pytest.approx(g, rel=1e-3), (stats["model"]["bwd_g"], g)
    assert f"| bf16 | {stats['model']['fwd_g']:.3f} | {stats['model']['bwd_g']:.3f} |" in text, text
    # the target, per warp and image: the image loop (the review's ~7,100 is the same quantity)
    bodies = re.findall(r"Image loop body \*\*(\d+)\*\* warp-instructions per warp and image", text)
    assert len(bodies) == 2 and all(int(b) <= sass_report.TARGET_BWD_PER_WARP_IMAGE for b in bodies), text
    with open(os.path.join(ROOT, "benchmarks", "results", "attn_bwd_dyn_sm90.md"), "w") as f:
        f.write(text)


def test_control_code_stalls_are_read(dyn, listings):
    """The stall counts of the control codes (sass_report.control_stall, from the encodings'
    high words) are read for every instruction of the tile kernels: a 4-bit count, at least one
    cycle for almost all of them, and for HMMA.16816 at least one (the tensor pipe's issue
    interval).  The reports give the fixed-latency stall cycles per warp and image, which on
    stop 30's build came within 0.08-0.12 cycles per instruction of ncu's stall_wait on the H200
    (benchmarks/results/attn_bwd_stalls_sm90_2026-12-05.md)."""
    fwd, bwd, stats = dyn
    assert sass_report.control_stall(0x048FEC00000418FF) == 6  # an HMMA's high word: stall 6, yield
    for dt in sass_report._MANGLED_T:
        listing = listings[sass_report.bwd_unit(dt, "sm_90")]
        found, ins, _ = sass_report.parse_gi(listing, sass_report.bwd_tile_kernel(dt))
        assert found and len(ins) > 1000, dt
        assert all(0 <= x.stall <= 15 for x in ins), dt
        assert sum(1 for x in ins if x.stall >= 1) >= 0.95 * len(ins), dt
        hmma = [x.stall for x in ins if x.op.startswith("HMMA")]
        assert hmma and min(hmma) >= 1, dt
        for key in ("bwd_stall", "fwd_stall"):
            st = stats[key][dt]
            assert st["body_instr"] < st["body_stall"] < 15 * st["body_instr"], (key, dt, st)
            assert 1.0 < st["block_mean"] < 15.0, (key, dt, st)
    assert bwd.count("Fixed-latency stall cycles") == 2 and fwd.count("Fixed-latency stall cycles") == 2
    # the per-line breakdown (sass_report --stall-lines) sums to the image loop's totals
    text = sass_report.tile_bwd_stall_lines(listings[sass_report.bwd_unit("bf16", "sm_90")], "bf16", 5)
    m = re.match(r"bf16 tile backward, image loop: (\d+) warp-instructions, (\d+) stall cycles", text[0])
    st = stats["bwd_stall"]["bf16"]
    assert m and len(text) == 6, text
    assert int(m.group(1)) == round(st["body_instr"]) and int(m.group(2)) == round(st["body_stall"]), (text[0], st)


def test_tile_backward_key_products_have_no_branch_per_k_step(listings):
    """The tile backward's products over the tile's keys or queries (dQ = dS K, dV = P^T dO,
    dK = dS^T Q: regs_x_rows over staged_t_frags) and the staging of P and dS (stage_a) take all
    four 16-wide k-steps (kTileAllKSteps), not those below N: no branch among them.  With a
    run-time count, each k-step's four HMMA ended in a BRA that ptxas padded with a NOP (21 BRA in
    these functions on the build before; ~23 fixed-latency cycles a k-step).  And the gather of the
    next image forms each row's source by selects, once for its four chunks (row_src,
    kTileRowGather): no branch or divergence marker there (30 BRA, 5 BSSY, 12 BSYNC with branches per
    chunk).  V1 and V2 at head_dim 16 and 32; the lean tile4 form keeps the run-time k-step count (it
    spills without it at 128 registers), head_dim 64 both (the gather by chunks, with branches)."""
    bsrc = os.path.join(ROOT, "csrc", "cuda", "attention", "bwd_mma_kernel.cuh")
    blocks = [
        line
        for fn in ("regs_x_rows", "staged_t_frags", "stage_a")
        for line in sass_report.block_lines(bsrc, rf"__device__ __forceinline__ void {fn}\(")
    ]
    chunk = (sass_report.block_lines(bsrc, r"__device__ __forceinline__ RowSrc row_src\(")
             + sass_report.block_lines(bsrc, r"if constexpr \(Tr::kTileRowGather\) \{"))
    checked = 0
    for dt in sass_report._MANGLED_T:
        for hd, v2 in ((16, 0), (32, 0), (16, 1), (32, 1)):
            name = sass_report.bwd_tile_kernel(dt, hd, bool(v2))
            found, ins, _ = sass_report.parse_gi(listings[sass_report.bwd_unit(dt, "sm_90", hd)], name)
            assert found, (dt, hd, v2)
            br = sass_report.branches_in(ins, os.path.basename(bsrc), blocks)
            assert len(br["all"]) > 48, (dt, hd, v2)  # the products are in the kernel
            assert not br["BRA"], (dt, hd, v2, br["BRA"])
            bc = sass_report.branches_in(ins, os.path.basename(bsrc), chunk)
            assert len(bc["all"]) > 8, (dt, hd, v2)  # the gather is in the kernel
            assert not (bc["BRA"] or bc["BSSY"] or bc["BSYNC"]), (dt, hd, v2, bc)
            checked += 1
    assert checked == 8


def test_key_tiled_scores_have_no_branch_per_entry(listings):
    """The key-tiled kernels' per-entry code is straight-line: the forward's bias and mask
    (add_bias), the backward's logits, and its bias-gradient read-modify-writes have no
    divergent branch (BSSY / BSYNC) and no branch but the forward's uniform guard per 8-key
    n-tile.  A branch per entry made each entry wait for its own loads, one entry after the
    other: on the H200 the window-12 forward ran 33% slower than before the shared-memory
    tables (gpu_check 2026-12-04-1835), against 5% fewer instructions."""
    att = os.path.join(ROOT, "csrc", "cuda", "attention")
    fsrc, bsrc = os.path.join(att, "fwd_mma_kernel.cuh"), os.path.join(att, "bwd_mma_kernel.cuh")
    add_bias = sass_report.block_lines(fsrc, r"const auto add_bias = \[&\]\(auto tab\)")
    guard = sass_report.block_lines(fsrc, r"if \(kt0 \+ nt \* 8 >= N\) \{")[0]
    logits = sass_report.block_lines(bsrc, r"const auto logits = \[&\]\(auto tab,")
    rmw = sass_report.block_lines(bsrc, r"for \(int n2 = 0; n2 < 4; n2 \+= kRmwNT\)")
    checked = 0
    for dt, mt in sass_report._MANGLED_T.items():
        fwd = {f"stream V{v}": f"attn_fwd_stream_kernelINS1_12FwdMmaTraitsI{mt}Li32ELb{v - 1}E" for v in (1, 2)}
        bwd = {f"window V{v} {form}": f"attn_bwd_window_kernelINS2_12BwdMmaTraitsI{mt}Li32ELb{v - 1}EEELb{r}EEEv"
               for v in (1, 2) for r, form in ((1, "resident"), (0, "streamed"))}
        for unit, names, blocks in ((f"attention_{dt}.sm_90.cubin", fwd, {"add_bias": add_bias}),
                                    (sass_report.bwd_unit(dt, "sm_90"), bwd, {"logits": logits, "rmw": rmw})):
            parsed = sass_report.parse_gi_all(listings[unit], list(names.values()))
            for label, name in names.items():
                found, ins, _ = parsed[name]
                assert found, (dt, label)
                for bname, lines in blocks.items():
                    br = sass_report.branches_in(ins, os.path.basename(fsrc if bname == "add_bias" else bsrc), lines)
                    where = (dt, label, bname)
                    assert len(br["all"]) > 20, where  # the block is in the kernel (both table forms)
                    # A branch per entry is >= 16 of each per block.  What may remain: the forward's
                    # guard per n-tile, one jump over the other table form's copy, and one
                    # reconvergence marker of the code after the block that ptxas scheduled into it.
                    assert len(br["BSSY"]) <= 1 and len(br["BSYNC"]) <= 1, (where, br["BSSY"], br["BSYNC"])
                    other = [line for line in br["BRA"] if bname != "add_bias" or line != guard]
                    assert len(other) <= 1, (where, br["BRA"])
                    checked += 1
    assert checked == 2 * (2 + 4 * 2)


def test_backward_score_products_have_no_branch_per_n_tile(listings):
    """S = Q K^T and dP = dO V^T of the tile backward (rows_x_rowsT) take every n-tile of the key
    tile (n_keys = 64): no branch among their mma.  A warp-uniform branch per
    n-tile is a scheduling barrier: ptxas issued each n-tile's two dependent HMMA back to back
    after the previous n-tile's (LDSM -> HMMA -> HMMA -> BRA, seven times for N = 49; stop 30's
    ncu of the tile kernel had fixed-latency waits as its largest stall).  Checked: the V1 tile
    kernels, both forms, and the key-tiled kernels at head_dim 32 (V1 and V2, both forms: their
    32-key halves; 24 BRA on the build before).  The V2 tile kernel keeps its branches: without
    them it spills at 168 registers."""
    bsrc = os.path.join(ROOT, "csrc", "cuda", "attention", "bwd_mma_kernel.cuh")
    block = sass_report.block_lines(bsrc, r"__device__ __forceinline__ void rows_x_rowsT\(")
    checked = 0
    for dt, mt in sass_report._MANGLED_T.items():
        names = {
            "tile V1": f"attn_bwd_tile_kernelINS2_12BwdMmaTraitsI{mt}Li32ELb0EEEEEv",
            "tile4 V1": f"attn_bwd_tile_kernelINS2_16BwdMmaLeanTraitsI{mt}EEEEv",
        }
        for v, vb in (("V1", 0), ("V2", 1)):
            for form, fb in (("streamed", 0), ("resident", 1)):
                names[f"key-tiled {v} {form}"] = (
                    f"attn_bwd_window_kernelINS2_12BwdMmaTraitsI{mt}Li32ELb{vb}EEELb{fb}EEEv")
        parsed = sass_report.parse_gi_all(listings[sass_report.bwd_unit(dt, "sm_90")], list(names.values()))
        for label, name in names.items():
            found, ins, _ = parsed[name]
            assert found, (dt, label)
            br = sass_report.branches_in(ins, os.path.basename(bsrc), block)
            assert sum(1 for x in ins if x.op.startswith("HMMA")) >= 64, (dt, label)
            assert len(br["all"]) > 32, (dt, label)  # the products are in the kernel
            # (On the build before, 14 / 15 BRA.  What may remain: one reconvergence marker of the code
            # after the products that ptxas scheduled among them.)
            assert not br["BRA"] and len(br["BSSY"]) <= 1, (dt, label, br["BRA"], br["BSSY"])
            checked += 1
    assert checked == 2 * 6


def test_row_accesses_are_128_bit(kernels):
    for k in kernels:
        vec = k.short.startswith("attn_") or not k.short.rstrip(">").endswith(
            ", 1"
        )  # merge / add_ln / bias_gelu <..., 1>: the scalar path
        if vec:
            if k.short.startswith(MMA_FWD + MMA_BWD):  # rows arrive by 16-byte cp.async (LDGSTS.E.BYPASS.128)
                assert k.counts.get("LDGSTS", 0) > 0, f"{k.short}: no cp.async"
            else:
                assert k.counts.get("LDG.128", 0) > 0, f"{k.short}: no 128-bit global load"
            # (the tile backward above head_dim 32 stores its gradients from the fragments,
            # 32 bits at a time)
            fragment_out = k.short.startswith("attn_bwd_tile_kernel") and int(k.short.split(",")[1]) > 32
            if not fragment_out:
                assert k.counts.get("STG.128", 0) > 0, f"{k.short}: no 128-bit global store"


def test_merge_register_kernels(kernels):
    """Patch merging's register kernels (issue 20): one of each direction per float-accumulation dtype
    mix, 128-bit loads and stores of every row, at most 128 registers (4 blocks of 128 threads per SM)."""
    reg = [k for k in kernels if k.short.startswith(("merge_fwd_reg_kernel<", "merge_bwd_reg_kernel<"))]
    mixes = {k.short.split("<", 1)[1].rsplit(",", 2)[0] for k in reg}
    assert len(mixes) == 9 and len(reg) == 18, sorted(k.short for k in reg)  # every mix but float64's
    for k in reg:
        assert k.counts.get("LDG.128", 0) > 0 and k.counts.get("STG.128", 0) > 0, f"{k.short}: not 128-bit"
        assert k.regs <= 128, f"{k.short}: {k.regs} registers"


def test_no_local_memory(kernels):
    for k in kernels:
        assert k.stack == 0 and k.counts.get("STL", 0) == 0 and k.counts.get("LDL", 0) == 0, (
            f"{k.short}: {k.stack} B stack frame, {k.counts.get('STL', 0)} STL / {k.counts.get('LDL', 0)} LDL"
        )


def _launch_shapes():
    """(kernel family, dtype, head_dim) -> (threads, dynamic smem) at window 7, from the harness."""
    try:
        from op_testing import harness_ops

        hops = harness_ops()
    except BaseException:  # noqa: BLE001 - pytest.skip is a BaseException: the table then says n/a
        return {}
    shapes = {}
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}
    os.environ.pop("SWIN_EXT_ATTN_BWD", None)
    for dtype, dn in names.items():
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for d in (16, 32, 64, 128, 48):
            for path in ("auto", "tile4", "streaming"):  # (the last launch of a family names its row)
                qkv = torch.randn(1, 7, 7, 3 * d).to(dtype)
                bias = torch.randn(1, 49, 49).to(acc)
                if path != "auto":
                    os.environ["SWIN_EXT_ATTN_BWD"] = path
                hops.start_launch_log()
                try:
                    out, lse = hops.window_attention_fwd(qkv, bias, None, [7, 7], [3, 3], 0.2)
                    hops.window_attention_bwd(torch.randn_like(out), qkv, bias, None, lse, [7, 7], [3, 3], 0.2)
                finally:
                    log = hops.stop_launch_log()
                    os.environ.pop("SWIN_EXT_ATTN_BWD", None)
                key_d = d if d != 48 else 0
                for line in log.splitlines():
                    name, _, block, smem = line.split(";")
                    fam = name.strip("()").split("<")[0].split("::")[-1]
                    lean = ("lean",) if "BwdMmaLeanTraits" in name else ()  # the tile kernel's tile4 form
                    shapes[(fam, dn, key_d) + lean] = (int(block.split(",")[0]), int(smem))
    return shapes


def test_write_sass_table(kernels):
    shapes = _launch_shapes()
    lines = [
        "# SASS of swin_ext._C (sm_90)",
        "",
        "Written by `tests/test_sass.py` from `cuobjdump` of the built extension.  Threads and dynamic",
        "shared memory are those of a launch at window 7 (N = 49), read from the CPU harness's launch",
        "log; occupancy is the theoretical H100 value (64K registers, 228 KB shared memory, 64 warps per SM).",
        "The generic head_dim path (`0`) is shown launched at head_dim 48; the forward's one-tile kernels",
        "(`attn_fwd_tile_kernel<dtype, d, v1|v2>`) at the V1 launch (V2 adds 512 B of shared memory).",
        "",
        "| kernel | SASS instrs | regs | stack B | STL/LDL | HMMA | LDSM | MOVM | LDG.128 | LDGSTS | STG.128 "
        "| threads | dyn smem B | H100 occupancy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in kernels:
        fam = k.short.split("<")[0]
        parts = [p.strip() for p in k.short.split("<", 1)[1].rstrip(">").split(",")]
        lean = ("lean",) if parts[-1] == "lean" else ()
        key = (fam, parts[0], int(parts[1])) + lean if fam.startswith("attn_") and len(parts) >= 2 else None
        shape = shapes.get(key) if key else None
        thr, smem, occ = ("-", "-", "-")
        if shape:
            thr, smem = shape
            occ = f"{100 * sass_report.occupancy(k.regs, thr, smem):.0f}%"
        c = k.counts
        lines.append(
            f"| `{k.short}` | {k.instrs} | {k.regs} | {k.stack} | {c.get('STL', 0)}/{c.get('LDL', 0)} | "
            f"{c.get('HMMA', 0)} | {c.get('LDSM', 0)} | {c.get('MOVM', 0)} | {c.get('LDG.128', 0)} | "
            f"{c.get('LDGSTS', 0)} | {c.get('STG.128', 0)} | {thr} | {smem} | {occ} |"
        )
    out = os.path.join(ROOT, "benchmarks", "results", "sass_sm90.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    assert os.path.getsize(out) > 0


# ---------------------------------------------------------------------------
# add + LayerNorm (register path) and bias + GELU: the row loops in the SASS
# (issue 20).  benchmarks/sass_report.py --streams prints the numbers.

STREAM_KERNELS = ("add_ln_fwd_reg_kernel", "add_ln_bwd_reg_kernel", "bias_gelu_fwd_kernel", "bias_gelu_bwd_kernel")


def _args(k):
    return [a.strip() for a in k.short.split("<", 1)[1].rstrip(">").split(",")]


@pytest.fixture(scope="module")
def stream(kernels):
    ks = [k for k in kernels if k.short.startswith(STREAM_KERNELS)]
    # fwd/bwd x dtypes x capacities
    assert len([k for k in ks if k.short.startswith("add_ln")]) == 2 * 10 * 2, [k.short for k in ks]
    assert len([k for k in ks if k.short.startswith("bias_gelu")]) == 2 * 4 * 2  # fwd/bwd x dtypes x vec/scalar
    ins = sass_report.read_sass_instrs(swin_ext._C.__file__, ks)
    return [(k, ins[k.mangled]) for k in ks]


def _loop(ins):
    lo, hi = sass_report.row_loop(ins)
    return [sass_report.opcode(t) for _, t in ins[lo:hi + 1]]


def test_stream_kernel_registers(stream):
    """Occupancy by the launch bounds, no spills: bias_gelu (192 threads) fwd <= 56 registers (6 blocks = 56%),
    bwd <= 64 (5 blocks, two rows of dy and z in flight); add_ln small capacity fwd <= 72
    (7 blocks of 128 threads), bwd <= 128 (2 blocks of 256), large capacity fwd <= 168 (3 blocks),
    bwd <= 255 (the fp32 accumulation only: fp64 is for gradcheck)."""
    for k, _ in stream:
        a = _args(k)
        if "fp64" in a:
            continue
        if k.short.startswith("bias_gelu"):
            bound = 56 if "fwd" in k.short else 64
        else:
            small = int(a[-1]) * int(a[-2]) <= 24
            bound = (72 if small else 168) if "fwd" in k.short else (128 if small else 255)
        assert k.regs <= bound, f"{k.short}: {k.regs} registers > {bound}"


def test_add_ln_reads_each_row_once(stream):
    """The forward's row loop loads x and branch once per chunk (no second pass over global memory),
    nothing else; the backward's h, grad_y, grad_h once per chunk plus mean and rstd."""
    size = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
    for k, ins in stream:
        if not k.short.startswith("add_ln"):
            continue
        tx, tb, ty, _, vec, nch = _args(k)
        loop = _loop(ins)
        wide = sum(t.startswith("LDG.E.128") for t in loop)
        other = sum(t.startswith("LDG") and not t.startswith("LDG.E.128") for t in loop)
        per_chunk = size[tx] * int(vec) // 16 + size[ty if "bwd" in k.short else tb] * int(vec) // 16
        if "bwd" in k.short:
            per_chunk += size[tx] * int(vec) // 16  # grad_h
        assert wide == int(nch) * per_chunk, (k.short, wide, int(nch) * per_chunk)
        assert other == (2 if "bwd" in k.short else 0), (k.short, other)  # mean, rstd


def test_add_ln_backward_keeps_dweight_dbias_in_registers(stream):
    """No shared-memory store or atomic in the backward's row loop: dweight / dbias live in registers
    (the shared-memory read-modify-writes of the wide kernel are gone from the register path)."""
    for k, ins in stream:
        if k.short.startswith("add_ln_bwd_reg_kernel"):
            bad = [t for t in _loop(ins) if t.startswith(("STS", "ATOMS", "ATOM", "RED"))]
            assert not bad, (k.short, bad)


def test_bias_gelu_two_rows_in_flight(stream):
    """Both rows' 16-byte loads (z; dy and z) are issued before the first row's store."""
    for k, ins in stream:
        if not k.short.startswith("bias_gelu") or _args(k)[-1] == "1":
            continue
        loop = _loop(ins)
        first_store = next(i for i, t in enumerate(loop) if t.startswith("STG"))
        loads = sum(t.startswith("LDG.E.128") for t in loop[:first_store])
        assert loads == (2 if "fwd" in k.short else 4), (k.short, loads)


# SASS instructions per element of a lane (the row loop per element it handles; add_ln: with the rarely
# taken rescale block and the group reductions at 4 lanes per row, an upper bound).  Before issue 20:
# bias_gelu fwd 30.9, bwd 46.1 (one row per trip, erff); add_ln one warp per row in four passes.
PER_ELEM_BOUND = {"bias_gelu_fwd_kernel": 20.0, "bias_gelu_bwd_kernel": 27.0,
                  "add_ln_fwd_reg_kernel": 34.0, "add_ln_bwd_reg_kernel": 34.0}


def test_instructions_per_element(stream):
    for k, ins in stream:
        a = _args(k)
        if "fp64" in a or a[-1] == "1" or (k.short.startswith("add_ln") and a[-2] != "8"):
            continue  # the 16-bit-vector kernels the autocast model runs
        c = sass_report.loop_count(k, ins, lg=2)
        bound = PER_ELEM_BOUND[k.short.split("<")[0]]
        assert c is not None and c.per_elem <= bound, (k.short, c and c.per_elem, bound)


def test_write_stream_table(kernels):
    out = os.path.join(ROOT, "benchmarks", "results", "sass_streams_sm90.md")
    text = sass_report.stream_table(swin_ext._C.__file__, "sm_90", kernels)
    with open(out, "w") as f:
        f.write("# add + LayerNorm and bias + GELU: SASS per element, bytes, estimated H200 time\n\n"
                "Written by `tests/test_sass.py` (`benchmarks/sass_report.py --streams`).\n\n" + text + "\n")
    assert "add+LN bwd" in text and "bias+GELU bwd" in text


def test_dyn_markers_and_stale_listing():
    """Both marker spellings reach the one counter (the backward's `sass: image-loop` is
    `trips=images`, a `sass: skip(...)` covers the block it opens), and a listing whose
    line attribution does not fit the source (a stale build) is refused."""
    src = os.path.join(ROOT, "csrc", "cuda", "attention", "bwd_mma_kernel.cuh")
    with open(src) as f:
        text = f.read().splitlines()
    mk = sass_report.dyn_markers(src)
    loops = [i for i, t in enumerate(text, 1) if "sass: image-loop" in t]
    assert len(loops) == 2 and all(mk[i] == "trips=images" for i in loops), loops
    skip = next(i for i, t in enumerate(text, 1) if "sass: skip(scalar)" in t)
    assert mk[skip] == mk[skip + 1] == "skip" and "}" in text[max(k for k, v in mk.items() if v == "skip"
                                                                    and k < skip + 12) - 1]
    blank = next(i for i, t in enumerate(text, 1) if i > skip and not t.strip())
    stale = [sass_report.Instr("FADD", "FADD R1, R2, R3", [("bwd_mma_kernel.cuh", blank)])]
    with pytest.raises(ValueError, match="rebuild"):
        sass_report.check_lines_are_code(stale, "bwd_mma_kernel.cuh", src)


def test_when_marker_counts_a_block_only_where_it_holds(tmp_path):
    """`// sass-dyn: when=<expr>` (patch_merging.cuh's group reduction across warps): the block's body
    is on the costed path only where the expression holds in the counter's environment, the test on
    the marked line always; a marker inside a `when` block is refused (the counter could not weigh
    both)."""
    src = tmp_path / "k.cuh"
    src.write_text("void k() {\n"
                   "  int a = 0;\n"
                   "  if (wide) {  // sass-dyn: when=wpg > 1\n"
                   "    a += 1;\n"
                   "  }\n"
                   "  for (;;) {  // sass-dyn: trips=n\n"
                   "    a += 2;\n"
                   "  }\n"
                   "}\n")
    mk = sass_report.dyn_markers(str(src))
    assert mk == {4: "when=wpg > 1", 5: "when=wpg > 1", 6: "trips=n"}, mk
    ins = [sass_report.Instr("ISETP", "ISETP.GT.AND P0, PT, R1, 0x5, PT", [("k.cuh", 3)]),
           sass_report.Instr("IADD3", "IADD3 R2, R2, 0x1, RZ", [("k.cuh", 4)]),
           sass_report.Instr("IADD3", "IADD3 R2, R2, 0x2, RZ", [("k.cuh", 7)]),
           sass_report.Instr("BRA", "@P1 BRA `(.L_x_1)", [("k.cuh", 6)]),
           sass_report.Instr("EXIT", "EXIT", [("k.cuh", 9)])]
    labels = {".L_x_1": 2}
    narrow, _ = sass_report.path_weights(ins, labels, "k.cuh", mk, dict(wpg=1, n=3))
    wide, _ = sass_report.path_weights(ins, labels, "k.cuh", mk, dict(wpg=2, n=3))
    assert narrow == [1.0, 0.0, 3.0, 3.0, 1.0], narrow
    assert wide == [1.0, 1.0, 3.0, 3.0, 1.0], wide
    nested = tmp_path / "nested.cuh"
    nested.write_text("void k() {\n  if (wide) {  // sass-dyn: when=wpg > 1\n"
                      "    for (;;) {  // sass-dyn: trips=n\n    }\n  }\n}\n")
    with pytest.raises(ValueError, match="inside a `when` block"):
        sass_report.dyn_markers(str(nested))


# ---------------------------------------------------------------------------
# The rest of the step against its floors (issue 20): benchmarks/sass_report.py --floors.

def _op_bytes(op: str, B: int, H: int, W: int, C: int) -> int:
    """Bytes of every input and output tensor of one call of the op at the model's autocast dtypes, the
    outputs as the op's own fake (meta) implementation makes them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    f32, bf = torch.float32, torch.bfloat16
    ops = torch.ops.swin_ext
    with FakeTensorMode():
        E, rows, H2, W2 = (B, H, W, C), (B, H, W), (H + 1) // 2, (W + 1) // 2
        if op == "add+LN fwd":
            ins = [torch.empty(E, dtype=f32), torch.empty(E, dtype=bf), torch.empty(C), torch.empty(C)]
            outs = ops.add_layernorm_fwd(*ins, 1e-5, bf)
        elif op == "add+LN bwd":
            ins = [torch.empty(E), torch.empty(E, dtype=bf), torch.empty(E), torch.empty(C), torch.empty(rows),
                   torch.empty(rows)]
            outs = ops.add_layernorm_bwd(*ins, bf)
        elif op == "bias+GELU fwd":
            ins = [torch.empty(E, dtype=bf), torch.empty(C)]
            outs = [ops.bias_gelu_fwd(*ins)]
        elif op == "bias+GELU bwd":
            ins = [torch.empty(E, dtype=bf), torch.empty(E, dtype=bf), torch.empty(C)]
            outs = ops.bias_gelu_bwd(*ins)
        elif op == "merging fwd":
            x, branch, w, b = torch.empty(E), torch.empty(E, dtype=bf), torch.empty(4 * C), torch.empty(4 * C)
            ins = [x, branch, w, b]
            outs = ops.patch_merging_fwd(x, w, b, 1e-5, branch, bf)
        else:
            go, x, w = torch.empty(B, H2, W2, 4 * C, dtype=bf), torch.empty(E), torch.empty(4 * C)
            mean, rstd, branch = torch.empty(B, H2, W2), torch.empty(B, H2, W2), torch.empty(E, dtype=bf)
            ins = [go, x, w, mean, rstd, branch]
            outs = ops.patch_merging_bwd(go, x, w, mean, rstd, branch, bf)
        return sum(t.numel() * t.element_size() for t in list(ins) + list(outs))


@pytest.fixture(scope="module")
def floor_rows(kernels):
    """benchmarks/sass_report.py --floors' rows (add+LN, bias+GELU, patch merging over a Swin-T step)."""
    return sass_report.floors_rows(swin_ext._C.__file__, "sm_90", kernels)


def test_step_floors(kernels, floor_rows):
    """The floor bytes of every op in step_floors_sm90.md are the op's own tensors (inputs read once,
    outputs written once, from its fake implementation at the autocast dtypes) summed over a Swin-T
    step at batch 128 (2 add+LN and 1 bias+GELU per block, 3 mergings); the design moves at most
    the floor plus a few percent of partial rows; the estimate is never below the floor."""
    stages = [(56, 96, 2), (28, 192, 2), (14, 384, 6), (7, 768, 2)]
    rows = floor_rows
    assert [r["op"] for r in rows] == [op for op, _, _ in sass_report.FLOOR_OPS]
    for r in rows:
        op = r["op"]
        if op.startswith("merging"):
            calls = [(hw, C, 1) for hw, C, _ in stages[:3]]
        else:
            per = 2 if op.startswith("add+LN") else 1
            calls = [(hw, 4 * C if op.startswith("bias") else C, per * depth) for hw, C, depth in stages]
        floor = sum(n * _op_bytes(op, 128, hw, hw, C) for hw, C, n in calls)
        assert r["floor_bytes"] == floor, (op, r["floor_bytes"], floor)
        assert floor <= r["design_bytes"] <= 1.05 * floor, (op, r["design_bytes"], floor)
        assert r["warp_per_elem"] > 0 and 1.0 < r["ratio"][0] <= r["ratio"][1], (op, r)
    # Patch merging meets issue 20's target (1.5x the floor, fwd + bwd) under both sets of assumptions,
    # both kernels memory-bound: the estimate that a decode with divisions (57 and 75 SASS per element,
    # issue-bound, 1.51x pessimistic) failed.
    merging = [r for r in rows if r["op"].startswith("merging")]
    pess = sum(r["est_ms"][1] for r in merging) / sum(r["floor_ms"] for r in merging)
    assert pess <= sass_report.FLOOR_TARGETS["merging"], pess
    assert all(b == "memory" for r in merging for b in r["bound"]), [(r["op"], r["bound"]) for r in merging]
    # add+LN and bias+GELU meet theirs (1.15x, 1.2x) under the optimistic assumptions, the only ones under
    # which a kernel can: at the pessimistic 3.8 TB/s a kernel moving exactly its floor's bytes is 1.26x.
    # Every kernel memory-bound.  add+LN's 4-warp backward blocks (a partial row pair per 48 and 12 rows
    # at stages 3 and 4) gave 1.151x.
    opt, pes = sass_report.H200_CASES["optimistic"], sass_report.H200_CASES["pessimistic"]
    for fam in ("add+LN", "bias+GELU"):
        rs = [r for r in rows if r["op"].startswith(fam)]
        ratio = sum(r["est_ms"][0] for r in rs) / sum(r["floor_ms"] for r in rs)
        assert ratio <= sass_report.FLOOR_TARGETS[fam] < sass_report.H200_PEAK / pes[0], (fam, ratio)
    assert sass_report.H200_PEAK / opt[0] < 1.15
    assert all(b == "memory" for r in rows for b in r["bound"]), [(r["op"], r["bound"]) for r in rows]
    text = sass_report.floors_report(swin_ext._C.__file__, "sm_90", kernels, rows=rows)
    assert "| merging bwd |" in text
    with open(os.path.join(ROOT, "benchmarks", "results", "step_floors_sm90.md"), "w") as f:
        f.write(text)


def test_step_model_reproduces_the_review():
    """benchmarks/step_estimate.py's baselines are the review's model (step_model_h200.py): with it,
    the GEMMs and timm's three steps on an H200 are the review's published table (ms, training step and
    inference forward, optimistic and pessimistic)."""
    none = dict(attention=(0.0, 0.0), add_ln=(0.0, 0.0), bias_gelu=(0.0, 0.0), merging=(0.0, 0.0))
    review = {True: [(5.92, 27.08, 22.85, 16.58), (7.31, 34.90, 28.88, 21.51)],
              False: [(1.97, 10.69, 8.34, 5.80), (2.44, 13.92, 10.51, 7.60)]}
    for train, want in review.items():
        for r, w in zip(step_estimate.steps(none, train), want):
            got = tuple(round(1e3 * r[k], 2) for k in ("gemm", "timm eager", "timm + SDPA", "timm compiled"))
            assert got == w, (train, got, w)


def test_step_estimate(dyn, floor_rows):
    """The whole Swin-T step (benchmarks/step_estimate.py): swin_ext's kernels from this build (the
    attention from the --dyn model, the rest from the --floors rows) in the review's H200 model.  The
    parts are the reports' own numbers, the step is their sum, and the issue's targets hold at both
    consistent sets of assumptions: training >= 1.15x timm under torch.compile, inference >= 1.2x."""
    model = dyn[2]["model"]
    train_k, infer_k = step_estimate.kernels_from(model, floor_rows)
    assert train_k["attention"] == tuple(model["att"]) and infer_k["attention"] == tuple(model["att_fwd"])
    assert all(0 < infer_k["attention"][k] < train_k["attention"][k] for k in (0, 1)), (train_k, infer_k)
    add_ln = [r for r in floor_rows if r["op"].startswith("add+LN")]
    assert train_k["add_ln"][1] == pytest.approx(sum(r["est_ms"][1] for r in add_ln) / 1e3)
    for train, kern in ((True, train_k), (False, infer_k)):
        for r in step_estimate.steps(kern, train):
            parts = r["gemm"] + r["swin_att"] + r["swin_ew"] + r["swin_merge"] + r["misc"]
            assert r["swin_ext"] == pytest.approx(parts)
            assert r["timm compiled"] / r["swin_ext"] >= step_estimate.TARGETS[train], (train, r)
    text = step_estimate.report(train_k, infer_k, model)
    assert text.count("**met**") == 2, text
    with open(os.path.join(ROOT, "benchmarks", "results", "step_estimate_sm90.md"), "w") as f:
        f.write(text)

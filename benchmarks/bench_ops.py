"""Op-level benchmark: swin_ext's fused kernels against the composites other Swins run, and their byte floors.

Three modes:

* the op table (default): forward and forward+backward of

  - the window attention at the stage shapes of Swin-T (V1, window 7),
    Swin-B 384 (V1, window 12), SwinV2-T window 8 and window 16 (256 px),
    against ``timm`` (timm's own ``WindowAttention`` code under autocast:
    roll, ``window_partition``, its relative-position-bias gather, q k^T +
    bias + mask, softmax, @ v, ``window_reverse``, roll back; V2: cosine
    logits, ``logit_scale``, the CPB MLP) and ``sdpa`` (the same with
    ``F.scaled_dot_product_attention`` and the bias + mask materialized as
    a (B*nW, heads, N, N) mask: timm's ``fused_attn`` path for V1, the same
    construction after ``F.normalize`` for V2);
  - ``add+LN`` (a float32 stream + a low-precision branch under autocast)
    against ``x + branch`` then ``F.layer_norm``; ``bias+GELU`` against
    ``F.gelu(z + bias)``; patch merging against its reference composite;

  every op also against its byte floor (each input read once, each output
  written once) at the device-copy bandwidth measured in the same run.
  Median of repeats after warm-up (CUDA events on a GPU); every
  implementation of a row on the same inputs.  Rows are printed (and
  appended to ``--md-out``) as they finish; with ``--deadline`` the run
  stops before a row that would start past it, so a kill loses nothing done.
* ``--smoke``: every op forward and backward once against the reference on
  small random inputs (float32 and bfloat16), pass / fail per op.
* ``--ncu-driver``: a stage-1 Swin-T attention forward and backward (bf16,
  ``--batch``) between ``cudaProfilerStart`` / ``Stop`` after a warm-up, for
  ``ncu --profile-from-start off``; ``--ncu-table CSV`` turns ncu's
  ``--csv --page raw`` output into a markdown table (IPC, stall reasons, DRAM).

    python benchmarks/bench_ops.py --device cpu --quick                 # the whole table on CPU, tiny (a dry run)
    python benchmarks/bench_ops.py --device cpu --smoke
    python benchmarks/bench_ops.py --device cuda --dtypes bfloat16 float16 --batch 128 --md-out ops.md
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swin_ext  # noqa: E402
from swin_ext.ops import reference  # noqa: E402

from _timing import gpu_busy_time, measure  # noqa: E402

# Stage shapes (H = W, C, heads) per configuration, with the window and the image size.
CONFIGS = {
    "swin_t": dict(v2=False, ws=7, stages=[(56, 96, 3), (28, 192, 6), (14, 384, 12), (7, 768, 24)]),
    "swin_b": dict(v2=False, ws=7, stages=[(56, 128, 4), (28, 256, 8), (14, 512, 16), (7, 1024, 32)]),
    "swin_b_384": dict(v2=False, ws=12, stages=[(96, 128, 4), (48, 256, 8), (24, 512, 16), (12, 1024, 32)]),
    "swinv2_t_w8": dict(v2=True, ws=8, stages=[(64, 96, 3), (32, 192, 6), (16, 384, 12), (8, 768, 24)]),
    "swinv2_t_w16": dict(v2=True, ws=16, stages=[(64, 96, 3), (32, 192, 6), (16, 384, 12)]),  # stage 4: window 8
}
MODELS = {"swin_t": dict(embed_dim=96, heads=(3, 6, 12, 24)), "swin_b": dict(embed_dim=128, heads=(4, 8, 16, 32))}
BASELINES = ("composite", "sdpa")


# --------------------------------------------------------------------------- attention baselines


def sdpa_window_attention(qkv, bias, ws, shift, scale=None, qkv_pad=None, head_scale=None):
    """F.scaled_dot_product_attention with the bias + shift mask materialised (timm's fused-attention path);
    V2 (``head_scale``): q, k L2-normalised and q scaled per head first."""
    B, H, W, C3 = qkv.shape
    C, heads = C3 // 3, bias.shape[0]
    d, N = C // heads, ws * ws
    sh = sw = shift if isinstance(shift, int) else shift[0]
    pad_b, pad_r = (-H) % ws, (-W) % ws
    x = F.pad(qkv, (0, 0, 0, pad_r, 0, pad_b)) if pad_b or pad_r else qkv
    Hp, Wp = H + pad_b, W + pad_r
    if sh:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    win = reference.window_partition(x, ws)
    Bn = win.shape[0]
    q, k, v = win.reshape(Bn, N, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    if head_scale is not None:
        q = F.normalize(q, dim=-1) * head_scale.to(q.dtype).view(1, heads, 1, 1)
        k = F.normalize(k, dim=-1)
        scale = 1.0
    attn_mask = bias.to(q.dtype).unsqueeze(0)
    if sh:
        mask = reference.shift_mask((Hp, Wp), (ws, ws), (sh, sw), device=qkv.device, dtype=q.dtype)
        nW = mask.shape[0]
        attn_mask = (attn_mask.view(1, 1, heads, N, N) + mask.view(1, nW, 1, N, N)).expand(Bn // nW, -1, -1, -1, -1)
        attn_mask = attn_mask.reshape(Bn, heads, N, N)
    else:
        attn_mask = attn_mask.expand(Bn, -1, -1, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    out = reference.window_reverse(out.transpose(1, 2).reshape(Bn, N, C), ws, Hp, Wp)
    if sh:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :H, :W]


class _Given(nn.Module):
    """Stands in for timm's qkv Linear: returns the qkv windows of the current call."""

    def __init__(self):
        super().__init__()
        self.t: Optional[torch.Tensor] = None

    def forward(self, x):  # noqa: ARG002 - the Linear's input is not used
        return self.t


class TimmWindowAttention:
    """timm's own window attention at the op's boundary (qkv in, pre-proj out): the block's roll /
    pad / ``window_partition`` / mask / ``window_reverse`` around timm's ``WindowAttention`` module,
    whose qkv Linear returns the given qkv windows and whose proj is the identity.

    V1: timm's relative-position-bias gather each call, ``fused_attn`` False (explicit softmax) or True
    (SDPA with the bias + mask materialised).  V2: cosine logits, ``logit_scale``, the CPB MLP.
    Parameters (the bias table / CPB, logit_scale) get gradients as in training.
    """

    def __init__(self, H, C, heads, ws, shift, v2, device, fused_attn=False):
        if v2:
            from timm.models.swin_transformer_v2 import SwinTransformerV2Block as Block
            from timm.models.swin_transformer_v2 import window_partition, window_reverse
        else:
            from timm.models.swin_transformer import SwinTransformerBlock as Block
            from timm.models.swin_transformer import window_partition, window_reverse
        blk = Block(C, (H, H), heads, window_size=ws, shift_size=shift).to(device)
        attn = blk.attn
        attn.qkv = _Given()
        attn.proj = nn.Identity()
        if v2:
            attn.q_bias = attn.k_bias = attn.v_bias = None  # qkv comes in as computed
        else:
            attn.fused_attn = fused_attn
        self.blk, self.v2, self.C = blk, v2, C
        self.partition, self.reverse = window_partition, window_reverse

    def position_bias(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The module's (heads, N, N) position bias as its forward computes it, and V2's per-head logit scale."""
        attn = self.blk.attn
        if not self.v2:
            return attn._get_rel_pos_bias()[0].float(), None
        N = attn.window_size[0] * attn.window_size[1]
        table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
        rel = table[attn.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
        scale = torch.clamp(attn.logit_scale, max=math.log(1.0 / 0.01)).exp().view(-1)
        return (16 * torch.sigmoid(rel)).float(), scale.float()

    def __call__(self, qkv: torch.Tensor) -> torch.Tensor:
        blk, C = self.blk, self.C
        B, H, W, _ = qkv.shape
        sh, sw = blk.shift_size
        x = torch.roll(qkv, shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else qkv
        wh, ww = blk.window_size
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        _, Hp, Wp, _ = x.shape
        win = self.partition(x, blk.window_size).view(-1, wh * ww, 3 * C)
        blk.attn.qkv.t = win
        dummy = win.new_empty(()).expand(win.shape[0], wh * ww, C)  # the Linear's input: only its shape is read
        out = blk.attn(dummy, mask=blk.attn_mask).view(-1, wh, ww, C)
        blk.attn.qkv.t = None
        out = self.reverse(out, blk.window_size, (Hp, Wp)) if self.v2 else self.reverse(out, blk.window_size, Hp, Wp)
        out = out[:, :H, :W, :]
        return torch.roll(out, shifts=(sh, sw), dims=(1, 2)) if sh or sw else out


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    op: str
    config: str
    shape: str
    fns: Dict[str, Callable[[], object]]
    floor_bytes: int


def _amp(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.float16, torch.bfloat16))


def attention_cases(config: str, stage: int, B: int, device, dtype, backward: bool, baselines) -> Case:
    spec = CONFIGS[config]
    H, C, heads = spec["stages"][stage]
    ws, v2 = spec["ws"], spec["v2"]
    shift = ws // 2 if H > ws else 0
    N = ws * ws
    g = torch.Generator().manual_seed(stage)
    qkv = torch.randn(B, H, H, 3 * C, generator=g).to(device, dtype).requires_grad_(backward)
    bias = torch.randn(heads, N, N, generator=g).to(device).requires_grad_(backward)
    head_scale = (torch.rand(heads, generator=g) * 9 + 1).to(device).requires_grad_(backward) if v2 else None
    go = torch.randn(B, H, H, C, generator=g).to(device, dtype)
    # timm's module gives every implementation its bias (and V2 logit scale), also when only the SDPA
    # baseline runs (which loads its weights): all compute one function
    timm_attn = (TimmWindowAttention(H, C, heads, ws, shift, v2, device)
                 if "composite" in baselines or "sdpa" in baselines else None)
    if timm_attn is not None:  # every implementation computes timm's function: its bias (and V2 logit scale)
        with torch.no_grad():
            b, s_ = timm_attn.position_bias()
            bias.copy_(b)
            if v2:
                head_scale.copy_(s_)
    leaves = [t for t in (qkv, bias, head_scale) if t is not None]
    impls: Dict[str, Tuple[Callable[[], torch.Tensor], List[torch.Tensor]]] = {}  # fn, the tensors it differentiates
    if v2:
        impls["fused"] = (lambda: swin_ext.window_attention_v2(qkv, bias, head_scale, ws, shift), leaves)
    else:
        impls["fused"] = (lambda: swin_ext.window_attention(qkv, bias, ws, shift), leaves)
    if "composite" in baselines:
        impls["composite"] = (lambda: timm_attn(qkv), [qkv] + list(timm_attn.blk.attn.parameters()))
    if "sdpa" in baselines:
        if v2:
            impls["sdpa"] = (lambda: sdpa_window_attention(qkv, bias, ws, shift, head_scale=head_scale), leaves)
        else:
            timm_sdpa = TimmWindowAttention(H, C, heads, ws, shift, v2, device, fused_attn=True)
            if timm_attn is not None:
                timm_sdpa.blk.attn.load_state_dict(timm_attn.blk.attn.state_dict(), strict=False)
            impls["sdpa"] = (lambda: timm_sdpa(qkv), [qkv] + list(timm_sdpa.blk.attn.parameters()))
    if not backward and len(impls) > 1:  # the same function everywhere (a broken baseline would show here)
        with torch.no_grad(), _amp(device, dtype):
            outs = {name: fn().float() for name, (fn, _) in impls.items()}
        for name, o in outs.items():
            err = ((o - outs["fused"]).norm() / outs["fused"].norm()).item()
            if not err <= (1e-4 if dtype in (torch.float32, torch.float64) else 3e-2):
                print(f"# WARNING: {config} stage {stage + 1}: {name} differs from fused by {err:.2e} (relative)",
                      flush=True)

    def run(fn, params):
        def f():
            with _amp(device, dtype):
                out = fn()
            if backward:
                torch.autograd.grad(out, params, go, allow_unused=True)
        return f

    el = qkv.element_size()
    tokens = B * H * H
    floor = tokens * C * el * (4 + (7 if backward else 0))  # qkv + out; + dO, qkv, dqkv
    return Case("attention" + (" V2" if v2 else ""), f"{config} s{stage + 1}",
                f"{B}x{H}x{H}x{C} h{heads} w{ws} s{shift}",
                {name: run(fn, params) for name, (fn, params) in impls.items()}, floor)


def add_layernorm_case(B, H, C, device, dtype, backward) -> Case:
    """The residual add + LayerNorm of a block: fused op vs ``x + branch`` then ``F.layer_norm``.

    float16 / bfloat16: as under autocast, a float32 stream plus a low-precision
    branch, ``y`` in the low dtype (the eager pair casts ``y`` as the next
    Linear's autocast would).
    """
    low = dtype in (torch.float16, torch.bfloat16)
    xdt = torch.float32 if low else dtype
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    kw = dict(device=device, requires_grad=backward)
    x = torch.randn(B, H, H, C, dtype=xdt, **kw)
    br = torch.randn(B, H, H, C, dtype=dtype, **kw)
    w = torch.randn(C, dtype=wdt, **kw)
    b = torch.randn(C, dtype=wdt, **kw)
    gh = torch.randn(B, H, H, C, device=device, dtype=xdt)
    gy = torch.randn(B, H, H, C, device=device, dtype=dtype)

    def fused():
        with _amp(device, dtype):
            return swin_ext.add_layernorm(x, br, w, b)

    def eager():
        h = x + br
        return h, F.layer_norm(h, (C,), w, b).to(dtype)

    def run(fn):
        def f():
            h, y = fn()
            if backward:
                torch.autograd.grad((h, y), (x, br, w, b), (gh, gy))
        return f

    e, rows = x.numel(), B * H * H
    sx, sb = x.element_size(), br.element_size()
    nbytes = e * (sx + sb + sx + sb) + rows * 8  # x, branch read; h, y written; mean, rstd
    if backward:
        nbytes += e * (sx + sb + sx + sx + (sb if sb != sx else 0)) + rows * 8  # grad_h, grad_y, h; dh (+ dbranch)
    return Case("add+LN", f"C={C}", f"{B}x{H}x{H}x{C}", {"fused": run(fused), "composite": run(eager)}, nbytes)


def bias_gelu_case(B, H, C, device, dtype, backward) -> Case:
    """fc1's epilogue at 4C: fused bias + exact GELU vs ``F.gelu(z + bias)`` in the same dtype."""
    K = 4 * C
    kw = dict(device=device, requires_grad=backward)
    z = torch.randn(B * H * H, K, dtype=dtype, **kw)
    bias = torch.randn(K, dtype=torch.float64 if dtype == torch.float64 else torch.float32, **kw)
    gy = torch.randn(B * H * H, K, device=device, dtype=dtype)

    def run(fn):
        def f():
            y = fn()
            if backward:
                torch.autograd.grad(y, (z, bias), gy)
        return f

    impls = {"fused": run(lambda: swin_ext.bias_gelu(z, bias)),
             "composite": run(lambda: F.gelu(z + bias.to(dtype)))}
    nbytes = z.numel() * z.element_size() * (2 + (3 if backward else 0))  # z, y; + dy, z, dz
    return Case("bias+GELU", f"K={K}", f"{B * H * H}x{K}", impls, nbytes)


def merging_case(B, H, C, device, dtype, backward) -> Case:
    """The stage's end as the model runs it: the fused op on the float32 stream and the last block's
    pending branch (low precision under autocast) vs ``x + branch`` then the plain merging."""
    low = dtype in (torch.float16, torch.bfloat16)
    x = torch.randn(B, H, H, C, device=device, dtype=torch.float32 if low else dtype, requires_grad=backward)
    br = torch.randn(B, H, H, C, device=device, dtype=dtype, requires_grad=backward)
    w = torch.randn(4 * C, device=device, requires_grad=backward)
    b = torch.randn(4 * C, device=device, requires_grad=backward)
    g = torch.randn(B, H // 2, H // 2, 4 * C, device=device, dtype=dtype)

    def fused():
        with torch.autocast(device.type, dtype=dtype, enabled=low):
            return swin_ext.patch_merging(x, w, b, 1e-5, br)

    def composite():
        return reference.patch_merging_reference(x + br, w, b, 1e-5).to(dtype)

    def run(fn):
        def f():
            y = fn()
            if backward:
                torch.autograd.grad(y, (x, br, w, b), g)
        return f

    e, sx, sb = x.numel(), x.element_size(), br.element_size()
    nbytes = e * (sx + 2 * sb)  # x, branch read; y written (the branch's dtype)
    if backward:
        nbytes += e * (sb + sx + sb + sx + (sb if sb != sx else 0))  # dy, x, branch read; dx (+ dbranch) written
    return Case("merging", f"C={C}", f"{B}x{H}x{H}x{C}", {"fused": run(fused), "composite": run(composite)}, nbytes)


# --------------------------------------------------------------------------- smoke test


def _max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def smoke(device: torch.device, out: Callable[[str], None]) -> bool:
    """Every op forward + backward once on small random inputs against the reference (float64 exact,
    and the composite in the same dtype for the low-precision rule); returns whether all passed."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    from swin_ext.layers.pos_bias import gather_bias, relative_position_index

    idx12 = relative_position_index(12).reshape(-1)

    def gathered12(table):  # the (heads, 144, 144) bias of a window-12 table, as the models gather it
        return gather_bias(table, idx12.to(table.device), 144)

    ops = {
        "window_attention": (lambda: [rnd(2, 14, 14, 288), rnd(3, 49, 49)], [1, 0],
                             lambda q, b: swin_ext.window_attention(q, b, 7, 3),
                             lambda q, b: reference.window_attention_reference(q, b, 7, 3)),
        "window_attention_v2": (lambda: [rnd(2, 16, 16, 288), rnd(3, 64, 64), rnd(3).abs() * 5 + 1], [1, 0, 0],
                                lambda q, b, s: swin_ext.window_attention_v2(q, b, s, 8, 4),
                                lambda q, b, s: reference.window_attention_v2_reference(q, b, s, 8, 4)),
        # the key-tiled kernels (N > 64): window 12 with its table (padded map, shifted), V2 window 16
        "window_attention w12 table": (lambda: [rnd(2, 26, 26, 192), rnd(23 * 23, 2)], [1, 0],
                                       lambda q, t: swin_ext.window_attention(q, t, 12, 6),
                                       lambda q, t: reference.window_attention_reference(q, gathered12(t), 12, 6)),
        "window_attention_v2 w16": (lambda: [rnd(2, 32, 32, 192), rnd(2, 256, 256), rnd(2).abs() * 5 + 1],
                                    [1, 0, 0],
                                    lambda q, b, s: swin_ext.window_attention_v2(q, b, s, 16, 8),
                                    lambda q, b, s: reference.window_attention_v2_reference(q, b, s, 16, 8)),
        "patch_merging": (lambda: [rnd(2, 14, 14, 96), rnd(384), rnd(384)], [1, 0, 0],
                          lambda x, w, b: swin_ext.patch_merging(x, w, b),
                          lambda x, w, b: reference.patch_merging_reference(x, w, b)),
        "add_layernorm": (lambda: [rnd(2, 7, 7, 192), rnd(2, 7, 7, 192), rnd(192), rnd(192)], [1, 1, 0, 0],
                          lambda x, br, w, b: swin_ext.add_layernorm(x, br, w, b)[1],
                          lambda x, br, w, b: reference.add_layernorm_reference(x, br, w, b)[1]),
        "bias_gelu": (lambda: [rnd(98, 384), rnd(384)], [1, 0],
                      lambda z, b: swin_ext.bias_gelu(z, b),
                      lambda z, b: reference.bias_gelu_reference(z, b)),
    }
    ok_all = True
    out("| op | dtype | max error out | max error grads | composite (same dtype) | result |")
    out("|---|---|---:|---:|---:|---|")
    for name, (make, low_mask, fused, ref) in ops.items():
        base = make()
        go_shape = None
        for dtype in (torch.float32, torch.bfloat16):
            t0 = time.perf_counter()
            acc = torch.float32

            def leaves(prec):
                return [(t.to(device, prec if m else acc)).requires_grad_() for t, m in zip(base, low_mask)]

            def fwd_bwd(fn, ls, go):
                y = fn(*ls)
                gs = torch.autograd.grad(y, ls, go, allow_unused=True)
                return y, [torch.zeros_like(t) if g_ is None else g_ for t, g_ in zip(ls, gs)]

            try:
                ls = leaves(dtype)
                y = fused(*ls)
                go_shape = y.shape
                go = torch.randn(go_shape, generator=g, dtype=torch.float64)
                y, gs = fwd_bwd(fused, ls, go.to(device, y.dtype))
                ex_l = [t.detach().double().requires_grad_() for t in ls]
                ey, egs = fwd_bwd(ref, ex_l, go.to(device, torch.float64))
                err = _max_err(y, ey)
                gerr = max(_max_err(a, b) / (b.abs().max().item() + 1e-30) for a, b in zip(gs, egs))
                if dtype == torch.float32:
                    ok = err <= 1e-4 * (ey.abs().max().item() + 1) and gerr <= 1e-4
                    comp = "-"
                else:
                    cy, cgs = fwd_bwd(ref, [t.detach().clone().requires_grad_() for t in ls], go.to(device, y.dtype))
                    cerr = _max_err(cy, ey)
                    cgerr = max(_max_err(a, b) / (b.abs().max().item() + 1e-30) for a, b in zip(cgs, egs))
                    ok = err <= 2 * cerr + 1e-2 and gerr <= 2 * cgerr + 1e-2
                    comp = f"{cerr:.1e} / {cgerr:.1e}"
                ok = ok and bool(torch.isfinite(y).all())
            except Exception as e:  # noqa: BLE001 - a failure is a row of the table
                err, gerr, comp, ok = float("nan"), float("nan"), f"{type(e).__name__}: {str(e)[:60]}", False
            ok_all &= ok
            out(f"| {name} | {str(dtype).split('.')[-1]} | {err:.1e} | {gerr:.1e} (rel) | {comp} | "
                f"{'pass' if ok else 'FAIL'} ({time.perf_counter() - t0:.1f} s) |")
    return ok_all


# --------------------------------------------------------------------------- ncu


def ncu_driver(device: torch.device, batch: int) -> None:
    """A stage-1 Swin-T attention forward and backward (bf16) inside cudaProfilerStart/Stop; then the
    same backward again with ``SWIN_EXT_ATTN_BWD=tile4`` (the tile kernel at four blocks per SM, one
    image in flight, against the default's three with two): the A/B of that kernel's two forms."""
    H, C, heads = CONFIGS["swin_t"]["stages"][0]
    qkv = torch.randn(batch, H, H, 3 * C, device=device, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(heads, 49, 49, device=device, requires_grad=True)
    go = torch.randn(batch, H, H, C, device=device, dtype=torch.bfloat16)
    old = os.environ.pop("SWIN_EXT_ATTN_BWD", None)
    try:
        for form in (None, "tile4"):  # warm-up of both forms (the first launch sets the kernel's attributes)
            if form:
                os.environ["SWIN_EXT_ATTN_BWD"] = form
            for _ in range(3):
                torch.autograd.grad(swin_ext.window_attention(qkv, bias, 7, 3), (qkv, bias), go)
            os.environ.pop("SWIN_EXT_ATTN_BWD", None)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        out = swin_ext.window_attention(qkv, bias, 7, 3)
        torch.autograd.grad(out, (qkv, bias), go, retain_graph=True)
        os.environ["SWIN_EXT_ATTN_BWD"] = "tile4"
        torch.autograd.grad(out, (qkv, bias), go)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
    finally:
        os.environ.pop("SWIN_EXT_ATTN_BWD", None)
        if old is not None:
            os.environ["SWIN_EXT_ATTN_BWD"] = old


NCU_METRICS = [
    "gpu__time_duration.sum",
    "sm__inst_executed.avg.per_cycle_active",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__bytes.sum.per_second",
]
NCU_STALLS = "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio"


def ncu_table(path: str) -> str:
    """ncu ``--csv --page raw`` output -> markdown: per kernel the duration, achieved IPC (warp-instructions
    per cycle per SM), achieved occupancy, DRAM throughput and the four largest stall reasons."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    head = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if head is None:
        return f"(no ncu rows in {path})"
    cols, units, data = rows[head], rows[head + 1], rows[head + 2:]
    idx = {c: i for i, c in enumerate(cols)}

    def val(r, c):
        try:
            return float(r[idx[c]].replace(",", ""))
        except (KeyError, ValueError, IndexError):
            return float("nan")

    lines = ["| kernel | time | achieved IPC | occupancy | DRAM % of peak | DRAM GB/s | "
             "top stall reasons (cycles per issue) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in data:
        stalls = sorted(((val(r, c), c) for c in cols if c.startswith("smsp__average_warps_issue_stalled_")),
                        reverse=True)
        top = ", ".join(f"{c.split('stalled_')[1].split('_per_issue')[0]} {v:.2f}" for v, c in stalls[:4] if v == v)
        tu = units[idx["gpu__time_duration.sum"]] if "gpu__time_duration.sum" in idx else ""
        bw = val(r, "dram__bytes.sum.per_second")
        bu = units[idx["dram__bytes.sum.per_second"]] if "dram__bytes.sum.per_second" in idx else ""
        scale = {"Tbyte/second": 1e3, "Gbyte/second": 1.0, "Mbyte/second": 1e-3, "byte/second": 1e-9}.get(
            bu, float("nan"))
        name = r[idx["Kernel Name"]][:90]
        lines.append(f"| `{name}` | {val(r, 'gpu__time_duration.sum'):.1f} {tu} | "
                     f"{val(r, 'sm__inst_executed.avg.per_cycle_active'):.2f} | "
                     f"{val(r, 'sm__warps_active.avg.pct_of_peak_sustained_active'):.0f}% | "
                     f"{val(r, 'dram__throughput.avg.pct_of_peak_sustained_elapsed'):.0f}% | "
                     f"{bw * scale:.0f} | {top} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _positive_int(s: str) -> int:
    """argparse type: an int >= 1 (0 is refused, not replaced by a default)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _row_cells(case: Case, t: Dict[str, float], base: List[str], dtype, passname, copy_bw,
               gpu: Optional[float] = None) -> List[str]:
    tf = t["fused"]
    row = [case.op, case.config, case.shape, passname, str(dtype).split(".")[-1], f"{tf * 1e3:.3f}",
           f"{gpu * 1e3:.3f}" if gpu else "-"]
    row += [f"{t[b] * 1e3:.3f}" if b in t else "-" for b in base]
    row += [f"{t[b] / tf:.2f}x" if b in t else "-" for b in base]
    floor = case.floor_bytes / copy_bw if copy_bw else None
    row += [f"{floor * 1e3:.3f}" if floor else "-", f"{tf / floor:.2f}x" if floor else "-",
            f"{gpu / floor:.2f}x" if floor and gpu else "-"]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "float64"],
                    help="one dtype (same as --dtypes X)")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "float16", "bfloat16", "float64"],
                    help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--batch", type=_positive_int, default=None, help="default 8 on CPU, 128 on CUDA (2 with --quick)")
    ap.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                    help="the Swin-T / Swin-B stage shapes of add+LN, bias+GELU, merging and the window-7 attention "
                         "(default swin_t)")
    ap.add_argument("--attention", nargs="*", default=None, choices=list(CONFIGS),
                    help="attention configurations (default: swin_t, swin_b_384, swinv2_t_w8, swinv2_t_w16)")
    ap.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3], choices=[0, 1, 2, 3],
                    help="Swin stages, 0-based (default all four)")
    ap.add_argument("--ops", nargs="+", default=["attention", "add+LN", "bias+GELU", "merging"],
                    choices=["attention", "add+LN", "bias+GELU", "merging"])
    ap.add_argument("--repeats", type=_positive_int, default=10)
    ap.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES) + ["eager", "timm"],
                    help="composite: timm's attention code / the PyTorch composite of the other ops ('eager' and "
                         "'timm' are aliases); sdpa: the attention with F.scaled_dot_product_attention")
    ap.add_argument("--quick", action="store_true", help="a dry run: batch 2, stage 1 only, 2 repeats")
    ap.add_argument("--deadline", type=float, default=None, help="unix time: no row starts after it")
    ap.add_argument("--md-out", default=None, help="append the table here, row by row")
    ap.add_argument("--smoke", action="store_true", help="every op once against the reference, then exit")
    ap.add_argument("--ncu-driver", action="store_true", help="stage-1 attention fwd + bwd for ncu, then exit")
    ap.add_argument("--ncu-table", default=None, metavar="CSV",
                    help="print ncu's raw CSV as a markdown table, then exit")
    args = ap.parse_args(argv)
    if args.ncu_table:
        print(ncu_table(args.ncu_table))
        return 0
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"argument --device: {e}")
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    md = open(args.md_out, "a") if args.md_out else None

    def out(line: str) -> None:
        print(line, flush=True)
        if md:
            md.write(line + "\n")
            md.flush()

    if args.smoke:
        return 0 if smoke(device, out) else 1
    B = args.batch or (2 if args.quick else (128 if cuda else 8))
    if args.ncu_driver:
        ncu_driver(device, B)
        return 0
    dtypes = [getattr(torch, d) for d in (args.dtypes or ([args.dtype] if args.dtype else
                                                          ["bfloat16" if cuda else "float32"]))]
    stages = [0] if args.quick else args.stages
    inner = 5 if cuda and not args.quick else 1  # CUDA: 5 calls back to back per sample (steady state)
    repeats = 2 if args.quick else args.repeats
    models = args.models or ["swin_t"]
    attn_cfgs = args.attention
    if attn_cfgs is None:
        attn_cfgs = ["swin_t", "swin_b_384", "swinv2_t_w8", "swinv2_t_w16"]
    base = ["composite" if b in ("eager", "timm") else b for b in args.baselines]
    base = list(dict.fromkeys(base))
    print(f"# swin_ext op benchmark  device={device}  dtypes={[str(d).split('.')[-1] for d in dtypes]}  batch={B}  "
          f"threads={torch.get_num_threads()}  torch={torch.__version__}", flush=True)
    src = torch.empty((256 if cuda else 16) * 2**20, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = measure(lambda d=dst, s=src: d.copy_(s), device, repeats=5 if args.quick else 10)["median"]
    copy_bw = 2 * src.numel() * 4 / t
    del src, dst
    dev_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    out(f"Device {dev_name}; device copy (read + write) {copy_bw / 1e9:.0f} GB/s: the floor column is each op's "
        "bytes (inputs read once, outputs written once) at that rate.  `composite`: timm's own window-attention "
        "code under autocast (for the other ops the PyTorch composite); `sdpa`: the attention with "
        "F.scaled_dot_product_attention and the bias + mask materialised.  Median of "
        f"{repeats} samples after warm-up, ms per call; on CUDA a sample is {inner} calls back to back between "
        "events (steady state: the larger of the host's and the device's time per call, as in a model).  "
        "`fused GPU ms`: the device work per call from the profiler (kernels, copies, memsets), so "
        "fused ms >> fused GPU ms means the call is host-bound.")
    out("")
    cols = (["op", "config", "shape", "pass", "dtype", "fused ms", "fused GPU ms"] + [f"{b} ms" for b in base]
            + [f"vs {b}" for b in base])
    cols += ["floor ms", "fused / floor", "GPU / floor"]
    out("| " + " | ".join(cols) + " |")
    out("|" + "---|" * 5 + "---:|" * (len(cols) - 5))
    rows_done = skipped = 0

    def plan():
        """(builder, dtype, backward) in order of importance: Swin-T bf16 first."""
        for dtype in dtypes:
            for backward in (False, True):
                for s in stages:
                    for m in models:
                        spec = MODELS[m]
                        H, C = 56 >> s, spec["embed_dim"] << s
                        if "attention" in args.ops and m == "swin_t" and "swin_t" in attn_cfgs:
                            yield (lambda s=s, b=backward, d=dtype: attention_cases("swin_t", s, B, device, d, b, base),
                                   dtype, backward)
                        if "add+LN" in args.ops:
                            yield (lambda H=H, C=C, b=backward, d=dtype: add_layernorm_case(B, H, C, device, d, b),
                                   dtype, backward)
                        if "bias+GELU" in args.ops:
                            yield (lambda H=H, C=C, b=backward, d=dtype: bias_gelu_case(B, H, C, device, d, b),
                                   dtype, backward)
                        if "merging" in args.ops and s < 3:
                            yield (lambda H=H, C=C, b=backward, d=dtype: merging_case(B, H, C, device, d, b),
                                   dtype, backward)
        if "attention" in args.ops:
            for cfg in attn_cfgs:
                if cfg == "swin_t":
                    continue
                for dtype in dtypes:
                    for backward in (False, True):
                        for s in stages:
                            if s < len(CONFIGS[cfg]["stages"]):
                                yield (lambda c=cfg, s=s, b=backward, d=dtype:
                                       attention_cases(c, s, B, device, d, b, base), dtype, backward)

    last = 0.0
    for build, dtype, backward in plan():
        if args.deadline is not None and time.time() + max(2 * last, 1.0) > args.deadline:
            skipped += 1
            continue
        t0 = time.time()
        try:
            case = build()
            times = {}
            for impl, fn in case.fns.items():
                try:
                    times[impl] = measure(fn, device, warmup=1 if args.quick else 3, repeats=repeats,
                                          inner=inner)["median"]
                except Exception as e:  # noqa: BLE001 - e.g. out of memory in a composite: a "-" in its column
                    print(f"# {case.op} {case.shape}: {impl} failed: {type(e).__name__}: {str(e)[:100]}", flush=True)
            if "fused" in times:
                gpu = gpu_busy_time(case.fns["fused"], device, label=f"{case.op} {case.shape}")
                cells = _row_cells(case, times, base, dtype, "fwd+bwd" if backward else "fwd", copy_bw, gpu)
                out("| " + " | ".join(cells) + " |")
                rows_done += 1
        except Exception as e:  # noqa: BLE001
            print(f"# case failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            if cuda:
                torch.cuda.empty_cache()
        last = time.time() - t0
    if skipped:
        out(f"\n({skipped} rows not run: past the deadline)")
    if md:
        md.close()
    return 0 if rows_done else 1


if __name__ == "__main__":
    sys.exit(main())

"""Op-level benchmark: swin_ext's fused kernels vs the attention (and the residual add +
LayerNorm, and the patch merging) other Swins run.

Shapes are the attention/merging shapes of every Swin-T and Swin-B stage at
224 px.  Forward and forward+backward, median of repeats after warm-up (CUDA
events on a GPU), all implementations timed in the same run on the same
inputs.  Baselines of the window attention (all take the qkv Linear's output
and return the input of the proj Linear, like swin_ext's op):

* ``eager``: timm's / the official WindowAttention math in plain PyTorch (pad,
  roll, window partition, q*scale @ k^T, + bias, + shift mask, softmax, @ v,
  reverse, roll back) -- ``swin_ext.ops.reference``, what timm's eager path and
  torchvision run;
* ``sdpa``: the same with ``F.scaled_dot_product_attention`` and the bias +
  mask materialised as a (B*nW, heads, N, N) attn_mask, what timm runs with
  fused attention enabled.

``add+LN`` times :func:`swin_ext.add_layernorm` against ``x + branch`` then
``F.layer_norm`` (a float32 stream plus a low-precision branch for float16 /
bfloat16, as under autocast); ``eager`` is the only baseline for it and for
merging.

On CUDA also the achieved GB/s of the fused op against its byte floor (each
input read once, each output written once: qkv + out forward, plus dO and
dqkv backward) and against a device-to-device copy measured in the same run.

    python benchmarks/bench_ops.py --device cpu --batch 8 --models swin_t --stages 0
    python benchmarks/bench_ops.py --device cuda --dtype bfloat16 --batch 128 --models swin_t --baselines eager sdpa
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swin_ext  # noqa: E402
from swin_ext.ops import reference  # noqa: E402

from _timing import measure  # noqa: E402

MODELS = {
    "swin_t": dict(embed_dim=96, heads=(3, 6, 12, 24)),
    "swin_b": dict(embed_dim=128, heads=(4, 8, 16, 32)),
}


def sdpa_window_attention(qkv, bias, ws, shift, scale=None, qkv_pad=None):
    """timm's fused-attention path: F.scaled_dot_product_attention with bias + mask materialised."""
    import torch.nn.functional as F

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
    attn_mask = bias.to(q.dtype).unsqueeze(0)
    if sh:
        mask = reference.shift_mask(Hp, Wp, ws, (sh, sw), device=qkv.device, dtype=q.dtype)
        nW = mask.shape[0]
        attn_mask = (attn_mask.view(1, 1, heads, N, N) + mask.view(1, nW, 1, N, N)).expand(Bn // nW, -1, -1, -1, -1)
        attn_mask = attn_mask.reshape(Bn, heads, N, N)
    else:
        attn_mask = attn_mask.expand(Bn, -1, -1, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    out = reference.window_reverse(out.transpose(1, 2).reshape(Bn, N, C), ws, Hp, Wp)
    if sh:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :H, :W]


ATTENTION_IMPLS = {
    "fused": swin_ext.window_attention,
    "eager": reference.window_attention_reference,
    "sdpa": sdpa_window_attention,
}


def attention_case(B, H, C, heads, ws, shift, device, dtype, backward, impls):
    qkv = torch.randn(B, H, H, 3 * C, device=device, dtype=dtype, requires_grad=backward)
    bias = torch.randn(heads, ws * ws, ws * ws, device=device, dtype=torch.float32, requires_grad=backward)
    g = torch.randn(B, H, H, C, device=device, dtype=dtype)

    def run(fn):
        def f():
            out = fn(qkv, bias, ws, shift)
            if backward:
                torch.autograd.grad(out, (qkv, bias), g)
        return f

    el = qkv.element_size()
    tokens = B * H * H
    floor = tokens * C * el * (4 + (7 if backward else 0))  # qkv + out; + dO, qkv, dqkv
    if not backward:  # every implementation computes the same function (a broken baseline would show here)
        with torch.no_grad():
            outs = {name: ATTENTION_IMPLS[name](qkv, bias, ws, shift).float() for name in impls}
        ref = outs[impls[-1]]
        for name, o in outs.items():
            err = ((o - ref).norm() / ref.norm()).item()
            if not err <= (1e-4 if dtype in (torch.float32, torch.float64) else 2e-2):
                print(f"# WARNING: {name} differs from {impls[-1]} by {err:.2e} (relative)", flush=True)
    return {name: run(ATTENTION_IMPLS[name]) for name in impls}, floor


def merging_case(B, H, C, device, dtype, backward):
    x = torch.randn(B, H, H, C, device=device, dtype=dtype, requires_grad=backward)
    w = torch.randn(4 * C, device=device, requires_grad=backward)
    b = torch.randn(4 * C, device=device, requires_grad=backward)
    g = torch.randn(B, H // 2, H // 2, 4 * C, device=device, dtype=dtype)

    def run(fn):
        def f():
            y = fn(x, w, b, 1e-5)
            if backward:
                torch.autograd.grad(y, (x, w, b), g)
        return f

    nbytes = x.numel() * x.element_size() * (2 + (3 if backward else 0))  # x + y; + dy, x, dx
    return {"fused": run(swin_ext.patch_merging), "eager": run(reference.patch_merging_reference)}, nbytes


def add_layernorm_case(B, H, C, device, dtype, backward):
    """The residual add + LayerNorm of a block: fused op vs ``x + branch`` then ``F.layer_norm``.

    float16/bfloat16: as under autocast, a float32 stream plus a low-precision
    branch, ``y`` in the low dtype (the fused op under ``torch.autocast``; the
    eager pair casts ``y`` as the next Linear's autocast would).
    """
    import torch.nn.functional as F

    low = dtype in (torch.float16, torch.bfloat16)
    xdt = torch.float32 if low else dtype
    x = torch.randn(B, H, H, C, device=device, dtype=xdt, requires_grad=backward)
    br = torch.randn(B, H, H, C, device=device, dtype=dtype, requires_grad=backward)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.randn(C, device=device, dtype=wdt, requires_grad=backward)
    b = torch.randn(C, device=device, dtype=wdt, requires_grad=backward)
    gh = torch.randn(B, H, H, C, device=device, dtype=xdt)
    gy = torch.randn(B, H, H, C, device=device, dtype=dtype)

    def fused():
        with torch.autocast(device.type, dtype=dtype, enabled=low):
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

    e = x.numel()
    sx, sb = x.element_size(), br.element_size()
    nbytes = e * (sx + sb + sx + sb)  # x, branch read; h, y written
    if backward:
        nbytes += e * (sx + sb + sx + sx + (sb if sb != sx else 0))  # grad_h, grad_y, h read; dh (+ dbranch) written
    return {"fused": run(fused), "eager": run(eager)}, nbytes


def _positive_int(s: str) -> int:
    """argparse type: an int >= 1 (0 is refused, not replaced by a default)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    ap.add_argument("--batch", type=_positive_int, default=None, help="default 8 on CPU, 64 on CUDA")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3], choices=[0, 1, 2, 3],
                    help="Swin stages, 0-based (default all four)")
    ap.add_argument("--repeats", type=_positive_int, default=10)
    ap.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--baselines", nargs="+", default=["eager"], choices=["eager", "sdpa"],
                    help="attention baselines timed beside the fused op (default: eager)")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"argument --device: {e}")
    dtype = getattr(torch, args.dtype)
    B = args.batch if args.batch is not None else (64 if device.type == "cuda" else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# swin_ext op benchmark  device={device}  dtype={args.dtype}  batch={B}  "
          f"threads={torch.get_num_threads()}  torch={torch.__version__}")
    if device.type == "cuda":
        print(f"# GPU: {torch.cuda.get_device_name(device)}")
    copy_gbs = None
    if device.type == "cuda":
        src = torch.empty(256 * 2**20, device=device, dtype=torch.float32)  # 1 GiB
        dst = torch.empty_like(src)
        t = measure(lambda: dst.copy_(src), device, repeats=args.repeats)["median"]
        copy_gbs = 2 * src.numel() * 4 / t / 1e9
        del src, dst
        print(f"# device copy bandwidth (read + write): {copy_gbs:.0f} GB/s")
    base = args.baselines
    cols = ["op", "model", "stage", "shape", "pass", "fused ms"] + [f"{b} ms" for b in base] + [f"vs {b}" for b in base]
    cols += ["fused GB/s (floor bytes)", "% of copy"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * 5 + "---:|" * (len(cols) - 5))
    for name in args.models:
        spec = MODELS[name]
        for s in args.stages:
            H, C, heads = 56 >> s, spec["embed_dim"] << s, spec["heads"][s]
            shift = 3 if H > 7 else 0
            for backward in (False, True):
                cases = [("attention", f"{B}x{H}x{H}x{C} h{heads} s{shift}",
                          attention_case(B, H, C, heads, 7, shift, device, dtype, backward, ["fused"] + base))]
                if s < 3:
                    cases.append(("merging", f"{B}x{H}x{H}x{C}", merging_case(B, H, C, device, dtype, backward)))
                cases.append(("add+LN", f"{B}x{H}x{H}x{C}", add_layernorm_case(B, H, C, device, dtype, backward)))
                for op, shape, (fns, nbytes) in cases:
                    t = {impl: measure(fn, device, repeats=args.repeats)["median"] for impl, fn in fns.items()}
                    tf = t["fused"]
                    row = [op, name, str(s + 1), shape, "fwd+bwd" if backward else "fwd", f"{tf * 1e3:.3f}"]
                    row += [f"{t[b] * 1e3:.3f}" if b in t else "-" for b in base]
                    row += [f"{t[b] / tf:.2f}x" if b in t else "-" for b in base]
                    gbs = nbytes / tf / 1e9
                    row += [f"{gbs:.0f}", f"{100 * gbs / copy_gbs:.0f}%" if copy_gbs else "-"]
                    print("| " + " | ".join(row) + " |", flush=True)

if __name__ == "__main__":
    main()

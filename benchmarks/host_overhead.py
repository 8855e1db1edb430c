"""Host time per op call: what the Python wrappers, the custom-op dispatch and autograd cost beside the op's work.

On tiny tensors the op's own work is a few microseconds, so the time per call is the host path:

* ``wrapper``: the public op (``swin_ext.add_layernorm`` ...), forward + backward through autograd;
* ``raw ops``: the raw forward and backward ops called directly below autograd (no Python
  validation, no autograd): the floor of what the op itself costs to dispatch and launch;
* ``composite``: the plain-PyTorch composite the op replaces (aten ops and autograd), forward + backward.

Calls are issued back to back and the device synchronised once at the end, so on a GPU the
time per call is the host's cost when it is larger than the kernels'.  Where a model's GPU
work per op is shorter than this, the step is host-bound (``bench_model.py``'s GPU busy column
says whether it is).

With ``--step``, also a Swin-T-shaped training step (the 12 blocks and 4 stages of Swin-T
at 56 px, embed 16: negligible compute, so the host path) of swin_ext and timm, eager and,
with ``--compile``, under torch.compile (compile time not timed).  On a CPU swin_ext's Linears
take CPU-only custom ops (oneDNN's GEMMs on AVX-512, swin_ext's own on AVX2); ``--no-onednn``
switches them to ``F.linear``, the host path of a CUDA step.

    python benchmarks/host_overhead.py                    # CPU, one thread
    python benchmarks/host_overhead.py --step --compile   # + the step, eager and compiled (minutes on a CPU)
    python benchmarks/host_overhead.py --step --no-onednn # the step with F.linear, as on CUDA
    python benchmarks/host_overhead.py --device cuda --md-out report.md
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swin_ext  # noqa: E402

from _timing import measure  # noqa: E402

OPS = torch.ops.swin_ext


def per_call_us(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Microseconds per call of ``fn``, ``calls`` back to back per run, after a warm-up (median of 3 runs)."""
    return measure(fn, device, warmup=20, repeats=3, inner=calls)["median"] * 1e6


def cases(device: torch.device) -> Dict[str, Dict[str, Callable[[], object]]]:
    """Per op: the three paths of one forward + backward on tiny inputs."""
    def rg(*shape):
        return torch.randn(*shape, device=device, requires_grad=True)

    def t(*shape):
        return torch.randn(*shape, device=device)

    C = 96
    x, br, w, b = rg(1, 1, 1, C), rg(1, 1, 1, C), rg(C), rg(C)
    gh, gy = t(1, 1, 1, C), t(1, 1, 1, C)
    xd, brd, wd, bd = (v.detach() for v in (x, br, w, b))

    def ln_raw():
        with torch._C._AutoDispatchBelowAutograd():
            h, y, m, r = OPS.add_layernorm_fwd(xd, brd, wd, bd, 1e-5, None)
            OPS.add_layernorm_bwd(gh, gy, h, wd, m, r, None)

    def ln_comp():
        h = x + br
        torch.autograd.grad((h, F.layer_norm(h, (C,), w, b)), (x, br, w, b), (gh, gy))

    z, zb, gz = rg(1, 4 * C), rg(4 * C), t(1, 4 * C)
    zd, zbd = z.detach(), zb.detach()

    def gelu_raw():
        with torch._C._AutoDispatchBelowAutograd():
            OPS.bias_gelu_fwd(zd, zbd)
            OPS.bias_gelu_bwd(gz, zd, zbd)

    q, bias, go = rg(1, 7, 7, 3 * 32), rg(1, 49, 49), t(1, 7, 7, 32)
    qd, biasd = q.detach(), bias.detach()
    scale = 32 ** -0.5

    def attn_raw():
        with torch._C._AutoDispatchBelowAutograd():
            out, lse = OPS.window_attention_fwd(qd, biasd, None, [7, 7], [3, 3], scale)
            OPS.window_attention_bwd(go, qd, biasd, None, lse, [7, 7], [3, 3], scale)

    def attn_comp():
        out = swin_ext.window_attention_reference(q, bias, 7, 3)
        torch.autograd.grad(out, (q, bias), go)

    return {
        "add+LN": {
            "wrapper": lambda: torch.autograd.grad(swin_ext.add_layernorm(x, br, w, b), (x, br, w, b), (gh, gy)),
            "raw ops": ln_raw,
            "composite": ln_comp,
        },
        "bias+GELU": {
            "wrapper": lambda: torch.autograd.grad(swin_ext.bias_gelu(z, zb), (z, zb), gz),
            "raw ops": gelu_raw,
            "composite": lambda: torch.autograd.grad(F.gelu(z + zb), (z, zb), gz),
        },
        "attention": {
            "wrapper": lambda: torch.autograd.grad(swin_ext.window_attention(q, bias, 7, 3), (q, bias), go),
            "raw ops": attn_raw,
            "composite": attn_comp,
        },
    }


def step_ms(impl: str, device: torch.device, compiled: bool, steps: int = 50, infer: bool = False) -> float:
    """Milliseconds per training step (``infer``: per eval forward under inference_mode) of a
    Swin-T-shaped model at negligible compute (56 px, embed 16): the host's time for the model."""
    kw = dict(img_size=56, embed_dim=16, num_heads=(1, 2, 4, 8), num_classes=10, drop_path_rate=0.0)
    torch.manual_seed(0)
    if impl == "timm":
        import timm

        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kw)
    else:
        model = swin_ext.swin_t(**kw)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    run = torch.compile(model) if compiled else model
    x, y = torch.randn(1, 3, 56, 56, device=device), torch.tensor([3], device=device)

    def step():
        F.cross_entropy(run(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward():
        with torch.inference_mode():
            run(x)

    if infer:
        model.eval()
        return per_call_us(forward, device, steps) / 1e3
    return per_call_us(step, device, steps) / 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calls", type=int, default=500, help="calls per timed run (default 500)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the host path, not the kernels)")
    ap.add_argument("--md-out", default=None, help="append the table here")
    ap.add_argument("--step", action="store_true", help="also the Swin-T-shaped training step, swin_ext and timm")
    ap.add_argument("--compile", action="store_true", help="with --step: also under torch.compile")
    ap.add_argument("--no-onednn", action="store_true",
                    help="swin_ext's Linears on F.linear, not the CPU-only GEMM custom ops (oneDNN's or swin_ext's "
                         "own): the host path of CUDA")
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error(f"argument --calls: must be >= 1, got {args.calls}")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.no_onednn:
        swin_ext.layers.config.set_onednn(False)
        swin_ext.layers.config.set_cpu_gemm(False)
    lines = [f"Host time per forward + backward call, µs (tiny inputs, {args.calls} calls back to back, median of 3; "
             f"device {device}, {args.threads} CPU thread(s), torch {torch.__version__}).",
             "",
             "| op | wrapper (public op + autograd) | raw ops below autograd | plain-PyTorch composite |",
             "|---|---:|---:|---:|"]
    for name, paths in cases(device).items():
        us = {k: per_call_us(fn, device, args.calls) for k, fn in paths.items()}
        lines.append(f"| {name} | {us['wrapper']:.1f} | {us['raw ops']:.1f} | {us['composite']:.1f} |")
    if args.step:
        linears = "F.linear" if args.no_onednn or device.type != "cpu" else "the CPU-only GEMM custom ops"
        lines += ["", f"The Swin-T-shaped model at 56 px, embed 16 (batch 1; swin_ext's Linears: {linears}), "
                  "ms per training step and per inference forward (eval, inference_mode): the host's time for "
                  "the model, the compute negligible:", "",
                  "| implementation | train, eager | train, torch.compile | inference, eager |", "|---|---:|---:|---:|"]
        for impl in ("swin_ext", "timm"):
            eager = step_ms(impl, device, False)
            comp = f"{step_ms(impl, device, True):.2f}" if args.compile else "-"
            infer = step_ms(impl, device, False, infer=True)
            lines.append(f"| {impl} | {eager:.2f} | {comp} | {infer:.2f} |")
    text = "\n".join(lines)
    print(text, flush=True)
    if args.md_out:
        with open(args.md_out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

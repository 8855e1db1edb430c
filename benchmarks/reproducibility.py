"""Which results are bitwise reproducible across CPU thread counts (and processes).

    python benchmarks/reproducibility.py                  # threads 1 2 4 8, one process each
    python benchmarks/reproducibility.py --threads 1 3

Runs, in a fresh process per thread count (``torch.set_num_threads`` and
``OMP_NUM_THREADS``), with the same seed: the forward output and every input
gradient of the five swin_ext ops (float32 and bfloat16, each twice in the
process), and the forward output and every parameter gradient of a small
Swin V1 and Swin V2 model (fused backend, and V1 with the reference
backend).  Prints a markdown table: for each result, whether its SHA-256 is
the same in every process, and for the models which parameter gradients
differ.  The exit status is 1 if an op's result differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from typing import Dict, List

import torch


def _hash(*ts: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _leaf(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).requires_grad_(True)


def op_hashes(dtype: torch.dtype) -> Dict[str, str]:
    """Forward output and input gradients of each op on fixed random inputs (shifted, padded windows)."""
    from swin_ext.ops import add_layernorm, bias_gelu, patch_merging, window_attention, window_attention_v2

    torch.manual_seed(0)
    B, H, W, heads, d, ws = 8, 30, 26, 4, 32, 7
    C = heads * d
    qkv, bias = _leaf(B, H, W, 3 * C, dtype=dtype), _leaf(heads, ws * ws, ws * ws, dtype=dtype)
    pad = _leaf(3 * C, dtype=dtype)
    out = {}
    y = window_attention(qkv, bias, ws, (3, 3), None, pad)
    g = torch.randn_like(y)
    out["window_attention"] = _hash(y, *torch.autograd.grad(y, (qkv, bias, pad), g))
    scale = (torch.rand(heads, dtype=dtype) * 10).requires_grad_(True)
    y = window_attention_v2(qkv, bias, scale, ws, (3, 3), pad)
    out["window_attention_v2"] = _hash(y, *torch.autograd.grad(y, (qkv, bias, scale, pad), g))
    x, w, b = _leaf(B, 56, 54, C // 2, dtype=dtype), _leaf(2 * C, dtype=dtype), _leaf(2 * C, dtype=dtype)
    y = patch_merging(x, w, b)
    out["patch_merging"] = _hash(y, *torch.autograd.grad(y, (x, w, b), torch.randn_like(y)))
    x, br, w, b = (_leaf(B * 784, C, dtype=dtype), _leaf(B * 784, C, dtype=dtype), _leaf(C, dtype=dtype),
                   _leaf(C, dtype=dtype))
    h, y = add_layernorm(x, br, w, b)
    grads = torch.autograd.grad((h, y), (x, br, w, b), (torch.randn_like(h), torch.randn_like(y)))
    out["add_layernorm"] = _hash(h, y, *grads)
    z, b = _leaf(B * 784, 4 * C, dtype=dtype), _leaf(4 * C, dtype=dtype)
    y = bias_gelu(z, b)
    out["bias_gelu"] = _hash(y, *torch.autograd.grad(y, (z, b), torch.randn_like(y)))
    return out


def model_hashes(arch: str, backend: str) -> Dict[str, str]:
    import swin_ext

    torch.manual_seed(0)
    kw = dict(embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8), num_classes=10, drop_path_rate=0.0, backend=backend)
    if arch == "v2":
        m, x = swin_ext.SwinTransformerV2(img_size=128, window_size=8, **kw), torch.randn(8, 3, 128, 128)
    else:
        m, x = swin_ext.SwinTransformer(img_size=112, window_size=7, **kw), torch.randn(8, 3, 112, 112)
    y = m(x)
    y.square().sum().backward()
    return {"logits": _hash(y), **{n: _hash(p.grad) for n, p in m.named_parameters()}}


def child(threads: int) -> None:
    torch.set_num_threads(threads)
    res = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        first, again = op_hashes(dtype), op_hashes(dtype)
        res.update({f"{op} {name}": v if again[op] == v else "differs within the process" for op, v in first.items()})
    for arch, backend in (("v1", "fused"), ("v2", "fused"), ("v1", "reference")):
        res.update({f"model {arch} {backend}: {k}": v for k, v in model_hashes(arch, backend).items()})
    print(json.dumps(res))


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        child(a.child)
        return 0
    runs = {}
    for t in a.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(t))
        p = subprocess.run([sys.executable, __file__, "--child", str(t)], env=env, capture_output=True, text=True,
                           check=True)
        runs[t] = json.loads(p.stdout.strip().splitlines()[-1])
    keys = list(runs[a.threads[0]])
    same = {k: len({runs[t][k] for t in runs}) == 1 and "differs" not in runs[a.threads[0]][k] for k in keys}
    print(f"threads {a.threads}, one process each (torch {torch.__version__})\n")
    print("| result | bitwise equal in every process |\n|---|---|")
    for k in keys:
        if not k.startswith("model"):
            print(f"| {k} | {'yes' if same[k] else 'NO'} |")
    for prefix in sorted({k.split(":")[0] for k in keys if k.startswith("model")}):
        mk = [k for k in keys if k.startswith(prefix + ":")]
        differ = [k.split(": ", 1)[1] for k in mk if not same[k]]
        print(f"| {prefix}: logits | {'yes' if same[prefix + ': logits'] else 'NO'} |")
        print(f"| {prefix}: parameter gradients | {len(mk) - 1 - len(differ)} of {len(mk) - 1} equal; differ: "
              f"{', '.join(differ) or 'none'} |")
    return 0 if all(same[k] for k in keys if not k.startswith("model")) else 1


if __name__ == "__main__":
    sys.exit(main())

"""ONNX Runtime vs PyTorch on the CPU: Swin-T inference latency of the exported file.

Exports the model with swin_ext.export_onnx (dynamic batch, checked in
onnxruntime first), then times onnxruntime (CPUExecutionProvider) and
PyTorch eager (swin_ext fused) on the same input, interleaved, median of
repeats after warm-up, both with the same number of threads.

    python benchmarks/bench_onnx.py --threads 2 --batch 1 8
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

import swin_ext


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_t")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args(argv)
    import onnxruntime as ort

    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    m = swin_ext.create_model(a.model, drop_path_rate=0.0).eval()
    path = os.path.join(tempfile.mkdtemp(), f"{a.model}.onnx")
    t0 = time.time()
    swin_ext.export_onnx(m, path, torch.randn(1, 3, a.size, a.size), dynamic_batch=True, check=True)
    export_s = time.time() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    print(f"# {a.model} {a.size}px, {threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"export + check {export_s:.1f} s, {os.path.getsize(path) / 2**20:.0f} MB")
    print("| batch | PyTorch (swin_ext fused) ms | onnxruntime ms | onnxruntime / PyTorch speed |")
    print("|---:|---:|---:|---:|")
    for B in a.batch:
        x = torch.randn(B, 3, a.size, a.size)
        xn = x.numpy()
        times = {"torch": [], "ort": []}
        with torch.no_grad():
            for i in range(a.warmup + a.repeats):
                for impl in ("torch", "ort") if i % 2 == 0 else ("ort", "torch"):
                    t = time.perf_counter()
                    if impl == "torch":
                        m(x)
                    else:
                        sess.run(None, {name: xn})
                    if i >= a.warmup:
                        times[impl].append(time.perf_counter() - t)
        tt, to = statistics.median(times["torch"]), statistics.median(times["ort"])
        print(f"| {B} | {tt * 1e3:.1f} | {to * 1e3:.1f} | {tt / to:.2f}x |", flush=True)


if __name__ == "__main__":
    sys.exit(main())

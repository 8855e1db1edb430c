"""Helpers shared by the test files: small models, random weights, failed-load snapshots, child processes."""
import json
import os
import subprocess
import sys
import zipfile
from typing import Sequence

import torch

from swin_ext import SwinTransformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small 4-stage config: 224 px -> maps 56, 28, 14, 7, all window-divisible.
EMBED, DEPTHS, HEADS, WINDOW, NCLS = 32, (2, 2, 2, 2), (1, 2, 4, 8), 7, 5


def small(**kw):
    cfg = dict(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WINDOW, num_classes=NCLS,
               drop_path_rate=0.0)
    cfg.update(kw)
    return SwinTransformer(**cfg)


def randomize(module, std=0.3):
    """Non-trivial values everywhere (libraries init tables and LayerNorms to constants)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def snapshot(model):
    """A copy of every state_dict entry (for the bitwise-unchanged checks of failed loads)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bits(t):
    """The bytes of ``t`` (0-d tensors too, e.g. BatchNorm's ``num_batches_tracked``)."""
    return t.reshape(-1).view(torch.uint8) if t.numel() else t


def assert_unchanged(model, snap):
    """Every entry bitwise as in ``snap`` (also -0.0 vs 0.0 and NaN payloads)."""
    sd = model.state_dict()
    assert sd.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(_bits(sd[k]), _bits(v)), k


def run_child(code: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, f"child died (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_on_isa(code: str, isa: str, timeout: float = 300, args: Sequence[str] = ()) -> None:
    """Run ``code`` in a fresh interpreter on the CPU kernels' ``isa`` build (``SWIN_EXT_CPU_ISA``:
    ``default`` is the baseline one, which a CPU without AVX2 runs; ``avx2`` stops at the AVX2 one),
    with ``args`` as its ``sys.argv[1:]``; it prints ``ok`` when its checks pass."""
    env = dict(os.environ, SWIN_EXT_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# Child-process harness: runs each named case with a 20 s alarm, records "ok",
# "<ExcType>: <message>" or "timeout", and prints them as JSON.
CHILD_HARNESS = r'''
import json, signal, traceback, torch, swin_ext
results = {}
class Timeout(Exception): pass
def _alarm(*a): raise Timeout()
signal.signal(signal.SIGALRM, _alarm)
def case(name, fn):
    signal.alarm(20)
    try:
        fn(); results[name] = "ok"
    except Timeout:
        results[name] = "timeout"
    except BaseException as e:
        results[name] = type(e).__name__ + ": " + " ".join(str(e).split())[:400]
    finally:
        signal.alarm(0)
'''


def flip_tensor_byte(path):
    """Flip one byte inside the largest tensor's data in torch.save's zip."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, extra = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        pos = info.header_offset + 30 + n + extra + info.file_size // 2
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x10]))
    return info.filename


class Evil:
    """Unpickling it would create the file ``marker`` (the code-execution probe)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))

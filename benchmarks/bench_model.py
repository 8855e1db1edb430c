"""Model benchmark: Swin-T (or --model swin_s / swin_b / swinv2_tiny_window8_256 / swin3d_t) img/s and peak memory,
training and inference, swin_ext (fused and reference backends) against timm and torchvision with the
same weights.

    python benchmarks/bench_model.py                                   # CPU: inference b8, train b4, float32
    python benchmarks/bench_model.py --device cuda --dtypes float32 bfloat16 float16
    python benchmarks/bench_model.py --impls swin_ext-fused timm --infer-batches 8 16 --train-batches 4

Implementations (those whose library is missing are skipped):

* ``swin_ext-fused``     swin_ext.swin_t(backend="fused")
* ``swin_ext-fused-noepi`` the same, ``set_cpu_inference_fusion(False)``: on the CPU without
                         the fast GEMM paths (oneDNN's: fc1+GELU epilogue in inference, forward /
                         input-gradient GEMMs, where chosen; swin_ext's own GEMMs, by
                         default on an AVX2 or AVX-512 CPU), i.e. torch's GEMMs; identical to
                         ``swin_ext-fused`` on CUDA
* ``swin_ext-fused-compiled`` swin_ext-fused under ``torch.compile`` (inductor, static shapes)
* ``swin_ext-reference`` the same weights, backend="reference" (plain PyTorch composite)
* ``timm``               timm ``swin_tiny_patch4_window7_224``, pretrained=False, with its
                         default attention.  timm's Swin asks
                         ``use_fused_attn(experimental=True)``, so its default (``TIMM_FUSED_ATTN``
                         unset or 1) is the explicit softmax path.
* ``timm-sdpa``          the same with ``F.scaled_dot_product_attention`` (bias + mask
                         materialized as ``attn_mask``): what ``TIMM_FUSED_ATTN=2`` gives.
                         timm reads the env var once at import and each WindowAttention
                         copies the flag at construction; this script builds the models under
                         ``timm.layers.set_fused_attn(True/False, experimental=True)`` and
                         reports the ``fused_attn`` attribute the modules actually have.
* ``timm-compiled``      ``timm`` under ``torch.compile`` (inductor, static shapes): what
                         ``torch.compile(model)`` gives a timm user (inductor fuses the
                         elementwise ops; the GEMMs stay torch's).
* ``torchvision``        torchvision ``swin_t(weights=None)``.

``--model swin3d_t`` (and ``swin3d_s`` / ``swin3d_b``: Video Swin) compares
``swin_ext.swin3d_t()`` with torchvision's ``swin3d_t`` (same layout, same
weights) on clips ``(B, 3, T, H, W)`` of ``--clip T H W`` (default 16 112 112);
timm has no Video Swin (the timm rows are skipped), and the targets are
inference >= 1.5x and a training step >= 1.3x torchvision (float32, CPU).
``--model upernet_swin_t`` (semantic segmentation, 512 px, inference) compares the
swin_ext UperNet (``swin_ext-fused``; ``swin_ext-reference`` its plain-PyTorch backbone)
with transformers' ``UperNetForSemanticSegmentation`` with a ``SwinBackbone`` of the
Swin-T configuration (``transformers``: its default attention, SDPA;
``transformers-eager``: ``set_attn_implementation("eager")``), 150 classes, random
weights copied by ``swin_ext.from_transformers``.  transformers' forward also
runs its auxiliary head (it always does); swin_ext's inference does not (the
auxiliary head only serves the training loss).

``--model swinv2_tiny_window8_256`` (Swin V2 at 256 px) compares
``swin_ext.create_model("swinv2_tiny_window8_256")`` with timm's model of that
name (the res-post-norms, zero at initialisation, set to ones so that the
logits check sees every block); timm's Swin V2 has no SDPA path
(``timm-sdpa`` is skipped) and torchvision's ``swin_v2_t`` is not mapped.

Compiled implementations compile during the warm-up (at least two warm-up
iterations per case: the first compiles, the second runs the compiled code),
so compile time is never timed; it is reported separately.

All models get swin_ext's weights (key mapping below), stochastic depth 0, and
their fp32 eval logits are checked against swin_ext-fused before timing.

Timing: every implementation of one (mode, dtype, batch) case is warmed up,
then timed in interleaved rounds (A, B, C, A, B, C, ...) so that a load change
on a shared machine hits all of them alike; the median per implementation is
reported.  ``infer`` = eval forward under ``torch.inference_mode``; ``train``
= forward + cross-entropy + backward + AdamW step.  float16/bfloat16 run
under ``torch.autocast`` with float32 weights.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one more
iteration (absolute: weights, optimizer state and activations); on CPU the
peak RSS above the RSS before that iteration, from the kernel's VmHWM after
resetting it through ``/proc/self/clear_refs`` (Linux); "n/a" where that is
unavailable.  CPU numbers include allocator caching and are approximate.

Writes ``benchmarks/results/bench_model_<model>_<device>_<date>.md`` (``<device>``: ``cpu-<ISA>-<threads>t``,
e.g. ``cpu-avx2-2t`` by ATen's CPU capability, or the GPU name on CUDA) and a ``.png`` chart; ``--no-save`` prints only.

For a lent GPU with a time budget (benchmarks/gpu_check.sh): ``--md-out``
appends each case's rows to a file as soon as the case is timed (a kill
loses nothing done), ``--deadline`` (unix time) skips cases that would start
after it and compiled implementations when less than ``--compile-min-s`` is
left, ``--agreement eager`` leaves compiled models out of the fp32 logits
check (which would compile them once more, in eval mode).  ``--quick`` is a
dry run (batch 2, one warm-up, 2 rounds) to prove the script on a CPU.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import os
import platform
import re
import shlex
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swin_ext  # noqa: E402
from swin_ext.weights.layouts import to_timm, to_torchvision  # noqa: E402

from _timing import cpu_name, gpu_busy_time, host_issue_time, measure  # noqa: E402

ALL_IMPLS = ["swin_ext-fused", "swin_ext-fused-noepi", "swin_ext-fused-compiled", "swin_ext-reference", "timm",
             "timm-sdpa", "timm-compiled", "torchvision", "transformers", "transformers-eager"]
#: the segmentation models (``build_seg_models``): name -> (image size, transformers SwinConfig keywords)
SEG_MODELS = {"upernet_swin_t": (512, dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7))}
SEG_IMPLS = ["swin_ext-fused", "swin_ext-reference", "transformers", "transformers-eager"]
BASELINES = ("timm", "timm-sdpa", "timm-compiled", "transformers", "transformers-eager")
COMPILED = ("swin_ext-fused-compiled", "timm-compiled")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# --------------------------------------------------------------------------- weight mapping


def _load_into(model: nn.Module, mapped: Dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    # buffers the other library keeps persistent (torchvision's relative_position_index)
    for k, v in own.items():
        if k not in mapped and k.endswith("relative_position_index"):
            mapped[k] = v
    model.load_state_dict(mapped, strict=True)


# --------------------------------------------------------------------------- models


# model name -> (swin_ext factory or create_model name, timm name, torchvision builder name or None,
# image size); the architectures and image sizes come from swin_ext's variant table (swin_ext.models.variants).
_TIMM_NAMES = {
    "swin_t": ("swin_tiny_patch4_window7_224", "swin_t"),
    "swin_s": ("swin_small_patch4_window7_224", "swin_s"),
    "swin_b": ("swin_base_patch4_window7_224", "swin_b"),
    "swinv2_tiny_window8_256": ("swinv2_tiny_window8_256", None),
}
MODELS = {
    name: (name, timm_name, tv, swin_ext.factory.model_config(name)["img_size"])
    for name, (timm_name, tv) in _TIMM_NAMES.items()
}
#: Video Swin: (swin_ext factory, no timm model, torchvision.models.video builder, no image size)
VIDEO_MODELS = {name: (name, None, name, None) for name in ("swin3d_t", "swin3d_s", "swin3d_b")}
MODELS.update(VIDEO_MODELS)


def num_classes_of(model: str) -> int:
    return 400 if model in VIDEO_MODELS else 1000


def example_input(model: str, batch: int, img, g: torch.Generator) -> torch.Tensor:
    """An image batch ``(B, 3, img, img)``, or a clip batch ``(B, 3, T, H, W)`` of a video model (``img``: the clip)."""
    shape = (batch, 3, *img) if model in VIDEO_MODELS else (batch, 3, img, img)
    return torch.randn(*shape, generator=g)


def _base_model(model: str) -> nn.Module:
    ours = MODELS[model][0]
    if model in VIDEO_MODELS:
        return getattr(swin_ext, ours)(stochastic_depth_prob=0.0)
    if hasattr(swin_ext, ours):
        return getattr(swin_ext, ours)(drop_path_rate=0.0, num_classes=1000)
    m = swin_ext.create_model(ours, drop_path_rate=0.0, num_classes=1000)
    with torch.no_grad():  # V2's res-post-norms start at zero (every block the identity)
        for blk in (b for layer in m.layers for b in layer.blocks):
            blk.norm1.weight.fill_(1.0)
            blk.norm2.weight.fill_(1.0)
    return m


def build_models(
    impls: List[str], device: torch.device, seed: int = 0, model: str = "swin_t"
) -> Tuple[Dict[str, nn.Module], Dict[str, str]]:
    """The implementations, all with the weights of ``swin_ext.<model>`` seeded with ``seed``."""
    ours, timm_name, tv_name, _ = MODELS[model]
    torch.manual_seed(seed)
    base = _base_model(model)
    v2 = isinstance(base, swin_ext.SwinTransformerV2)
    sd = base.state_dict()
    models: Dict[str, nn.Module] = {}
    notes: Dict[str, str] = {}
    for name in impls:
        if name == "swin_ext-fused":
            models[name] = copy.deepcopy(base).set_backend("fused")
            notes[name] = "swin_ext fused C++/CUDA kernels"
        elif name == "swin_ext-fused-noepi":
            models[name] = copy.deepcopy(base).set_backend("fused").set_cpu_inference_fusion(False)
            notes[name] = "swin_ext fused kernels on torch's GEMMs (no oneDNN or swin_ext CPU GEMM paths)"
        elif name == "swin_ext-fused-compiled":
            models[name] = torch.compile(copy.deepcopy(base).set_backend("fused").to(device), dynamic=False)
            notes[name] = "swin_ext fused kernels under torch.compile (inductor, dynamic=False)"
        elif name == "swin_ext-reference":
            models[name] = copy.deepcopy(base).set_backend("reference")
            notes[name] = "swin_ext plain-PyTorch composite (same weights)"
        elif name.startswith("timm") and model in VIDEO_MODELS:
            notes[name] = "skipped: timm has no Video Swin"
        elif name == "timm-sdpa" and v2:
            notes[name] = "skipped: timm's Swin V2 attention has no SDPA path"
        elif name in ("timm", "timm-sdpa", "timm-compiled"):
            try:
                import timm
                import timm.layers.config as tcfg
            except ImportError:
                notes[name] = "skipped: timm not installed"
                continue
            saved = tcfg._USE_FUSED_ATTN
            try:
                timm.layers.set_fused_attn(name == "timm-sdpa", experimental=True)
                m = timm.create_model(timm_name, pretrained=False, num_classes=1000, drop_path_rate=0.0)
            finally:
                tcfg._USE_FUSED_ATTN = saved
            m.load_state_dict(to_timm(sd), strict=True)
            flags = {
                bool(getattr(a, "fused_attn", False)) for a in m.modules() if type(a).__name__ == "WindowAttention"
            }
            if v2:
                attn_note = "explicit softmax (timm's only Swin V2 attention path)"
            else:
                attn_note = f"WindowAttention.fused_attn={'/'.join(str(f) for f in sorted(flags))}" + (
                    " (F.scaled_dot_product_attention, = TIMM_FUSED_ATTN=2)"
                    if True in flags
                    else " (explicit softmax: timm's default for Swin)"
                )
            notes[name] = f"timm {timm.__version__} {timm_name}, {attn_note}"
            if name == "timm-compiled":
                notes[name] += ", under torch.compile (inductor, dynamic=False)"
                m = torch.compile(m.to(device), dynamic=False)
            models[name] = m
        elif name == "torchvision" and tv_name is None:
            notes[name] = f"skipped: no torchvision mapping for {model}"
        elif name == "torchvision":
            try:
                import torchvision
                import torchvision.models as tvm
            except ImportError:
                notes[name] = "skipped: torchvision not installed"
                continue
            video = model in VIDEO_MODELS
            m = getattr(tvm.video if video else tvm, tv_name)(weights=None)
            for mod in m.modules():  # the builder fixes stochastic_depth_prob (0.2 / 0.1): zero it
                if type(mod).__name__ == "StochasticDepth":
                    mod.p = 0.0
            _load_into(m, dict(sd) if video else to_torchvision(sd))  # Video Swin: swin_ext has torchvision's keys
            notes[name] = f"torchvision {torchvision.__version__} {tv_name}"
            models[name] = m
        else:
            raise ValueError(f"unknown implementation {name!r}; choose from {ALL_IMPLS}")
    for m in models.values():
        m.to(device)
    return models, notes


def build_seg_models(impls: List[str], device: torch.device, seed: int = 0,
                     model: str = "upernet_swin_t") -> Tuple[Dict[str, nn.Module], Dict[str, str]]:
    """transformers' UperNet-Swin (random weights, seeded) and swin_ext's copy of it (``from_transformers``)."""
    import transformers

    _, swin_kw = SEG_MODELS[model]
    models: Dict[str, nn.Module] = {}
    notes: Dict[str, str] = {}
    bc = transformers.SwinConfig(image_size=224, patch_size=4, out_features=["stage1", "stage2", "stage3", "stage4"],
                                 drop_path_rate=0.0, **swin_kw)
    cfg = transformers.UperNetConfig(backbone_config=bc, hidden_size=512, auxiliary_channels=256, num_labels=150)
    torch.manual_seed(seed)
    hf = {"default": transformers.UperNetForSemanticSegmentation(cfg).eval()}
    if "transformers-eager" in impls:
        hf["eager"] = copy.deepcopy(hf["default"])
        hf["eager"].set_attn_implementation("eager")
    for name in impls:
        if name in ("swin_ext-fused", "swin_ext-reference"):
            m = swin_ext.from_transformers(hf["default"])
            m.backbone.set_backend(name.split("-")[1])
            models[name] = m
            what = "fused kernels" if name.endswith("fused") else "plain-PyTorch backbone"
            notes[name] = f"swin_ext UperNet ({what}), from_transformers of the transformers model"
        elif name in ("transformers", "transformers-eager"):
            m = hf["default" if name == "transformers" else "eager"]
            models[name] = m
            notes[name] = (f"transformers {transformers.__version__} UperNetForSemanticSegmentation + SwinBackbone, "
                           f"attn_implementation={m.backbone.config._attn_implementation!r}")
        else:
            notes[name] = f"skipped: no {name} UperNet"
    for m in models.values():
        m.to(device)
    return models, notes


@torch.no_grad()
def agreement(models: Dict[str, nn.Module], device: torch.device, img=224, model: str = "swin_t",
              batch: int = 2, skip: Tuple[str, ...] = ()) -> Dict[str, float]:
    """Max |logit difference| to the first model, fp32, eval, ``batch`` images or clips (models named in
    ``skip`` left out)."""
    g = torch.Generator().manual_seed(1)
    x = example_input(model, batch, img, g).to(device)
    outs = {}
    for name, m in models.items():
        if name in skip:
            continue
        m.eval()
        out = m(x)
        outs[name] = getattr(out, "logits", out).float()  # transformers' UperNet returns an output object
    ref = next(iter(outs.values()))
    return {k: (v - ref).abs().max().item() for k, v in outs.items()}


# --------------------------------------------------------------------------- memory


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak memory of one ``fn()``: CUDA max_memory_allocated, CPU peak-RSS delta (None if unmeasurable)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    gc.collect()
    _malloc_trim()
    base = _proc_status_kb("VmRSS")
    if base is None or not _reset_hwm():
        return None
    if (_proc_status_kb("VmHWM") or 0) > base + 1024:  # reset did not take
        return None
    fn()
    peak = _proc_status_kb("VmHWM")
    return None if peak is None else max(0.0, (peak - base) / 1024)


# --------------------------------------------------------------------------- runners


def make_runner(
    model: nn.Module, mode: str, batch: int, dtype: torch.dtype, device: torch.device, img=224, name: str = "swin_t"
) -> Callable[[], None]:
    g = torch.Generator().manual_seed(2)
    x = example_input(name, batch, img, g).to(device)
    y = torch.randint(0, num_classes_of(name), (batch,), generator=g).to(device)
    amp = dtype != torch.float32
    if mode == "infer":
        model.eval()

        def run():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=amp):
                model(x)

        return run
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_case(
    models, mode, batch, dtype, device, warmup, repeats, compile_s: Optional[Dict[str, float]] = None, img=224,
    model: str = "swin_t", profile_later: Optional[List[Tuple[Dict[str, float], str, Callable[[], None]]]] = None,
) -> Dict[str, Dict[str, float]]:
    """Wall time (interleaved rounds), peak memory and GPU busy time of each model's iteration.

    With ``profile_later`` (a list), the GPU busy time is not measured here: ``(result, name,
    runner)`` is appended for :func:`profile_pending`, so that no profiler session runs before
    a later case's wall times (a session leaves set-up and, unless torn down, CUPTI behind)."""
    runners = {}
    for name, m in models.items():
        try:
            runners[name] = make_runner(m, mode, batch, dtype, device, img, model)
            # A compiled model compiles in its first call (and, for training, its
            # backward in the first backward): warm up at least twice, time the first.
            for i in range(max(warmup, 2) if name in COMPILED else warmup):
                t0 = time.perf_counter()
                runners[name]()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i == 0 and name in COMPILED and compile_s is not None:
                    compile_s[f"{name} {mode} {str(dtype).split('.')[-1]} b{batch}"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - e.g. a dtype an implementation lacks
            print(f"  {name}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
            runners.pop(name, None)
    times: Dict[str, List[float]] = {n: [] for n in runners}
    for _ in range(repeats):
        for name, fn in runners.items():  # interleaved rounds
            times[name].append(measure(fn, device, warmup=0, repeats=1)["median"])
    res = {}
    for name, fn in runners.items():
        ts = sorted(times[name])
        med = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
        res[name] = {
            "median_s": med,
            "min_s": ts[0],
            "p20_s": ts[min(len(ts) - 1, int(0.2 * len(ts)))],
            "p80_s": ts[min(len(ts) - 1, int(0.8 * len(ts)))],
            "img_s": batch / med,
            "peak_mib": peak_memory_mib(fn, device),
            "host_s": host_issue_time(fn, device),
            "gpu_s": None,
        }
        if device.type != "cuda":
            continue
        if profile_later is not None:
            m = models[name]

            def again(m=m, fn=fn, training=mode == "train"):  # a later case may have switched the mode
                m.train(training)
                fn()

            profile_later.append((res[name], name, again))
        else:
            res[name]["gpu_s"] = gpu_busy_time(fn, device, calls=2, label=name)
    for m in models.values():
        m.zero_grad(set_to_none=True)
    gc.collect()
    return res


def profile_pending(pending: List[Tuple[Dict[str, float], str, Callable[[], None]]], device: torch.device,
                    deadline: Optional[float] = None) -> int:
    """The GPU busy time of every runner :func:`bench_case` left in ``pending``, after all wall
    times; stops at ``deadline`` (those keep no busy time).  Returns how many were profiled."""
    done = 0
    for entry, name, fn in pending:
        if deadline is not None and time.time() > deadline - 5:
            break
        entry["gpu_s"] = gpu_busy_time(fn, device, calls=2, label=name)  # synchronises the device itself
        done += 1
    pending.clear()
    gc.collect()
    return done


# --------------------------------------------------------------------------- report


def device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    # ATen's CPU capability in the name: an AVX2 and an AVX-512 machine choose different GEMM paths
    # (swin_ext.layers.onednn_preferred), and a run on one must not overwrite the other's file.
    return f"cpu-{swin_ext.layers.config.CPU_CAPABILITY.lower()}-{torch.get_num_threads()}t"


def plot(results, impls, path: str, title: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(cases) + 2), 4.2))
    width = 0.8 / max(1, len(impls))
    for i, name in enumerate(impls):
        vals = [results[c].get(name, {}).get("img_s", 0.0) for c in cases]
        xs = [j + (i - (len(impls) - 1) / 2) * width for j in range(len(cases))]
        bars = ax.bar(xs, vals, width, label=name)
        for b, v in zip(bars, vals):
            if v:
                ax.annotate(
                    f"{v:.1f}" if v < 100 else f"{v:.0f}",
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{m} {d}\nbatch {b}" for (m, d, b) in cases])
    ax.set_ylabel("images / s (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _case_rows(mode: str, dt: str, b: int, res: Dict[str, Dict[str, float]], impls: List[str],
               baselines: List[str]) -> List[str]:
    rows = []
    for name in impls:
        if name not in res:
            rows.append(f"| {mode} | {dt} | {b} | {name} | failed or skipped | | | |" + " |" * len(baselines))
            continue
        r = res[name]
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        vs = [f"{r['img_s'] / res[t]['img_s']:.2f}x" if t in res else "-" for t in baselines]
        ips = f"{r['img_s']:.1f}" if r["img_s"] >= 10 else f"{r['img_s']:.3f}"  # 512-px segmentation: < 1 img/s
        gpu = "-" if r.get("gpu_s") is None else f"{1e3 * r['gpu_s']:.1f}"
        rows.append(f"| {mode} | {dt} | {b} | {name} | {ips} | {1e3 * r['median_s']:.1f} "
                    f"({1e3 * r['p20_s']:.1f}–{1e3 * r['p80_s']:.1f}) | {gpu} | {mem} | " + " | ".join(vs) + " |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="swin_t", choices=list(MODELS) + list(SEG_MODELS))
    ap.add_argument(
        "--impls",
        nargs="+",
        default=None,
        choices=ALL_IMPLS,
        help="default: all (for a segmentation model: " + ", ".join(SEG_IMPLS) + ")",
    )
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default float32 on CPU; float32 bfloat16 float16 on CUDA",
    )
    ap.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    ap.add_argument("--infer-batches", nargs="+", type=int, default=None, help="default 8 on CPU, 64 256 on CUDA")
    ap.add_argument("--train-batches", nargs="+", type=int, default=None, help="default 4 on CPU, 32 128 on CUDA")
    ap.add_argument("--warmup", type=int, default=None, help="default 1 on CPU, 5 on CUDA")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5 on CPU, 20 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--clip", nargs=3, type=int, default=[16, 112, 112], metavar=("T", "H", "W"),
                    help="clip size of a video model (default 16 112 112)")
    ap.add_argument("--out-dir", default=RESULTS)
    ap.add_argument("--no-save", action="store_true", help="print only")
    ap.add_argument("--md-out", default=None, help="append each case's rows to this markdown file as it finishes")
    ap.add_argument("--deadline", type=float, default=None, help="unix time: no case starts after it")
    ap.add_argument("--compile-min-s", type=float, default=120.0,
                    help="with --deadline: compiled implementations only while this much time is left")
    ap.add_argument("--agreement", default="all", choices=["all", "eager", "none"],
                    help="fp32 logits check of every model, of the uncompiled ones, or none")
    ap.add_argument("--quick", action="store_true", help="dry run: batch 2, 1 warm-up, 2 rounds")
    args = ap.parse_args(argv)
    if args.quick:
        args.infer_batches = args.infer_batches or [2]
        args.train_batches = args.train_batches or [2]
        args.warmup = 1 if args.warmup is None else args.warmup
        args.repeats = args.repeats or 2

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    seg = args.model in SEG_MODELS
    if args.impls is None:
        args.impls = SEG_IMPLS if seg else ALL_IMPLS
    if seg and "train" in args.modes:
        args.modes = [m for m in args.modes if m != "train"] or ["infer"]  # the segmentation row is inference
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtypes or (["float32", "bfloat16", "float16"] if cuda else ["float32"])
    video = args.model in VIDEO_MODELS
    batches = {
        "infer": args.infer_batches or (
            [8, 32] if cuda and video else [8] if cuda and seg else [64, 256] if cuda else [1] if video or seg else [8]
        ),
        "train": args.train_batches or ([4, 16] if cuda and video else [32, 128] if cuda else [1] if video else [4]),
    }
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    repeats = args.repeats or (20 if cuda else 5)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    date = datetime.date.today().isoformat()
    devname = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    cmd = "python " + " ".join(
        shlex.quote(a) for a in ["benchmarks/bench_model.py"] + (sys.argv[1:] if argv is None else list(argv))
    )
    header = [
        f"# {args.model} model benchmark — {devname} — {date}",
        "",
        f"`{cmd}`",
        "",
        f"torch {torch.__version__}, swin_ext {swin_ext.__version__} "
        f"(build: {swin_ext.build_info().get('variant_reason')}), "
        f"Python {platform.python_version()}, warm-up {warmup}, {repeats} interleaved rounds, median.",
        "",
    ]
    for line in header:
        print(line, flush=True)

    md = open(args.md_out, "a") if args.md_out else None

    def md_write(lines: List[str]) -> None:
        if md:
            md.write("\n".join(lines) + "\n")
            md.flush()

    if seg:
        models, notes = build_seg_models(args.impls, device, model=args.model)
        img = SEG_MODELS[args.model][0]
    else:
        models, notes = build_models(args.impls, device, model=args.model)
        img = MODELS[args.model][3]
    impls = list(models)
    print("Implementations:")
    for name in args.impls:
        print(f"* `{name}`: {notes.get(name, '')}")
    if video:
        img = tuple(args.clip)
    md_write([f"`{cmd}`", "", f"{devname}, torch {torch.__version__}, warm-up {warmup}, {repeats} interleaved rounds, "
              "median.", ""] + [f"* `{n}`: {notes.get(n, '')}" for n in args.impls] + [""])
    skip = () if args.agreement == "all" else tuple(impls) if args.agreement == "none" else COMPILED
    diffs = agreement(models, device, img, args.model, batch=1 if seg else 2, skip=skip)
    line = ("Same weights, fp32 eval logits, max |diff| vs " + impls[0] + ": "
            + (", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) or "not checked")
            + (f" (not checked: {', '.join(n for n in impls if n in skip)})" if any(n in skip for n in impls) else ""))
    print("\n" + line, flush=True)
    md_write([line, ""])

    baselines = [t for t in (("torchvision",) if video else BASELINES) if t in impls]
    mem_head = "peak alloc MiB" if cuda else "peak RSS Δ MiB"
    unit = "clips" if video else "img"
    head = [f"| mode | dtype | batch | implementation | {unit}/s | ms / iter (p20–p80) | GPU busy ms | {mem_head} | "
            + " | ".join(f"vs {t}" for t in baselines) + " |",
            "|---|---|---:|---|---:|---:|---:|---:|" + "---:|" * len(baselines)]
    md_write(head)

    results: Dict[Tuple[str, str, int], Dict[str, Dict[str, float]]] = {}
    compile_s: Dict[str, float] = {}
    pending: List[Tuple[Dict[str, float], str, Callable[[], None]]] = []  # GPU busy: profiled after every wall time
    left_out: List[str] = []
    for mode in args.modes:
        for dt in dtypes:
            for b in batches[mode]:
                case_models = dict(models)
                if args.deadline is not None:
                    left = args.deadline - time.time()
                    if left < 10:
                        left_out.append(f"{mode} {dt} b{b}: skipped ({left:.0f} s left of the budget)")
                        md_write([f"| {mode} | {dt} | {b} | (skipped: {left:.0f} s left of the budget) |"])
                        continue
                    if left < args.compile_min_s:
                        for n in COMPILED:
                            if case_models.pop(n, None) is not None:
                                left_out.append(f"{n} {mode} {dt} b{b}: skipped ({left:.0f} s left, "
                                                f"{args.compile_min_s:.0f} s needed to compile)")
                print(f"\n... {mode} {dt} batch {b}", flush=True)
                res = bench_case(case_models, mode, b, getattr(torch, dt), device, warmup, repeats, compile_s, img,
                                 args.model, profile_later=pending)
                results[(mode, dt, b)] = res
                md_write(_case_rows(mode, dt, b, res, impls, baselines)
                         + [f"| | | | compile (first call, not timed): {k} {v:.0f} s |" for k, v in compile_s.items()
                            if k.startswith(tuple(case_models)) and f" {mode} {dt} b{b}" in k])
    md_write([""] + [f"* {x}" for x in left_out] + [""])
    if pending:
        n = len(pending)
        profiled = profile_pending(pending, device, args.deadline)
        busy = ["GPU busy ms per iteration, profiled after all the wall times above "
                f"({profiled} of {n} runners), and the host's time to issue an iteration started on an idle "
                "GPU (before any profile): wall >> busy with issue ~ wall, the host (or a wait inside the "
                "iteration) sets the pace; issue << wall ~ busy, the GPU does:", "",
                "| mode | dtype | batch | implementation | ms / iter | host issue ms | GPU busy ms | wall / busy |",
                "|---|---|---:|---|---:|---:|---:|---:|"]
        for (mode, dt, b), res in results.items():
            for name in impls:
                r = res.get(name)
                if r is not None and r.get("gpu_s"):
                    issue = "-" if r.get("host_s") is None else f"{1e3 * r['host_s']:.1f}"
                    busy.append(f"| {mode} | {dt} | {b} | {name} | {1e3 * r['median_s']:.1f} | {issue} | "
                                f"{1e3 * r['gpu_s']:.1f} | {r['median_s'] / r['gpu_s']:.2f} |")
        md_write(busy + [""])
        print("\n".join(busy), flush=True)
    if md:
        md.close()

    table = head[:]
    for (mode, dt, b), res in results.items():
        table += _case_rows(mode, dt, b, res, impls, baselines)

    summary = []
    if "swin_ext-fused" in impls and baselines:
        summary.append("swin_ext-fused speed relative to each baseline (>1 = faster), same weights:")
        for (mode, dt, b), res in results.items():
            if "swin_ext-fused" not in res:
                continue
            parts = [f"{t} {res['swin_ext-fused']['img_s'] / res[t]['img_s']:.2f}x" for t in baselines if t in res]
            if "swin_ext-fused-compiled" in res and "timm-compiled" in res:
                parts.append(
                    "compiled vs compiled "
                    f"{res['swin_ext-fused-compiled']['img_s'] / res['timm-compiled']['img_s']:.2f}x"
                )
            summary.append(f"* {mode} {dt} batch {b}: " + ", ".join(parts))
        if not cuda:
            # The CPU targets (issue 20, Swin-T, raising issue 10's 1.2x / 1.3x / 1.1x): a training step at
            # batch 4 >= 1.25x timm eager; inference at batch 8 >= 1.6x timm eager and >= 1.4x timm under
            # torch.compile; float32, swin_ext-fused.
            targets = [("train", 4, "timm", 1.25), ("infer", 8, "timm", 1.6), ("infer", 8, "timm-compiled", 1.4)]
            if args.model == "swin3d_t":
                # issue 23, Video Swin-T on the CPU: inference >= 1.5x and a training step >= 1.3x torchvision
                targets = [("infer", b, "torchvision", 1.5) for b in batches["infer"]] + [
                    ("train", b, "torchvision", 1.3) for b in batches["train"]]
            elif args.model == "upernet_swin_t":  # issue 22: UperNet-Swin-T inference, 512 px, >= 1.3x transformers
                targets = [("infer", 1, "transformers", 1.3)]
            elif args.model != "swin_t":
                targets = []
            for key, label in (("median_s", "by median"), ("min_s", f"by best of {repeats}")):
                checks = []
                for mode, b, base, goal in targets:
                    res = results.get((mode, "float32", b))
                    if res and "swin_ext-fused" in res and base in res:
                        checks.append((f"{mode} b{b} vs {base}", res[base][key] / res["swin_ext-fused"][key], goal))
                if not checks:
                    continue
                if key == "median_s":
                    summary.append("")
                goals = ", ".join(f"{m} b{b} >= {g:g}x {t}" for m, b, t, g in targets)
                summary.append(
                    f"CPU targets (float32; {goals}), {label}: "
                    + ", ".join(
                        f"{c} {r:.2f}x ({'met' if r >= g else f'NOT met, goal {g:g}x'})" for c, r, g in checks
                    )
                )
            spread = max(
                [
                    r["p80_s"] / r["p20_s"]
                    for (mode, dt, b), res in results.items()
                    for r in res.values()
                    if dt == "float32" and b in batches[mode]
                ]
                or [1.0]
            )
            if spread > 1.25:
                summary.append(
                    f"Caution: timings were noisy (p80/p20 up to {spread:.1f}x; another load on the "
                    "machine?): rerun on an idle machine, or with more --repeats, before trusting the ratios; "
                    "the best-of-N ratio is the less load-sensitive one."
                )
    if compile_s:
        summary.append("")
        summary.append(
            "Compile time (first call of each case, not timed): "
            + ", ".join(f"{k} {v:.0f} s" for k, v in compile_s.items())
        )

    notes_md = [
        "",
        "Notes: `infer` = eval forward under inference_mode; "
        "`train` = forward + cross-entropy + backward + AdamW step. "
        "float16/bfloat16 run under torch.autocast (float32 weights). "
        + (
            "GPU busy = the device work of one iteration from the profiler (kernels, copies, memsets), "
            "profiled after every wall time of the run (the per-case rows written as they go show '-'): "
            "ms / iter well above it means the host (Python, autograd, launches) or a wait sets the pace. "
            "Peak memory = torch.cuda.max_memory_allocated over one iteration "
            "(absolute, includes weights and optimizer state)."
            if cuda
            else "Peak memory = VmHWM − VmRSS over one iteration after resetting VmHWM via /proc/self/clear_refs "
            "(activations and temporaries; approximate, includes allocator effects; the optimizer state is "
            "allocated during warm-up and so not counted)."
        ),
        "timm: `timm` is timm's default for Swin (its WindowAttention asks use_fused_attn(experimental=True), off "
        "unless TIMM_FUSED_ATTN=2); `timm-sdpa` is the TIMM_FUSED_ATTN=2 path (F.scaled_dot_product_attention with the "
        "bias + shift mask materialized); `timm-compiled` is `timm` under torch.compile (inductor).",
    ]
    if seg:
        notes_md[1:] = [
            "Notes: `infer` = eval forward at 512x512 under inference_mode, logits at the input resolution. "
            "transformers' forward also computes its auxiliary head's logits (it always does); swin_ext's inference "
            "does not. Peak memory as for the classification rows (VmHWM − VmRSS on the CPU)."]
    print()
    for text in table + [""] + summary + notes_md:
        print(text)
    if args.md_out:
        with open(args.md_out, "a") as f:
            f.write("\n".join(summary + notes_md) + "\n\n")

    if not args.no_save:
        os.makedirs(args.out_dir, exist_ok=True)
        stem = os.path.join(args.out_dir, f"bench_model_{args.model}_{device_tag(device)}_{date}")
        size = "x".join(map(str, img)) if video else img
        png = plot(results, impls, stem + ".png", f"{args.model} {size} {unit}/s — {devname} — {date}")
        md_lines = header + ["Implementations:", ""] + [f"* `{n}`: {notes.get(n, '')}" for n in args.impls] + [
            "", line, ""] + table + [""] + summary + notes_md
        if png:
            md_lines += ["", f"![chart]({os.path.basename(png)})"]
        with open(stem + ".md", "w") as f:
            f.write("\n".join(md_lines) + "\n")
        print(f"\nwrote {stem}.md" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train UperNet-Swin for semantic segmentation on a synthetic shapes data set (no download), on the CPU.

Each image holds 1-3 shapes on a noisy, randomly tinted background; the
label of a pixel is its shape's class (0 background, 1 rectangle, 2 ellipse,
3 triangle).  Each class has a colour family (reddish, greenish, bluish,
jittered), so colour and shape both carry the class; the background may
take any tint, so colour alone does not separate it.
The model is a small UperNet-Swin (embed 32, depths 2-2-2-2, window 4,
decoder width 64) unless ``--model`` names a full one:

    python examples/segmentation_finetune.py                      # 300 steps: mIoU ~0.8, ~1 CPU-minute
    python examples/segmentation_finetune.py --steps 1000 --img-size 96
    python examples/segmentation_finetune.py --model swin_tiny_patch4_window7_224 --pretrained swin_tiny.pth

It prints a progress bar, the validation per-class IoU / mIoU / pixel
accuracy, and writes ``segmentation_example.png`` (image / target /
prediction) to ``--out-dir``.  Measured with the defaults and ``--threads 1``:
mIoU 0.81 (pixel accuracy 0.96) on the 64 validation images after 61 s of
CPU time.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Dict, Tuple

import torch

from swin_ext import segmentation

CLASSES = ("background", "rectangle", "ellipse", "triangle")
#: the class colour families (jittered by +-0.25 per channel)
_COLOURS = torch.tensor([[0.85, 0.25, 0.25], [0.25, 0.85, 0.25], [0.25, 0.25, 0.85]])
SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.1)


def shapes_batch(n: int, size: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, size, size)`` in [0, 1] and their labels ``(n, size, size)`` (int64)."""
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images = u(n, 3, 1, 1) * 0.6 + 0.2 + 0.1 * torch.randn(n, 3, size, size, generator=gen)
    labels = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        for _ in range(int(u(1) * 3) + 1):
            cls = int(u(1) * 3) + 1
            cy, cx = (u(2) * 0.8 + 0.1) * size
            h, w = (u(2) * 0.3 + 0.2) * size
            if cls == 1:  # axis-aligned rectangle
                mask = ((yy - cy).abs() <= h / 2) & ((xx - cx).abs() <= w / 2)
            elif cls == 2:  # ellipse
                mask = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
            else:  # triangle: apex up, base down
                t = (yy - (cy - h / 2)) / h  # 0 at the apex, 1 at the base
                mask = (t >= 0) & (t <= 1) & ((xx - cx).abs() <= t * w / 2)
            colour = (_COLOURS[cls - 1] + 0.5 * (u(3) - 0.5)).clamp(0, 1).view(3, 1, 1)
            images[i] = torch.where(mask, colour + 0.05 * torch.randn(3, size, size, generator=gen), images[i])
            labels[i][mask] = cls
    return images.clamp(0, 1), labels


def build(args) -> segmentation.UperNet:
    if args.model == "small":
        return segmentation.upernet("swin_tiny_patch4_window7_224", len(CLASSES), args.pretrained, channels=64,
                                    aux_channels=32, **SMALL)
    return segmentation.upernet(args.model, len(CLASSES), args.pretrained)


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)
    except ImportError:  # pragma: no cover - tqdm is in the dev requirements
        return None


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch: int) -> segmentation.SegmentationMetrics:
    model.eval()
    metric = segmentation.SegmentationMetric(len(CLASSES))
    for i in range(0, len(images), batch):
        metric.update(model(images[i:i + batch]).argmax(1), labels[i:i + batch])
    return metric.compute()


def save_png(path: str, model, images: torch.Tensor, labels: torch.Tensor, n: int = 4) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    with torch.no_grad():
        pred = model.eval()(images[:n]).argmax(1)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for r in range(n):
        for c, (img, title) in enumerate(((images[r].permute(1, 2, 0), "image"), (labels[r], "target"),
                                          (pred[r], "prediction"))):
            ax = axes[r][c]
            ax.imshow(img, **({} if c == 0 else dict(cmap="tab10", vmin=0, vmax=9, interpolation="nearest")))
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title)
    fig.suptitle(", ".join(f"{i} {n}" for i, n in enumerate(CLASSES)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None) -> Dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="'small' (default) or a swin_ext model name")
    ap.add_argument("--pretrained", default=None, help="a Swin or UperNet checkpoint (any supported layout)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.val_images < 1 or args.img_size < 16:
        ap.error("--steps, --batch, --val-images must be >= 1 and --img-size >= 16")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    val_gen = torch.Generator().manual_seed(10_000 + args.seed)
    val_images, val_labels = shapes_batch(args.val_images, args.img_size, val_gen)
    model = build(args)
    params = sum(p.numel() for p in model.parameters())
    print(f"UperNet-Swin ({args.model}): {params / 1e6:.2f}M parameters, {args.steps} steps of {args.batch} "
          f"{args.img_size}x{args.img_size} images, {torch.get_num_threads()} threads")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, foreach=True)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    bar = _progress(args.steps)
    t0 = time.perf_counter()
    model.train()
    for step in range(args.steps):
        x, y = shapes_batch(args.batch, args.img_size, gen)
        logits, aux = model(x, return_aux=True)
        loss = model.loss(logits, y, aux_logits=aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elif step % 20 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t0
    m = evaluate(model, val_images, val_labels, args.batch)
    print(f"trained in {train_s:.0f} s; validation ({args.val_images} images): mIoU {m.miou:.3f}, "
          f"pixel accuracy {m.pixel_accuracy:.3f}")
    print("per-class IoU: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(CLASSES, m.iou.tolist())))
    os.makedirs(args.out_dir, exist_ok=True)
    png = save_png(os.path.join(args.out_dir, "segmentation_example.png"), model, val_images, val_labels)
    print(f"wrote {png}")
    return dict(miou=m.miou, pixel_accuracy=m.pixel_accuracy, train_s=train_s, png=png)


if __name__ == "__main__":
    main()

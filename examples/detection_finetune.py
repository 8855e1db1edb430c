"""Fine-tune torchvision's Faster R-CNN with a swin_ext Swin-FPN backbone.

Synthetic data by default (bright rectangles on noise, one class per
colour), or your own images with a JSON of boxes:

    python examples/detection_finetune.py --steps 50                       # synthetic
    python examples/detection_finetune.py --images DIR --annotations boxes.json --pretrained swin_tiny.pth

``boxes.json``: ``[{"file": "a.jpg", "boxes": [[x1, y1, x2, y2], ...], "labels": [1, ...]}, ...]``
(labels from 1; 0 is the background).  CPU or GPU; bf16 autocast on a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch

import swin_ext


def synthetic_batch(n: int, size: int, num_classes: int, gen: torch.Generator):
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, size, size, generator=gen) * 0.3
        boxes, labels = [], []
        for _ in range(random.randint(1, 3)):
            w, h = random.randint(size // 8, size // 3), random.randint(size // 8, size // 3)
            x0, y0 = random.randint(0, size - w - 1), random.randint(0, size - h - 1)
            c = random.randint(1, num_classes - 1)
            img[(c - 1) % 3, y0:y0 + h, x0:x0 + w] = 1.0
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(c)
        images.append(img)
        targets.append(dict(boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels)))
    return images, targets


def read_annotations(path: str, num_classes: int, batch: int):
    """The annotation list, checked: a non-empty list of ``{"file", "boxes", "labels"}`` with labels in
    ``1..num_classes - 1`` and at least ``batch`` images (else a ValueError naming the problem)."""
    with open(path) as f:
        items = json.load(f)
    if not isinstance(items, list) or not all(isinstance(it, dict) and {"file", "boxes", "labels"} <= set(it)
                                               and isinstance(it["labels"], list) for it in items):
        raise ValueError(f"{path}: expected a list of {{\"file\", \"boxes\", \"labels\"}} objects")
    if not items:
        raise ValueError(f"{path} lists no images")
    if len(items) < batch:
        raise ValueError(f"{path} lists {len(items)} image{'s' if len(items) != 1 else ''}, fewer than --batch {batch} "
                         f"(no batch would ever be complete): lower --batch to at most {len(items)}")
    bad = sorted({lab for it in items for lab in it["labels"] if not (isinstance(lab, int) and 1 <= lab < num_classes)},
                 key=str)
    if bad:
        raise ValueError(f"{path}: labels {bad[:5]} are outside 1..{num_classes - 1} (--num-classes {num_classes} "
                         "counts the background, label 0)")
    return items


def folder_batches(images_dir: str, items, batch: int):
    """Shuffled batches of ``batch`` annotated images, forever (each pass leaves out the ``len % batch``
    images that do not fill a batch, different ones each time); ``items`` must hold at least ``batch``
    images (:func:`read_annotations`), else no batch would ever be complete."""
    from torchvision.io import read_image

    if not 1 <= batch <= len(items):
        raise ValueError(f"batches of {batch} from {len(items)} images: none would ever be complete")
    items = list(items)
    while True:
        random.shuffle(items)
        for i in range(0, len(items) - batch + 1, batch):
            imgs, tgts = [], []
            for it in items[i:i + batch]:
                imgs.append(read_image(os.path.join(images_dir, it["file"])).float() / 255)
                tgts.append(
                    dict(boxes=torch.tensor(it["boxes"], dtype=torch.float32), labels=torch.tensor(it["labels"]))
                )
            yield imgs, tgts


def _int_at_least(lo: int):
    """argparse type: an int >= ``lo``."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


def _positive(s: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_tiny_patch4_window7_224")
    ap.add_argument("--pretrained", default=None, help="a Swin checkpoint (any supported layout)")
    ap.add_argument("--images", default=None)
    ap.add_argument("--annotations", default=None)
    ap.add_argument("--num-classes", type=_int_at_least(2), default=4,
                    help="including the background (label 0): at least 2")
    ap.add_argument("--steps", type=_int_at_least(1), default=20)
    ap.add_argument("--batch", type=_int_at_least(1), default=2)
    ap.add_argument("--size", type=_int_at_least(32), default=256, help="synthetic image side; the detector's min_size")
    ap.add_argument("--lr", type=_positive, default=1e-4)
    ap.add_argument("--small", action="store_true", help="a tiny Swin (quick CPU runs)")
    a = ap.parse_args(argv)
    if (a.images is None) != (a.annotations is None):
        ap.error("--images and --annotations go together")
    items = None
    if a.annotations:
        try:
            items = read_annotations(a.annotations, a.num_classes, a.batch)
        except (OSError, ValueError) as e:
            ap.error(str(e))
    from torchvision.models.detection import FasterRCNN

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kw = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)) if a.small else {}
    backbone = swin_ext.fpn_backbone(a.model, out_channels=128 if a.small else 256, pretrained=a.pretrained, **kw)
    det = FasterRCNN(backbone, num_classes=a.num_classes, min_size=a.size, max_size=int(a.size * 1.34)).to(dev)
    opt = torch.optim.AdamW([p for p in det.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    data = folder_batches(a.images, items, a.batch) if items else None
    det.train()
    t0 = time.time()
    for step in range(1, a.steps + 1):
        images, targets = next(data) if data else synthetic_batch(a.batch, a.size, a.num_classes, gen)
        images = [i.to(dev) for i in images]
        targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            losses = det(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 1 or step % 10 == 0 or step == a.steps:
            print(
                f"step {step}/{a.steps}  loss {loss.item():.3f}  "
                + "  ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                + f"  ({time.time() - t0:.1f} s)",
                flush=True,
            )
    det.eval()
    with torch.no_grad():
        out = det([images[0]])
    print(f"eval: {len(out[0]['boxes'])} boxes on the last image")


if __name__ == "__main__":
    main()

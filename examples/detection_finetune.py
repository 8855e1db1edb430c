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


def folder_batches(images_dir: str, annotations: str, batch: int):
    from torchvision.io import read_image

    with open(annotations) as f:
        items = json.load(f)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_tiny_patch4_window7_224")
    ap.add_argument("--pretrained", default=None, help="a Swin checkpoint (any supported layout)")
    ap.add_argument("--images", default=None)
    ap.add_argument("--annotations", default=None)
    ap.add_argument("--num-classes", type=int, default=4, help="including the background")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="synthetic image side; the detector's min_size")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--small", action="store_true", help="a tiny Swin (quick CPU runs)")
    a = ap.parse_args(argv)
    from torchvision.models.detection import FasterRCNN

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kw = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)) if a.small else {}
    backbone = swin_ext.fpn_backbone(a.model, out_channels=128 if a.small else 256, pretrained=a.pretrained, **kw)
    det = FasterRCNN(backbone, num_classes=a.num_classes, min_size=a.size, max_size=int(a.size * 1.34)).to(dev)
    opt = torch.optim.AdamW([p for p in det.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    data = folder_batches(a.images, a.annotations, a.batch) if a.images else None
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

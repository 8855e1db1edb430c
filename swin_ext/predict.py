"""Classify images with a trained Swin: ``python -m swin_ext.predict --checkpoint PATH IMAGE...``.

For each image, the ``--top-k`` (5) classes with their probabilities::

    python -m swin_ext.predict --checkpoint runs/flowers-swin_t/last.pt img1.jpg img2.jpg
    python -m swin_ext.predict --checkpoint swin_tiny_patch4_window7_224.pth --model swin_t photo.jpg

A swin_ext.train checkpoint (``last.pt``) brings its model, its class names
and its input configuration; ``--ema`` uses its weight average.  Any other
checkpoint ``load_pretrained`` reads (official, timm, torchvision,
transformers; ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``) needs
``--model``; its classes are named by ``--classes FILE`` (one per line), by
ImageNet's labels for a 1,000- or 21,841-class head, else by number.  The
checkpoint is read without executing anything.  Images are resized and
centre-cropped as the model's ``pretrained_cfg`` says (timm's evaluation
transform) and classified ``--batch-size`` at a time on ``--device``.  An
image that cannot be read is reported on its own line and the rest are
classified; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["build_parser", "load_classifier", "predict", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .train.cli import _int_at_least, _Parser

    ap = _Parser(prog="swin-ext-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    ap.add_argument("--checkpoint", required=True, help="a swin_ext.train last.pt, or any Swin checkpoint with --model")
    ap.add_argument("--model", default=None, help="the model name (swin_ext.list_models()) of a checkpoint that is "
                    "not a swin_ext.train one")
    ap.add_argument("--classes", default=None, metavar="FILE", help="class names, one per line (in head order)")
    ap.add_argument("--ema", action="store_true", help="use the checkpoint's weight average (--model-ema runs)")
    ap.add_argument("--top-k", type=_int_at_least(1), default=5, help="classes shown per image (default 5)")
    ap.add_argument("--batch-size", type=_int_at_least(1), default=32, help="images per forward pass (default 32)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--json", action="store_true", help="one JSON object per image instead of the table")
    return ap


def _imagenet_names(n: int) -> Optional[List[str]]:
    """ImageNet's label descriptions (timm's tables, no download) for a head of 1,000 or 21,841 classes."""
    subset = {1000: "imagenet-1k", 21841: "imagenet-22k"}.get(n)
    if subset is None:
        return None
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo(subset)
        return [info.index_to_description(i) for i in range(n)]
    except Exception:  # pragma: no cover - an older timm without the tables
        return None


def load_classifier(path: str, model_name: Optional[str] = None, ema: bool = False,
                    classes_file: Optional[str] = None) -> Tuple[nn.Module, List[str], Callable]:
    """``(model in eval mode, class names, transform)`` of a checkpoint (see the module docstring).

    Raises ``ValueError`` (:class:`~swin_ext.CheckpointError` for the file
    itself) naming the problem: a checkpoint without a head, another
    architecture than ``model_name``, a classes file of the wrong length.
    """
    from .factory import create_model
    from .train.checkpointing import read_pretrained
    from .train.data import eval_transform
    from .train.presets import build_model
    from .weights import CheckpointError, convert_state_dict, load_pretrained

    sd, meta = read_pretrained(path)
    if ema:
        if "model_ema" not in meta:
            raise CheckpointError(f"{path}: --ema: the checkpoint holds no weight average (train with --model-ema)")
        sd = meta["model_ema"]
    if "model_config" in meta and model_name is None:
        model = build_model(meta["model_config"])
    else:
        if model_name is None:
            raise ValueError(f"{path} is not a swin_ext.train checkpoint: name its model with --model "
                             "(e.g. --model swin_tiny_patch4_window7_224)")
        _, converted, _, _ = convert_state_dict(sd)
        if "head.weight" not in converted:
            raise CheckpointError(f"{path}: the checkpoint has no classification head (head.weight): nothing to "
                                  "predict classes with")
        n = converted["head.weight"][1].shape[0]
        in_chans = converted["patch_embed.proj.weight"][1].shape[1]
        model = create_model(model_name, num_classes=n, in_chans=in_chans)
    load_pretrained(model, sd, strict=True)
    n = model.num_classes
    names = meta.get("classes")
    if classes_file is not None:
        with open(classes_file) as f:
            names = [ln.strip() for ln in f if ln.strip()]
        if len(names) != n:
            raise ValueError(f"--classes {classes_file}: {len(names)} names, the model's head has {n} classes")
    if names is None or len(names) != n:
        names = _imagenet_names(n) or [str(i) for i in range(n)]
    cfg = dict(model.pretrained_cfg)
    if "data_config" in meta:  # the input the run trained on
        cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in meta["data_config"].items()})
    return model.eval(), list(names), eval_transform(cfg)


def _read(paths: Sequence[str], transform: Callable) -> List[Tuple[str, Any]]:
    """``(path, tensor)`` per image, or ``(path, why)`` for one that cannot be read, in order."""
    from .train.data import DataError, read_image

    out: List[Tuple[str, Any]] = []
    for p in paths:
        try:
            if not os.path.isfile(p):
                raise DataError(f"{p}: no such image file")
            out.append((p, transform(read_image(p))))
        except DataError as e:
            out.append((p, str(e)))
    return out


@torch.no_grad()
def predict(model: nn.Module, transform: Callable, paths: Sequence[str], batch_size: int = 32,
            device: str = "cpu", top_k: int = 5) -> Iterator[Dict[str, Any]]:
    """For each image in order: ``{"image": path, "top": [(class index, probability), ...]}`` (the
    ``top_k`` most probable, descending), or ``{"image": path, "error": why}``.  Images are read and
    classified ``batch_size`` at a time."""
    model = model.to(device)
    for i in range(0, len(paths), batch_size):
        items = _read(paths[i:i + batch_size], transform)
        good = [(p, t) for p, t in items if isinstance(t, torch.Tensor)]
        top: Dict[str, Any] = {}
        if good:
            probs = model(torch.stack([t for _, t in good]).to(device)).float().softmax(-1).cpu()
            pr, ix = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
            top = {p: list(zip(k, v)) for (p, _), k, v in zip(good, ix.tolist(), pr.tolist())}
        for p, t in items:
            yield {"image": p, "top": top[p]} if isinstance(t, torch.Tensor) else {"image": p, "error": t}


def main(argv: Optional[List[str]] = None) -> int:
    """The CLI: 0 when every image was classified, 1 when one could not be read or the checkpoint could not
    be used (one ``error:`` line), 2 for bad arguments."""
    from .train.cli import check_device
    from .train.errors import TrainError

    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        check_device(args.device)
    except TrainError as e:
        ap.error(str(e))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model, names, transform = load_classifier(args.checkpoint, args.model, args.ema, args.classes)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"swin-ext-predict: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    status = 0
    for r in predict(model, transform, args.images, args.batch_size, device, args.top_k):
        if "error" in r:
            status = 1
            print(f"swin-ext-predict: error: {r['error']}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps({"image": r["image"], "top": [{"class": names[i], "index": i, "probability": p}
                                                           for i, p in r["top"]]}), flush=True)
        else:
            print(r["image"])
            for i, p in r["top"]:
                print(f"  {100 * p:6.2f}%  {names[i]}  ({i})")
            sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())

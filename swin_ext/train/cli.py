"""Train a swin_ext Swin Transformer on an ImageFolder directory or the built-in digits set.

One process:

    python -m swin_ext.train --data digits --model swin_digits --epochs 40

Many processes / nodes (DistributedDataParallel; gloo on CPU, nccl on GPU),
the same command under torchrun:

    torchrun --nproc-per-node 2 -m swin_ext.train --data digits --model swin_digits
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 \\
        -m swin_ext.train --data /imagenet --model swin_t

Fine-tune from any Swin checkpoint (official, timm, torchvision,
transformers; V1 and V2) with ``--pretrained PATH``, the official fine-tuning
recipe with ``--recipe finetune``; evaluate one with ``--eval-only``:

    python -m swin_ext.train --data DIR --model swin_t --pretrained swin_tiny.pth --recipe finetune
    python -m swin_ext.train --eval-only --data DIR --pretrained runs/DIR-swin_t/last.pt

AdamW with linear warm-up and cosine decay (per step), layer-wise lr decay
(timm's groups), timm's augmentation on image folders (RandAugment, random
erasing, Mixup / CutMix, label smoothing), weight EMA, frozen stages, AMP
(bf16/fp16), gradient checkpointing, gradient clipping, ``torch.compile``,
atomic checkpoints with exact resume (model, EMA, optimizer, scheduler, grad
scaler, step, data position and every rank's RNG state; random augmentation
is seeded per sample, so a resume is exact with any number of workers), tqdm
progress bars, a final ``FINAL_METRICS {json}`` line, ``metrics.json`` and a
PNG of the loss / accuracy curves in ``--output-dir``.

``--batch-size`` is per process; the global batch is ``batch_size * world_size``.
``--lr`` is used as given (no automatic scaling with the global batch).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..weights import CheckpointError
from .data import DataError
from .distributed import DistEnv
from .errors import TrainArgumentError, TrainError
from .loop import Trainer
from .presets import PRESETS, RECIPES, resolve_recipe

__all__ = ["build_parser", "validate_args", "train", "main", "cli"]


def _int_list_of(lo: int, example: str):
    """argparse type: a comma- or space-separated list of ints >= ``lo``, e.g. ``example``."""
    what = "positive ints" if lo == 1 else f"ints >= {lo}"

    def parse(s: str) -> Tuple[int, ...]:
        try:
            vals = tuple(int(v) for v in s.replace(",", " ").split())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a list of ints like '{example}', got {s!r}") from None
        if not vals or min(vals) < lo:
            raise argparse.ArgumentTypeError(f"expected a list of {what} like '{example}', got {s!r}")
        return vals

    return parse


_int_list = _int_list_of(1, "2,2,6,2")
_nonneg_int_list = _int_list_of(0, "12,12,12,6")


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


def _real(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite float in the interval given (open ends where asked)."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be finite, got {s}")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (
            hi is not None and (v > hi or (hi_open and v == hi))
        ):
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}, got {v:g}"
            )
        return v

    parse.__name__ = "float"
    return parse


def _int_in(lo: int, hi: int):
    """argparse type: an int in ``[lo, hi]``."""

    def parse(s: str) -> int:
        v = _int_at_least(lo)(s)
        if v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


_POS_INT, _NONNEG_INT = _int_at_least(1), _int_at_least(0)
_NONNEG = _real(0.0)
_POS = _real(0.0, lo_open=True)
_UNIT_OPEN = _real(0.0, 1.0, hi_open=True)  # [0, 1)


class _Parser(argparse.ArgumentParser):
    """argparse with every argument error on one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="swin-ext-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = ap.add_argument_group("data")
    g.add_argument(
        "--data",
        default="digits",
        help="'digits' (scikit-learn's digits, built in) or an ImageFolder "
        "directory (root/train + root/val|test, or one class-per-folder tree split deterministically)",
    )
    g.add_argument(
        "--test-fraction",
        type=_real(0.0, 1.0, True, True),
        default=0.2,
        help="test split when the data has none (default 0.2)",
    )
    g.add_argument("--no-augment", action="store_true",
                   help="no training augmentation at all (any data: crops, flips, jitter, --aa, --reprob, mixing)")
    g.add_argument(
        "--limit", type=_POS_INT, default=None, help="use only the first N samples of each split (smoke tests)"
    )
    g.add_argument(
        "--workers",
        type=_NONNEG_INT,
        default=None,
        help="DataLoader workers per process (default 0 for digits, 4 otherwise)",
    )

    g = ap.add_argument_group("augmentation (timm's; image folders, except the mixing)")
    g.add_argument("--aa", default=None, metavar="POLICY",
                   help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment, the official recipe's)")
    g.add_argument("--reprob", type=_real(0.0, 1.0), default=None, help="random erasing probability (default 0)")
    g.add_argument("--remode", default="pixel", choices=["pixel", "rand", "const"], help="random erasing fill")
    g.add_argument("--color-jitter", type=_NONNEG, default=0.4, help="colour jitter (used without --aa; default 0.4)")
    g.add_argument("--mixup", type=_NONNEG, default=None, help="Mixup alpha, on when > 0 (default 0; any data)")
    g.add_argument("--cutmix", type=_NONNEG, default=None, help="CutMix alpha, on when > 0 (default 0; any data)")
    g.add_argument("--mixup-prob", type=_real(0.0, 1.0), default=1.0, help="probability of mixing a batch")
    g.add_argument("--mixup-switch-prob", type=_real(0.0, 1.0), default=0.5,
                   help="probability of CutMix rather than Mixup when both are on")
    g.add_argument("--mixup-mode", default="batch", choices=["batch", "pair", "elem"], help="timm's Mixup mode")

    g = ap.add_argument_group("model")
    g.add_argument("--model", default=None, choices=sorted(PRESETS),
                   help="preset (default swin_digits, or the model of a --pretrained swin_ext.train checkpoint)")
    g.add_argument("--pretrained", default=None, metavar="PATH",
                   help="start from this checkpoint: official, timm, torchvision or transformers layout, V1 or "
                   "V2, .pth/.pt/.bin/.safetensors, or a swin_ext.train last.pt (read without executing code; a "
                   "head of another class count is replaced, bias tables resized to the window)")
    g.add_argument("--freeze-stages", type=_NONNEG_INT, default=0, metavar="N",
                   help="freeze the patch embedding and the first N stages (default 0)")
    g.add_argument("--head-only", action="store_true", help="train the head only (a linear probe): every stage frozen")
    g.add_argument("--img-size", type=_POS_INT, default=None)
    g.add_argument("--patch-size", type=_POS_INT, default=None)
    g.add_argument("--in-chans", type=_POS_INT, default=None, help="default 1 for digits, 3 for image folders")
    g.add_argument("--embed-dim", type=_POS_INT, default=None)
    g.add_argument("--depths", type=_int_list, default=None, help="e.g. 2,2,6,2")
    g.add_argument("--num-heads", type=_int_list, default=None, help="e.g. 3,6,12,24")
    g.add_argument("--window-size", type=_POS_INT, default=None)
    g.add_argument("--mlp-ratio", type=_POS, default=None)
    g.add_argument("--drop-path", type=_UNIT_OPEN, default=None, help="stochastic depth rate (preset default)")
    g.add_argument("--pretrained-window-sizes", type=_nonneg_int_list, default=None, metavar="LIST",
                   help="Swin V2: the windows the CPB coordinates are normalised by (the --pretrained "
                   "checkpoint's windows; read from official V2 checkpoints when not given)")
    g.add_argument("--backend", default="fused", choices=["fused", "reference"])
    g.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing of every block")
    g.add_argument("--model-ema", action="store_true",
                   help="keep an exponential moving average of the weights (timm's ModelEmaV3): evaluated, saved")
    g.add_argument("--model-ema-decay", type=_real(0.0, 1.0, hi_open=True), default=0.9998, help="(default 0.9998)")
    g.add_argument("--model-ema-warmup", action="store_true", help="timm's EMA decay warm-up")
    g.add_argument("--compile", action="store_true", help="torch.compile the model for training (off by default)")

    g = ap.add_argument_group("optimization (defaults: --recipe's where it sets one)")
    g.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="defaults of a training recipe; 'finetune': the official Swin fine-tuning schedule and "
                   "augmentation with layer decay 0.9 (docs/training.md); any flag given overrides it")
    g.add_argument("--epochs", type=_POS_INT, default=None, help="(default 40)")
    g.add_argument("--max-steps", type=_POS_INT, default=None, help="total optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=_POS_INT, default=32, help="per process (default 32)")
    g.add_argument("--lr", type=_POS, default=None, help="peak learning rate (default 2e-3)")
    g.add_argument("--min-lr", type=_NONNEG, default=None,
                   help="final learning rate of the cosine (<= --lr; default 1e-5)")
    g.add_argument("--warmup-epochs", type=_NONNEG, default=None, help="(default 2)")
    g.add_argument("--warmup-steps", type=_NONNEG_INT, default=None, help="overrides --warmup-epochs")
    g.add_argument("--weight-decay", type=_NONNEG, default=None, help="(default 0.05)")
    g.add_argument(
        "--layer-decay",
        type=_real(0.0, 1.0, lo_open=True),
        default=None,
        help="layer-wise lr decay factor (e.g. 0.9): lr * decay**(depth from the head), timm's layer groups",
    )
    g.add_argument("--label-smoothing", "--smoothing", dest="label_smoothing", type=_UNIT_OPEN, default=None,
                   help="(default 0.1)")
    g.add_argument("--clip-grad", type=_NONNEG, default=5.0, help="max gradient norm (0 disables)")
    g.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "none", "bf16", "fp16"],
        help="autocast dtype; auto = bf16 on a GPU that supports it, else none",
    )

    g = ap.add_argument_group("run")
    g.add_argument("--output-dir", default=None, help="default runs/<data>-<model>")
    g.add_argument("--resume", default=None, help="checkpoint path, or 'auto' (output-dir/last.pt if present)")
    g.add_argument(
        "--save-every", type=_NONNEG_INT, default=0, help="also checkpoint every N steps (0: epoch ends only)"
    )
    g.add_argument("--no-save", action="store_true", help="write no checkpoints")
    g.add_argument(
        "--stop-after-steps",
        type=_POS_INT,
        default=None,
        help="checkpoint and stop after N steps in this invocation (time-boxed jobs; resume later)",
    )
    g.add_argument("--eval-every", type=_POS_INT, default=1, help="evaluate every N epochs (and always at the end)")
    g.add_argument("--eval-only", action="store_true",
                   help="evaluate --pretrained on the evaluation split of --data (top-1, top-5, per class); no "
                   "training, nothing written")
    g.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0, help="in [0, 2**32)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--threads", type=_POS_INT, default=None, help="torch CPU threads per process")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--no-plot", action="store_true", help="no PNG of the curves")
    g.add_argument(
        "--min-acc", type=_real(), default=None, help="exit with status 1 if the final test accuracy is lower"
    )
    return ap


def validate_args(args: argparse.Namespace) -> None:
    """Fill the defaults (:func:`~swin_ext.train.presets.resolve_recipe`: ``--recipe``'s, then the
    CLI's), then the checks across arguments (each one alone is checked by its argparse type); raises
    :class:`TrainError`.  Calling it again changes nothing."""
    resolve_recipe(args)
    if args.min_lr > args.lr:
        raise TrainError(f"--min-lr {args.min_lr:g} is above --lr {args.lr:g}; the cosine decays from --lr to --min-lr")
    if args.resume not in (None, "auto") and not args.resume:
        raise TrainError("--resume needs a checkpoint path or 'auto'")
    if args.pretrained is not None and not args.pretrained:
        raise TrainError("--pretrained needs a checkpoint path")
    if args.eval_only and not args.pretrained:
        raise TrainError("--eval-only needs --pretrained PATH: the checkpoint to evaluate")
    if args.eval_only and args.resume:
        raise TrainError("--eval-only evaluates --pretrained; --resume continues a training run: pass one of them")
    if args.head_only and args.freeze_stages:
        raise TrainError("--head-only freezes every stage; --freeze-stages N a number of them: pass one of them")
    mixing = args.mixup > 0 or args.cutmix > 0
    if args.no_augment and (args.aa or args.reprob > 0 or mixing):
        given = [f for f, on in (("--aa", args.aa), ("--reprob", args.reprob > 0), ("--mixup", args.mixup > 0),
                                 ("--cutmix", args.cutmix > 0)) if on]
        raise TrainError(f"--no-augment turns off all training augmentation, but {', '.join(given)} asks for some: "
                         "pass one or the other")
    if args.data == "digits" and (args.aa or args.reprob > 0):
        raise TrainError("--aa and --reprob augment images of an image folder (PIL images); the digits are tensors "
                         "(they take --mixup / --cutmix)")
    if mixing and not args.no_augment and args.batch_size % 2:
        raise TrainError(f"--mixup / --cutmix mix each sample with another of its batch: --batch-size must be even, "
                         f"got {args.batch_size}")
    check_device(args.device)



def check_device(arg: str) -> None:
    """``--device``: auto, cpu, or cuda[:N] with that GPU present (:class:`TrainArgumentError` otherwise)."""
    if arg == "auto":
        return
    try:
        dev = torch.device(arg)
    except (RuntimeError, ValueError, TypeError):
        raise TrainArgumentError(f"--device {arg!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise TrainArgumentError(f"--device {arg}: training runs on cpu or cuda (swin_ext's kernels), not {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainArgumentError(f"--device {arg}: no GPU is available (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainArgumentError(f"--device {arg}: there {'is' if torch.cuda.device_count() == 1 else 'are'} "
                                     f"{torch.cuda.device_count()} GPU(s), numbered from 0")


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run training as configured by ``args`` (see :func:`build_parser`); returns the final metrics."""
    validate_args(args)
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    env = DistEnv(args.device)
    try:
        trainer = Trainer(args, env, t_start)
        return trainer.run_eval_only() if args.eval_only else trainer.run()
    finally:
        env.close()
        torch.set_num_threads(threads)  # train() may run inside a bigger program


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; for an error re-raised from a DataLoader worker, the original one."""
    msg = str(e)
    if "Original Traceback" in msg:  # torch's ExceptionWrapper: the worker's traceback, its last line the error
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1].strip()
        name = type(e).__module__ + "." + type(e).__qualname__
        for prefix in (name + ": ", type(e).__qualname__ + ": "):
            if last.startswith(prefix):
                last = last[len(prefix) :]
        msg = last
    out = ""
    for line in (" ".join(ln.split()) for ln in msg.splitlines()):  # a list of problems: "; " between them
        if line:
            out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """The CLI: returns the exit status (0 ok, 1 an error or --min-acc missed, 2 bad arguments or replicas differ).

    Bad arguments exit through argparse (status 2, one line: no usage block); an
    argument found unusable later (:class:`TrainArgumentError`: the model
    configuration, the output directory) prints one ``error:`` line and
    returns 2; a bad data set, checkpoint or a diverged run print one
    ``error:`` line naming the cause and return 1.  Never a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_args(args)
    except TrainError as e:
        parser.error(str(e))
    try:
        metrics = train(args)
    except (TrainError, CheckpointError, DataError, FileNotFoundError) as e:
        rank = os.environ.get("RANK")
        where = f" (rank {rank})" if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"swin-ext-train: error{where}: {_one_line(e)}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, TrainArgumentError) else 1
    if args.eval_only:
        return 0
    if args.min_acc is not None and not metrics["stopped_early"] and metrics["test_acc"] < args.min_acc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"error: test accuracy {100 * metrics['test_acc']:.2f}% < --min-acc {100 * args.min_acc:.2f}%",
                file=sys.stderr,
                flush=True,
            )
        return 1
    if len(set(metrics["replica_sha256"])) != 1:
        return 2
    return 0


def _exit_without_finalizing(code: int) -> None:
    """Leave a distributed run without Python's interpreter finalization.

    Once DistributedDataParallel has been built on a gloo process group, the
    group's C++ worker threads outlive ``destroy_process_group`` (torch keeps a
    reference). After the last collective such a thread still frees its Work
    object, which drops references to tensors that have Python objects; that
    needs the GIL, and if the main thread is already finalizing the
    interpreter, the worker thread is killed inside a C++ destructor and the
    process aborts ("terminate called without an active exception", SIGABRT)
    after all work is done (4 of about 200 two-process CPU runs here; 0 of 120
    with this exit).
    Everything the run writes is closed by now, so flush and exit directly.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> int:
    """Command-line entry (``python -m swin_ext.train`` and ``swin-ext-train``)."""
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_finalizing(rc)
    return rc

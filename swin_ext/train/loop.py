"""The training loop: a :class:`Trainer` whose methods are the phases of a run, in order.

``Trainer(args, env).run()``: :meth:`~Trainer.find_resume`,
:meth:`~Trainer.setup_data`, :meth:`~Trainer.setup_model` (``--pretrained``
weights when the run starts), :meth:`~Trainer.resume`, then
:meth:`~Trainer.train_epoch` until the step budget is spent (evaluating and
checkpointing at epoch ends), and :meth:`~Trainer.finish` (final
evaluation, metrics, the curves).  ``Trainer(args, env).run_eval_only()``
evaluates ``--pretrained`` and prints the report.  Every rank runs the same
code; rank 0 alone prints and writes files, and every collective is called by
every rank at the same point.

Randomness is keyed, so that a resumed run repeats the uninterrupted one
bit for bit with any number of DataLoader workers: each sample's
augmentation by ``(seed, epoch, position)``, each batch's Mixup / CutMix by
``(seed, epoch, batch, rank)`` (:func:`~swin_ext.train.data.sample_seed`);
drop path draws from the rank's torch stream, saved in the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..layers.helpers import to_2tuple
from ..models._base import default_pretrained_cfg
from .checkpointing import (
    CHECKPOINT_FORMAT,
    check_output_dir,
    check_resumable,
    damaged,
    finite_state,
    kept_message,
    load_checkpoint,
    read_pretrained,
    remove_stale_temporaries,
    resume_differences,
    rng_state,
    save_checkpoint,
    set_rng_state,
    state_dict_sha256,
    weights_finite,
)
from .data import Augment, SeededDataset, build_datasets, class_names, sample_seed, seeded_rng
from .distributed import DistEnv, ShardedSampler, ShardSampler, on_main
from .errors import TrainArgumentError, TrainError
from .finetune import adopt_checkpoint_model, eval_report, load_into, pretrained_windows
from .optim import adamw_kwargs, lr_factor, param_groups
from .plot import plot_curves
from .presets import PRESETS, build_model, default_in_chans, run_config

__all__ = ["Trainer", "evaluate", "amp_dtype", "DATA_CONFIG_KEYS"]

#: the fields of the model's ``pretrained_cfg`` a checkpoint keeps as its ``data_config`` (the input it trained on)
DATA_CONFIG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp``: ``auto`` is bf16 on a GPU that supports it, else none."""
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, env: DistEnv, amp: Optional[torch.dtype],
             num_classes: int = 0) -> Dict[str, Any]:
    """Test loss, top-1 and top-5 accuracy and sample count over ``loader``, summed across ranks;
    with ``num_classes`` also each class's ``per_class_correct`` and ``per_class_count``."""
    was_training = model.training
    model.eval()
    tot = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 correct, top-5 correct, count
    per_class = torch.zeros(2, num_classes, dtype=torch.float64)  # correct, count
    for x, y in loader:
        x = x.to(env.device, non_blocking=True)
        y = y.to(env.device, non_blocking=True)
        with torch.autocast(env.device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        logits = logits.float()
        top1 = logits.argmax(-1) == y
        top5 = (logits.topk(min(5, logits.shape[-1]), dim=-1).indices == y[:, None]).any(-1)
        tot += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), top1.sum().item(),
                             top5.sum().item(), y.numel()], dtype=torch.float64)
        if num_classes:
            per_class[0] += torch.bincount(y.cpu(), weights=top1.cpu().double(), minlength=num_classes)
            per_class[1] += torch.bincount(y.cpu(), minlength=num_classes).double()
    tot = env.all_reduce_sum(tot)
    model.train(was_training)
    n = max(tot[3].item(), 1.0)
    out: Dict[str, Any] = {"test_loss": tot[0].item() / n, "test_acc": tot[1].item() / n,
                           "test_top5": tot[2].item() / n, "test_count": int(tot[3].item())}
    if num_classes:
        per_class = env.all_reduce_sum(per_class)
        out["per_class_correct"] = [int(v) for v in per_class[0].tolist()]
        out["per_class_count"] = [int(v) for v in per_class[1].tolist()]
    return out


class Trainer:
    """One training run as configured by ``args`` (:func:`swin_ext.train.build_parser`) on ``env``'s ranks."""

    def __init__(self, args: argparse.Namespace, env: DistEnv, t_start: Optional[float] = None) -> None:
        self.args, self.env, self.device = args, env, env.device
        self.t_start = time.perf_counter() if t_start is None else t_start
        # --pretrained: read once (here when it names the model, else when the run starts from it)
        self.pretrained_sd: Optional[Dict[str, torch.Tensor]] = None
        self.pretrained_meta: Dict[str, Any] = {}
        adopted = None
        if args.model is None and args.pretrained:
            self.read_pretrained()
            adopted = adopt_checkpoint_model(args, self.pretrained_meta)
        if args.model is None:
            args.model = "swin_digits"
        self.notes = [f"pretrained: {adopted}"] if adopted else []
        data_name = "digits" if args.data == "digits" else os.path.basename(os.path.normpath(args.data))
        self.out_dir = args.output_dir or os.path.join("runs", f"{data_name}-{args.model}")
        self.ckpt_path = os.path.join(self.out_dir, "last.pt")
        # progress: the position a checkpoint stores
        self.step = self.epoch = self.step_in_epoch = 0
        self.history: Dict[str, Any] = {"epochs": [], "steps": []}
        self.resumed_from: Optional[Dict[str, Any]] = None
        # this invocation's counters
        self.steps_this_run = 0
        self.samples_this_run = 0
        self.train_time = 0.0
        self.stopped_early = False
        self.last_eval_step = -1
        self.resume_path: Optional[str] = None
        self.resume_state: Optional[Dict[str, Any]] = None
        self.model_ema: Optional[nn.Module] = None  # timm's ModelEmaV3 with --model-ema
        self.mixup: Optional[Any] = None  # timm's Mixup with --mixup / --cutmix

    def log(self, *a: Any) -> None:
        if self.env.is_main:
            print(*a, flush=True)

    def read_pretrained(self) -> None:
        """Read ``--pretrained`` (once): its state dict, and a swin_ext.train checkpoint's metadata."""
        if self.pretrained_sd is None:
            self.pretrained_sd, self.pretrained_meta = read_pretrained(self.args.pretrained)

    # ----------------------------------------------------------------- phases

    def run(self) -> Dict[str, Any]:
        """The whole run; returns the final metrics (also ``metrics.json`` and the ``FINAL_METRICS`` line)."""
        args = self.args
        if args.threads:
            torch.set_num_threads(args.threads)
        on_main(self.env, lambda: check_output_dir(self.out_dir))
        if self.env.is_main:
            if not args.no_save:
                for tmp in remove_stale_temporaries(self.ckpt_path):
                    self.log(f"removed {tmp}, the temporary file of a checkpoint save that was interrupted")
        self.find_resume()
        self.setup_data()
        self.setup_model()
        self.resume()
        self.start_step = self.step
        self.log_setup()
        self.model_ddp.train()
        while self.epoch < self.epochs and self.step < self.total_steps and not self.stopped_early:
            self.train_epoch()
        if self.stopped_early:
            self.log(f"stopped after {self.steps_this_run} steps at step {self.step} (--stop-after-steps); "
                     f"resume with --resume {self.ckpt_path}")
        return self.finish()

    def run_eval_only(self) -> Dict[str, Any]:
        """``--eval-only``: evaluate ``--pretrained`` on the evaluation split of ``--data`` and print top-1,
        top-5 and each class's accuracy (and an ``EVAL_METRICS {json}`` line); returns the metrics."""
        args, env = self.args, self.env
        if args.threads:
            torch.set_num_threads(args.threads)
        self.setup_data()
        self.setup_model()
        ev = evaluate(self.model, self.test_loader, env, self.amp_dtype, self.num_classes)
        metrics = {"model": args.model, "data": args.data, "pretrained": args.pretrained, "classes": self.classes,
                   **ev, "wall_s": time.perf_counter() - self.t_start}
        for line in self.notes:
            self.log(line)
        self.log(f"eval: {args.model} from {args.pretrained} on the evaluation split of {args.data}")
        for line in eval_report(ev, self.classes):
            self.log(line)
        self.log("EVAL_METRICS " + json.dumps(metrics))
        return metrics

    def find_resume(self) -> None:
        """The checkpoint ``--resume`` names (``auto``: ``last.pt`` in the output directory if there),
        loaded and checked; ``None`` when the run starts afresh."""
        path = self.args.resume
        if path == "auto":
            # lexists: a FIFO or directory named last.pt is refused by name, not skipped or opened.
            path = self.ckpt_path if os.path.lexists(self.ckpt_path) else None
        if not path:
            return
        if not os.path.lexists(path):
            raise TrainError(f"--resume {path}: no such checkpoint")
        state = load_checkpoint(path)
        check_resumable(state, path)
        self.resume_path, self.resume_state = path, state

    def setup_data(self) -> None:
        """Data sets, samplers, loaders and the step budget (``steps_per_epoch``, ``total_steps``, warm-up)."""
        args, env = self.args, self.env
        img_size = args.img_size or PRESETS[args.model]["img_size"]
        in_chans = default_in_chans(args)
        # the evaluation transform of the model's pretrained_cfg (only the input's fields matter here)
        self.data_cfg = default_pretrained_cfg(to_2tuple(img_size, "img_size"), in_chans, 0)
        aug = Augment(aa=args.aa, reprob=args.reprob, remode=args.remode, color_jitter=args.color_jitter)
        train_set, self.test_set, self.num_classes = build_datasets(
            args.data, img_size, in_chans, args.test_fraction, args.seed, augment=not args.no_augment,
            limit=args.limit, aug=aug, pretrained_cfg=self.data_cfg,
        )
        self.classes = class_names(train_set)
        self.train_set = SeededDataset(train_set)  # read with (index, seed) keys: augmentation seeded per sample
        workers = args.workers
        if workers is None:
            workers = 0 if args.data == "digits" else min(4, os.cpu_count() or 1)
        self.sampler = ShardedSampler(len(self.train_set), env.world_size, env.rank, shuffle=True, seed=args.seed,
                                      sample_seeds=True)
        if args.batch_size > self.sampler.per_rank and not args.eval_only:
            raise TrainError(
                f"--batch-size {args.batch_size} is larger than the {self.sampler.per_rank} training "
                "samples per process"
            )
        self.loader_gen = torch.Generator()
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(
            self.train_set,
            batch_size=args.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=pin,
            generator=self.loader_gen,
            persistent_workers=False,
        )
        self.test_loader = DataLoader(
            self.test_set,
            batch_size=args.batch_size * 2,
            sampler=ShardSampler(len(self.test_set), env.world_size, env.rank),
            num_workers=workers,
            pin_memory=pin,
        )
        self.steps_per_epoch = self.sampler.per_rank // args.batch_size
        if args.max_steps is not None:
            self.total_steps = args.max_steps
            self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        else:
            self.epochs = args.epochs
            self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = (
            args.warmup_steps
            if args.warmup_steps is not None
            else int(round(args.warmup_epochs * self.steps_per_epoch))
        )

    def setup_model(self) -> None:
        """Model (identical init on every rank; DDP also broadcasts rank 0's) -- the ``--pretrained``
        weights when the run starts, frozen stages --, EMA, optimizer, schedule, AMP, Mixup, loss."""
        args, device = self.args, self.device
        self.cfg = run_config(args, self.num_classes)
        starts_from = args.pretrained if self.resume_state is None else None
        if starts_from:
            self.read_pretrained()
            windows = pretrained_windows(self.cfg, self.pretrained_sd) if args.pretrained_window_sizes is None else None
            if windows:
                self.cfg["pretrained_window_sizes"] = windows
                self.notes.append(f"pretrained: the checkpoint's windows {windows} are not this run's: "
                                  f"--pretrained-window-sizes {','.join(map(str, windows))} (its CPB coordinates "
                                  "are normalised by them, as the official fine-tuning does)")
        elif self.resume_state is not None and args.pretrained_window_sizes is None:
            saved = self.resume_state["model_config"].get("pretrained_window_sizes")
            if saved is not None and "pretrained_window_sizes" in self.cfg:
                self.cfg["pretrained_window_sizes"] = saved  # as the run that wrote it found them
        torch.manual_seed(args.seed)
        try:
            model = build_model(self.cfg, args.backend, args.grad_checkpoint)
        except (ValueError, TypeError) as e:
            raise TrainArgumentError(f"--model {args.model} with these options: {' '.join(str(e).split())}") from None
        if starts_from:
            load_into(model, self.pretrained_sd, starts_from, self.notes.append, eval_only=args.eval_only)
            self.check_classes()
            self.pretrained_sd = None  # the model holds them now
        if args.head_only or args.freeze_stages:
            n = model.num_layers if args.head_only else args.freeze_stages
            if n > model.num_layers:
                raise TrainArgumentError(f"--freeze-stages {n}: the model has {model.num_layers} stages")
            model.freeze_stages(n)
        self.model = model.to(device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.amp_dtype = amp_dtype(args.amp, device)
        if args.eval_only:
            return
        if not any(p.requires_grad for p in self.model.parameters()):
            raise TrainArgumentError("every parameter is frozen: nothing to train")
        if not args.no_save:  # a checkpoint: the model and AdamW's two moments (the old file's space is already used)
            size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            on_main(self.env, lambda: check_output_dir(self.out_dir, 3 * size + (1 << 20)))
        groups = param_groups(self.model, args.weight_decay, args.layer_decay)
        for g in groups:
            g["lr"] = args.lr * g["lr_scale"]
        self.optimizer = torch.optim.AdamW(
            groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, **adamw_kwargs(device)
        )
        min_ratio = self.min_ratio = args.min_lr / args.lr if args.lr > 0 else 0.0
        total, warmup = self.total_steps, self.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total, warmup, min_ratio)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        if args.model_ema:
            from timm.utils import ModelEmaV3

            self.model_ema = ModelEmaV3(self.model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        self.model_ddp: nn.Module = self.model
        if self.env.distributed:
            self.model_ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if args.compile:
            self.model_ddp = torch.compile(self.model_ddp)
        if (args.mixup > 0 or args.cutmix > 0) and not args.no_augment:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                               switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                               label_smoothing=args.label_smoothing, num_classes=self.num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    def check_classes(self) -> None:
        """A swin_ext.train checkpoint's class names against the data's, where the head is kept."""
        theirs = self.pretrained_meta.get("classes")
        if theirs is None or len(theirs) != self.num_classes or theirs == self.classes:
            return
        if self.args.eval_only:
            raise TrainError(f"--eval-only --pretrained {self.args.pretrained}: the checkpoint's classes "
                             f"{theirs[:8]} are not this data's {self.classes[:8]}")
        self.notes.append(f"pretrained: warning: the checkpoint's head was trained on the classes {theirs[:8]}, "
                          f"this data has {self.classes[:8]} (the head is kept, class by index)")

    def resume(self) -> None:
        """Seed the per-rank streams, then restore the checkpoint :meth:`find_resume` found."""
        args, env = self.args, self.env
        torch.manual_seed(args.seed * 1000 + env.rank)  # per-rank stream: drop path
        random.seed(args.seed * 1000 + env.rank)
        path, state = self.resume_path, self.resume_state
        if state is None:
            return
        self.resume_state = None
        saved = state.get("model_config")
        if "model" not in saved:  # written before a run's configuration named its preset
            saved = {"model": args.model, **{k: v for k, v in saved.items() if k != "arch"}}
        if saved != self.cfg:
            raise TrainError(
                f"{path}: checkpoint model config {state.get('model_config')} differs from this run's {self.cfg}"
            )
        old_bs = state["args"].get("batch_size")
        if old_bs is not None and old_bs != args.batch_size:
            raise TrainError(
                f"{path} was written with --batch-size {old_bs} (per process), this run has --batch-size "
                f"{args.batch_size}: its step count, schedule and data position would not carry over; resume with "
                f"--batch-size {old_bs}, or start a new run"
            )
        applied, refused = resume_differences(state["args"], args)
        if refused:
            raise TrainError(f"{path}: cannot resume with {'; '.join(refused)}: resume with the checkpoint's "
                             "values, or start a new run")
        if not finite_state(state["model"]) or not finite_state(state.get("model_ema") or {}):
            raise TrainError(f"{path}: its model weights are not all finite (the run that wrote it diverged)")
        mine = [g["names"] for g in param_groups(self.model, args.weight_decay, args.layer_decay)]
        theirs = [g.get("names") for g in state["optimizer"]["param_groups"]]
        if all(t is not None for t in theirs) and theirs != mine:
            raise TrainError(f"{path}: its optimizer's parameter groups hold other parameters than this run's "
                             "(written with other frozen stages, or by a swin_ext with other layer-decay groups): "
                             "start a new run")
        try:
            self.model.load_state_dict(state["model"])
            if self.model_ema is not None and state.get("model_ema") is not None:
                self.model_ema.module.load_state_dict(state["model_ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise damaged(path, [f"cannot restore the training state: {' '.join(str(e).split())}"]) from e
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        optimizer, scheduler = self.optimizer, self.scheduler
        problems = [f"optimizer state of {name}: {k} has shape {tuple(st[k].shape)}, the parameter {tuple(p.shape)}"
                    for g in optimizer.param_groups for name, p in zip(g["names"], g["params"])
                    for st in [optimizer.state.get(p, {})] for k in ("exp_avg", "exp_avg_sq")
                    if k in st and st[k].shape != p.shape]
        if state["world_size"] == env.world_size and self.step_in_epoch > self.steps_per_epoch:
            problems.append(f"its position in the epoch (batch {self.step_in_epoch}) is beyond this data's "
                            f"{self.steps_per_epoch} batches per epoch (other data than the run that wrote it?)")
        if problems:
            raise damaged(path, problems)
        # This run's hyper-parameters (the optimizer and scheduler states carry the checkpoint's): the
        # learning rate and weight decay of every group, and the schedule's base, recomputed as at the start
        # (bitwise the checkpoint's values when nothing changed).
        for g, fresh in zip(optimizer.param_groups, param_groups(self.model, args.weight_decay, args.layer_decay)):
            g["weight_decay"], g["lr_scale"] = fresh["weight_decay"], fresh["lr_scale"]
            g["initial_lr"] = args.lr * fresh["lr_scale"]
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
            g["lr"] = base * lr_factor(scheduler.last_epoch, self.total_steps, self.warmup_steps, self.min_ratio)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        for line in applied:
            self.log(f"resume: {line}")
        if self.model_ema is not None and state.get("model_ema") is None:
            self.model_ema.set(self.model)
            self.log("resume: the checkpoint has no weight average (EMA): it starts from the current weights")
        self.history = state.get("history", self.history)
        rng = state.get("rng") or []
        if len(rng) == env.world_size:
            try:
                set_rng_state(rng[env.rank], self.device)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise damaged(path, [f"rng[{env.rank}] cannot be restored: {' '.join(str(e).split())}"]) from e
        else:
            self.log(
                f"warning: checkpoint has RNG states of {len(rng)} ranks, this run has {env.world_size}; "
                "the data position and random streams are not restored exactly"
            )
            if state.get("world_size") and state["world_size"] != env.world_size:
                self.step_in_epoch = int(self.step_in_epoch * state["world_size"] / env.world_size)
        self.resumed_from = {"path": path, "step": self.step}
        self.log(f"resumed from {path} at step {self.step} (epoch {self.epoch + 1}, batch {self.step_in_epoch})")

    def log_setup(self) -> None:
        args, env = self.args, self.env
        for line in self.notes:
            self.log(line)
        self.log(f"swin_ext.train: {args.model} {json.dumps(self.cfg)}")
        self.log(
            f"  {self.n_params:,} parameters, backend={args.backend}, device={self.device}, "
            f"world_size={env.world_size}, amp={self.amp_dtype and str(self.amp_dtype).replace('torch.', '')}, "
            f"grad_checkpoint={args.grad_checkpoint}, threads/process={torch.get_num_threads()}"
        )
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if trainable < self.n_params:
            self.log(f"  frozen: the patch embedding and {self.model.frozen_stages} of {self.model.num_layers} "
                     f"stages; {trainable:,} parameters train")
        aug = "none (--no-augment)" if args.no_augment else ", ".join(
            f"{k} {v}" for k, v in (("aa", args.aa), ("reprob", args.reprob), ("mixup", args.mixup),
                                    ("cutmix", args.cutmix)) if v) or "default"
        self.log(f"  augmentation: {aug}; label smoothing {args.label_smoothing}; layer decay {args.layer_decay}"
                 f"{'; EMA ' + str(args.model_ema_decay) if args.model_ema else ''}"
                 f"{'; torch.compile' if args.compile else ''}")
        self.log(
            f"  data={args.data}: {len(self.train_set)} train / {len(self.test_set)} test, {self.num_classes} "
            f"classes; batch {args.batch_size}x{env.world_size}, {self.steps_per_epoch} steps/epoch, "
            f"{self.total_steps} steps, warm-up {self.warmup_steps}, output {self.out_dir}"
        )

    def train_epoch(self) -> None:
        """The rest of the current epoch (or up to the step budget / ``--stop-after-steps``); at its end,
        evaluate (every ``--eval-every`` epochs and at the last) and checkpoint."""
        from tqdm.auto import tqdm

        args, env = self.args, self.env
        show = env.is_main and not args.no_progress
        record_every = max(1, self.steps_per_epoch // 100)  # step losses kept for the plot (<= ~100 per epoch)
        self.sampler.set_epoch(self.epoch, self.step_in_epoch * args.batch_size)
        self.loader_gen.manual_seed(args.seed * 100_003 + self.epoch)
        n_batches = min(self.steps_per_epoch - self.step_in_epoch, self.total_steps - self.step)
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            disable=not show,
            dynamic_ncols=True,
            leave=True,
            file=sys.stdout,
            mininterval=0.1 if sys.stdout.isatty() else 2.0,
        )
        loss_sum = torch.zeros((), dtype=torch.float64)
        n_loss = 0
        t_epoch = time.perf_counter()
        pause = 0.0  # time spent saving mid-epoch, excluded from img/s
        seen = 0
        for i, (x, y) in enumerate(self.train_loader):
            if i >= n_batches:
                break
            lv = self.train_step(x, y)
            loss_sum += lv
            n_loss += 1
            seen += x.shape[0] * env.world_size
            if env.is_main and self.step % record_every == 0:
                self.history["steps"].append((self.step, lv))
            elapsed = time.perf_counter() - t_epoch - pause
            if show:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{lv:.4f}",
                    lr=f"{self.optimizer.param_groups[-1]['lr']:.2e}",
                    img_s=f"{seen / max(elapsed, 1e-9):.0f}",
                    refresh=False,
                )
            if args.save_every and self.step % args.save_every == 0 and self.step < self.total_steps:
                t_save = time.perf_counter()
                self.save()
                pause += time.perf_counter() - t_save
            if (
                args.stop_after_steps is not None
                and self.steps_this_run >= args.stop_after_steps
                and self.step < self.total_steps
            ):
                self.stopped_early = True
                break
        bar.close()
        epoch_time = time.perf_counter() - t_epoch - pause
        self.train_time += epoch_time
        self.samples_this_run += seen
        mean_loss = env.all_reduce_sum(torch.tensor([loss_sum.item(), float(n_loss)], dtype=torch.float64))
        train_loss = (mean_loss[0] / mean_loss[1].clamp_min(1)).item()
        if self.step_in_epoch >= self.steps_per_epoch:
            is_last = self.epoch + 1 >= self.epochs or self.step >= self.total_steps
            if (self.epoch + 1) % max(1, args.eval_every) == 0 or is_last:
                ev = self.evaluate()
                rec = {
                    "epoch": self.epoch + 1,
                    "step": self.step,
                    "train_loss": train_loss,
                    "lr": self.optimizer.param_groups[-1]["lr"],
                    "img_s": seen / max(epoch_time, 1e-9),
                    **ev,
                }
                self.history["epochs"].append(rec)
                self.log(
                    f"epoch {self.epoch + 1}/{self.epochs}  step {self.step}  train_loss {train_loss:.4f}  "
                    f"test_loss {ev['test_loss']:.4f}  test_acc {100 * ev['test_acc']:.2f}%  "
                    + (f"ema_test_acc {100 * ev['ema_test_acc']:.2f}%  " if "ema_test_acc" in ev else "")
                    + f"{rec['img_s']:.0f} img/s"
                )
            self.save()
            self.epoch += 1
            self.step_in_epoch = 0
        elif self.stopped_early or self.step >= self.total_steps:
            self.save()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on a batch; returns its loss.  A non-finite loss on any rank stops every
        rank at the same step, before anything is saved."""
        args, env, device = self.args, self.env, self.device
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if self.mixup is not None:  # seeded by the batch's place in the run, not by a process stream
            with seeded_rng(sample_seed(args.seed, self.epoch, self.step_in_epoch, env.rank, 1)):
                x, y = self.mixup(x, y)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model_ddp(x)
        loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if args.clip_grad and args.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.step)
        self.step_in_epoch += 1
        self.steps_this_run += 1
        lv = loss.detach().item()
        diverged = not math.isfinite(lv)
        if env.distributed:
            diverged = env.all_reduce_sum(torch.tensor([float(diverged)], dtype=torch.float64)).item() > 0
        if diverged:
            raise TrainError(
                f"the training loss is {lv} at step {self.step} (epoch {self.epoch + 1}): training diverged; stopped "
                f"without saving, {kept_message(self.ckpt_path)} (try a lower --lr or --clip-grad)"
            )
        return lv

    def evaluate(self) -> Dict[str, Any]:
        """The test metrics of the model, and of its weight average (``ema_test_*``) with ``--model-ema``."""
        self.last_eval_step = self.step
        ev = evaluate(self.model, self.test_loader, self.env, self.amp_dtype)
        if self.model_ema is not None:
            ema = evaluate(self.model_ema.module, self.test_loader, self.env, self.amp_dtype)
            ev.update({"ema_" + k: v for k, v in ema.items() if k != "test_count"})
        return ev

    # ----------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> Dict[str, Any]:
        """What ``last.pt`` holds; a collective (every rank's RNG state is gathered)."""
        rng = self.env.all_gather_object(rng_state(self.device))
        done = self.step_in_epoch >= self.steps_per_epoch
        ep, sie = (self.epoch + 1, 0) if done else (self.epoch, self.step_in_epoch)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "model_config": self.cfg,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "epoch": ep,
            "step_in_epoch": sie,
            "rng": rng,
            "world_size": self.env.world_size,
            "history": self.history,
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.args).items()},
            "classes": list(self.classes),
            "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.data_cfg.items()
                            if k in DATA_CONFIG_KEYS},
            **({"model_ema": self.model_ema.module.state_dict()} if self.model_ema is not None else {}),
        }

    def save(self) -> None:
        """Checkpoint (rank 0 writes, every rank waits).  Never writes non-finite weights over the last
        good checkpoint: every rank holds the same weights, so every rank decides alike."""
        if self.args.no_save:
            return
        if not weights_finite(self.model):
            raise TrainError(
                f"the model weights are not finite at step {self.step}: training diverged; not saving, "
                f"{kept_message(self.ckpt_path)} (try a lower --lr)"
            )
        st = self.checkpoint_state()
        if self.env.is_main:
            save_checkpoint(st, self.ckpt_path)
        self.env.barrier()

    # ----------------------------------------------------------------- end

    def finish(self) -> Dict[str, Any]:
        """Final evaluation (unless the last epoch end just did it), the replicas' check, metrics, the curves."""
        args, env = self.args, self.env
        if self.last_eval_step != self.step:
            ev = self.evaluate()
        else:
            ev = {k: v for k, v in self.history["epochs"][-1].items() if k.startswith(("test_", "ema_test_"))}
        hashes = env.all_gather_object(state_dict_sha256(self.model))
        if len(set(hashes)) != 1:
            self.log(f"error: model weights differ across ranks: {hashes}")
        wall = time.perf_counter() - self.t_start
        epochs = self.history["epochs"]
        train_losses = [e["train_loss"] for e in epochs]
        metrics = {
            "model": args.model,
            "data": args.data,
            "test_acc": ev["test_acc"],
            "test_loss": ev["test_loss"],
            "test_count": ev["test_count"],
            "test_top5": ev.get("test_top5"),
            **({"ema_test_acc": ev["ema_test_acc"], "ema_test_loss": ev["ema_test_loss"]}
               if "ema_test_acc" in ev else {}),
            "best_test_acc": max([e["test_acc"] for e in epochs] + [ev["test_acc"]]),
            "train_loss": train_losses[-1] if train_losses else None,
            "step": self.step,
            "start_step": self.start_step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "stopped_early": self.stopped_early,
            "world_size": env.world_size,
            "device": str(self.device),
            "backend": args.backend,
            "params": self.n_params,
            "train_img_s": self.samples_this_run / max(self.train_time, 1e-9),
            "train_time_s": self.train_time,
            "wall_s": wall,
            "replica_sha256": hashes,
            "resumed_from": self.resumed_from,
            "output_dir": self.out_dir,
        }
        if env.is_main:
            with open(os.path.join(self.out_dir, "metrics.json"), "w") as f:
                json.dump({**metrics, "history": epochs}, f, indent=1)
            if not args.no_plot:
                png = plot_curves(
                    self.history,
                    os.path.join(self.out_dir, "curves.png"),
                    f"{args.model} on {args.data} ({self.n_params / 1e6:.2f}M params, {args.backend})",
                )
                if png:
                    metrics["plot"] = png
            print(
                f"final: test_acc {100 * ev['test_acc']:.2f}%  test_loss {ev['test_loss']:.4f}  "
                f"step {self.step}/{self.total_steps}  {metrics['train_img_s']:.0f} img/s  wall {wall:.1f}s  "
                f"({env.world_size} process{'es' if env.world_size > 1 else ''}, {self.device})",
                flush=True,
            )
            print("FINAL_METRICS " + json.dumps(metrics), flush=True)
        env.barrier()
        return metrics

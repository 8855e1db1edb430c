"""The training loop: a :class:`Trainer` whose methods are the phases of a run, in order.

``Trainer(args, env).run()``: :meth:`~Trainer.setup_data`,
:meth:`~Trainer.setup_model`, :meth:`~Trainer.resume`, then
:meth:`~Trainer.train_epoch` until the step budget is spent (evaluating and
checkpointing at epoch ends), and :meth:`~Trainer.finish` (final
evaluation, metrics, the curves).  Every rank runs the same code; rank 0
alone prints and writes files, and every collective is called by every rank
at the same point.
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

from .checkpointing import (
    CHECKPOINT_FORMAT,
    check_output_dir,
    check_resumable,
    damaged,
    finite_state,
    kept_message,
    load_checkpoint,
    remove_stale_temporaries,
    resume_differences,
    rng_state,
    save_checkpoint,
    set_rng_state,
    state_dict_sha256,
    weights_finite,
)
from .data import build_datasets
from .distributed import DistEnv, ShardedSampler, ShardSampler, on_main
from .errors import TrainArgumentError, TrainError
from .optim import lr_factor, param_groups
from .plot import plot_curves
from .presets import PRESETS, build_model, default_in_chans, run_config

__all__ = ["Trainer", "evaluate", "amp_dtype"]


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp``: ``auto`` is bf16 on a GPU that supports it, else none."""
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, env: DistEnv, amp: Optional[torch.dtype]) -> Dict[str, float]:
    """Test loss, accuracy and sample count over ``loader``, summed across ranks."""
    was_training = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    for x, y in loader:
        x = x.to(env.device, non_blocking=True)
        y = y.to(env.device, non_blocking=True)
        with torch.autocast(env.device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        tot[0] += F.cross_entropy(logits.float(), y, reduction="sum").item()
        tot[1] += (logits.argmax(-1) == y).sum().item()
        tot[2] += y.numel()
    tot = env.all_reduce_sum(tot)
    model.train(was_training)
    n = max(tot[2].item(), 1.0)
    return {"test_loss": tot[0].item() / n, "test_acc": tot[1].item() / n, "test_count": int(tot[2].item())}


class Trainer:
    """One training run as configured by ``args`` (:func:`swin_ext.train.build_parser`) on ``env``'s ranks."""

    def __init__(self, args: argparse.Namespace, env: DistEnv, t_start: Optional[float] = None) -> None:
        self.args, self.env, self.device = args, env, env.device
        self.t_start = time.perf_counter() if t_start is None else t_start
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

    def log(self, *a: Any) -> None:
        if self.env.is_main:
            print(*a, flush=True)

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

    def setup_data(self) -> None:
        """Data sets, samplers, loaders and the step budget (``steps_per_epoch``, ``total_steps``, warm-up)."""
        args, env = self.args, self.env
        img_size = args.img_size or PRESETS[args.model]["img_size"]
        self.train_set, self.test_set, self.num_classes = build_datasets(
            args.data, img_size, default_in_chans(args), args.test_fraction, args.seed, augment=not args.no_augment,
            limit=args.limit,
        )
        workers = args.workers
        if workers is None:
            workers = 0 if args.data == "digits" else min(4, os.cpu_count() or 1)
        self.sampler = ShardedSampler(len(self.train_set), env.world_size, env.rank, shuffle=True, seed=args.seed)
        if args.batch_size > self.sampler.per_rank:
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
        """Model (identical init on every rank; DDP also broadcasts rank 0's), optimizer, schedule, AMP, loss."""
        args, device = self.args, self.device
        self.cfg = run_config(args, self.num_classes)
        torch.manual_seed(args.seed)
        try:
            model = build_model(self.cfg, args.backend, args.grad_checkpoint)
        except (ValueError, TypeError) as e:
            raise TrainArgumentError(f"--model {args.model} with these options: {' '.join(str(e).split())}") from None
        self.model = model.to(device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        if not args.no_save:  # a checkpoint: the model and AdamW's two moments (the old file's space is already used)
            size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            on_main(self.env, lambda: check_output_dir(self.out_dir, 3 * size + (1 << 20)))
        groups = param_groups(self.model, args.weight_decay, args.layer_decay)
        for g in groups:
            g["lr"] = args.lr * g["lr_scale"]
        self.optimizer = torch.optim.AdamW(
            groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if device.type == "cuda" else {})
        )
        min_ratio = self.min_ratio = args.min_lr / args.lr if args.lr > 0 else 0.0
        total, warmup = self.total_steps, self.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total, warmup, min_ratio)
        )
        self.amp_dtype = amp_dtype(args.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.model_ddp: nn.Module = self.model
        if self.env.distributed:
            self.model_ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    def resume(self) -> None:
        """Seed the per-rank streams, then restore ``--resume``'s checkpoint (``auto``: ``last.pt`` if there)."""
        args, env = self.args, self.env
        torch.manual_seed(args.seed * 1000 + env.rank)  # per-rank stream: augmentation, drop path
        random.seed(args.seed * 1000 + env.rank)
        path = args.resume
        if path == "auto":
            # lexists: a FIFO or directory named last.pt is refused by name, not skipped or opened.
            path = self.ckpt_path if os.path.lexists(self.ckpt_path) else None
        if not path:
            return
        if not os.path.lexists(path):
            raise TrainError(f"--resume {path}: no such checkpoint")
        state = load_checkpoint(path)
        check_resumable(state, path)
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
        if not finite_state(state["model"]):
            raise TrainError(f"{path}: its model weights are not all finite (the run that wrote it diverged)")
        try:
            self.model.load_state_dict(state["model"])
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
        self.log(f"swin_ext.train: {args.model} {json.dumps(self.cfg)}")
        self.log(
            f"  {self.n_params:,} parameters, backend={args.backend}, device={self.device}, "
            f"world_size={env.world_size}, amp={self.amp_dtype and str(self.amp_dtype).replace('torch.', '')}, "
            f"grad_checkpoint={args.grad_checkpoint}, threads/process={torch.get_num_threads()}"
        )
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
                    f"{rec['img_s']:.0f} img/s"
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

    def evaluate(self) -> Dict[str, float]:
        self.last_eval_step = self.step
        return evaluate(self.model, self.test_loader, self.env, self.amp_dtype)

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
            ev = {k: self.history["epochs"][-1][k] for k in ("test_loss", "test_acc", "test_count")}
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

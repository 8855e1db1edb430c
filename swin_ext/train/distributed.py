"""The process group of a run under ``torchrun`` (or a single process), and its data samplers.

Every rank takes the same number of steps (:class:`ShardedSampler` pads by
wrapping, as ``DistributedSampler`` does) and can resume mid-epoch, so a
resumed run sees the data in the order an uninterrupted one would.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, List

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .data import sample_seed
from .errors import TrainArgumentError, TrainError

__all__ = ["DistEnv", "ShardedSampler", "ShardSampler", "on_main"]


class DistEnv:
    """Rank / world size / device from the torchrun environment (or a single process)."""

    def __init__(self, device_arg: str = "auto") -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_arg == "auto":
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device_arg)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise TrainArgumentError("--device cuda but no GPU is available")
            dev = torch.device("cuda", self.local_rank if dev.index is None else dev.index)
            torch.cuda.set_device(dev)
        self.device = dev
        self.distributed = self.world_size > 1
        self._owns_group = False
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            self._owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            # gloo and nccl both reduce float64 on their device
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def all_gather_object(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


class ShardedSampler(Sampler):
    """Deterministic per-epoch shuffle, sharded over ranks, resumable mid-epoch.

    Every rank gets ``ceil(n / world)`` indices (the permutation is padded by
    wrapping, as ``DistributedSampler`` does), so all ranks take the same
    number of steps.  ``set_epoch(epoch, skip)`` drops the first ``skip``
    indices of this rank's share: the samples a resumed run already consumed.

    ``sample_seeds=True`` yields ``(index, seed)`` keys for a
    :class:`~swin_ext.train.data.SeededDataset`: the seed of the sample at
    position ``p`` of the epoch's (padded) order is ``sample_seed(seed, epoch,
    p)``, the same on every rank, in every worker and after a resume.
    """

    def __init__(self, n: int, world_size: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 sample_seeds: bool = False) -> None:
        if n < 1:
            raise TrainError("empty data set")
        self.n, self.world_size, self.rank, self.shuffle, self.seed = n, world_size, rank, shuffle, seed
        self.sample_seeds = sample_seeds
        self.per_rank = math.ceil(n / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[Any]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world_size
        perm = (perm * math.ceil(total / self.n))[:total]
        positions = range(self.rank, total, self.world_size)[self.skip :]
        if not self.sample_seeds:
            return iter([perm[p] for p in positions])
        return iter([(perm[p], sample_seed(self.seed, self.epoch, p)) for p in positions])

    def __len__(self) -> int:
        return self.per_rank - self.skip


class ShardSampler(Sampler[int]):
    """Evaluation: rank r takes indices r, r + world, ... (no padding, no duplicates)."""

    def __init__(self, n: int, world_size: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def on_main(env: DistEnv, check: Callable[[], None]) -> None:
    """Run ``check`` on rank 0 and raise its :class:`TrainError` on every rank (no rank left waiting)."""
    problem = None
    if env.is_main:
        try:
            check()
        except TrainError as e:
            problem = (type(e).__name__, str(e))
    problem = env.broadcast_object(problem)
    if problem:
        raise (TrainArgumentError if problem[0] == "TrainArgumentError" else TrainError)(problem[1])

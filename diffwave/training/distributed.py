"""torch.distributed plumbing: torchrun's environment -> rank, world size and device; a resumable sampler.

Without torchrun (no RANK/WORLD_SIZE in the environment) everything runs as one process, rank 0.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from diffwave.errors import ConfigError

logger = logging.getLogger("diffwave.distributed")


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(requested: str | None, local_rank: int) -> torch.device:
    if requested is not None:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device '{requested}' was asked for, but CUDA is not available here")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(device: str | None = None, timeout_s: float = 1800) -> DistributedContext:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU), or run alone.

    The timeout bounds how long a rank waits for the others, so a crashed peer ends the run instead of
    hanging it.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext(0, 1, 0, _pick_device(device, 0))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    chosen = _pick_device(device, local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, chosen)
    return DistributedContext(rank, world_size, local_rank, chosen)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a small tensor over ranks (identity when running alone)."""
    if context.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch, disjoint shards, equal counts per rank) that can start
    mid-epoch, so a resumed run sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, dataset: Dataset, context: DistributedContext, seed: int) -> None:
        super().__init__(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Epoch to shuffle for, and how many of this rank's samples of it are already done."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start

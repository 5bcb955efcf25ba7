"""`diffwave train` as a function: process group, run folder, trainer, teardown."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.distributed as dist

from diffwave.checkpoints import latest_checkpoint
from diffwave.config import Config
from diffwave.training.distributed import init_distributed, teardown_distributed
from diffwave.training.heap import keep_freed_memory
from diffwave.training.objectives import DiffusionObjective
from diffwave.training.setup import prepare_run_dir
from diffwave.training.trainer import Trainer, TrainResult

logger = logging.getLogger("diffwave.train")


def train(config: Config, data_dir: str | Path, run_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, device: str | None = None, init_from: str | Path | None = None,
          objective: DiffusionObjective | None = None) -> TrainResult | None:
    """Train (or resume) a run; returns the result on rank 0 and None on the other ranks. A new run starts from
    the weights of `init_from` when given; `objective` chooses another objective on the same loop
    (distillation)."""
    keep_freed_memory()
    context = init_distributed(device, timeout_s=config.train.dist_timeout_s)
    try:
        run_dir = Path(run_dir)
        # Rank 0 prepares the folder (and may clear it for --overwrite); the others wait, then read it.
        checkpoint = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite) if context.is_main else None
        if context.distributed:
            dist.barrier()
            if not context.is_main:
                checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None and context.is_main:
            logger.info("resuming from %s", checkpoint)
            if init_from is not None:
                logger.info("a resumed run continues from its checkpoint; --init-from applies to new runs only")
        trainer = Trainer.from_config(config, data_dir, run_dir, context, resume_from=checkpoint,
                                      init_from=None if checkpoint is not None else init_from, objective=objective)
        result = trainer.fit()
        return result if context.is_main else None
    finally:
        teardown_distributed()

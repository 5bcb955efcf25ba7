"""The training loop: steps of an objective (training.objectives) with AMP, DDP, EMA, a non-finite guard, the
cadence of logs, validation (training.validation) and checkpoints, and preemption. Its config is final before it
is built (training.setup.prepare).

Exact resume is by construction rather than by saving every RNG: the crop of item i in epoch e is a
function of (seed, epoch, i) (see data.dataset), the sampler is a function of (seed, epoch) and can start
mid-epoch, and the diffusion step and noise of each example come from a generator seeded with
(seed, step, utterance id). A checkpoint therefore only needs the weights, EMA, optimizer, scheduler, scaler and
the position (step, epoch, batch in epoch) to continue bit-identically. The same keying makes a run on
N processes see the same global batches, steps and noise as a run on one.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from torch.utils.data import DataLoader

from diffwave.audio.prior import prior_from_config
from diffwave.checkpoints import FORMAT_VERSION, capture_rng_state, restore_rng_state, save_checkpoint
from diffwave.config import Config, config_to_dict, trained_steps
from diffwave.data.dataset import crops_for_training
from diffwave.diffusion import NoiseSchedule
from diffwave.errors import DataError, TrainingError
from diffwave.model import DiffWave
from diffwave.precision import DTYPES, autocast, training_precision
from diffwave.training.distributed import DistributedContext, ResumableSampler, all_reduce_sum
from diffwave.training.ema import ExponentialAverage
from diffwave.training.monitor import Monitor, loss_by_step_buckets
from diffwave.training.objectives import DiffusionObjective
from diffwave.training.preemption import StopRequest, ignore_stop_signals, stop_on_signals
from diffwave.training.setup import LOG_DIR, RunStart, prepare
from diffwave.training.validation import Validation, batch_noise_prior

logger = logging.getLogger("diffwave.train")


class NoiseEstimator(nn.Module):
    """(x_t, t, mel) -> eps_hat in one forward, so DDP sees the conditioner inside its forward pass."""

    def __init__(self, model: DiffWave) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor, mel: Tensor | None) -> Tensor:
        return self.model(x_t, t, mel=mel)


def example_seed(seed: int, step: int, item_id: str) -> int:
    """A well-mixed 63-bit seed for one example of one step (numpy's SeedSequence does the mixing).

    Keyed by the utterance id rather than the rank, so a run on N processes draws the same steps and
    noise for the same global batch as a run on one.
    """
    words = [seed, step, zlib.crc32(item_id.encode())]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # rank-mean training loss of each step of this process
    skipped_steps: int = 0
    stopped_by: str | None = None  # the signal that ended the run early (SIGTERM, SIGINT), if one did


class Trainer:
    """One training run on a feature folder, writing checkpoints and logs to `run_dir`: `start` holds the final
    config and the starting state (training.setup.prepare, or `Trainer.from_config` in one call), `objective`
    what each step optimises (default: the diffusion loss)."""

    def __init__(self, start: RunStart, data_dir: Path | str, run_dir: Path | str, context: DistributedContext,
                 *, objective: DiffusionObjective | None = None) -> None:
        self.config = config = start.config
        self.context, self.run_dir, self.device = context, Path(run_dir), context.device
        self.objective = objective or DiffusionObjective()
        train = config.train
        if train.batch_size % context.world_size:
            raise TrainingError(f"train.batch_size {train.batch_size} (the global batch) must be divisible by the "
                                f"{context.world_size} processes")
        self.precision = training_precision(train.precision, self.device)
        self.schedule = NoiseSchedule.from_config(config.diffusion)
        # Steps 0 .. steps_drawn - 1 are trained (train.max_step); validation measures the same range.
        self.steps_drawn = trained_steps(config)
        torch.manual_seed(train.seed)  # the initial weights; all later randomness has its own seeds
        self.model = DiffWave.from_config(config).to(self.device)
        weights = start.weights if start.weights is not None else self.objective.start_weights
        if start.resumed is None and weights is not None:  # set before their averages are taken
            self.model.load_state_dict(weights)
        self.objective.attach(self.model, config, self.schedule)
        self.ema = ExponentialAverage(self.model, train.ema_decay, warmup=True)
        self.estimator: nn.Module = NoiseEstimator(self.model)
        if context.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.estimator = DistributedDataParallel(self.estimator, device_ids=device_ids)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train.learning_rate)
        warmup = train.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        # GradScaler only for fp16: bf16 has fp32's exponent range and must not be scaled (MMAudio#49).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = self.epoch = self.batch_in_epoch = self.non_finite_streak = self.non_finite_total = 0
        self.generator = torch.Generator(self.device)
        self.stop_request, self.stopping = StopRequest(), False  # fit() connects the request to SIGTERM/SIGINT

        self.dataset = crops_for_training(data_dir, config, "train", seed=train.seed)
        self.prior = prior_from_config(config)  # None: the standard N(0, I)
        self.sampler = ResumableSampler(self.dataset, context, seed=train.seed)
        self.local_batch = train.batch_size // context.world_size
        if len(self.sampler) < self.local_batch:
            raise DataError(f"{data_dir}: the training split has {len(self.dataset)} utterances, fewer than one "
                            f"global batch of {train.batch_size}; lower train.batch_size or add data")
        self.validation = Validation(data_dir, config, self.steps_drawn, self.device) if context.is_main else None
        if start.resumed is not None:
            self._restore(start.resumed, start.resumed_from)

    @classmethod
    def from_config(cls, config: Config, data_dir: Path | str, run_dir: Path | str, context: DistributedContext,
                    *, resume_from: Path | None = None, init_from: Path | str | None = None,
                    objective: DiffusionObjective | None = None) -> Trainer:
        """`config` made final by training.setup.prepare (resumed from `resume_from`, or fresh from the weights of
        `init_from`), then the Trainer."""
        start = prepare(config, data_dir, resume_from=resume_from, init_from=init_from, objective=objective,
                        device=context.device, is_main=context.is_main)
        return cls(start, data_dir, run_dir, context, objective=objective)

    # --- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": config_to_dict(self.config),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "non_finite_total": self.non_finite_total,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
        } | self.objective.state()

    def _set_learning_rate(self, learning_rate: float) -> None:
        """The restored scheduler carries the saved run's base rate; a resume that asks for another takes it."""
        self.scheduler.base_lrs = [learning_rate] * len(self.optimizer.param_groups)
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = learning_rate
            group["lr"] = learning_rate * factor(self.scheduler.last_epoch)

    def _restore(self, state: dict[str, Any], path: Path | None) -> None:
        """Continue from a checkpoint's state (its config already checked against this run's by `prepare`)."""
        self.model.load_state_dict(state["model"])
        self.ema.restore(state["ema"], state["ema_updates"])
        self.objective.load_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._set_learning_rate(self.config.train.learning_rate)
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.non_finite_total = state["non_finite_total"]
        if self.context.is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch,
                        self.batch_in_epoch)

    @record_function("train/save")
    def save(self) -> Path | None:
        if not self.context.is_main:
            return None
        return save_checkpoint(self.run_dir, self.step, self.state(), self.config.train.keep_last)

    # --- one step ------------------------------------------------------------------------------------
    def _draws(self, ids: list[str], shape: torch.Size) -> tuple[Tensor, Tensor]:
        """Diffusion step and standard noise of each example, from its own seed (see `example_seed`); the
        prior's scale is applied by the objective, so the draws are the same for either prior."""
        steps, noises = [], []
        for item_id in ids:
            self.generator.manual_seed(example_seed(self.config.train.seed, self.step, item_id))
            steps.append(torch.randint(0, self.steps_drawn, (1,), generator=self.generator, device=self.device))
            noises.append(torch.randn(shape, generator=self.generator, device=self.device))
        return torch.cat(steps), torch.stack(noises)

    def _autocast(self) -> torch.autocast:
        return autocast(self.device, DTYPES[self.precision])

    def _train_step(self, batch: dict[str, Any]) -> tuple[float, float, Tensor, Tensor] | None:
        """One optimizer step; returns (loss, grad norm, steps t, per-example losses) or None if skipped."""
        # The record_function labels name the phases in a profile (benchmarks/train_speed.py --profile).
        with record_function("train/draws"):
            audio = batch["audio"].to(self.device, non_blocking=True)
            mel = batch["mel"].to(self.device, non_blocking=True) if "mel" in batch else None
            t, noise = self._draws(batch["id"], audio.shape[1:])
            std = batch_noise_prior(self.prior, batch, mel, self.device)
        with record_function("train/forward"):
            losses = self.objective.losses(self.estimator, audio, mel, t, noise, std, self._autocast)
        loss = losses.mean()
        with record_function("train/backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with record_function("train/optimizer"):
            self.scaler.unscale_(self.optimizer)
            max_norm = self.config.train.grad_clip_norm or math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            # One collective per step: the rank-mean loss for logging, and agreement on whether to step and
            # whether to stop after this step (a signal may reach one rank only).
            non_finite = (~torch.isfinite(loss.detach()) | ~torch.isfinite(grad_norm)).float()
            stop = torch.tensor(float(self.stop_request.requested), device=loss.device)
            summary = all_reduce_sum(torch.stack([loss.detach(), non_finite, stop]), self.context)
            mean_loss, any_non_finite = (summary[0] / self.context.world_size).item(), summary[1].item() > 0
            self.stopping = summary[2].item() > 0
            if any_non_finite:
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.update()  # fp16: halves the scale after an overflow; a no-op otherwise
                return None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        with record_function("train/ema"):
            self.ema.update(self.model)
            self.objective.after_step(self.model)
        return mean_loss, grad_norm.item(), t.detach(), losses.detach()

    # --- validation (training.validation) ------------------------------------------------------------
    def validation_loss(self) -> float | None:
        """The objective's loss of the EMA model on fixed crops, steps and noise (rank 0 only)."""
        if self.validation is None:
            return None
        return self.validation.loss(self.objective, self.ema.module, self.prior, self._autocast)

    def vocode_samples(self, monitor: Monitor) -> float | None:
        """Vocode a few validation crops with the EMA model and the objective's plan; log audio and mels."""
        if self.validation is None:
            return None
        return self.validation.samples(self.ema.module, self.objective.sample_plan(), self.prior, monitor,
                                       self.step)

    # --- the loop ------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        self.dataset.set_epoch(self.epoch)
        self.sampler.set_position(self.epoch, self.batch_in_epoch * self.local_batch)
        workers = self.config.data.num_workers
        return DataLoader(self.dataset, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, worker_init_fn=ignore_stop_signals if workers else None)

    def fit(self, on_step: Callable[[Trainer], None] | None = None) -> TrainResult:
        """Train until train.max_steps, or until SIGTERM/SIGINT (then the step ends, a checkpoint is written and
        fit returns with `stopped_by` set); `on_step` runs after every step (tests use it to inject faults)."""
        with stop_on_signals() as self.stop_request:
            return self._fit(on_step)

    def _fit(self, on_step: Callable[[Trainer], None] | None) -> TrainResult:
        train = self.config.train
        result = TrainResult(self.step)
        if self.context.is_main:
            logger.info("training %s (%s parameters) on %s in %s, %d process(es), global batch %d, from step %d",
                        self.config.name, f"{sum(p.numel() for p in self.model.parameters()):,}", self.device,
                        self.precision, self.context.world_size, train.batch_size, self.step)
        interval: dict[str, list] = {"loss": [], "grad_norm": [], "t": [], "losses": []}
        interval_start = time.perf_counter()
        with Monitor(self.run_dir / LOG_DIR, enabled=self.context.is_main, start_step=self.step,
                     total_steps=train.max_steps, log_every=train.log_every) as monitor:
            while self.step < train.max_steps:
                for batch in self._loader():
                    outcome = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    if outcome is None:
                        self._count_non_finite(monitor)
                        result.skipped_steps += 1
                    else:
                        self.non_finite_streak = 0
                        loss, grad_norm, t, losses = outcome
                        result.losses.append(loss)
                        for key, value in zip(interval, (loss, grad_norm, t, losses), strict=True):
                            interval[key].append(value)
                        monitor.step_done(self.step, loss)
                    if on_step is not None:
                        on_step(self)
                    if self.step % train.log_every == 0 and interval["loss"]:
                        elapsed = time.perf_counter() - interval_start
                        self._log_interval(monitor, interval, elapsed)
                        interval = {key: [] for key in interval}
                        interval_start = time.perf_counter()
                    if self.stopping:  # before validation: a preempted job has seconds, not minutes
                        result.stopped_by = self._stop_here()
                        break
                    if self.context.is_main:
                        self._validate(monitor)
                    # No checkpoint during a run of skipped steps: the last good one is kept as it is.
                    due = self.step % train.save_every == 0 or self.step == train.max_steps
                    if due and self.non_finite_streak == 0:
                        self.save()
                    if self.step >= train.max_steps:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                if result.stopped_by:
                    break
        result.step = self.step
        return result

    def _stop_here(self) -> str:
        """Save the state after this step (skipped steps leave the weights finite) and say so once."""
        signal_name = self.stop_request.signal_name or "a stop signal sent to another rank"
        path = self.save()
        if self.context.is_main:
            logger.warning("stopped by %s after step %d; checkpoint %s written; continue with --resume", signal_name,
                           self.step, path)
        return signal_name

    def _count_non_finite(self, monitor: Monitor) -> None:
        self.non_finite_streak += 1
        self.non_finite_total += 1
        message = f"non-finite loss or gradients at step {self.step}: step skipped ({self.non_finite_streak} in a row)"
        logger.warning(message)
        monitor.text(self.step, "train/events", message)
        monitor.scalars(self.step, {"train/non_finite_steps": float(self.non_finite_total)})
        if self.non_finite_streak >= self.config.train.max_non_finite_steps:
            raise TrainingError(f"non-finite loss at step {self.step}: {self.non_finite_streak} steps in a row were "
                                "skipped, so training stops; the last good checkpoint is kept. Lower "
                                "train.learning_rate, set train.grad_clip_norm, or use train.precision=fp32")

    @record_function("train/log")
    def _log_interval(self, monitor: Monitor, interval: dict[str, list], elapsed: float) -> None:
        values = {
            "train/loss": float(np.mean(interval["loss"])),
            "train/grad_norm": float(np.mean(interval["grad_norm"])),
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/steps_per_sec": len(interval["loss"]) / max(elapsed, 1e-9),
        }
        values |= loss_by_step_buckets(torch.cat(interval["t"]).cpu(), torch.cat(interval["losses"]).cpu(),
                                       self.schedule.num_steps)
        monitor.scalars(self.step, values)

    @record_function("train/validate")
    def _validate(self, monitor: Monitor) -> None:
        train = self.config.train
        if self.step % train.valid_every == 0:
            loss = self.validation_loss()
            if loss is not None:
                monitor.scalars(self.step, {"valid/loss": loss})
        # A model trained on the low-noise steps only (train.max_step) cannot start from pure noise: no samples.
        if self.step % train.sample_every == 0 and self.steps_drawn == self.schedule.num_steps:
            mel_l1 = self.vocode_samples(monitor)
            if mel_l1 is not None:
                monitor.scalars(self.step, {"valid/mel_l1": mel_l1})

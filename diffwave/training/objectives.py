"""What a training step optimises, as an object the Trainer holds: the diffusion (epsilon) loss of `diffwave train`,
or the consistency distillation of `diffwave distill` with its teacher and target network.

An objective gives the per-example loss of a network on clean audio at drawn steps and noise, the weights a fresh
run starts from, what it adds to a checkpoint (and checks when one is resumed), and the reverse plan of the
validation samples. The Trainer owns everything else: data, draws, optimizer, EMA, DDP, checkpoints, the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffwave.audio import LogMel
from diffwave.config import Config
from diffwave.diffusion import NoiseSchedule, ReversePlan, diffusion_loss, fast_schedule
from diffwave.diffusion.consistency import distillation_loss
from diffwave.diffusion.noise_priors import NoisePrior, shape_noise
from diffwave.diffusion.parameterization import x0_from_velocity
from diffwave.diffusion.reverse_plans import CONSISTENCY_DEFAULT_STEPS, consistency
from diffwave.errors import CheckpointError
from diffwave.model import DiffWave
from diffwave.training.ema import ExponentialAverage

# network(x_t, t, mel) -> output: the model under training (through DDP) or one of its averages.
NetworkCall = Callable[[Tensor, Tensor, Tensor | None], Tensor]
# A fresh autocast region of the run's precision (disabled in fp32).
Autocast = Callable[[], AbstractContextManager]


def network_call(model: torch.nn.Module) -> NetworkCall:
    """A model (an average, a teacher) as an objective calls a network."""
    return lambda x, t, mel: model(x, t, mel=mel)


class DiffusionObjective:
    """DDPM's L_simple: the network predicts the forward noise as drawn (shaped by a PriorGrad or SpecGrad prior),
    or v with model.prediction=v, through `diffusion.losses.diffusion_loss` with the steps and noise the Trainer
    drew."""

    start_weights: dict[str, Tensor] | None = None  # a fresh run starts from the seeded initialisation

    def attach(self, model: DiffWave, config: Config, schedule: NoiseSchedule) -> None:
        """Bind to the run's model (weights set), final config and schedule before the first step."""
        self.schedule, self.kind, self.output = schedule, config.diffusion.loss, config.model.output
        self.fast_schedule = config.diffusion.fast_schedule
        self.x0_weight, self.x0_max_step = config.diffusion.x0_mel_weight, config.diffusion.x0_max_step
        self.front_end = LogMel(config.audio).to(next(model.parameters()).device) if self.x0_weight else None

    def losses(self, network: NetworkCall, audio: Tensor, mel: Tensor | None, t: Tensor, noise: Tensor,
               std: NoisePrior, autocast: Autocast) -> Tensor:
        """Per-example loss of `network` on clean `audio` at steps t with standard `noise` (shaped by the prior,
        when there is one, inside diffusion_loss); the network runs under `autocast`, the loss in fp32.
        With diffusion.x0_mel_weight, plus that weight times `x0_mel_distance` at steps up to x0_max_step."""
        seen: dict[str, Tensor] = {}

        def eps(x_t: Tensor, steps: Tensor) -> Tensor:
            with autocast():
                seen["x_t"], seen["eps"] = x_t, network(x_t, steps, mel)
            return seen["eps"]

        loss = diffusion_loss(eps, self.schedule, audio, kind=self.kind, prior_std=std, steps=t, noise=noise,
                              output=self.output)[0]
        if not self.x0_weight:
            return loss
        low_noise = (t <= self.x0_max_step).to(loss.dtype)
        return loss + self.x0_weight * low_noise * self.x0_mel_distance(seen["x_t"], seen["eps"].float(), audio, t)

    def x0_mel_distance(self, x_t: Tensor, eps_hat: Tensor, audio: Tensor, t: Tensor) -> Tensor:
        """Per-example mean |log-mel(x0_hat) - log-mel(audio)|, x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) /
        sqrt(abar_t) (or read off v): the clean signal the network's estimate implies (under a prior eps_hat
        already carries S)."""
        alpha_bar = self.schedule.alpha_bars.to(x_t.device)[t][:, None]  # float64, as x0_hat was always computed
        if self.output == "v":
            x0_hat = x0_from_velocity(x_t, eps_hat, alpha_bar)
        else:
            x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()
        return (self.front_end(x0_hat) - self.front_end(audio)).abs().mean(dim=(1, 2))

    def after_step(self, model: DiffWave) -> None:
        """After each optimizer step (the Trainer updates its EMA itself)."""

    def state(self) -> dict[str, Any]:
        """What the objective adds to a checkpoint."""
        return {}

    def check_state(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint this objective cannot continue (called before anything else is read from it)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Take its part of a resumed checkpoint."""

    def sample_plan(self) -> ReversePlan:
        """The reverse plan of the validation samples: the fast schedule."""
        return fast_schedule(self.schedule, self.fast_schedule)


class ConsistencyDistillation(DiffusionObjective):
    """Consistency distillation of a frozen `teacher` (Song et al. 2023; diffusion/consistency.py): the student,
    which starts as the teacher, learns to agree with its target network (an EMA of the student, decay
    distill.target_ema) across adjacent states of the teacher's ODE."""

    def __init__(self, teacher: DiffWave) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.start_weights = teacher.state_dict()

    def attach(self, model: DiffWave, config: Config, schedule: NoiseSchedule) -> None:
        """The target starts as the student (a resumed run then loads it)."""
        super().attach(model, config, schedule)
        self.skip = config.distill.skip
        self.teacher.to(next(model.parameters()).device)
        self.target = ExponentialAverage(model, config.distill.target_ema, warmup=False)
        self.target.module.eval().requires_grad_(False)

    def losses(self, network: NetworkCall, audio: Tensor, mel: Tensor | None, t: Tensor, noise: Tensor,
               std: NoisePrior, autocast: Autocast) -> Tensor:
        """The consistency-distillation loss at levels t + 1 (training step t and the level `skip` below it)."""
        def call(net: NetworkCall):
            return lambda x, steps: net(x, steps, mel)

        noise = shape_noise(std, noise)  # the forward noise as drawn
        with autocast():
            return distillation_loss(call(network), call(network_call(self.target.module)),
                                     call(network_call(self.teacher)), self.schedule, audio, t + 1, noise,
                                     skip=self.skip, prior_std=std)

    def after_step(self, model: DiffWave) -> None:
        self.target.update(model)

    def state(self) -> dict[str, Any]:
        return {"target": self.target.module.state_dict()}

    def check_state(self, state: dict[str, Any], path: Path) -> None:
        if "target" not in state:
            raise CheckpointError(f"{path} is not a distillation checkpoint (it has no consistency target); resume "
                                  "a `diffwave train` run with `diffwave train`, or distill into a new --out folder")

    def load_state(self, state: dict[str, Any]) -> None:
        self.target.module.load_state_dict(state["target"])

    def sample_plan(self) -> ReversePlan:
        """Validation samples with the student's own sampler."""
        return consistency(self.schedule, CONSISTENCY_DEFAULT_STEPS)

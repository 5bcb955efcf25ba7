"""`diffwave distill`: consistency distillation of a trained model into a 1-2 step student (Song et al. 2023).

The Distiller is the Trainer with another objective (diffusion/consistency.py), so the data, the per-example
draws, DDP, EMA, checkpoints, exact resume, preemption and TensorBoard are the trainer's own. Beside the student
sit the frozen teacher and the target network, an EMA of the student (decay distill.target_ema) that the
student learns to agree with across adjacent states. The student starts from the teacher's weights; its
checkpoints carry `distill.student: true` and vocode with `--sampler consistency --steps 1|2`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from diffwave.checkpoints import check_compatible, load_model
from diffwave.config import Config, config_to_dict, with_overrides
from diffwave.diffusion.consistency import distillation_loss
from diffwave.diffusion.reverse_plans import CONSISTENCY_DEFAULT_STEPS, ReversePlan, consistency
from diffwave.errors import CheckpointError, TrainingError
from diffwave.model import DiffWave
from diffwave.training.distributed import DistributedContext
from diffwave.training.run import train
from diffwave.training.trainer import NetworkCall, Trainer, TrainResult, network_call


class _FixedDecay:
    """AveragedModel update with a constant decay: the consistency target follows the student at rate 1 - mu."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, averaged: list[Tensor], current: list[Tensor], _num_averaged: Tensor) -> None:
        for avg, cur in zip(averaged, current, strict=True):
            avg.lerp_(cur, 1 - self.decay)


class Distiller(Trainer):
    """A training run whose model is a consistency student of `teacher` (weights and config fit each other)."""

    def __init__(self, config: Config, data_dir: Path | str, run_dir: Path | str, context: DistributedContext,
                 *, teacher: DiffWave, resume_from: Path | None = None) -> None:
        self.teacher = teacher.to(context.device).eval().requires_grad_(False)
        super().__init__(config, data_dir, run_dir, context, resume_from=resume_from)

    def _start_weights(self, fresh: bool) -> None:
        """The student starts as its teacher, the target as the student (a resumed run then loads both)."""
        self.model.load_state_dict(self.teacher.state_dict())
        self.target = AveragedModel(self.model, multi_avg_fn=_FixedDecay(self.config.distill.target_ema),
                                    use_buffers=True)
        self.target.module.eval().requires_grad_(False)
        self.target.n_averaged.fill_(1)  # AveragedModel copies instead of averaging at its first update

    def _update_averages(self) -> None:
        super()._update_averages()
        self.target.update_parameters(self.model)

    def state(self) -> dict[str, Any]:
        return super().state() | {"target": self.target.module.state_dict()}

    def _load_state(self, state: dict[str, Any], path: Path) -> None:
        if "target" not in state:
            raise CheckpointError(f"{path} is not a distillation checkpoint (it has no consistency target); resume "
                                  "a `diffwave train` run with `diffwave train`, or distill into a new --out folder")
        super()._load_state(state, path)
        self.target.module.load_state_dict(state["target"])

    def _losses(self, network: NetworkCall, audio: Tensor, mel: Tensor | None, t: Tensor, noise: Tensor,
                std: Tensor | None) -> Tensor:
        """The consistency-distillation loss at levels t + 1 (training step t and the level `skip` below it)."""
        def call(net: NetworkCall):
            return lambda x, steps: net(x, steps, mel)

        with self._autocast():
            return distillation_loss(call(network), call(network_call(self.target.module)),
                                     call(network_call(self.teacher)),
                                     self.schedule, audio, t + 1, noise, skip=self.config.distill.skip,
                                     prior_std=std)

    def sample_plan(self) -> ReversePlan:
        """Validation samples with the student's own sampler."""
        return consistency(self.schedule, CONSISTENCY_DEFAULT_STEPS)


def student_config(teacher_config: Config, teacher_path: str | os.PathLike[str], overrides: list[str]) -> Config:
    """The teacher's config with the user's overrides, marked as a student of `teacher_path`. Overrides that
    would change the network, the audio front end or the noise schedule are refused: the student starts from
    the teacher's weights and must mean the same by them."""
    if teacher_config.distill.student:
        raise TrainingError(f"{teacher_path} is already a consistency student; distil from the diffusion model it "
                            "came from")
    config = with_overrides(teacher_config, overrides)
    try:
        check_compatible(config_to_dict(teacher_config), config, source=f"the teacher {teacher_path}")
    except CheckpointError as error:
        raise TrainingError(f"overrides must not change the teacher's model: {error}") from None
    distill = dataclasses.replace(config.distill, student=True, teacher=str(teacher_path))
    return dataclasses.replace(config, name=f"{teacher_config.name}-consistency", distill=distill)


def distill(teacher_path: str | os.PathLike[str], data_dir: str | Path, run_dir: str | Path,
            overrides: list[str] | None = None, *, resume: bool = False, overwrite: bool = False,
            device: str | None = None) -> TrainResult | None:
    """Distil the EMA weights of `teacher_path` (any checkpoint `vocode` loads) on a feature folder into a run
    folder; returns the result on rank 0 and None on the other ranks."""
    teacher, teacher_config = load_model(teacher_path)
    config = student_config(teacher_config, teacher_path, list(overrides or []))
    return train(config, data_dir, run_dir, resume=resume, overwrite=overwrite, device=device,
                 trainer_class=Distiller, teacher=teacher)

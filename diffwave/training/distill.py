"""`diffwave distill`: consistency distillation of a trained model into a 1-2 step student (Song et al. 2023).

A distillation is the Trainer with another objective (training.objectives.ConsistencyDistillation), so the
data, the per-example draws, DDP, EMA, checkpoints, exact resume, preemption and TensorBoard are the trainer's
own. Beside the student sit the frozen teacher and the target network, an EMA of the student (decay
distill.target_ema) that the student learns to agree with across adjacent states. The student starts from the
teacher's weights; its checkpoints carry `model.prediction: consistency` and vocode with
`--sampler consistency --steps 1|2`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from diffwave.checkpoints import check_compatible, load_model
from diffwave.config import Config, config_to_dict, with_overrides
from diffwave.errors import CheckpointError, TrainingError
from diffwave.training.objectives import ConsistencyDistillation
from diffwave.training.run import train
from diffwave.training.trainer import TrainResult


def student_config(teacher_config: Config, teacher_path: str | os.PathLike[str], overrides: list[str]) -> Config:
    """The teacher's config with the user's overrides, marked as a student of `teacher_path`. Overrides that
    would change the network, the audio front end or the noise schedule are refused: the student starts from
    the teacher's weights and must mean the same by them."""
    if teacher_config.model.prediction == "consistency":
        raise TrainingError(f"{teacher_path} is already a consistency student; distil from the diffusion model it "
                            "came from")
    if teacher_config.model.prediction == "v":
        raise TrainingError(f"{teacher_path} predicts v; consistency distillation (diffusion/consistency.py) reads its "
                            "teacher's output as a noise estimate, so it takes epsilon-prediction teachers only")
    config = with_overrides(teacher_config, overrides)
    try:
        check_compatible(config_to_dict(teacher_config), config, source=f"the teacher {teacher_path}")
    except CheckpointError as error:
        raise TrainingError(f"overrides must not change the teacher's model: {error}") from None
    # A student maps noise to audio in 1 or 2 passes: its default start is noise, whatever the teacher's was.
    return dataclasses.replace(config, name=f"{teacher_config.name}-consistency",
                               model=dataclasses.replace(config.model, prediction="consistency"),
                               diffusion=dataclasses.replace(config.diffusion, init="noise", init_start_step=None),
                               distill=dataclasses.replace(config.distill, teacher=str(teacher_path)))


def distill(teacher_path: str | os.PathLike[str], data_dir: str | Path, run_dir: str | Path,
            overrides: list[str] | None = None, *, resume: bool = False, overwrite: bool = False,
            device: str | None = None) -> TrainResult | None:
    """Distil the EMA weights of `teacher_path` (any checkpoint `vocode` loads) on a feature folder into a run
    folder; returns the result on rank 0 and None on the other ranks."""
    teacher, teacher_config = load_model(teacher_path)
    config = student_config(teacher_config, teacher_path, list(overrides or []))
    return train(config, data_dir, run_dir, resume=resume, overwrite=overwrite, device=device,
                 objective=ConsistencyDistillation(teacher))

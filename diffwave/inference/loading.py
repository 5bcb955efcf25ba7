"""Checkpoint (ours or the reference's) or exported .safetensors -> (DiffWave with its weights, its Config)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from diffwave.config import Config, config_from_dict
from diffwave.errors import CheckpointError, DiffwaveError
from diffwave.model import DiffWave
from diffwave.training.checkpoint import load_model_weights


def sampler_for(config: Config, sampler: str | None, error: type[DiffwaveError] = DiffwaveError,
                corrector_steps: int = 0) -> str:
    """The sampler to run (None: "consistency" for a distilled student, else "fast"), refused when it does not
    fit the model: a consistency student's output is an x_0 map, not a noise estimate, and vice versa. For the
    same reason a student takes no Langevin corrector, whose score is a noise estimate's."""
    student = config.distill.student
    if student and corrector_steps:
        raise error("a consistency student takes no corrector steps: the Langevin corrector needs a noise estimate "
                    "(a score), and a student's output is an x_0 map")
    if sampler is None:
        return "consistency" if student else "fast"
    if student and sampler != "consistency":
        raise error(f"this checkpoint is a consistency student (diffwave distill): it samples with the consistency "
                    f"sampler (--sampler consistency --steps 1 or 2), not '{sampler}'")
    if sampler == "consistency" and not student:
        raise error("the consistency sampler needs a student made by `diffwave distill`; this checkpoint is a "
                    "diffusion model: use the fast, ddim or ddpm sampler")
    return sampler


def weights_misfit(model: DiffWave, weights: dict[str, Tensor]) -> str | None:
    """A short description of how `weights` fail to fit `model`, or None when they fit."""
    expected = model.state_dict()
    problems = [f"missing {name}" for name in sorted(expected.keys() - weights.keys())]
    problems += [f"unexpected {name}" for name in sorted(weights.keys() - expected.keys())]
    problems += [f"{name} has shape {tuple(weights[name].shape)}, the config needs {tuple(expected[name].shape)}"
                 for name in sorted(expected.keys() & weights.keys())
                 if weights[name].shape != expected[name].shape]
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def load_model(path: str | os.PathLike[str], use_ema: bool = True) -> tuple[DiffWave, Config]:
    """The model (EMA weights, or the raw ones with use_ema=False) and config of a training checkpoint, an
    exported .safetensors, or a reference (lmnt-com/diffwave) checkpoint or model folder; every setting comes
    from the file, so no config file is needed."""
    path = Path(path)
    weights, values = load_model_weights(path, use_ema)
    config = config_from_dict(values, source=str(path))
    model = DiffWave.from_config(config)
    misfit = weights_misfit(model, weights)
    if misfit is not None:
        raise CheckpointError(f"{path}: its weights do not fit its own config ({misfit})")
    model.load_state_dict(weights)
    return model.eval(), config


def load_unconditional(path: str | os.PathLike[str], device: torch.device | str | None = None,
                       use_ema: bool = True, purpose: str = "generation") -> tuple[DiffWave, Config]:
    """An unconditional model on `device` (default: CUDA when available) and its config; a mel-conditioned
    checkpoint is refused, saying that `purpose` needs an unconditional one."""
    model, config = load_model(path, use_ema)
    if config.model.conditional:
        raise CheckpointError(f"{path} is a conditional (mel) model; {purpose} needs an unconditional checkpoint "
                              "(model.conditional: false, e.g. --config unconditional); use `vocode` for mels")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(device), config

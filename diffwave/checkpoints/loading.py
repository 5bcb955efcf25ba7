"""Checkpoint (ours or the reference's) or exported .safetensors -> (DiffWave with its weights, its Config).

After this module nothing downstream knows where a model came from (ours, the reference's, a shipped one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffwave.checkpoints import reference
from diffwave.checkpoints.safetensors_file import is_safetensors, load_safetensors
from diffwave.checkpoints.store import model_state
from diffwave.config import Config, config_from_dict
from diffwave.errors import CheckpointError
from diffwave.model import DiffWave


def load_model_weights(path: str | os.PathLike[str],
                       use_ema: bool = True) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(weights, config dict) for inference from a training checkpoint (its EMA weights, or the raw ones with
    use_ema=False), a reference (lmnt-com/diffwave) checkpoint or model folder, or a .safetensors.

    Safetensors (`is_safetensors`: by name or content) go to `load_safetensors`; the rest is read as a torch
    file, which is refused with the reason when it cannot be loaded.
    """
    path = reference.model_file(Path(path))
    if is_safetensors(path):
        return load_safetensors(path)
    weights, config, _ = model_state(path, use_ema)
    return weights, config


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

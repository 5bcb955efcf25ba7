"""Checkpoints of the reference implementation (lmnt-com/diffwave), converted to ours as they load.

Its learner saves `{'step', 'model': state dict, 'params': dict, 'optimizer', 'scaler'}` as
`MODEL_DIR/weights-STEP.pt`, with `MODEL_DIR/weights.pt` linking to the newest. Our network's parameter names
are the reference's, so the weights load as they are; what needs converting is the config: `params` becomes a
`Config` with the `lmnt` front end (its preprocess), its sizes, its training betas and its fast schedule. After
`convert` nothing downstream knows where a model came from.

The file is read by `safe_load.read_torch_file` (weights_only, no fallback) like ours; this module only
looks at what that returns, so it never unpickles anything itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from diffwave.config import PRESETS, Config, config_to_dict
from diffwave.diffusion.reverse_plans import FAST_SCHEDULES
from diffwave.errors import CheckpointError, ConfigError

logger = logging.getLogger("diffwave.checkpoint")

MODEL_FILE = "weights.pt"  # what a reference model directory's checkpoint is called
LMNT_F_MIN = 20.0  # the reference's preprocess: 20 Hz to Nyquist, window of 4 hops
WINDOW_HOPS = 4
_SIZES = ("residual_layers", "residual_channels", "dilation_cycle_length", "n_mels", "hop_samples", "sample_rate",
          "n_fft")
# Keys that the reference added after its first release, with the values its code used before them.
_LATER_KEYS = {"unconditional": False, "inference_noise_schedule": list(FAST_SCHEDULES["base"])}
_EMBEDDING = "diffusion_embedding.embedding"  # a derived table: ours rebuilds it and keeps it out of state dicts
_LINEAR_TOLERANCE = 1e-9  # relative: float64 linspace values agree to ~1e-16, anything else is another schedule


def model_file(path: Path) -> Path:
    """A reference model directory stands for its `weights.pt`; any other path is returned as it is."""
    return path / MODEL_FILE if path.is_dir() and (path / MODEL_FILE).is_file() else path


def is_reference_checkpoint(checkpoint: Any) -> bool:
    """The reference's layout: model weights and a params dict, and none of our format's version stamp."""
    return (isinstance(checkpoint, dict) and "format_version" not in checkpoint and "model" in checkpoint
            and "params" in checkpoint)


def _size(params: dict[str, Any], key: str, path: Path) -> int:
    value = params[key]
    if type(value) is not int or value <= 0:
        raise CheckpointError(f"{path}: its params give {key} = {value!r}, expected a positive integer")
    return value


def _betas(params: dict[str, Any], key: str, path: Path) -> list[float]:
    values = params[key]
    if (not isinstance(values, list | tuple) or not values
            or not all(type(b) in (int, float) and math.isfinite(b) for b in values)):
        raise CheckpointError(f"{path}: its params give {key} = {values!r}, expected a non-empty list of betas")
    return [float(b) for b in values]


def _linear_range(betas: list[float], path: Path) -> tuple[float, float]:
    """(first, last) of training betas spaced evenly (the reference's np.linspace(1e-4, 0.05, 50)); other
    schedules are refused, since our config holds a training schedule as linear (or cosine) over a range."""
    first, last, steps = betas[0], betas[-1], len(betas)
    for t, beta in enumerate(betas):
        expected = first + (last - first) * t / (steps - 1) if steps > 1 else first
        if abs(beta - expected) > _LINEAR_TOLERANCE * max(abs(expected), abs(last)):
            raise CheckpointError(f"{path}: its params' noise_schedule is not linear from {first:g} to {last:g} "
                                  f"(beta[{t}] is {beta:g}, a linear schedule has {expected:g}); diffwave can "
                                  "only represent linear training schedules of the reference's kind")
    return first, last


def _model_params(params: dict[str, Any], path: Path) -> dict[str, Any]:
    """The params that define the model, checked: sizes, unconditional and both beta lists (the keys the
    reference added later take the values its code used before them)."""
    missing = [key for key in (*_SIZES, "noise_schedule") if key not in params]
    if missing:
        raise CheckpointError(f"{path}: its params lack {', '.join(missing)}; a reference (lmnt-com/diffwave) "
                              "checkpoint stores them all")
    params = {**_LATER_KEYS, **params}
    if type(params["unconditional"]) is not bool:
        raise CheckpointError(f"{path}: its params give unconditional = {params['unconditional']!r}, expected "
                              "True or False")
    return {**{key: _size(params, key, path) for key in _SIZES}, "unconditional": params["unconditional"],
            **{key: _betas(params, key, path) for key in ("noise_schedule", "inference_noise_schedule")}}


def _config(model: dict[str, Any], params: dict[str, Any], path: Path) -> Config:
    """The Config that reproduces the reference model: lmnt front end, its sizes, betas and fast schedule;
    `model` is `_model_params`, `params` all of them (training settings are mapped where present)."""
    betas = model["noise_schedule"]
    beta_start, beta_end = _linear_range(betas, path)
    base = PRESETS["lmnt"]()
    hop = model["hop_samples"]
    # Training-only settings map where they exist; the reference's loss is L1 (nn.L1Loss).
    train = {key: params[name] for key, name in (("batch_size", "batch_size"), ("learning_rate", "learning_rate"),
                                                 ("grad_clip_norm", "max_grad_norm")) if name in params}
    data = {key: params[name] for key, name in (("crop_frames", "crop_mel_frames"), ("crop_samples", "audio_len"))
            if params.get(name) is not None}
    try:
        return Config(
            name="lmnt",
            audio=dataclasses.replace(base.audio, sample_rate=model["sample_rate"], n_fft=model["n_fft"],
                                      hop_length=hop, win_length=WINDOW_HOPS * hop, n_mels=model["n_mels"],
                                      f_min=LMNT_F_MIN, f_max=None),
            model=dataclasses.replace(base.model, conditional=not model["unconditional"],
                                      residual_channels=model["residual_channels"],
                                      residual_layers=model["residual_layers"],
                                      dilation_cycle=model["dilation_cycle_length"]),
            diffusion=dataclasses.replace(base.diffusion, schedule="linear", num_steps=len(betas),
                                          beta_start=beta_start, beta_end=beta_end, loss="l1",
                                          fast_schedule=model["inference_noise_schedule"]),
            data=dataclasses.replace(base.data, **data),
            train=dataclasses.replace(base.train, **train),
        )
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path}: its params do not make a valid model ({error})") from None


def _implied(weights: dict[str, Tensor]) -> dict[str, tuple[Any, str]]:
    """What the weights' shapes say about params: name -> (value, the evidence), for the names they fix."""
    found: dict[str, tuple[Any, str]] = {}
    if (projection := weights.get("input_projection.weight")) is not None:
        found["residual_channels"] = (projection.shape[0], f"input_projection.weight has shape "
                                                           f"{tuple(projection.shape)}")
    layers = {int(match[1]) for key in weights if (match := re.match(r"residual_layers\.(\d+)\.", key))}
    if layers:
        found["residual_layers"] = (max(layers) + 1, f"they hold residual_layers.0 to residual_layers.{max(layers)}")
    conditioner = weights.get("residual_layers.0.conditioner_projection.weight")
    found["unconditional"] = (conditioner is None, "residual_layers.0.conditioner_projection is "
                                                   f"{'absent' if conditioner is None else 'present'}")
    if conditioner is not None:
        found["n_mels"] = (conditioner.shape[1], f"residual_layers.0.conditioner_projection.weight has shape "
                                                 f"{tuple(conditioner.shape)}")
    kernels = [weights.get(f"spectrogram_upsampler.conv{i}.weight") for i in (1, 2)]
    if all(kernel is not None and kernel.ndim == 4 for kernel in kernels):
        strides = [kernel.shape[-1] // 2 for kernel in kernels]  # each upsampling kernel spans two strides
        found["hop_samples"] = (math.prod(strides), f"the mel upsampler's kernels have widths "
                                                    f"{kernels[0].shape[-1]} and {kernels[1].shape[-1]}")
    if (table := weights.get(_EMBEDDING)) is not None:
        found["len(noise_schedule)"] = (table.shape[0], f"{_EMBEDDING} has shape {tuple(table.shape)}")
    return found


def _check_weights_fit_params(model: dict[str, Any], weights: dict[str, Tensor], path: Path) -> None:
    """One error naming the first param that the weights contradict (a shape the params do not produce)."""
    claimed = {**model, "len(noise_schedule)": len(model["noise_schedule"])}
    for name, (value, evidence) in _implied(weights).items():
        if claimed[name] != value:
            raise CheckpointError(f"{path}: its params and weights disagree on {name}: the params say "
                                  f"{claimed[name]!r}, the weights were made with {value!r} ({evidence})")


def convert(checkpoint: dict[str, Any], path: Path) -> tuple[dict[str, Tensor], dict[str, Any], Any]:
    """(weights, our config as a dict, step) of a reference checkpoint; one CheckpointError for anything wrong."""
    params, weights = checkpoint["params"], checkpoint["model"]
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: its 'params' is a {type(params).__name__}, expected a mapping")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"{path}: its 'model' is not a state dict (a mapping of names to tensors)")
    model = _model_params(params, path)
    _check_weights_fit_params(model, weights, path)  # before the config, which would name our field, not theirs
    config = _config(model, params, path)
    weights = {name: tensor for name, tensor in weights.items() if name != _EMBEDDING}
    step = checkpoint.get("step")
    audio = config.audio
    logger.info("%s: a reference (lmnt-com/diffwave) checkpoint%s; it implies the lmnt front end (its preprocess: "
                "mels in [0, 1], %d Hz, hop %d, %d mels from %g Hz to Nyquist)%s", path,
                f" at step {step}" if type(step) is int else "", audio.sample_rate, audio.hop_length, audio.n_mels,
                audio.f_min, "" if config.model.conditional else "; unconditional")
    return weights, config_to_dict(config), step if type(step) is int else None

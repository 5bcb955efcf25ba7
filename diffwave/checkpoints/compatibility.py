"""Config compatibility: may a run go on from (or a student start from) weights trained with another config?"""

from __future__ import annotations

import os
from typing import Any

from diffwave.config import Config, config_from_dict, config_to_dict
from diffwave.errors import CheckpointError

# Config fields that change tensor shapes or what the weights mean: a resume must match them exactly.
_WEIGHT_SECTIONS = ("audio.", "model.")
_WEIGHT_FIELDS = {"diffusion.num_steps", "diffusion.schedule", "diffusion.beta_start", "diffusion.beta_end",
                  "diffusion.zero_terminal_snr",
                  "diffusion.prior", "diffusion.prior_floor",
                  "diffusion.prior_normalization"}  # the prior changes what the network predicts
_ABSENT = "<absent>"


def current_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict in today's keys. Before `model.prediction`, a consistency student was marked by
    `distill.student` (true/false): it maps to prediction consistency/epsilon."""
    distill = values.get("distill") if isinstance(values, dict) else None
    if not isinstance(distill, dict) or "student" not in distill or not isinstance(values.get("model", {}), dict):
        return values
    model = {"prediction": "consistency" if distill["student"] else "epsilon", **values.get("model", {})}
    return {**values, "model": model, "distill": {k: v for k, v in distill.items() if k != "student"}}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_compatible(saved_config: dict[str, Any], config: Config,
                     source: str | os.PathLike[str] = "the checkpoint") -> list[str]:
    """Differences between a checkpoint's config and this run's, as "key: saved X != now Y" lines.

    Fields that change tensor shapes or the meaning of the weights (audio.*, model.*, the training noise
    schedule) must match: a CheckpointError lists every one that differs. The rest (learning rate, log
    cadence, ...) may change on resume and are returned for the caller to log.
    """
    if not isinstance(saved_config, dict):
        raise CheckpointError(f"{source}: its config is a {type(saved_config).__name__}, not a mapping")
    # A key the saved config lacks (written before that setting existed) has its default value.
    saved = _flatten(config_to_dict(config_from_dict(current_keys(saved_config), source=str(source))))
    now = _flatten(config_to_dict(config))
    breaking, allowed = [], []
    for key in sorted(saved.keys() | now.keys()):
        before, after = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if before != after:
            line = f"{key}: saved {before!r} != now {after!r}"
            weights = key.startswith(_WEIGHT_SECTIONS) or key in _WEIGHT_FIELDS
            (breaking if weights else allowed).append(line)
    if breaking:
        raise CheckpointError(f"{source} was trained with a different model or audio setup: {'; '.join(breaking)}")
    return allowed

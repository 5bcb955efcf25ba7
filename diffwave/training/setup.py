"""What is settled before a Trainer is built: the run folder and the checkpoint it resumes, and the run's final
config with the weights it starts from.

The config a Trainer gets is final: a resumed run keeps the PriorGrad corpus statistics its checkpoint carries,
a run started from other weights (`--init-from`) the ones those weights were trained with, and a fresh run
measures them on its training split. Every other setting is the one asked for; the settings that would change
what the weights mean must match the weights' own (checkpoints.check_compatible).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffwave.audio.prior import with_corpus_statistics
from diffwave.checkpoints import CHECKPOINT_DIR, check_compatible, latest_checkpoint, load_checkpoint, load_model
from diffwave.config import Config, config_to_dict
from diffwave.data.dataset import crops_for_training
from diffwave.errors import TrainingError
from diffwave.training.objectives import DiffusionObjective

logger = logging.getLogger("diffwave.train")

LOG_DIR = "logs"  # TensorBoard event files, beside checkpoints/


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to mix runs in one folder.

    A folder with checkpoints resumes from the newest (said in the log); `resume=True` demands one;
    a non-empty folder without checkpoints is refused unless `overwrite`, which deletes the run's own
    artefacts (checkpoints/ and logs/) and never anything else the user keeps there.
    """
    if overwrite and resume:
        raise TrainingError("--resume and --overwrite contradict each other; choose one")
    if overwrite:
        for artefacts in (run_dir / CHECKPOINT_DIR, run_dir / LOG_DIR):
            shutil.rmtree(artefacts, ignore_errors=True)
    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if checkpoint is None:
        if resume:
            raise TrainingError(f"--resume given, but {run_dir} holds no checkpoint to resume from")
        if not overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
            raise TrainingError(f"{run_dir} is not empty and holds no checkpoint; choose a new --out folder or "
                                "pass --overwrite to start over there")
    run_dir.mkdir(parents=True, exist_ok=True)
    return checkpoint


@dataclass(frozen=True)
class RunStart:
    """A run's final config and where its state comes from: a resumed checkpoint (`resumed`, read from
    `resumed_from`), or, for a fresh run, starting weights (`weights`; None: the seeded initialisation)."""

    config: Config
    weights: dict[str, Tensor] | None = None
    resumed: dict[str, Any] | None = None
    resumed_from: Path | None = None


def _adopt_corpus_statistics(config: Config, saved_config: dict[str, Any]) -> Config:
    """A PriorGrad run keeps the corpus statistics its weights were trained with, whatever the data folder
    holds; taken before the configs are compared, so they are never reported as a changed setting."""
    if config.diffusion.prior == "standard" or saved_config["diffusion"]["prior"] != config.diffusion.prior:
        return config  # a prior that differs is refused by check_compatible
    saved = {key: saved_config["diffusion"][key] for key in ("prior_energy_min", "prior_energy_max")}
    for key, value in saved.items():
        asked = getattr(config.diffusion, key)
        if asked is not None and asked != value:
            logger.warning("diffusion.%s=%s ignored: the weights were trained with %s", key, asked, value)
    return replace(config, diffusion=replace(config.diffusion, **saved))


def prepare(config: Config, data_dir: Path | str, *, resume_from: Path | None = None,
            init_from: Path | str | None = None, objective: DiffusionObjective | None = None,
            device: torch.device | str = "cpu", is_main: bool = True) -> RunStart:
    """The final config and starting state of a run on `data_dir`: resumed from the checkpoint `resume_from`, or
    fresh, from the (EMA) weights of `init_from` with a fresh optimizer, schedule and step count, or from the
    seeded initialisation. `init_from` must fit the config's model, front end, schedule and prior; a resumed
    checkpoint must fit it too and be one `objective` can continue."""
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device)
        (objective or DiffusionObjective()).check_state(state, resume_from)
        config = _adopt_corpus_statistics(config, state["config"])
        for note in check_compatible(state["config"], config, source=str(resume_from)):
            logger.info("resuming with a changed setting: %s", note)
        return RunStart(config, resumed=state, resumed_from=resume_from)
    weights = None
    if init_from is not None:
        model, saved = load_model(init_from)
        saved_config = config_to_dict(saved)
        config = _adopt_corpus_statistics(config, saved_config)
        for note in check_compatible(saved_config, config, source=str(init_from)):
            logger.info("starting from %s with a changed setting: %s", init_from, note)
        weights = model.state_dict()
        if is_main:
            logger.info("starting from the weights of %s with a fresh optimizer", init_from)
    # PriorGrad's corpus statistics go into the config that checkpoints carry (read only for priorgrad).
    utterances = crops_for_training(data_dir, config, "train").utterances
    config = with_corpus_statistics(config, (np.load(u.mel, mmap_mode="r") for u in utterances))
    return RunStart(config, weights=weights)

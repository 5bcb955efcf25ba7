"""`diffwave tune-schedule`: search a vocoder's fast schedule on validation clips and write it into a model file,
where `vocode` then uses it by default (the schedule is part of the config a model file carries).

The clips are the feature folder's validation split (never the held-out sets the cards report), first
`clips` utterances by id, each cropped; the search itself is evaluation/schedule_search.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffwave.checkpoints import export_safetensors
from diffwave.data.dataset import read_split
from diffwave.diffusion import NoiseSchedule
from diffwave.errors import VocodeError
from diffwave.evaluation.schedule_search import Candidate, search
from diffwave.inference.vocoder import Vocoder

logger = logging.getLogger("diffwave.tune")


def validation_clips(features: str | os.PathLike[str], vocoder: Vocoder, split: str = "valid", limit: int = 4,
                     seconds: float | None = 2.0) -> dict[str, Tensor]:
    """The first `limit` utterances (by id) of a feature folder's split as audio, each cropped to `seconds`."""
    utterances = sorted(read_split(features, vocoder.config.audio, split,
                                   "preprocess with a validation split (data.valid_fraction)"),
                        key=lambda utterance: utterance.id)
    crop = int(seconds * vocoder.sample_rate) if seconds else None
    return {utterance.id: torch.from_numpy(np.load(utterance.audio, allow_pickle=False))[:crop].float()
            for utterance in utterances[:limit]}


def tune_schedule(checkpoint: str | os.PathLike[str], features: str | os.PathLike[str],
                  out: str | os.PathLike[str], *, split: str = "valid", clips: int = 4, seconds: float | None = 2.0,
                  step_counts: Sequence[int] | None = None, objective: str = "composite", refine_rounds: int = 2,
                  seed: int = 0, device: torch.device | str | None = None,
                  progress: Callable[[Candidate], None] | None = None) -> list[Candidate]:
    """Search the fast schedule of `checkpoint` (its other sampling defaults, e.g. a Griffin-Lim start, kept) and
    write its weights with the best schedule to `out` (.safetensors). Returns every candidate, best first;
    `step_counts` default to the length of the model's own schedule."""
    vocoder = Vocoder.from_checkpoint(checkpoint, device)
    config = vocoder.config
    if config.model.prediction == "consistency":
        raise VocodeError(f"{checkpoint}: a consistency model samples with its own steps, not a fast schedule; "
                          "tune its teacher instead")
    if not Path(out).parent.is_dir():
        raise VocodeError(f"{out}: the output folder {Path(out).parent} does not exist")
    start = list(config.diffusion.fast_schedule)
    candidates = search(vocoder, validation_clips(features, vocoder, split, clips, seconds),
                        NoiseSchedule.from_config(config.diffusion), start, step_counts or [len(start)],
                        objective, refine_rounds, seed, progress)
    best = candidates[0]
    export_safetensors(checkpoint, out, changes={"diffusion": {"fast_schedule": list(best.betas)}})
    logger.info("tune-schedule: %s -> %s (%s %.4f, from %.4f) written to %s", start, list(best.betas), objective,
                best.score, next(c.score for c in candidates if c.origin == "start"), out)
    return candidates

"""Objective evaluation of vocoded utterances against the references of a feature folder's split."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffwave.audio import read_audio
from diffwave.config import AudioConfig
from diffwave.data.manifest import read_audio_config, read_manifest
from diffwave.errors import DataError
from diffwave.evaluation.metrics import log_mel_distance, multi_resolution_stft_distance, si_sdr
from diffwave.fileio import atomic_write

METRICS = ("log_mel_l1", "mr_stft", "si_sdr_db")
MIN_STFT_SAMPLES = 2048  # the largest window of the default multi-resolution STFT distance


@dataclass
class Evaluation:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # utterance id -> metric -> value
    missing: list[str] = field(default_factory=list)

    def means(self) -> dict[str, float]:
        return {name: float(np.nanmean([row[name] for row in self.rows.values()])) for name in METRICS}

    def summary(self) -> str:
        means = ", ".join(f"{name} {value:.4f}" for name, value in self.means().items())
        return f"{len(self.rows)} utterances: mean {means}; {len(self.missing)} without a generated wav"


def evaluate_vocoded(features: str | os.PathLike[str], generated: str | os.PathLike[str],
                     split: str = "test") -> Evaluation:
    """Compare GENERATED/<id>.wav with the stored reference audio of every utterance in `split`.

    The log-mel distance uses the features' own front-end; SI-SDR is reported although a vocoder need not
    reproduce the phase, so log-mel and multi-resolution STFT distances are the ones to compare models by.
    """
    features, generated = Path(features), Path(generated)
    made_with = read_audio_config(features)
    if made_with is None:
        raise DataError(f"{features}: no manifest.json here; is it the output folder of 'diffwave preprocess'?")
    audio_config = AudioConfig(**made_with)
    evaluation = Evaluation()
    for utterance in read_manifest(features, audio_config, split):
        path = generated / f"{utterance.id}.wav"
        if not path.is_file():
            evaluation.missing.append(utterance.id)
            continue
        reference = torch.from_numpy(np.load(utterance.audio, allow_pickle=False))
        estimate = read_audio(path, audio_config.sample_rate)
        length = min(reference.numel(), estimate.numel())
        reference, estimate = reference[:length], estimate[:length]
        evaluation.rows[utterance.id] = {
            "log_mel_l1": log_mel_distance(reference, estimate, audio_config),
            # nan for clips shorter than the largest STFT window (2048 samples)
            "mr_stft": multi_resolution_stft_distance(reference, estimate) if length >= MIN_STFT_SAMPLES else math.nan,
            "si_sdr_db": si_sdr(reference, estimate),
        }
    if not evaluation.rows:
        raise DataError(f"{generated}: none of the {len(evaluation.missing)} '{split}' utterances of {features} "
                        "has a generated wav (expected <id>.wav)")
    return evaluation


def write_evaluation(evaluation: Evaluation, path: str | os.PathLike[str]) -> None:
    """A TSV with one row per utterance and a final `mean` row, written atomically."""
    lines = ["id\t" + "\t".join(METRICS)]
    for item_id, row in sorted(evaluation.rows.items()):
        lines.append(item_id + "\t" + "\t".join(_format(row[name]) for name in METRICS))
    means = evaluation.means()
    lines.append("mean\t" + "\t".join(_format(means[name]) for name in METRICS))
    with atomic_write(path) as temp:
        temp.write_text("\n".join(lines) + "\n")


def _format(value: float) -> str:
    return f"{value:.6f}" if math.isfinite(value) else str(value)

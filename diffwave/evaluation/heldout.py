"""Copy synthesis of held-out clips, DiffWave against Griffin-Lim of the same mels: the numbers of the model
cards (recipes/pretrained/ship.py) and of the demo page (recipes/demo/run.py), computed one way for both.

Each clip's mel is the model's own front end of the reference; DiffWave vocodes it with the fast schedule,
Griffin-Lim (`audio.griffin_lim`, 100 iterations) inverts the very same mel. Both are scored against the
reference over their common length: log-mel L1 and MR-STFT (lower is better), wide-band PESQ and STOI
(higher is better), and the real-time factor (synthesis seconds per second of audio; lower is faster).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from diffwave.audio import read_audio
from diffwave.audio.griffin_lim import GRIFFIN_LIM_ITERATIONS, griffin_lim
from diffwave.config import Config
from diffwave.diffusion import ReversePlan
from diffwave.errors import DataError
from diffwave.evaluation.metrics import log_mel_distance, multi_resolution_stft_distance, pesq_score, stoi_score

SYSTEMS = {"diffwave": "DiffWave", "griffin_lim": "Griffin-Lim"}
METRICS = {"log_mel_l1": "log-mel L1 (lower)", "mr_stft": "MR-STFT (lower)", "pesq_wb": "PESQ wb (higher)",
           "stoi": "STOI (higher)", "rtf": "RTF (lower)"}
CLIP_SUFFIXES = (".flac", ".wav")


class VocoderLike(Protocol):
    """What the comparison uses of a vocoder (`inference.Vocoder` is one); evaluation never imports inference."""

    config: Config
    sample_rate: int
    device: torch.device

    def mel(self, audio: Tensor, sample_rate: int) -> Tensor: ...

    def vocode(self, mel: Tensor, sampler: str | None = None, steps: int | None = None, *,
               generator: torch.Generator | None = None) -> Tensor | list[Tensor]: ...

    def plan(self, sampler: str | None = None, steps: int | None = None,
             schedule: str | Sequence[float] | None = None) -> ReversePlan: ...


@dataclass
class ClipResult:
    """One clip: the reference and each system's audio (same length), their scores and synthesis times."""

    id: str
    reference: Tensor
    audio: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def read_clips(folder: str | os.PathLike[str], sample_rate: int, crop_seconds: float | None = None,
               limit: int | None = None) -> dict[str, Tensor]:
    """The audio clips of `folder` (.flac, .wav) by name, at `sample_rate`, optionally the first `limit` and
    each cropped to its first `crop_seconds` (for quick runs)."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix in CLIP_SUFFIXES) if Path(folder).is_dir() else []
    if not paths:
        raise DataError(f"{folder}: no .flac or .wav clips found")
    clips = {}
    for path in paths[:limit]:
        audio = read_audio(path, sample_rate)
        clips[path.stem] = audio[:int(crop_seconds * sample_rate)] if crop_seconds else audio
    return clips


def compare(vocoder: VocoderLike, clips: dict[str, Tensor], sampler: str | None = None, seed: int = 0,
            steps: int | None = None, with_griffin_lim: bool = True) -> list[ClipResult]:
    """Vocode each clip's mel with `vocoder` (its sampler options as in `Vocoder.vocode`) and, unless a caller
    comparing several samplers has it already, with Griffin-Lim, and score them against the clip."""
    config = vocoder.config.audio
    results = []
    for index, (name, reference) in enumerate(clips.items()):
        mel = vocoder.mel(reference, config.sample_rate)
        generator = torch.Generator().manual_seed(seed + index)
        start = time.perf_counter()
        audio = {"diffwave": vocoder.vocode(mel, sampler=sampler, steps=steps, generator=generator)}
        seconds = {"diffwave": time.perf_counter() - start}
        if with_griffin_lim:
            start = time.perf_counter()
            audio["griffin_lim"] = griffin_lim(mel, config, GRIFFIN_LIM_ITERATIONS, seed=seed + index)
            seconds["griffin_lim"] = time.perf_counter() - start
        length = min(reference.numel(), *(item.numel() for item in audio.values()))
        result = ClipResult(name, reference[:length], {system: item[:length] for system, item in audio.items()})
        for system, estimate in result.audio.items():
            result.scores[system] = {
                "log_mel_l1": log_mel_distance(result.reference, estimate, config),
                "mr_stft": multi_resolution_stft_distance(result.reference, estimate),
                "pesq_wb": pesq_score(result.reference, estimate, config.sample_rate),
                "stoi": stoi_score(result.reference, estimate, config.sample_rate),
                "rtf": seconds[system] / (length / config.sample_rate),
            }
        results.append(result)
    return results


def means(results: list[ClipResult]) -> dict[str, dict[str, float]]:
    """system -> metric -> mean over the clips (RTF: total time over total audio, not a mean of ratios)."""
    table = {}
    for system in results[0].scores:
        row = {name: float(np.mean([r.scores[system][name] for r in results])) for name in METRICS}
        seconds = [r.scores[system]["rtf"] * r.reference.numel() for r in results]
        row["rtf"] = sum(seconds) / sum(r.reference.numel() for r in results)
        table[system] = row
    return table


def markdown_table(results: list[ClipResult]) -> str:
    """Per-clip and mean scores of both systems as a Markdown table."""
    lines = ["| clip | system | " + " | ".join(METRICS.values()) + " |", "|---|---|" + "---|" * len(METRICS)]
    rows = [(r.id, r.scores) for r in results] + [("**mean**", means(results))]
    for clip, scores in rows:
        for system, label in SYSTEMS.items():
            lines.append(f"| {clip} | {label} | " + " | ".join(f"{scores[system][m]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines)


def describe_setup(vocoder: VocoderLike, clips: dict[str, Tensor], sampler: str | None = None,
                   steps: int | None = None) -> str:
    """One sentence saying what the table measured (clips, steps, threads), for the card and the page."""
    seconds = sum(clip.numel() for clip in clips.values()) / vocoder.sample_rate
    # RTF depends on what else the machine runs: say how busy it was (a shared CPU can be several times slower).
    load = f", 1-minute load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    plan = vocoder.plan(sampler, steps)
    return (f"{len(clips)} held-out clips ({seconds:.1f} s), DiffWave with {len(plan)} {plan.name.split('-')[0]} "
            f"steps on {vocoder.device} ({torch.get_num_threads()} threads{load}), Griffin-Lim "
            f"{GRIFFIN_LIM_ITERATIONS} iterations (momentum 0.99) on the same mels")

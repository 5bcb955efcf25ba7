"""Copy synthesis of held-out clips, DiffWave against two network-free baselines on the same mels: the numbers
of the model cards (recipes/pretrained/ship.py) and of the demo page (recipes/demo/run.py), computed one way.

Each clip's mel is the model's own front end of the reference; DiffWave vocodes it (the fast schedule unless
told otherwise), Griffin-Lim (`audio.griffin_lim`, 100 iterations) inverts the very same mel, and the
network-free control "Griffin-Lim + envelope" rescales that Griffin-Lim audio toward the mel
(`audio.griffin_lim.rescale_to_mel`, 16 passes): the bar a network has to clear to show it adds anything.
All are scored against the reference over their common length: log-mel L1 and MR-STFT (lower is better),
wide-band PESQ and STOI (higher is better), and the real-time factor (synthesis seconds per second of audio;
lower is faster). Clips come in named sets (a speaker the model was trained on, one it never heard), each
scored and reported on its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from diffwave.audio import read_audio
from diffwave.audio.griffin_lim import ENVELOPE_PASSES, GRIFFIN_LIM_ITERATIONS, griffin_lim, rescale_to_mel
from diffwave.config import FINISHES, INITS, Config
from diffwave.diffusion import ReversePlan
from diffwave.errors import DataError
from diffwave.evaluation.metrics import log_mel_distance, multi_resolution_stft_distance, pesq_score, stoi_score

SYSTEMS = {"diffwave": "DiffWave", "griffin_lim": f"Griffin-Lim {GRIFFIN_LIM_ITERATIONS}",
           "gl_envelope": "Griffin-Lim + envelope"}
METRICS = {"log_mel_l1": "log-mel L1 (lower)", "mr_stft": "MR-STFT (lower)", "pesq_wb": "PESQ wb (higher)",
           "stoi": "STOI (higher)", "rtf": "RTF (lower)"}
CLIP_SUFFIXES = (".flac", ".wav")


class VocoderLike(Protocol):
    """What the comparison uses of a vocoder (`inference.Vocoder` is one); evaluation never imports inference."""

    config: Config
    sample_rate: int
    device: torch.device

    def mel(self, audio: Tensor, sample_rate: int) -> Tensor: ...

    def vocode(self, mel: Tensor, *, generator: torch.Generator | None = None, **sampling: Any) -> Tensor: ...

    def plan(self, sampler: str | None = None, steps: int | None = None,
             schedule: str | Sequence[float] | None = None, **sampling: Any) -> ReversePlan: ...


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


def read_sets(folders: dict[str, str | os.PathLike[str]], sample_rate: int, crop_seconds: float | None = None,
              limit: int | None = None) -> dict[str, dict[str, Tensor]]:
    """set name -> its clips (`read_clips` of each folder, with the same crop and limit)."""
    return {name: read_clips(folder, sample_rate, crop_seconds, limit) for name, folder in folders.items()}


def compare(vocoder: VocoderLike, clips: dict[str, Tensor], sampler: str | None = None, seed: int = 0,
            steps: int | None = None, with_griffin_lim: bool = True, **sampling: Any) -> list[ClipResult]:
    """Vocode each clip's mel with `vocoder` (its sampling options as in `Vocoder.vocode`: `sampler`, `steps` and
    any other SamplingOptions field as a keyword) and, unless a caller comparing several samplers has them
    already, with Griffin-Lim and Griffin-Lim + envelope, and score them all against the clip."""
    config = vocoder.config.audio
    results = []
    for index, (name, reference) in enumerate(clips.items()):
        mel = vocoder.mel(reference, config.sample_rate)
        generator = torch.Generator().manual_seed(seed + index)
        start = time.perf_counter()
        audio = {"diffwave": vocoder.vocode(mel, sampler=sampler, steps=steps, generator=generator, **sampling)}
        seconds = {"diffwave": time.perf_counter() - start}
        if with_griffin_lim:
            start = time.perf_counter()
            audio["griffin_lim"] = griffin_lim(mel, config, GRIFFIN_LIM_ITERATIONS, seed=seed + index)
            seconds["griffin_lim"] = time.perf_counter() - start
            start = time.perf_counter()
            audio["gl_envelope"] = rescale_to_mel(audio["griffin_lim"], mel, config).clamp(-1.0, 1.0)
            seconds["gl_envelope"] = seconds["griffin_lim"] + time.perf_counter() - start
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


def compare_sets(vocoder: VocoderLike, sets: dict[str, dict[str, Tensor]],
                 **options: Any) -> dict[str, list[ClipResult]]:
    """`compare` on each set of clips (same options; each set's clip i seeded with seed + i, as alone)."""
    return {name: compare(vocoder, clips, **options) for name, clips in sets.items()}


def means(results: list[ClipResult]) -> dict[str, dict[str, float]]:
    """system -> metric -> mean over the clips (RTF: total time over total audio, not a mean of ratios)."""
    table = {}
    for system in results[0].scores:
        row = {name: float(np.mean([r.scores[system][name] for r in results])) for name in METRICS}
        seconds = [r.scores[system]["rtf"] * r.reference.numel() for r in results]
        row["rtf"] = sum(seconds) / sum(r.reference.numel() for r in results)
        table[system] = row
    return table


def systems_of(results: list[ClipResult]) -> list[str]:
    """The systems these results scored, in SYSTEMS' order."""
    return [system for system in SYSTEMS if system in results[0].scores]


def markdown_table(results: list[ClipResult]) -> str:
    """Per-clip and mean scores of every system as a Markdown table."""
    lines = ["| clip | system | " + " | ".join(METRICS.values()) + " |", "|---|---|" + "---|" * len(METRICS)]
    rows = [(r.id, r.scores) for r in results] + [("**mean**", means(results))]
    for clip, scores in rows:
        for system in systems_of(results):
            lines.append(f"| {clip} | {SYSTEMS[system]} | " + " | ".join(f"{scores[system][m]:.3f}" for m in METRICS)
                         + " |")
    return "\n".join(lines)


def markdown_tables(sets: dict[str, list[ClipResult]]) -> str:
    """`markdown_table` of each set under its name, as a bold line."""
    return "\n\n".join(f"**{name}**\n\n{markdown_table(results)}" for name, results in sets.items())


def rows_table(rows: dict[tuple[str, ...], dict[str, float]], columns: tuple[str, ...]) -> str:
    """A Markdown table of metric rows: each key's labels under `columns`, then the METRICS to 3 decimals."""
    lines = ["| " + " | ".join([*columns, *METRICS.values()]) + " |", "|" + "---|" * (len(columns) + len(METRICS))]
    lines += ["| " + " | ".join([*labels, *(f"{row[m]:.3f}" for m in METRICS)]) + " |" for labels, row in rows.items()]
    return "\n".join(lines)


def summary_table(sets: dict[str, list[ClipResult]]) -> str:
    """The mean scores of every system, one row per set and system, as a Markdown table."""
    rows = {}
    for name, results in sets.items():
        table = means(results)
        rows |= {(name, SYSTEMS[system]): table[system] for system in systems_of(results)}
    return rows_table(rows, ("clips", "system"))


def describe_setup(vocoder: VocoderLike, sets: dict[str, dict[str, Tensor]], sampler: str | None = None,
                   steps: int | None = None) -> str:
    """One sentence saying what the tables measured (clips of each set, steps, threads), for the card and the
    page."""
    seconds = {name: sum(c.numel() for c in clips.values()) / vocoder.sample_rate for name, clips in sets.items()}
    clips = "; ".join(f"{name}: {len(sets[name])} clips ({length:.1f} s)" for name, length in seconds.items())
    # RTF depends on what else the machine runs: say how busy it was (a shared CPU can be several times slower).
    load = f", 1-minute load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    plan = vocoder.plan(sampler, steps)
    diffwave = f"DiffWave with {len(plan)} {plan.name.split('-')[0]} steps"
    init = vocoder.config.diffusion.init
    if init != INITS[0]:  # the model's default start: an estimate refined through the plan's last states
        full = vocoder.plan(sampler, steps, init=INITS[0])
        diffwave = (f"DiffWave from its default start ({init}: the estimate refined through the last {len(plan)} of "
                    f"{len(full)} {full.name.split('-')[0]} steps, {len(plan)} network pass{'es' * (len(plan) != 1)})")
    if vocoder.config.diffusion.finish != FINISHES[0]:
        diffwave += f", its output finished by the {vocoder.config.diffusion.finish} rescaling toward the mel"
    return (f"held-out clips ({clips}), {diffwave} on "
            f"{vocoder.device} ({torch.get_num_threads()} threads{load}), Griffin-Lim {GRIFFIN_LIM_ITERATIONS} "
            f"iterations (momentum 0.99) on the same mels, and Griffin-Lim + envelope: that audio after "
            f"{ENVELOPE_PASSES} passes rescaling its STFT toward the mel (no network)")

"""A built-in speech-like corpus, so the quickstart and tests run without downloading anything.

Each clip strings together voiced segments (a glottal-like harmonic source whose pitch glides, shaped by
the formant resonances of a vowel), unvoiced noise bursts (fricative-like, high-passed) and silences, and
is written in the LJSpeech layout (metadata.csv + wavs/). It is not speech, but it has what a vocoder must
reproduce: harmonics that follow a pitch contour, formants, noise and onsets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torchaudio.functional as AF

from diffwave.audio import write_audio
from diffwave.errors import DataError
from diffwave.fileio import atomic_write

# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney averages, adult male).
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
FORMANT_BANDWIDTHS = (90, 110, 170)


def _resonator(signal: torch.Tensor, sample_rate: int, centre: float, bandwidth: float) -> torch.Tensor:
    """Klatt's two-pole resonator with unit gain at 0 Hz."""
    c = -math.exp(-2 * math.pi * bandwidth / sample_rate)
    b = 2 * math.exp(-math.pi * bandwidth / sample_rate) * math.cos(2 * math.pi * centre / sample_rate)
    a_coeffs = torch.tensor([1.0, -b, -c], dtype=torch.float64)
    b_coeffs = torch.tensor([1 - b - c, 0.0, 0.0], dtype=torch.float64)
    return AF.lfilter(signal, a_coeffs, b_coeffs, clamp=False)


def _voiced(samples: int, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    start, end = (torch.rand(2, generator=generator, dtype=torch.float64) * 120 + 90).tolist()
    f0 = torch.linspace(start, end, samples, dtype=torch.float64)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    source = torch.zeros(samples, dtype=torch.float64)
    for k in range(1, int(sample_rate / 2 / max(start, end))):
        source += torch.sin(k * phase) / k
    vowel = VOWELS[int(torch.randint(len(VOWELS), (1,), generator=generator))]
    for centre, bandwidth in zip(vowel, FORMANT_BANDWIDTHS, strict=True):
        if centre < sample_rate / 2:
            source = _resonator(source, sample_rate, centre, bandwidth)
    return source / source.abs().max().clamp(min=1e-9)


def _unvoiced(samples: int, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(samples, generator=generator, dtype=torch.float64)
    centre = min(0.8 * sample_rate / 2, 3500.0)
    return 0.3 * _resonator(noise - noise.roll(1), sample_rate, centre, 1500.0) / 3


def synthesize_clip(seconds: float, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    """One clip: voiced segments, noise bursts and pauses with raised-cosine edges, peak 0.5, float32."""
    total = round(seconds * sample_rate)
    clip = torch.zeros(total, dtype=torch.float64)
    position = int(0.05 * sample_rate)
    while position < total:
        kind = torch.rand(1, generator=generator).item()
        length = int((0.08 + 0.25 * torch.rand(1, generator=generator).item()) * sample_rate)
        length = min(length, total - position)
        if kind < 0.6:
            segment = _voiced(length, sample_rate, generator)
        elif kind < 0.8:
            segment = _unvoiced(length, sample_rate, generator)
        else:
            segment = torch.zeros(length, dtype=torch.float64)
        ramp = min(length // 2, int(0.01 * sample_rate))
        if ramp > 0:
            edge = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, ramp, dtype=torch.float64))
            segment[:ramp] *= edge
            segment[length - ramp:] *= edge.flip(0)
        clip[position:position + length] = segment
        position += length
    clip += 1e-3 * torch.randn(total, generator=generator, dtype=torch.float64)  # a recording's noise floor
    return (0.5 * clip / clip.abs().max()).float()


def synthesize_corpus(out_dir: str | os.PathLike[str], clips: int = 24, seconds: float = 2.0,
                      sample_rate: int = 22050, seed: int = 0) -> Path:
    """Write `clips` speech-like clips as an LJSpeech-layout corpus (ids SYN001-0001 ...); returns out_dir."""
    out_dir = Path(out_dir)
    if clips < 1 or seconds <= 0.1:
        raise DataError(f"need at least 1 clip of more than 0.1 s, got {clips} clips of {seconds} s")
    if (out_dir / "metadata.csv").exists():
        raise DataError(f"{out_dir} already holds a corpus (metadata.csv); choose another folder")
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for index in range(1, clips + 1):
        item_id = f"SYN001-{index:04d}"
        length = seconds * (0.75 + 0.5 * torch.rand(1, generator=generator).item())
        write_audio(out_dir / "wavs" / f"{item_id}.wav", synthesize_clip(length, sample_rate, generator), sample_rate)
        rows.append(f"{item_id}|Synthetic clip {index}.|Synthetic clip {index}.\n")
    with atomic_write(out_dir / "metadata.csv") as temp:
        temp.write_text("".join(rows))
    return out_dir

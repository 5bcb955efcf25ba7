"""Synthetic test audio: harmonic tones shaped by formant filters, and WAV files built by hand.

Tests need speech-like signals (a harmonic spectrum with formant peaks over a faint noise floor) without
shipping recordings, and broken files that soundfile would never write (truncated, streamed headers).
Everything is deterministic given the seed. Layouts follow soundfile: [samples] or [samples, channels].
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

# (centre, bandwidth) in Hz of the first three formants of an /a/ vowel.
VOWEL_A_FORMANTS: tuple[tuple[float, float], ...] = ((730.0, 90.0), (1090.0, 110.0), (2440.0, 170.0))


def _resonate(signal: np.ndarray, sample_rate: int, centre: float, bandwidth: float) -> np.ndarray:
    """Klatt's two-pole formant resonator, unit gain at 0 Hz."""
    c = -np.exp(-2 * np.pi * bandwidth / sample_rate)
    b = 2 * np.exp(-np.pi * bandwidth / sample_rate) * np.cos(2 * np.pi * centre / sample_rate)
    return lfilter([1 - b - c], [1, -b, -c], signal)


def _mono_tone(sample_rate: int, num_samples: int, f0: float, num_harmonics: int | None,
               formants: tuple[tuple[float, float], ...], noise: float, amplitude: float,
               rng: np.random.Generator) -> np.ndarray:
    nyquist = sample_rate / 2
    available = int(np.ceil(nyquist / f0)) - 1  # harmonics strictly below Nyquist
    count = available if num_harmonics is None else min(num_harmonics, available)
    if count < 1:
        raise ValueError(f"f0 {f0} Hz has no harmonic below Nyquist ({nyquist} Hz)")
    t = np.arange(num_samples) / sample_rate
    k = np.arange(1, count + 1)[:, None]
    phases = rng.uniform(0, 2 * np.pi, size=(count, 1))
    signal = (np.sin(2 * np.pi * f0 * k * t + phases) / k).sum(axis=0)  # 1/k: a sawtooth-like source
    for centre, bandwidth in formants:
        if centre < nyquist:
            signal = _resonate(signal, sample_rate, centre, bandwidth)
    signal = signal / np.abs(signal).max() + noise * rng.standard_normal(num_samples)
    return amplitude * signal / np.abs(signal).max()


def harmonic_tone(sample_rate: int, duration: float, *, channels: int = 1, seed: int = 0,
                  f0: float = 220.0, num_harmonics: int | None = None,
                  formants: tuple[tuple[float, float], ...] = VOWEL_A_FORMANTS, noise: float = 1e-2,
                  amplitude: float = 0.5) -> np.ndarray:
    """A voiced, vowel-like float32 signal: harmonics of f0 with 1/k amplitudes and random phases,
    through formant resonators, plus white noise `noise` times the peak (-40 dB by default, like a
    recording's noise floor), scaled to peak `amplitude`.

    `num_harmonics=1, formants=()` gives a pure sine at f0. Channel c uses f0 * 1.5**c and its own
    random draws, so channels differ (a downmix that keeps only channel 0 is caught). Returns
    [samples] for one channel, else [samples, channels].
    """
    rng = np.random.default_rng(seed)
    num_samples = round(sample_rate * duration)
    tones = [_mono_tone(sample_rate, num_samples, f0 * 1.5**c, num_harmonics, formants, noise, amplitude,
                        rng) for c in range(channels)]
    stacked = np.stack(tones, axis=1).astype(np.float32)
    return stacked[:, 0] if channels == 1 else stacked


def write_tone(path: str | os.PathLike[str], sample_rate: int, duration: float, *, channels: int = 1,
               seed: int = 0, subtype: str = "PCM_16", **tone: Any) -> np.ndarray:
    """Write `harmonic_tone(...)` with soundfile; returns the samples as stored (after quantisation)."""
    sf.write(path, harmonic_tone(sample_rate, duration, channels=channels, seed=seed, **tone), sample_rate,
             subtype=subtype)
    return sf.read(path, dtype="float32")[0]


def pcm16_wav_bytes(samples: np.ndarray, sample_rate: int, *, riff_size: int | None = None,
                    data_size: int | None = None) -> bytes:
    """A canonical 44-byte-header 16-bit PCM WAV built by hand, for headers soundfile would not write.

    `samples` is float in [-1, 1], [samples] or [samples, channels]. `riff_size` and `data_size`
    replace the true header fields (streamed placeholders, or a header that lies).
    """
    frames = samples if samples.ndim == 2 else samples[:, None]
    channels = frames.shape[1]
    data = np.round(np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * 2 * channels, 2 * channels, 16)
    data_size = len(data) if data_size is None else data_size
    riff_size = 36 + len(data) if riff_size is None else riff_size
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_size) + data)


def chop(path: str | os.PathLike[str], num_bytes: int) -> None:
    """Cut `num_bytes` off the end of a file, as an interrupted copy or download would."""
    path = Path(path)
    path.write_bytes(path.read_bytes()[:-num_bytes])

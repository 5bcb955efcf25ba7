"""Denoising measured as a user meets it: clean held-out speech plus white or pink noise at a set SNR, cleaned
by `diffwave.denoise` and by network-free baselines, scored against the clean speech.

Baselines see only the noisy signal, as the diffusion prior does. The Wiener filter reads the noise power
spectrum from the quietest frames (as `denoise` reads its noise level) and applies the decision-directed
a priori SNR gain of Ephraim and Malah (1984) through scipy's STFT; spectral gating is `noisereduce` (Sainburg
et al. 2020) with its defaults (non-stationary gating), as a user would call it. scipy, noisereduce, pesq and
pystoi are in the `eval` and `dev` extras, not runtime dependencies. Scores: SI-SDR improvement over the noisy
input (dB), PESQ wideband and STOI.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from diffwave.errors import MissingExtraError
from diffwave.evaluation.metrics import pesq_score, si_sdr, stoi_score

Denoiser = Callable[[np.ndarray], np.ndarray]  # noisy [samples] -> estimate [samples], both float64

QUIET_FRACTION = 0.10  # of the frames, by power: where the Wiener filter reads the noise spectrum
DECISION_DIRECTED = 0.98  # weight of the previous frame's clean estimate in the a priori SNR
GAIN_FLOOR = 0.1  # -20 dB: the least a bin is let through, against musical noise
NOISES = ("white", "pink")
METRICS = ("SI-SDRi", "PESQ", "STOI")


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"this needs the '{module}' package: pip install 'diffwave-toolkit[eval]'") from None


def coloured_noise(length: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power Gaussian noise: white, or pink (power spectral density proportional to 1/f)."""
    white = rng.standard_normal(length)
    if colour == "white":
        return white
    if colour != "pink":
        raise ValueError(f"noise must be one of {NOISES}, got {colour}")
    spectrum = np.fft.rfft(white)
    frequencies = np.arange(spectrum.size, dtype=np.float64)
    frequencies[0] = 1.0  # keep the DC bin finite; it carries no weight after the mean removal below
    pink = np.fft.irfft(spectrum / np.sqrt(frequencies), n=length)
    pink -= pink.mean()
    return pink / np.sqrt(np.mean(pink**2))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clean + noise scaled so that the power ratio over the whole clip is `snr_db`."""
    scale = np.sqrt(np.mean(clean**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return clean + scale * noise


def wiener_filter(noisy: np.ndarray, sample_rate: int, frame_seconds: float = 0.032) -> np.ndarray:
    """`noisy` [samples] -> the Wiener-filtered signal, the same length."""
    signal = _require("scipy.signal")
    noisy = np.asarray(noisy, dtype=np.float64)
    window = max(16, round(frame_seconds * sample_rate))
    _, _, spectrum = signal.stft(noisy, sample_rate, nperseg=window, noverlap=window * 3 // 4)
    power = np.abs(spectrum) ** 2
    frame_power = power.mean(axis=0)
    noise = np.maximum(power[:, frame_power <= np.quantile(frame_power, QUIET_FRACTION)].mean(axis=1), 1e-20)
    gains = np.empty_like(power)
    previous = np.zeros_like(noise)  # the previous frame's |clean estimate|^2
    for frame in range(power.shape[1]):
        posterior = power[:, frame] / noise
        prior = DECISION_DIRECTED * previous / noise + (1 - DECISION_DIRECTED) * np.maximum(posterior - 1, 0)
        gains[:, frame] = np.maximum(prior / (1 + prior), GAIN_FLOOR)
        previous = gains[:, frame] ** 2 * power[:, frame]
    _, clean = signal.istft(gains * spectrum, sample_rate, nperseg=window, noverlap=window * 3 // 4)
    return _same_length(clean, noisy.size)


def spectral_gating(noisy: np.ndarray, sample_rate: int) -> np.ndarray:
    """`noisy` [samples] -> noisereduce's spectral gating with its defaults, the same length."""
    noisereduce = _require("noisereduce")
    clean = noisereduce.reduce_noise(y=np.asarray(noisy, dtype=np.float64), sr=sample_rate)
    return _same_length(np.asarray(clean, dtype=np.float64), len(noisy))


def _same_length(audio: np.ndarray, length: int) -> np.ndarray:
    return audio[:length] if audio.size >= length else np.pad(audio, (0, length - audio.size))


def baselines(sample_rate: int) -> dict[str, Denoiser]:
    return {"Wiener filter": lambda noisy: wiener_filter(noisy, sample_rate),
            "noisereduce": lambda noisy: spectral_gating(noisy, sample_rate)}


def scores(clean: np.ndarray, estimate: np.ndarray, noisy: np.ndarray, sample_rate: int) -> dict[str, float]:
    reference, estimate_t = torch.from_numpy(clean).float(), torch.from_numpy(estimate).float()
    improvement = si_sdr(reference, estimate_t) - si_sdr(reference, torch.from_numpy(noisy).float())
    return {"SI-SDRi": improvement, "PESQ": pesq_score(reference, estimate_t, sample_rate),
            "STOI": stoi_score(reference, estimate_t, sample_rate)}


@dataclass(frozen=True)
class Row:
    """Mean scores of one system on one set of clips under one noise and SNR."""

    clips: str
    noise: str
    snr_db: float
    system: str
    means: dict[str, float]
    real_time_factor: float

    def markdown(self) -> str:
        return (f"| {self.clips} | {self.noise} | {self.snr_db:g} | {self.system} | {self.means['SI-SDRi']:+.2f} | "
                f"{self.means['PESQ']:.3f} | {self.means['STOI']:.3f} | {self.real_time_factor:.3f} |")


TABLE_HEAD = ("| clips | noise | SNR dB | system | SI-SDRi dB | PESQ wb | STOI | RTF |\n"
              "|---|---|---|---|---|---|---|---|")


def noisy_versions(cleans: Sequence[np.ndarray], colour: str, snr_db: float, seed: int) -> list[np.ndarray]:
    """The clips with their noise: seeded by (seed, SNR, colour) alone, so every system gets the same mixtures."""
    rng = np.random.default_rng([seed, round(snr_db * 100) % 2**32, NOISES.index(colour)])
    return [mix_at_snr(clean, coloured_noise(clean.size, colour, rng), snr_db) for clean in cleans]


def evaluate(name: str, cleans: Sequence[np.ndarray], sample_rate: int, denoisers: dict[str, Denoiser],
             snrs: Sequence[float], noises: Sequence[str], seed: int = 0,
             on_row: Callable[[Row], None] | None = None,
             outputs: dict[tuple[str, float, str], list[np.ndarray]] | None = None) -> list[Row]:
    """One Row per (noise, SNR, system), the noisy input first; `on_row` sees each as it is finished, and
    `outputs`, when given, receives each system's audio per clip under (noise, SNR, system)."""
    rows = []
    seconds = sum(clean.size for clean in cleans) / sample_rate
    for colour in noises:
        for snr_db in snrs:
            mixtures = noisy_versions(cleans, colour, snr_db, seed)
            for system, run in ({"noisy input": lambda noisy: noisy} | dict(denoisers)).items():
                per_clip, estimates, compute = [], [], 0.0
                for clean, noisy in zip(cleans, mixtures, strict=True):
                    start = time.perf_counter()
                    estimates.append(run(noisy))
                    compute += time.perf_counter() - start
                    per_clip.append(scores(clean, estimates[-1], noisy, sample_rate))
                if outputs is not None:
                    outputs[colour, snr_db, system] = estimates
                means = {metric: float(np.mean([clip[metric] for clip in per_clip])) for metric in METRICS}
                rows.append(Row(name, colour, snr_db, system, means, compute / seconds))
                if on_row is not None:
                    on_row(rows[-1])
    return rows

"""Objective measures between a reference and an estimate (1-D float tensors at one sample rate).

Listening is the real test of a vocoder; these numbers make runs comparable and catch regressions:

- `si_sdr`: scale-invariant SDR (Le Roux et al. 2019), in dB, higher is better. Waveform-level, so it
  rewards phase agreement, which a vocoder is not asked for; most useful for denoising.
- `log_mel_distance`: mean |log-mel difference| with the model's own front-end (`LogMel`), lower is
  better. What the conditional model is trained to reproduce.
- `multi_resolution_stft_distance`: the multi-resolution STFT loss of Parallel WaveGAN (Yamamoto et al.
  2020), lower is better. Phase-blind, at three time/frequency trade-offs.
- `pesq_score`, `stoi_score`: perceptual scores through the optional `pesq` and `pystoi` packages
  (``pip install 'diffwave-toolkit[eval]'``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchaudio.functional as AF
from torch import Tensor

from diffwave.audio.mel import LogMel
from diffwave.config import AudioConfig
from diffwave.errors import MissingExtraError

# SI-SDR's error energy is floored at this fraction of the estimate's energy, so an exact (scaled) copy
# scores a finite 120 dB rather than dividing by zero.
SI_SDR_FLOOR = 1e-12
STFT_MAGNITUDE_FLOOR = 1e-7  # magnitudes are clamped here before the log (Parallel WaveGAN's value)
DEFAULT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024),
                                                         (2048, 512, 2048))
PESQ_SAMPLE_RATE = 16000  # wideband PESQ (ITU-T P.862.2) is defined at 16 kHz only
EVAL_EXTRA_HINT = "install the eval extra: pip install 'diffwave-toolkit[eval]'"


def _check_signal(name: str, signal: Tensor) -> None:
    if signal.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of samples, got shape {tuple(signal.shape)}")


def _check_pair(reference: Tensor, estimate: Tensor) -> None:
    _check_signal("reference", reference)
    _check_signal("estimate", estimate)
    if reference.shape != estimate.shape:
        raise ValueError(f"reference and estimate must have the same length, got {reference.numel()} "
                         f"and {estimate.numel()} samples")


def si_sdr(reference: Tensor, estimate: Tensor) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019, eq. 5).

    Both signals are made zero-mean and the estimate is projected on the reference: the projection is
    the target, the rest is the error, so rescaling the estimate changes nothing. An exact (scaled)
    copy gives 120 dB (`SI_SDR_FLOOR`); a silent estimate recovers nothing and gives -inf.
    Raises ValueError for signals of different lengths or a silent (or constant) reference.
    """
    _check_pair(reference, estimate)
    ref = reference.double() - reference.double().mean()
    est = estimate.double() - estimate.double().mean()
    ref_energy = ref.dot(ref)
    if ref_energy == 0:
        raise ValueError("the reference is silent (or constant): SI-SDR needs a reference with energy")
    target = (est.dot(ref) / ref_energy) * ref
    error = est - target
    ratio = target.dot(target) / (error.dot(error) + SI_SDR_FLOOR * est.dot(est))
    return 10 * math.log10(ratio.item()) if ratio > 0 else -math.inf


def log_mel_distance(reference: Tensor, estimate: Tensor, audio_config: AudioConfig) -> float:
    """Mean absolute difference of the two log-mels from `LogMel(audio_config)`, over the frames both have.

    With the hifigan preset (natural log of magnitudes) a gain of g away from the clamp floor adds
    |ln g|; with lmnt the mel is a normalised dB scale in [0, 1], so values are smaller.
    """
    _check_signal("reference", reference)
    _check_signal("estimate", estimate)
    log_mel = LogMel(audio_config).to(reference.device)
    ref_mel, est_mel = log_mel(reference), log_mel(estimate)
    frames = min(ref_mel.shape[-1], est_mel.shape[-1])
    return (ref_mel[:, :frames] - est_mel[:, :frames]).abs().mean().item()


def _stft_magnitude(signal: Tensor, n_fft: int, hop_length: int, win_length: int) -> Tensor:
    """|STFT| [n_fft // 2 + 1, frames]: centred frames (reflect padding), Hann window, clamped at the floor."""
    window = torch.hann_window(win_length, device=signal.device)
    spec = torch.stft(signal.float(), n_fft, hop_length=hop_length, win_length=win_length, window=window,
                      return_complex=True)
    return spec.abs().clamp(min=STFT_MAGNITUDE_FLOOR)


def stft_distance_terms(reference: Tensor, estimate: Tensor, n_fft: int, hop_length: int,
                        win_length: int) -> tuple[float, float]:
    """(spectral convergence, mean |log magnitude difference|) at one STFT resolution.

    Spectral convergence ||S_ref - S_est||_F / ||S_ref||_F weighs the loud parts (spectral peaks); the
    log term weighs every bin alike, quiet ones included. Signals must have equal lengths.
    """
    _check_pair(reference, estimate)
    if reference.numel() <= n_fft // 2:
        raise ValueError(f"signals of {reference.numel()} samples are too short for n_fft {n_fft}: "
                         f"centred frames need more than {n_fft // 2} samples")
    ref_mag = _stft_magnitude(reference, n_fft, hop_length, win_length)
    est_mag = _stft_magnitude(estimate, n_fft, hop_length, win_length)
    convergence = torch.linalg.norm(ref_mag - est_mag) / torch.linalg.norm(ref_mag)
    log_distance = (ref_mag.log() - est_mag.log()).abs().mean()
    return convergence.item(), log_distance.item()


def multi_resolution_stft_distance(reference: Tensor, estimate: Tensor,
                                   resolutions: Sequence[tuple[int, int, int]] = DEFAULT_RESOLUTIONS) -> float:
    """Multi-resolution STFT loss (Parallel WaveGAN): spectral convergence plus log-magnitude distance,
    averaged over `resolutions` of (n_fft, hop_length, win_length). No single STFT resolves both the
    pitch harmonics and the transients, hence several.
    """
    if not resolutions:
        raise ValueError("multi_resolution_stft_distance needs at least one (n_fft, hop, win) resolution")
    totals = [sum(stft_distance_terms(reference, estimate, *resolution)) for resolution in resolutions]
    return sum(totals) / len(totals)


def pesq_score(reference: Tensor, estimate: Tensor, sample_rate: int) -> float:
    """Wideband PESQ (MOS-LQO, about 1.0 to 4.6) through the optional `pesq` package.

    The signals are resampled to 16 kHz first, the only rate wideband PESQ is defined at.
    """
    try:
        from pesq import pesq
    except ImportError as error:
        raise MissingExtraError(f"pesq_score needs the 'pesq' package: {EVAL_EXTRA_HINT}") from error
    _check_pair(reference, estimate)
    ref, est = (AF.resample(signal.double(), sample_rate, PESQ_SAMPLE_RATE).cpu().numpy()
                for signal in (reference, estimate))
    return float(pesq(PESQ_SAMPLE_RATE, ref, est, "wb"))


def stoi_score(reference: Tensor, estimate: Tensor, sample_rate: int, extended: bool = False) -> float:
    """STOI intelligibility (0 to 1; `extended` for ESTOI) through the optional `pystoi` package,
    which resamples to its own 10 kHz internally.
    """
    try:
        from pystoi import stoi
    except ImportError as error:
        raise MissingExtraError(f"stoi_score needs the 'pystoi' package: {EVAL_EXTRA_HINT}") from error
    _check_pair(reference, estimate)
    ref, est = (signal.double().cpu().numpy() for signal in (reference, estimate))
    return float(stoi(ref, est, sample_rate, extended=extended))

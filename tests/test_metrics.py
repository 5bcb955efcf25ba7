"""Objective metrics against values computed by hand: known SNRs, known gains, a numpy STFT."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from diffwave.config import AudioConfig
from diffwave.errors import MissingExtraError
from diffwave.evaluation.metrics import (
    EVAL_EXTRA_HINT,
    log_mel_distance,
    multi_resolution_stft_distance,
    pesq_score,
    si_sdr,
    stft_distance_terms,
    stoi_score,
)
from tests.audio_fixtures import harmonic_tone

SAMPLE_RATE = 22050


@pytest.fixture(scope="module")
def tone() -> torch.Tensor:
    return torch.from_numpy(harmonic_tone(SAMPLE_RATE, 1.0, seed=3))


def noise_at_snr(reference: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    """White noise whose power is `snr_db` below the reference's."""
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scale = (reference.double().pow(2).mean() / noise.pow(2).mean() / 10 ** (snr_db / 10)).sqrt()
    return (noise * scale).float()


# --- SI-SDR ---------------------------------------------------------------------------------------------

def test_si_sdr_of_a_scaled_copy_is_large_and_finite(tone):
    score = si_sdr(tone, 0.5 * tone)
    assert 100 <= score < math.inf


def test_si_sdr_matches_the_snr_of_added_noise(tone):
    # Independent noise is nearly orthogonal to the reference, so the projection keeps the
    # reference and the error is the noise: SI-SDR ~ SNR.
    for snr_db in (0.0, 10.0, 20.0):
        assert si_sdr(tone, tone + noise_at_snr(tone, snr_db)) == pytest.approx(snr_db, abs=0.5)


def test_si_sdr_of_independent_noise_is_very_low(tone):
    # Only the chance correlation (~1 / sqrt(samples)) projects on the reference: about -43 dB here.
    assert si_sdr(tone, noise_at_snr(tone, 0.0)) < -20


def test_si_sdr_rejects_mismatched_lengths_and_silent_references(tone):
    with pytest.raises(ValueError, match="same length"):
        si_sdr(tone, tone[:-1])
    with pytest.raises(ValueError, match="silent"):
        si_sdr(torch.zeros_like(tone), tone)
    with pytest.raises(ValueError, match="silent"):
        si_sdr(torch.full_like(tone, 0.3), tone)  # constant: silent once the mean is removed


# --- log-mel distance -----------------------------------------------------------------------------------

def test_log_mel_distance_of_identical_signals_is_zero(tone):
    assert log_mel_distance(tone, tone.clone(), AudioConfig()) == 0.0


def test_log_mel_distance_of_a_gain_is_its_log():
    # hifigan: ln(mel magnitude); doubling the amplitude (+6.02 dB) adds ln 2 in every bin well above
    # the 1e-5 floor, which a full-scale tone with a -40 dB noise floor is.
    loud = torch.from_numpy(harmonic_tone(SAMPLE_RATE, 1.0, seed=4, amplitude=0.5))
    assert log_mel_distance(loud, 2 * loud, AudioConfig(mel_preset="hifigan")) == pytest.approx(
        math.log(2), abs=0.05)


def test_log_mel_distance_grows_with_noise(tone):
    config = AudioConfig()
    distances = [log_mel_distance(tone, tone + noise_at_snr(tone, snr), config) for snr in (30, 10, 0)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_log_mel_distance_uses_the_frames_both_have(tone):
    # A shorter copy: the frames agree except the last few, whose reflect padding differs.
    assert 0 < log_mel_distance(tone, tone[:-1000], AudioConfig()) < 0.05


# --- multi-resolution STFT ------------------------------------------------------------------------------

def test_mr_stft_distance_of_identical_signals_is_zero(tone):
    assert multi_resolution_stft_distance(tone, tone.clone()) == 0.0


def test_mr_stft_distance_grows_with_noise(tone):
    cleaner = multi_resolution_stft_distance(tone, tone + noise_at_snr(tone, 20))
    noisier = multi_resolution_stft_distance(tone, tone + noise_at_snr(tone, 0))
    assert 0 < cleaner < noisier


def test_mr_stft_distance_is_the_mean_over_resolutions(tone):
    estimate = tone + noise_at_snr(tone, 10)
    resolutions = ((512, 128, 512), (1024, 256, 800))
    expected = np.mean([sum(stft_distance_terms(tone, estimate, *r)) for r in resolutions])
    assert multi_resolution_stft_distance(tone, estimate, resolutions) == pytest.approx(expected, rel=1e-6)


def numpy_magnitude(signal: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """Centred STFT by hand: reflect-pad n_fft // 2, periodic Hann window zero-padded to n_fft in the
    middle, rfft per frame; magnitudes clamped at 1e-7. [bins, frames]."""
    padded = np.pad(signal.astype(np.float64), n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left:left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    frames = 1 + (len(padded) - n_fft) // hop
    stack = np.stack([padded[i * hop:i * hop + n_fft] * window for i in range(frames)], axis=1)
    return np.maximum(np.abs(np.fft.rfft(stack, axis=0)), 1e-7)


@pytest.mark.parametrize("resolution", [(512, 128, 512), (1024, 256, 800)])
def test_stft_terms_match_a_numpy_stft(tone, resolution):
    estimate = tone + noise_at_snr(tone, 5)
    ref_mag = numpy_magnitude(tone.numpy(), *resolution)
    est_mag = numpy_magnitude(estimate.numpy(), *resolution)
    convergence = np.linalg.norm(ref_mag - est_mag) / np.linalg.norm(ref_mag)
    log_distance = np.abs(np.log(ref_mag) - np.log(est_mag)).mean()
    got_convergence, got_log_distance = stft_distance_terms(tone, estimate, *resolution)
    assert got_convergence == pytest.approx(convergence, abs=1e-4)
    assert got_log_distance == pytest.approx(log_distance, abs=1e-3)
    assert multi_resolution_stft_distance(tone, estimate, [resolution]) == pytest.approx(
        convergence + log_distance, abs=1e-3)


def test_stft_distance_rejects_too_short_or_mismatched_signals(tone):
    with pytest.raises(ValueError, match="too short"):
        multi_resolution_stft_distance(tone[:1000], tone[:1000])
    with pytest.raises(ValueError, match="same length"):
        multi_resolution_stft_distance(tone, tone[:-1])


# --- optional perceptual scores -------------------------------------------------------------------------

@pytest.mark.parametrize(("score", "package"), [(pesq_score, "pesq"), (stoi_score, "pystoi")])
def test_perceptual_scores_name_the_eval_extra_when_missing(tone, monkeypatch, score, package):
    monkeypatch.setitem(sys.modules, package, None)  # import of a None entry raises ImportError
    with pytest.raises(ImportError, match="pip install 'diffwave-toolkit\\[eval\\]'") as caught:
        score(tone, tone, SAMPLE_RATE)
    assert isinstance(caught.value, MissingExtraError)
    assert EVAL_EXTRA_HINT in str(caught.value)


def test_perceptual_scores_rank_a_clean_copy_above_a_noisy_one(tone):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    tone = torch.from_numpy(harmonic_tone(SAMPLE_RATE, 3.0, seed=3))  # both need a few seconds
    noisy = tone + noise_at_snr(tone, 0)
    assert pesq_score(tone, tone, SAMPLE_RATE) > pesq_score(tone, noisy, SAMPLE_RATE)
    assert stoi_score(tone, tone, SAMPLE_RATE) > stoi_score(tone, noisy, SAMPLE_RATE)

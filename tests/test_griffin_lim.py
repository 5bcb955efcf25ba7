"""Griffin-Lim from a log-mel: the filterbank inversion in closed form, and the audio in time and frequency."""

import numpy as np
import pytest
import torch

from diffwave.audio import LogMel
from diffwave.audio.griffin_lim import griffin_lim, linear_magnitude, rescale_to_mel
from diffwave.config import load_config
from tests.audio_fixtures import harmonic_tone

BASE = load_config("base").audio
LMNT = load_config("lmnt").audio


@pytest.mark.parametrize("audio", [BASE, LMNT], ids=["hifigan", "lmnt"])
def test_filterbank_inversion_recovers_a_spectrum_in_the_row_space(audio):
    # For S = B^T y with y >= 0, B S = (B B^T) y and the minimum-norm solution of B x = B S is S itself (>= 0, so
    # the clamp keeps it): the inversion must return it exactly, undoing each preset's compression and scaling.
    basis = LogMel(audio).mel_basis.double()
    y = torch.rand(audio.n_mels, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    spectrum = basis.T @ y
    mel_magnitude = basis @ spectrum
    if audio.mel_preset == "lmnt":
        norm = torch.hann_window(audio.win_length, dtype=torch.float64).pow(2).sum().sqrt()
        mel = (20 * torch.log10(mel_magnitude / norm) + 80) / 100  # the lmnt compression of the normalised STFT
        expected = spectrum
    else:
        mel, expected = mel_magnitude.log(), spectrum
    assert audio.mel_preset == "hifigan" or mel.min() > 0 and mel.max() < 1  # inside the lmnt clamp
    torch.testing.assert_close(linear_magnitude(mel.float(), audio).double(), expected, rtol=2e-4, atol=1e-5)


def test_a_tone_comes_back_at_its_frequency_and_level():
    rate, f0 = BASE.sample_rate, 441.0
    t = np.arange(rate) / rate
    tone = torch.from_numpy(0.5 * np.sin(2 * np.pi * f0 * t)).float()
    out = griffin_lim(LogMel(BASE)(tone), BASE)
    assert out.numel() == (rate // BASE.hop_length) * BASE.hop_length
    middle = out[4096:-4096].double().numpy()
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size)))
    peak_hz = np.argmax(spectrum) * rate / middle.size
    assert abs(peak_hz - f0) < 15.0  # the mel bands near 441 Hz are 37 Hz apart: finer detail is not in the mel
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_the_output_lines_up_with_the_audio_the_mel_came_from():
    # A noise burst in silence: its energy centroid must come back where it was (frames are centred 128
    # samples after n * hop for hifigan; forgetting that shift moves the centroid by 128 samples).
    rate = BASE.sample_rate
    burst = torch.zeros(rate)
    start, width = 10_000, 2048
    burst[start:start + width] = 0.3 * torch.randn(width, generator=torch.Generator().manual_seed(1))
    out = griffin_lim(LogMel(BASE)(burst), BASE, seed=3)

    def centroid(x: torch.Tensor) -> float:
        energy = x[:out.numel()].double() ** 2
        return float((energy * torch.arange(energy.numel())).sum() / energy.sum())

    assert abs(centroid(out) - centroid(burst)) < 40


def test_the_seed_decides_the_phase_and_leaves_the_global_generator_alone():
    mel = LogMel(BASE)(0.1 * torch.randn(8192, generator=torch.Generator().manual_seed(2)))
    state = torch.get_rng_state()
    a, b, c = griffin_lim(mel, BASE, 5, seed=0), griffin_lim(mel, BASE, 5, seed=0), griffin_lim(mel, BASE, 5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(("audio", "far"), [(BASE, 0.2), (LMNT, 0.03)], ids=["hifigan", "lmnt"])
def test_envelope_rescaling_moves_the_mel_to_its_target_and_keeps_a_match(audio, far):
    """A signal whose bands were tilted by a known smooth gain gets its mel back (the ratio the rescaling corrects
    is exact per band); a signal already at its target is left as it is; zero passes change nothing."""
    rate = audio.sample_rate
    reference = torch.from_numpy(harmonic_tone(rate, 0.8, seed=2)).float() * 0.3
    target = LogMel(audio)(reference)
    spectrum = torch.fft.rfft(reference.double())
    tilt = torch.linspace(2.0, 0.25, spectrum.numel(), dtype=torch.float64)  # +6 dB at DC to -12 dB at Nyquist
    tilted = torch.fft.irfft(spectrum * tilt, n=reference.numel()).float()

    def distance(signal: torch.Tensor) -> float:
        return (LogMel(audio)(signal)[:, : target.shape[1]] - target).abs().mean().item()

    assert distance(tilted) > far  # the tilt is far from the target (ln units for hifigan, dB / 100 for lmnt)
    assert distance(rescale_to_mel(tilted, target, audio)) < 0.2 * distance(tilted)
    assert torch.equal(rescale_to_mel(tilted, target, audio, passes=0), tilted)
    torch.testing.assert_close(rescale_to_mel(reference, target, audio), reference, atol=1e-5, rtol=0)

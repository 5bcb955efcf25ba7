"""SpecGrad's prior (audio/prior.py SpectralPrior, diffusion/noise_priors.py): the filter from the mel, the
noise it shapes (checked against scipy's Welch spectrum), its inverse, and its use by the loop, the losses,
training and the vocoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from scipy.signal import welch

from diffwave.audio import LogMel
from diffwave.audio.prior import (
    EnergyPrior,
    SpectralPrior,
    SpectralShaper,
    corpus_energy_range,
    prior_from_config,
)
from diffwave.config import AudioConfig, load_config
from diffwave.diffusion import NoiseSchedule, diffusion_loss, fast_schedule, sample, variational_bound
from diffwave.errors import ConfigError
from diffwave.inference import Vocoder
from diffwave.training.distill import distill
from diffwave.training.run import train
from tests.audio_fixtures import harmonic_tone

AUDIO = AudioConfig()
QUIET = ["train.log_every=100000", "train.valid_every=100000", "train.sample_every=100000",
         "data.valid_fraction=0.1", "data.test_fraction=0.05"]


def _voice_mel() -> torch.Tensor:
    tone = harmonic_tone(AUDIO.sample_rate, 0.5, f0=150.0, noise=0.0)
    tone[len(tone) // 2:] *= 0.1
    return LogMel(AUDIO)(torch.from_numpy(0.4 * tone / np.abs(tone).max()).float())


def test_the_filter_follows_the_envelope_scaled_to_the_frame_std():
    """H written out with numpy: each linear bin averages the mel magnitudes of the bands covering it, weighted
    by the filterbank (0 where none does); divided by the frame's largest bin, its square root times S_t,
    clipped to [floor, 1]."""
    mel = _voice_mel()
    e_min, e_max = corpus_energy_range([mel], AUDIO)
    energy = EnergyPrior(AUDIO, e_min, e_max, floor=0.1)
    gain = SpectralPrior(energy).gain(mel).double().numpy()
    basis = AF.melscale_fbanks(AUDIO.n_fft // 2 + 1, AUDIO.f_min, AUDIO.f_max, AUDIO.n_mels, AUDIO.sample_rate,
                               norm="slaney", mel_scale="slaney").double().numpy()  # [bins, n_mels]
    magnitudes = np.exp(mel.double().numpy())
    weight = basis.sum(axis=1)
    envelope = np.zeros((basis.shape[0], mel.shape[1]))
    covered = weight > 0
    envelope[covered] = (basis[covered] @ magnitudes) / weight[covered, None]
    std = energy.frame_std(mel).double().numpy()
    expected = np.clip(std * np.sqrt(envelope / envelope.max(axis=0)), 0.1, 1.0)
    np.testing.assert_allclose(gain, expected, rtol=1e-4, atol=1e-6)
    assert gain.shape == (AUDIO.n_fft // 2 + 1, mel.shape[1])
    assert gain.max() == pytest.approx(1.0) and gain.min() == pytest.approx(0.1)
    loud, quiet = gain[:, 5], gain[:, -5]
    assert quiet.max() < 0.5 * loud.max()  # the energy envelope survives
    assert (loud > 0.3).sum() > 10  # and the loud frame has a spectral shape above the floor


def test_shaped_noise_has_the_filters_power_spectrum_and_whitening_undoes_it():
    """With a gain fixed over time, L z is stationary noise of power spectrum H(f)^2: scipy's Welch estimate of
    it, over the same bins, divided by that of z itself, is H^2. An all-ones gain is the identity, and whitening
    a shaped signal gives the noise back."""
    bins, frames = AUDIO.n_fft // 2 + 1, 40
    freqs = np.linspace(0, AUDIO.sample_rate / 2, bins)
    profile = np.clip(np.exp(-freqs / 2000.0), 0.1, 1.0)
    shaper = SpectralShaper(torch.from_numpy(profile).float()[:, None].expand(bins, frames).clone(), AUDIO)
    z = torch.randn(16, frames * AUDIO.hop_length, generator=torch.Generator().manual_seed(0))
    shaped = shaper.shape(z)
    _, white_power = welch(z.numpy(), nperseg=AUDIO.n_fft, window="hann", axis=-1)
    _, shaped_power = welch(shaped.numpy(), nperseg=AUDIO.n_fft, window="hann", axis=-1)
    ratio = shaped_power.mean(axis=0) / white_power.mean(axis=0)
    inner = slice(4, bins - 4)
    np.testing.assert_allclose(ratio[inner], profile[inner] ** 2, rtol=0.15, atol=2e-3)
    ones = SpectralShaper(torch.ones(bins, frames), AUDIO)
    torch.testing.assert_close(ones.shape(z), z, atol=1e-5, rtol=0)
    varying = SpectralPrior(EnergyPrior(AUDIO, *corpus_energy_range([_voice_mel()], AUDIO), floor=0.1))
    shaper = varying.noise_prior(_voice_mel()[None])
    z = torch.randn(1, _voice_mel().shape[-1] * AUDIO.hop_length, generator=torch.Generator().manual_seed(1))
    assert (shaper.whiten(shaper.shape(z)) - z).norm() < 0.1 * z.norm()
    assert (shaper.shape(z) - z).norm() > 0.5 * z.norm()


class _Multiply:
    """A shaper that multiplies by S: the loop and the losses must treat it exactly as the tensor prior S."""

    def __init__(self, std: torch.Tensor) -> None:
        self.std = std

    def shape(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.std

    def whiten(self, residual: torch.Tensor) -> torch.Tensor:
        return residual / self.std


def test_a_shaper_goes_wherever_the_diagonal_prior_goes():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    generator = torch.Generator().manual_seed(2)
    std = torch.rand(3, 200, generator=generator) + 0.2
    x0 = torch.randn(3, 200, generator=generator)
    eps_fn = lambda x, t: 0.5 * x  # noqa: E731
    plan = fast_schedule(schedule, "base")
    for corrector in (0, 1):
        runs = [sample(plan, eps_fn, (3, 200), generator=torch.Generator().manual_seed(3), prior_std=prior,
                       corrector_steps=corrector) for prior in (std, _Multiply(std))]
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-6, atol=1e-7)
        assert not torch.allclose(runs[0], sample(plan, eps_fn, (3, 200), generator=torch.Generator().manual_seed(3),
                                                  corrector_steps=corrector))
    losses = [diffusion_loss(eps_fn, schedule, x0, generator=torch.Generator().manual_seed(4), prior_std=prior)[0]
              for prior in (std, _Multiply(std))]
    torch.testing.assert_close(losses[0], losses[1])
    with pytest.raises(ValueError, match="diagonal prior"):
        variational_bound(eps_fn, schedule, x0, prior_std=_Multiply(std))


def test_config_and_the_unconditional_refusal():
    with pytest.raises(ConfigError, match="'specgrad', but the model is unconditional"):
        load_config("unconditional", ["diffusion.prior=specgrad"])
    config = load_config("tiny", ["diffusion.prior=specgrad", "diffusion.prior_energy_min=0.1",
                                  "diffusion.prior_energy_max=3.0"])
    prior = prior_from_config(config)
    assert isinstance(prior, SpectralPrior) and prior.energy == EnergyPrior(config.audio, 0.1, 3.0, 0.1)
    assert prior_from_config(load_config("tiny")) is None


def test_a_specgrad_run_trains_and_vocodes(tiny_features, tmp_path):
    """Training (with validation) and vocoding run under the spectral prior; the vocoder's windows get the
    filters of their own frames, and chunked output stays close to unchunked where windows overlap."""
    run = tmp_path / "run"
    config = load_config("tiny", [*QUIET, "diffusion.prior=specgrad", "train.max_steps=3", "train.save_every=3",
                                  "train.valid_every=3"])
    result = train(config, tiny_features, run, device="cpu")
    assert all(math.isfinite(loss) for loss in result.losses)
    vocoder = Vocoder.from_checkpoint(run / "checkpoints" / "step_00000003.pt", device="cpu")
    assert isinstance(vocoder.prior, SpectralPrior)
    tone = harmonic_tone(vocoder.sample_rate, 1.0, f0=180.0)
    mel = vocoder.mel(tone, vocoder.sample_rate)
    hop = vocoder.hop_length
    shaper = vocoder._noise_prior(vocoder.prior, [mel], [(8, 40)], [None], 32 * hop)
    torch.testing.assert_close(shaper.gain[0], vocoder.prior.gain(mel[:, 8:40]))
    unchunked = vocoder.vocode(mel, generator=torch.Generator().manual_seed(5), chunk_seconds=None)
    chunked = vocoder.vocode(mel, generator=torch.Generator().manual_seed(5), chunk_seconds=0.256,
                             overlap_seconds=0.064)
    assert torch.isfinite(unchunked).all() and unchunked.abs().max() > 0
    assert (chunked - unchunked).norm() < 0.5 * unchunked.norm()
    start = vocoder.vocode(mel, init="griffin-lim", start_step=2, generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(start).all()
    student = distill(run / "checkpoints" / "step_00000003.pt", tiny_features, tmp_path / "student",
                      [*QUIET, "train.max_steps=2", "train.save_every=2"], device="cpu")
    assert all(math.isfinite(loss) for loss in student.losses)  # the shaper shapes the distillation's noise too

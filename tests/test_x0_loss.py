"""The auxiliary log-mel loss on the clean-signal estimate (diffusion.x0_mel_weight): zero for a perfect noise
estimate, and for a network that predicts nothing exactly the mel distance of x_t / sqrt(abar_t), at the low-noise
steps only."""

from contextlib import nullcontext

import pytest
import torch

from diffwave.audio import LogMel
from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule
from diffwave.diffusion.losses import epsilon_loss
from diffwave.errors import ConfigError
from diffwave.model import DiffWave
from diffwave.training.objectives import DiffusionObjective
from tests.audio_fixtures import harmonic_tone


def objective_for(overrides: list[str]):
    config = load_config("tiny", overrides)
    objective = DiffusionObjective()
    objective.attach(DiffWave.from_config(config), config, NoiseSchedule.from_config(config.diffusion))
    return objective, config


def batch(config):
    rate, samples = config.audio.sample_rate, config.data.crop_frames * config.audio.hop_length
    audio = torch.stack([torch.from_numpy(harmonic_tone(rate, samples / rate, seed=i)).float()[:samples] * 0.3
                         for i in range(4)])
    noise = torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    return audio, noise, torch.tensor([0, 3, 4, 30])


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="x0_max_step in 0..49"):
        load_config("tiny", ["diffusion.x0_max_step=50"])
    with pytest.raises(ConfigError, match="x0_mel_weight must be >= 0"):
        load_config("tiny", ["diffusion.x0_mel_weight=-1"])


def test_a_perfect_noise_estimate_has_no_auxiliary_loss():
    objective, config = objective_for(["diffusion.x0_mel_weight=0.5", "diffusion.x0_max_step=4"])
    audio, noise, t = batch(config)
    perfect = objective.losses(lambda x, steps, mel: noise, audio, None, t, noise, None, nullcontext)
    assert perfect.abs().max() < 1e-3  # x0_hat is x0 up to rounding


def test_a_network_that_predicts_nothing_pays_the_mel_distance_of_the_scaled_state():
    weight, last = 0.5, 4
    objective, config = objective_for([f"diffusion.x0_mel_weight={weight}", f"diffusion.x0_max_step={last}"])
    plain, _ = objective_for([])
    audio, noise, t = batch(config)
    zero = lambda x, steps, mel: torch.zeros_like(x)  # noqa: E731
    losses = objective.losses(zero, audio, None, t, noise, None, nullcontext)
    # Independently: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, so x0_hat = x_t / sqrt(abar) for eps_hat = 0.
    alpha_bar = NoiseSchedule.from_config(config.diffusion).alpha_bars[t][:, None]
    x0_hat = audio + (1 / alpha_bar - 1).sqrt() * noise
    front_end = LogMel(config.audio)
    distance = (front_end(x0_hat) - front_end(audio)).abs().mean(dim=(1, 2))
    expected = epsilon_loss(torch.zeros_like(noise), noise, "l2", None) + weight * (t <= last) * distance
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-5)
    assert (distance[t <= last] > 0.01).all()  # the term is not negligible where it applies ...
    unweighted = plain.losses(zero, audio, None, t, noise, None, nullcontext)
    assert torch.equal(losses[t > last], unweighted[t > last])  # ... and absent beyond x0_max_step
    assert (losses[t <= last] > unweighted[t <= last]).all()

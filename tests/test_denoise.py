"""Zero-shot denoising: the truncated chain against the exact Gaussian posterior, the automatic start step,
and the end-to-end API on a tiny unconditional model."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule
from diffwave.diffusion.reverse_plans import full_chain, starting_at
from diffwave.errors import DiffwaveError, ScheduleError
from diffwave.inference.denoise import (
    choose_start_step,
    denoise,
    denoise_file,
    denoise_normalised,
    estimate_noise_std,
)
from diffwave.model import DiffWave
from tests.analytic import gaussian
from tests.audio_fixtures import harmonic_tone

# The DDPM chain with the optimal eps, started from a point x_{t*}, gives exactly the Wiener mean but a
# variance slightly off the true posterior (the reverse kernels are Gaussian approximations): computed exactly
# by the affine recursion of tests.analytic.chain_law from a point start, the gap at t* = 300 of the T = 1000
# linear(1e-4, 0.02) chain for N(0.3, 0.5^2), y = 0.6 is -0.00385 (posterior variance 0.2150 vs 0.2112).
VARIANCE_DISCRETISATION_ALLOWANCE = 0.005


def test_starting_at_restricts_the_plan_and_checks_its_range():
    schedule = NoiseSchedule.linear(20, 1e-4, 0.05)
    plan = starting_at(full_chain(schedule), 7)
    assert len(plan) == 8 and plan.model_steps[-1].item() == 7
    assert torch.equal(plan.alpha_bars, schedule.alpha_bars[:8])
    for bad in (-1, 20):
        with pytest.raises(ScheduleError, match="start step must lie in 0..19"):
            starting_at(full_chain(schedule), bad)


def test_truncated_chain_samples_the_wiener_posterior():
    mu, s, y_value, t_star, n = 0.3, 0.5, 0.6, 300, 20000
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    alpha_bar = schedule.alpha_bars[t_star].item()
    sigma2 = (1 - alpha_bar) / alpha_bar
    assert choose_start_step(schedule, math.sqrt(sigma2)) == t_star
    y = torch.full((n, 1), y_value, dtype=torch.float64)
    x0 = denoise_normalised(y, schedule, gaussian(mu, s).eps_fn(schedule), t_star,
                            generator=torch.Generator().manual_seed(0))
    wiener_mean = mu + s**2 / (s**2 + sigma2) * (y_value - mu)
    posterior_var = s**2 * sigma2 / (s**2 + sigma2)
    mean_se = math.sqrt(posterior_var / n)
    var_se = posterior_var * math.sqrt(2 / (n - 1))
    assert abs(x0.mean().item() - wiener_mean) < 4 * mean_se
    assert abs(x0.var().item() - posterior_var) < 4 * var_se + VARIANCE_DISCRETISATION_ALLOWANCE
    # The prior's mean/variance would be far outside these bounds: the test can tell "no denoising" apart.
    assert abs(mu - wiener_mean) > 10 * mean_se and abs(s**2 - posterior_var) > 10 * var_se


def paused_tone(sample_rate: int, seconds: float, target_rms: float) -> np.ndarray:
    tone = harmonic_tone(sample_rate, seconds, seed=3, noise=0.0).astype(np.float64)
    t = np.arange(tone.size) / sample_rate
    envelope = (np.floor(t / 0.25) % 2 == 0).astype(np.float64)  # 0.25 s on, 0.25 s off
    signal = tone * envelope
    return signal * target_rms / np.sqrt(np.mean(signal**2))


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(1000, 1e-4, 0.02), NoiseSchedule.linear(50, 1e-4, 0.05)],
                         ids=["T1000", "T50"])
@pytest.mark.parametrize("snr_db", [0, 5, 10, 20])
def test_start_step_matches_the_added_noise(schedule, snr_db):
    clean = paused_tone(16000, 2.0, 0.1)
    noise_std = 0.1 / 10 ** (snr_db / 20)
    noise = np.random.default_rng(snr_db).standard_normal(clean.size) * noise_std
    noisy = torch.from_numpy(clean + noise).float()
    estimate = estimate_noise_std(noisy)
    assert noise_std / 1.25 < estimate < noise_std * 1.25
    t_star = choose_start_step(schedule, estimate)
    alpha_bar = schedule.alpha_bars[t_star].item()
    chosen_std = math.sqrt((1 - alpha_bar) / alpha_bar)
    assert noise_std / 2 < chosen_std < noise_std * 2


def test_start_step_is_clamped():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    assert choose_start_step(schedule, 0.0) == 0 and choose_start_step(schedule, 1e-6) == 0
    assert choose_start_step(schedule, 1e3) == 49


@pytest.fixture(scope="module")
def tiny_unconditional():
    torch.manual_seed(0)
    config = load_config("tiny", ["model.conditional=false"])
    model = DiffWave.from_config(config)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)  # a non-zero eps, unlike the init
    return model.eval(), config


def test_denoise_keeps_the_input_rate_and_length(tiny_unconditional):
    model, config = tiny_unconditional
    rate = 16000
    assert config.audio.sample_rate == 8000
    clean = paused_tone(rate, 0.5, 0.05)
    noisy = torch.from_numpy(clean + 0.01 * np.random.default_rng(0).standard_normal(clean.size)).float()
    noisy = noisy[:7999]  # an odd length that does not survive 16k -> 8k -> 16k by itself
    out, t_star = denoise(noisy, rate, model, config, generator=torch.Generator().manual_seed(0))
    assert out.shape == noisy.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 0 <= t_star < config.diffusion.num_steps
    again, _ = denoise(noisy, rate, model, config, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    edited, t_given = denoise(noisy, rate, model, config, t_start=5, sdedit=True,
                              generator=torch.Generator().manual_seed(0))
    assert t_given == 5 and edited.shape == noisy.shape and torch.isfinite(edited).all()


def test_start_step_zero_returns_the_input_at_its_own_level(tiny_unconditional):
    # From state 0 the chain makes one step: x = y - beta_0 / sqrt(1 - abar_0) eps_hat (scaled back), with
    # beta_0 / sqrt(1 - abar_0) = 0.01 here, so the output is the input up to about 1 % of the model's eps.
    model, config = tiny_unconditional
    loud = torch.from_numpy(paused_tone(8000, 0.5, 0.4)).float()
    out, t_star = denoise(loud, 8000, model, config, t_start=0)
    assert t_star == 0
    error = (out - loud).pow(2).mean().sqrt().item()
    assert error < 0.05 * loud.pow(2).mean().sqrt().item()


def test_denoise_file_writes_at_the_files_rate(tiny_unconditional, tmp_path):
    model, config = tiny_unconditional
    stereo = np.stack([paused_tone(16000, 0.3, 0.1)] * 2, axis=1).astype(np.float32)
    sf.write(tmp_path / "in.wav", stereo, 16000)
    t_star = denoise_file(tmp_path / "in.wav", tmp_path / "out.wav", model, config,
                          generator=torch.Generator().manual_seed(0))
    audio, rate = sf.read(tmp_path / "out.wav")
    assert rate == 16000 and audio.shape == (stereo.shape[0],) and 0 <= t_star < config.diffusion.num_steps


def test_conditional_models_and_bad_input_are_refused(tiny_unconditional):
    model, config = tiny_unconditional
    conditional = DiffWave.from_config(load_config("tiny"))
    audio = torch.randn(800) * 0.1
    with pytest.raises(DiffwaveError, match="needs an unconditional model"):
        denoise(audio, 8000, conditional, load_config("tiny"))
    bad = audio.clone()
    bad[10] = float("nan")
    with pytest.raises(DiffwaveError, match="NaN/Inf"):
        denoise(bad, 8000, model, config)
    with pytest.raises(DiffwaveError, match="silent"):
        denoise(torch.zeros(800), 8000, model, config)

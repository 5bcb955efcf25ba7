"""v-prediction and the zero-terminal-SNR schedule (issue 23): the rescaled schedule, the v closed forms, the
sampler's v updates (checked against the posterior and the exact law of the chain for Gaussian data), the loss,
and a run end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffwave.config import load_config
from diffwave.diffusion import (
    NoiseSchedule,
    ddim,
    diffusion_loss,
    fast_schedule,
    full_chain,
    sample,
    variational_bound,
)
from diffwave.diffusion.noise_schedule import rescale_to_zero_terminal_snr
from diffwave.diffusion.parameterization import noise_from_velocity, velocity, x0_from_velocity
from diffwave.diffusion.sampling import update_coefficients
from diffwave.errors import ConfigError, ScheduleError, TrainingError
from diffwave.inference import Vocoder
from diffwave.training.distill import student_config
from diffwave.training.run import train
from tests.analytic import alpha_bar_at

QUIET = ["train.log_every=100000", "train.valid_every=100000", "train.sample_every=100000",
         "data.valid_fraction=0.1", "data.test_fraction=0.05"]
ZERO_SNR = ["model.prediction=v", "diffusion.zero_terminal_snr=true"]


def zero_snr_schedule(steps: int = 50) -> NoiseSchedule:
    return NoiseSchedule(rescale_to_zero_terminal_snr(NoiseSchedule.linear(steps, 1e-4, 0.05).betas))


def test_rescaled_schedule_is_an_affine_map_of_sqrt_alpha_bar_ending_at_zero():
    """Lin et al.'s Algorithm 1 in numpy: sqrt(abar) shifted to end at 0 and scaled to keep its first value."""
    betas = np.linspace(1e-4, 0.05, 50)
    root = np.sqrt(np.cumprod(1 - betas))
    expected = (root - root[-1]) * root[0] / (root[0] - root[-1])
    schedule = zero_snr_schedule()
    np.testing.assert_allclose(schedule.alpha_bars.sqrt().numpy(), expected, rtol=1e-12, atol=1e-15)
    assert schedule.betas[-1].item() == 1.0 and schedule.alpha_bars[-1].item() == 0.0
    assert schedule.zero_terminal_snr and not NoiseSchedule.linear(50, 1e-4, 0.05).zero_terminal_snr
    assert (schedule.betas[:-1] > 0).all() and (schedule.betas[:-1] < 1).all()
    torch.testing.assert_close(rescale_to_zero_terminal_snr(schedule.betas), schedule.betas)  # idempotent
    config = load_config("tiny", ZERO_SNR).diffusion
    assert NoiseSchedule.from_config(config).alpha_bars[-1].item() == 0.0


@pytest.mark.parametrize("alpha_bar", [0.0, 0.3, 0.999, 1.0])
def test_velocity_round_trips_to_the_data_and_the_noise(alpha_bar):
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 100, generator=generator, dtype=torch.float64)
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * noise
    v = velocity(x0, noise, alpha_bar)
    torch.testing.assert_close(x0_from_velocity(x_t, v, alpha_bar), x0)
    torch.testing.assert_close(noise_from_velocity(x_t, v, alpha_bar), noise)
    as_tensor = torch.full((1,), alpha_bar, dtype=torch.float64)
    torch.testing.assert_close(velocity(x0, noise, as_tensor), v)


def test_a_v_step_with_the_true_v_is_the_posterior_mean_even_from_pure_noise():
    """mean = a x_t + b v_true equals q(x_{t-1} | x_t, x_0)'s mean (NoiseSchedule.posterior) at every state of
    a zero-SNR chain, including the first, where the noise form divides by zero; and on an ordinary schedule
    the v step and the epsilon step agree for a consistent (v, eps) pair, for the DDPM and DDIM updates."""
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 64, generator=generator, dtype=torch.float64)
    schedule = zero_snr_schedule()
    plan = full_chain(schedule)
    for t in range(schedule.num_steps):
        abar = schedule.alpha_bars[t].item()
        x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
        a, b = update_coefficients(plan, t, "v")
        expected = schedule.posterior(x0[None], x_t[None], torch.tensor([t]))[0][0]
        torch.testing.assert_close(a * x_t + b * velocity(x0, noise, abar), expected, rtol=1e-9, atol=1e-12)
    ordinary = NoiseSchedule.linear(50, 1e-4, 0.05)
    for plan in (full_chain(ordinary), ddim(ordinary, 7, eta=0.5), fast_schedule(ordinary, "base")):
        for i in range(len(plan)):
            abar = plan.alpha_bars[i].item()
            x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
            (a, b), (c, d) = update_coefficients(plan, i, "v"), update_coefficients(plan, i, "epsilon")
            torch.testing.assert_close(a * x_t + b * velocity(x0, noise, abar), c * x_t + d * noise)
    with pytest.raises(ValueError, match="output must be one of"):
        update_coefficients(plan, 0, "x0")


def _optimal_v(schedule: NoiseSchedule, mean: float, std: float):
    """E[v | x_t] for data N(mean, std^2), from E[x0 | x_t] and E[n | x_t] of the jointly Gaussian pair
    (V = a std^2 + 1 - a): both defined at a = 0, where E[x0 | x_t] is the data mean."""
    def v_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bar_at(schedule, t).reshape(-1, 1)
        var = a * std**2 + 1 - a
        x0 = mean + a.sqrt() * std**2 * (x - a.sqrt() * mean) / var
        n = (1 - a).sqrt() * (x - a.sqrt() * mean) / var
        return a.sqrt() * n - (1 - a).sqrt() * x0
    return v_fn


def _v_chain_law(plan, mean: float, std: float) -> tuple[float, float]:
    """Exact mean and variance of a plan's output from x_T ~ N(0, 1) under the optimal v, written from the
    posterior (Ho et al. eq. 7) and DDIM (Song et al. eq. 12) with x0* and eps* as affine maps of x."""
    m, v = 0.0, 1.0
    for i in reversed(range(len(plan))):
        a, a_prev, sigma = (plan.alpha_bars[i].item(), plan.alpha_bars_prev[i].item(), plan.sigmas[i].item())
        var = a * std**2 + 1 - a
        k0, o0 = math.sqrt(a) * std**2 / var, mean * (1 - a * std**2 / var)  # x0* = k0 x + o0
        ke, oe = math.sqrt(1 - a) / var, -math.sqrt(1 - a) * math.sqrt(a) * mean / var  # eps* = ke x + oe
        if plan.update == "ancestral":
            alpha = a / a_prev
            c0, cx = math.sqrt(a_prev) * (1 - alpha) / (1 - a), math.sqrt(alpha) * (1 - a_prev) / (1 - a)
            gain, offset = c0 * k0 + cx, c0 * o0
        else:
            direction = math.sqrt(max(1 - a_prev - sigma**2, 0.0))
            gain, offset = math.sqrt(a_prev) * k0 + direction * ke, math.sqrt(a_prev) * o0 + direction * oe
        m, v = gain * m + offset, gain**2 * v + sigma**2
    return m, v


@pytest.mark.parametrize("build", [full_chain, lambda s: ddim(s, 10), lambda s: fast_schedule(
    s, [1e-4, 1e-3, 1e-2, 5e-2, 0.2, 1.0])], ids=["ddpm", "ddim-10", "fast-to-noise"])
def test_v_chains_from_pure_noise_follow_their_exact_law_and_reach_the_data(build):
    """From x_T ~ N(0, 1), the true marginal of a zero-SNR schedule's last state, the sampler with the optimal v
    draws from the law above; every plan keeps the data's mean, and the full chain lands near its N(0.3, 0.5^2)
    (coarser plans shrink the spread, as their exact law says)."""
    schedule = zero_snr_schedule()
    plan = build(schedule)
    assert plan.alpha_bars[-1].item() == 0.0
    n = 40_000
    out = sample(plan, _optimal_v(schedule, 0.3, 0.5), (n, 1), generator=torch.Generator().manual_seed(3),
                 dtype=torch.float64, output="v")
    law_mean, law_var = _v_chain_law(plan, 0.3, 0.5)
    assert out.mean().item() == pytest.approx(law_mean, abs=4 * math.sqrt(law_var / n))
    assert out.std().item() == pytest.approx(math.sqrt(law_var), abs=4 * math.sqrt(law_var / (2 * n)))
    assert law_mean == pytest.approx(0.3, abs=0.01)
    if len(plan) == schedule.num_steps:
        assert math.sqrt(law_var) == pytest.approx(0.5, rel=0.1)


def test_an_epsilon_network_read_as_v_samples_and_bounds_as_itself():
    """v-prediction is a reparameterisation: a network whose v is derived from a noise estimate, v = (eps -
    sqrt(1 - abar) x) / sqrt(abar), must give the predictor-corrector sampler's and the variational bound's
    numbers of the noise estimate itself (ordinary schedule, where both are defined)."""
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    eps_fn = lambda x, t: 0.4 * x + 0.1  # noqa: E731
    v_fn = lambda x, t: ((eps_fn(x, t) - (1 - alpha_bar_at(schedule, t)).sqrt().reshape(-1, 1) * x)  # noqa: E731
                         / alpha_bar_at(schedule, t).sqrt().reshape(-1, 1))
    plan = fast_schedule(schedule, "base")
    runs = [sample(plan, fn, (3, 64), generator=torch.Generator().manual_seed(5), dtype=torch.float64,
                   corrector_steps=1, output=output) for fn, output in ((eps_fn, "epsilon"), (v_fn, "v"))]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-6)  # t reaches eps_fn in float32
    x0 = torch.randn(2, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    bounds = [variational_bound(fn, schedule, x0, generator=torch.Generator().manual_seed(7), output=output).total
              for fn, output in ((eps_fn, "epsilon"), (v_fn, "v"))]
    torch.testing.assert_close(bounds[0], bounds[1], rtol=1e-9, atol=1e-9)


def test_a_noise_estimate_cannot_start_from_pure_noise():
    with pytest.raises(ScheduleError, match="pure noise"):
        update_coefficients(full_chain(zero_snr_schedule()), 49, "epsilon")


def test_the_v_loss_regresses_the_velocity_weighted_by_the_prior():
    """The target written out: v = sqrt(abar) S eps - sqrt(1 - abar) x0 with abar from numpy's cumprod."""
    schedule = zero_snr_schedule()
    generator = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(2, 3, 80, generator=generator)
    std = torch.rand(3, 80, generator=generator) + 0.5
    t = torch.tensor([0, 20, 49])
    abar = torch.from_numpy(schedule.alpha_bars.numpy()[t.numpy()]).float()[:, None]
    target = abar.sqrt() * noise * std - (1 - abar).sqrt() * x0
    exact = diffusion_loss(lambda x, s: target, schedule, x0, steps=t, noise=noise, prior_std=std, output="v")[0]
    assert exact.abs().max().item() < 1e-10
    zero = diffusion_loss(lambda x, s: torch.zeros_like(x), schedule, x0, steps=t, noise=noise, prior_std=std,
                          output="v")[0]
    torch.testing.assert_close(zero, (target / std).square().mean(dim=1))


def test_config_refusals():
    with pytest.raises(ConfigError, match="needs model.prediction=v"):
        load_config("tiny", ["diffusion.zero_terminal_snr=true"])
    with pytest.raises(ConfigError, match="fast_schedule"):
        load_config("tiny", ["diffusion.fast_schedule=[0.001,0.1,1.0]"])
    assert load_config("tiny", [*ZERO_SNR, "diffusion.fast_schedule=[0.001,0.1,1.0]"]).diffusion.fast_schedule[-1] == 1
    with pytest.raises(ScheduleError, match="must lie in"):
        fast_schedule(NoiseSchedule.linear(50, 1e-4, 0.05), [0.001, 1.0])


def test_a_zero_snr_v_run_trains_vocodes_and_refuses_distillation(tiny_features, tmp_path):
    run = tmp_path / "run"
    config = load_config("tiny", [*QUIET, *ZERO_SNR, "train.max_steps=3", "train.save_every=3",
                                  "train.valid_every=3", "diffusion.x0_mel_weight=0.1", "diffusion.x0_max_step=5",
                                  "diffusion.prior=priorgrad", "diffusion.fast_schedule=[0.001,0.1,1.0]"])
    result = train(config, tiny_features, run, device="cpu")
    assert all(math.isfinite(loss) for loss in result.losses)
    checkpoint = run / "checkpoints" / "step_00000003.pt"
    vocoder = Vocoder.from_checkpoint(checkpoint, device="cpu")
    assert vocoder.schedule.zero_terminal_snr and vocoder.plan().alpha_bars[-1].item() == 0.0
    mel = torch.zeros(vocoder.config.audio.n_mels, 20) - 4.0
    for sampler in ("fast", "ddim", "ddpm"):
        assert torch.isfinite(vocoder.vocode(mel, sampler=sampler, generator=torch.Generator().manual_seed(0))).all()
    with pytest.raises(TrainingError, match="predicts v"):
        student_config(vocoder.config, checkpoint, [])

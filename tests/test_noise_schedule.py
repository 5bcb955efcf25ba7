"""NoiseSchedule against independent computations: running products, Bayes' rule, Monte Carlo."""

import math

import pytest
import torch

from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule
from diffwave.errors import ScheduleError


def test_linear_base_schedule_endpoints_and_products():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    assert schedule.num_steps == 50
    assert schedule.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert schedule.betas[-1].item() == pytest.approx(0.05, rel=1e-12)
    betas = [1e-4 + (0.05 - 1e-4) * i / 49 for i in range(50)]
    for t in (0, 1, 17, 49):
        expected = math.prod(1 - b for b in betas[: t + 1])
        assert schedule.alpha_bars[t].item() == pytest.approx(expected, rel=1e-12)
    assert schedule.alpha_bars_prev[0].item() == 1.0
    assert torch.equal(schedule.alpha_bars_prev[1:], schedule.alpha_bars[:-1])


def test_cosine_schedule_follows_squared_cosine():
    T, s = 100, 0.008
    schedule = NoiseSchedule.cosine(T)
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 50, 90):  # unclipped region: alpha_bar[t] = f(t + 1) / f(0)
        assert schedule.alpha_bars[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert schedule.betas.max().item() <= 0.999
    assert (schedule.betas[1:] >= schedule.betas[:-1]).all()


@pytest.mark.parametrize("betas", [[0.0, 0.1], [1.0, 0.1], [0.1, 1.5], [0.1, -0.2], [float("nan")], [float("inf")],
                                   []])
def test_invalid_betas_are_refused(betas):
    with pytest.raises(ScheduleError, match=r"beta|empty"):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64))


def test_only_the_last_beta_may_reach_one():
    """A last beta of 1 is a zero-terminal-SNR schedule: its last state is pure noise."""
    assert NoiseSchedule(torch.tensor([0.1, 1.0], dtype=torch.float64)).alpha_bars[-1].item() == 0.0


def test_from_config_builds_the_named_schedule():
    large = NoiseSchedule.from_config(load_config("large").diffusion)
    assert large.num_steps == 200 and large.betas[-1].item() == pytest.approx(0.02)
    cosine = NoiseSchedule.from_config(load_config("base", ["diffusion.schedule=cosine"]).diffusion)
    assert torch.allclose(cosine.betas, NoiseSchedule.cosine(50).betas)


def test_q_sample_has_the_closed_form_moments():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    generator = torch.Generator().manual_seed(0)
    n, t, x0_value = 200_000, 30, 0.7
    x0 = torch.full((n, 1), x0_value, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    x_t = schedule.q_sample(x0, torch.full((n,), t), noise)
    abar = math.prod(1 - b for b in schedule.betas[: t + 1].tolist())
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * x0_value, abs=4 / math.sqrt(n))
    assert x_t.var().item() == pytest.approx(1 - abar, rel=4 * math.sqrt(2 / n))


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1-abar_{t-1})."""
    schedule = NoiseSchedule.linear(200, 1e-4, 0.02)
    generator = torch.Generator().manual_seed(1)
    t = torch.randint(1, 200, (64,), generator=generator)
    x0 = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    xt = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    mean, var = schedule.posterior(x0, xt, t)
    beta = schedule.betas[t].unsqueeze(1)
    abar_prev = torch.tensor([math.prod(1 - b for b in schedule.betas[:k].tolist()) for k in t.tolist()],
                             dtype=torch.float64).unsqueeze(1)
    precision = (1 - beta) / beta + 1 / (1 - abar_prev)
    expected_mean = ((1 - beta).sqrt() * xt / beta + abar_prev.sqrt() * x0 / (1 - abar_prev)) / precision
    assert torch.allclose(mean, expected_mean, rtol=1e-9, atol=1e-12)
    assert torch.allclose(var, (1 / precision).expand_as(var), rtol=1e-9)


def test_posterior_at_step_zero_is_the_data():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    x0, xt = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mean, var = schedule.posterior(x0, xt, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(mean, x0, atol=1e-12)
    assert torch.equal(var, torch.zeros_like(var))

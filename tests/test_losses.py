"""The epsilon loss and the variational bound against closed forms for Gaussian data."""

import math

import pytest
import torch

from diffwave.diffusion import NoiseSchedule, diffusion_loss, epsilon_loss, variational_bound
from tests.analytic import gaussian


def test_epsilon_loss_values_per_example():
    eps_hat = torch.tensor([[1.0, -1.0], [0.5, 0.5]], dtype=torch.float16)
    eps = torch.tensor([[0.0, 1.0], [0.5, -0.5]])
    l2 = epsilon_loss(eps_hat, eps)
    assert l2.dtype == torch.float32
    assert l2.tolist() == pytest.approx([(1 + 4) / 2, (0 + 1) / 2])
    assert epsilon_loss(eps_hat, eps, "l1").tolist() == pytest.approx([(1 + 2) / 2, (0 + 1) / 2])
    with pytest.raises(ValueError, match="loss kind"):
        epsilon_loss(eps_hat, eps, "huber")


def test_optimal_predictor_reaches_the_minimum_expected_loss():
    """E||eps - E[eps|x_t]||^2 = E_t Var(eps|x_t) = E_t [a_t s^2 / (a_t s^2 + 1 - a_t)] for N(mu, s^2) data."""
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    mu, s, n = 0.2, 0.5, 400_000
    data = gaussian(mu, s)
    generator = torch.Generator().manual_seed(0)
    x0 = data.sample(n, 1.0, generator)
    loss, t = diffusion_loss(data.eps_fn(schedule), schedule, x0, generator=generator)
    assert loss.shape == (n,) and t.min() >= 0 and t.max() <= 49
    a = schedule.alpha_bars
    expected = (a * s**2 / (a * s**2 + 1 - a)).mean().item()
    assert loss.mean().item() == pytest.approx(expected, abs=5 * loss.std().item() / math.sqrt(n))
    zero_loss, _ = diffusion_loss(lambda x, t: torch.zeros_like(x), schedule, x0, generator=generator)
    assert zero_loss.mean().item() == pytest.approx(1.0, abs=0.01)
    assert zero_loss.mean().item() > loss.mean().item() + 0.5


def test_steps_are_drawn_uniformly():
    schedule = NoiseSchedule.linear(10, 1e-4, 0.05)
    x0 = torch.zeros(50_000, 1)
    _, t = diffusion_loss(lambda x, t: x, schedule, x0, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(t, minlength=10).double()
    assert counts.min() > 0.9 * 5000 and counts.max() < 1.1 * 5000


def _optimal_reverse_variances(schedule, s):
    """Var(x_{t-1} | x_t) for N(mu, s^2) data: beta_tilde_t + c0_t^2 Var(x_0 | x_t) (t = 0: Var(x_0 | x_0-state))."""
    a = schedule.alpha_bars
    var_x0 = s**2 * (1 - a) / (a * s**2 + 1 - a)
    return schedule.posterior_variance + schedule.posterior_coef_x0**2 * var_x0


def test_bound_of_the_optimal_model_is_tight_at_T_1000():
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    mu, s, n = 0.5, 1.5, 40_000
    data = gaussian(mu, s)
    generator = torch.Generator().manual_seed(2)
    x0 = data.sample(n, 1.0, generator)
    bound = variational_bound(data.eps_fn(schedule), schedule, x0, generator=generator,
                              variance=_optimal_reverse_variances(schedule, s))
    assert bound.kl.shape == (n, 999)
    gap = bound.total - data.nll(x0)
    standard_error = gap.std().item() / math.sqrt(n)
    nll = 0.5 * math.log(2 * math.pi * math.e * s**2)  # exact expected NLL (entropy)
    assert gap.mean().item() > -4 * standard_error  # a bound: never below the NLL
    assert abs(bound.total.mean().item() - nll) < 0.01 * nll
    assert bound.bits_per_sample.mean().item() == pytest.approx(bound.total.mean().item() / math.log(2))


def test_fixed_variance_bound_is_a_strict_bound():
    """With DDPM's beta_tilde the reverse variance is too small near the data: the bound is loose."""
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    data = gaussian(0.5, 1.5)
    generator = torch.Generator().manual_seed(3)
    x0 = data.sample(4000, 1.0, generator)
    bound = variational_bound(data.eps_fn(schedule), schedule, x0, generator=generator)
    assert bound.total.mean().item() > data.nll(x0).mean().item() + 0.1


def test_prior_term_is_the_closed_form_kl():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    x0 = torch.tensor([[0.3, -0.6]], dtype=torch.float64)
    bound = variational_bound(lambda x, t: torch.zeros_like(x), schedule, x0,
                              generator=torch.Generator().manual_seed(0))
    a = schedule.alpha_bars[-1].item()
    # KL(N(sqrt(a) x, 1 - a) || N(0, 1)) = 0.5 (a x^2 + (1 - a) - 1 - log(1 - a)), averaged over samples
    expected = sum(0.5 * (a * v**2 + (1 - a) - 1 - math.log(1 - a)) for v in (0.3, -0.6)) / 2
    assert bound.prior.item() == pytest.approx(expected, rel=1e-12)


def test_bad_variance_arguments():
    schedule = NoiseSchedule.linear(10, 1e-4, 0.05)
    x0 = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="variance"):
        variational_bound(lambda x, t: x, schedule, x0, variance="learned")
    with pytest.raises(ValueError, match="10 positive reverse variances"):
        variational_bound(lambda x, t: x, schedule, x0, variance=torch.ones(9))

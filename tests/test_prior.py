"""PriorGrad's data-dependent prior in the diffusion core, against closed forms.

The data are Gaussian (or a 1-D Gaussian mixture) and the prior N(0, diag(S^2)) is not the identity; the
optimal predictor of the noise S eps is written in closed form in tests/analytic.py, independently of the
package. Every reverse plan must turn it into samples with the exact law, the loss must reach its closed-form
minimum, and the bound must sit just above the exact NLL. `prior_std=None` must stay bit for bit the
standard code path (a prior of ones is the same arithmetic).
"""

import math

import pytest
import torch
from scipy import stats

from diffwave.diffusion import (
    NoiseSchedule,
    ddim,
    diffusion_loss,
    epsilon_loss,
    full_chain,
    sample,
    variational_bound,
)
from tests.analytic import GaussianMixture, chain_law, gaussian
from tests.test_reverse_plans import PLANS

PRIOR = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)  # one non-unit std per dimension
MU, S = 0.3, 0.5  # data N(MU, S^2) in every dimension


@pytest.fixture(params=list(PLANS), ids=list(PLANS))
def case(request):
    schedule, build = PLANS[request.param]
    return schedule, build()


def _moments_match(out: torch.Tensor, plan, from_prior: bool) -> None:
    n = out.shape[0]
    for j, prior in enumerate(PRIOR.tolist()):
        law_mean, law_var = chain_law(plan, MU, S, prior, from_prior=from_prior)
        column = out[:, j]
        assert column.mean().item() == pytest.approx(law_mean, abs=4 * math.sqrt(law_var / n)), j
        assert column.std().item() == pytest.approx(math.sqrt(law_var), abs=4 * math.sqrt(law_var / (2 * n))), j


class TestEveryPlanUnderThePrior:
    def test_samples_from_the_prior_follow_the_exact_law(self, case):
        """x_T ~ N(0, S^2) drawn by `sample` itself, every step's noise scaled by S: the exact Gaussian law."""
        schedule, plan = case
        eps_fn = gaussian(MU, S).eps_fn(schedule, PRIOR)
        out = sample(plan, eps_fn, (40_000, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                     prior_std=PRIOR)
        _moments_match(out, plan, from_prior=True)

    def test_samples_from_the_exact_marginal_have_the_data_mean(self, case):
        schedule, plan = case
        data = gaussian(MU, S)
        x_T = data.sample(40_000, plan.alpha_bars[-1].item(), torch.Generator().manual_seed(2), PRIOR)
        out = sample(plan, data.eps_fn(schedule, PRIOR), x_T.shape, x_T=x_T,
                     generator=torch.Generator().manual_seed(3), prior_std=PRIOR)
        for prior in PRIOR.tolist():
            assert chain_law(plan, MU, S, prior)[0] == pytest.approx(MU, abs=1e-9)
        _moments_match(out, plan, from_prior=False)

    def test_ignoring_the_prior_breaks_the_law(self, case):
        """The same predictor with standard noise: the narrow dimension's spread is far off (the test can fail)."""
        schedule, plan = case
        eps_fn = gaussian(MU, S).eps_fn(schedule, PRIOR)
        out = sample(plan, eps_fn, (40_000, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        law_std = math.sqrt(chain_law(plan, MU, S, PRIOR[0].item(), from_prior=True)[1])
        assert abs(out[:, 0].std().item() - law_std) > 20 * law_std / math.sqrt(2 * 40_000)

    def test_a_prior_of_ones_is_the_standard_chain_bit_for_bit(self, case):
        schedule, plan = case
        eps_fn = gaussian(MU, S).eps_fn(schedule)
        run = lambda prior: sample(plan, eps_fn, (4, 32), generator=torch.Generator().manual_seed(7),  # noqa: E731
                                   prior_std=prior)
        assert torch.equal(run(None), run(torch.ones(32)))


@pytest.mark.parametrize("build", [lambda s: full_chain(s), lambda s: ddim(s, 1000)], ids=["ddpm-1000", "ddim-1000"])
def test_fine_chains_under_the_prior_reproduce_the_data_distribution(build):
    """T = 1000 from N(0, S^2): the output law is the data's to within 1%, and a prior of about the data's
    scale leaves less discretisation error than N(0, I) (PriorGrad's argument, here in closed form)."""
    plan = build(NoiseSchedule.linear(1000, 1e-4, 0.02))
    errors = {}
    for prior in (0.3, 0.5, 1.0):
        law_mean, law_var = chain_law(plan, MU, S, prior, from_prior=True)
        assert law_mean == pytest.approx(MU, rel=0.015)
        errors[prior] = abs(math.sqrt(law_var) - S) / S
    assert max(errors.values()) < 0.01
    assert errors[0.5] < errors[1.0] and errors[0.3] < errors[1.0]


MIXTURE = GaussianMixture((0.4, 0.6), (-0.5, 0.4), (0.15, 0.2))
LARGE = NoiseSchedule.linear(200, 1e-4, 0.02)
MIXTURE_PRIOR = 0.3


def _mixture_ks_pvalue(use_prior: bool) -> float:
    """The optimal predictor under the prior drives the full chain from the exact marginal of x_T under the
    prior; `use_prior=False` runs the same predictor as if the prior were N(0, I)."""
    plan = full_chain(LARGE)
    x_T = MIXTURE.sample(20_000, plan.alpha_bars[-1].item(), torch.Generator().manual_seed(3), MIXTURE_PRIOR)
    out = sample(plan, MIXTURE.eps_fn(LARGE, MIXTURE_PRIOR), x_T.shape, x_T=x_T,
                 generator=torch.Generator().manual_seed(4),
                 prior_std=torch.tensor([MIXTURE_PRIOR], dtype=torch.float64) if use_prior else None)
    return stats.kstest(out.squeeze(1).numpy(), lambda v: MIXTURE.cdf(torch.as_tensor(v)).numpy()).pvalue


def test_ddpm_under_the_prior_samples_a_gaussian_mixture():
    assert _mixture_ks_pvalue(use_prior=True) > 1e-3


def test_mixture_test_detects_an_ignored_prior():
    assert _mixture_ks_pvalue(use_prior=False) < 1e-6


# --- the loss -----------------------------------------------------------------------------------------
def test_weighted_loss_values_per_example():
    eps_hat = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    noise = torch.tensor([[0.0, 1.0], [0.5, -0.5]])
    prior = torch.tensor([0.5, 2.0])
    # errors (1, -2) and (0, 1), divided by (0.5, 2): (2, -1) and (0, 0.5)
    assert epsilon_loss(eps_hat, noise, prior_std=prior).tolist() == pytest.approx([(4 + 1) / 2, 0.25 / 2])
    assert epsilon_loss(eps_hat, noise, "l1", prior).tolist() == pytest.approx([(2 + 1) / 2, 0.5 / 2])


def test_optimal_predictor_reaches_the_minimum_weighted_loss():
    """E||S^-1 (S eps - E[S eps | x_t])||^2 = E_t Var(eps | x_t) = E_t [a s^2 / (a s^2 + (1 - a) S^2)], per
    dimension; predicting zero costs E||eps||^2 = 1 whatever S."""
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    n = 200_000
    data = gaussian(MU, S)
    generator = torch.Generator().manual_seed(0)
    x0 = data.sample(n, 1.0, generator, PRIOR)
    loss, _ = diffusion_loss(data.eps_fn(schedule, PRIOR), schedule, x0, generator=generator, prior_std=PRIOR)
    a = schedule.alpha_bars[:, None]
    expected = (a * S**2 / (a * S**2 + (1 - a) * PRIOR**2)).mean().item()
    assert loss.mean().item() == pytest.approx(expected, abs=5 * loss.std().item() / math.sqrt(n))
    zero_loss, _ = diffusion_loss(lambda x, t: torch.zeros_like(x), schedule, x0, generator=generator,
                                  prior_std=PRIOR)
    assert zero_loss.mean().item() == pytest.approx(1.0, abs=0.01)


def test_a_prior_of_ones_is_the_standard_loss_bit_for_bit():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    x0 = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    eps_fn = gaussian(0.0, 1.0).eps_fn(schedule)
    run = lambda prior: diffusion_loss(eps_fn, schedule, x0, generator=torch.Generator().manual_seed(1),  # noqa: E731
                                       prior_std=prior)
    (standard, t1), (ones, t2) = run(None), run(torch.ones(64))
    assert torch.equal(standard, ones) and torch.equal(t1, t2)


# --- the bound ----------------------------------------------------------------------------------------
BOUND_MU, BOUND_S, BOUND_PRIOR = 0.5, 1.5, 0.4


def _optimal_reverse_variances(schedule):
    """Var(x_{t-1} | x_t) / S^2 for N(mu, s^2) data under the prior: beta_tilde + c0^2 Var(x_0 | x_t) / S^2,
    Var(x_0 | x_t) = s^2 (1 - a) S^2 / (a s^2 + (1 - a) S^2)."""
    a, s2, p2 = schedule.alpha_bars, BOUND_S**2, BOUND_PRIOR**2
    return schedule.posterior_variance + schedule.posterior_coef_x0**2 * s2 * (1 - a) / (a * s2 + (1 - a) * p2)


def test_bound_under_the_prior_is_above_the_nll_and_tight_at_T_1000():
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    n = 40_000
    data = gaussian(BOUND_MU, BOUND_S)
    prior = torch.tensor([BOUND_PRIOR], dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    x0 = data.sample(n, 1.0, generator)
    bound = variational_bound(data.eps_fn(schedule, prior), schedule, x0, generator=generator,
                              variance=_optimal_reverse_variances(schedule), prior_std=prior)
    gap = bound.total - data.nll(x0)
    nll = 0.5 * math.log(2 * math.pi * math.e * BOUND_S**2)  # exact expected NLL (entropy)
    assert gap.mean().item() > -4 * gap.std().item() / math.sqrt(n)
    assert abs(bound.total.mean().item() - nll) < 0.01 * nll
    # The same predictor scored as if the prior were N(0, I) is far from tight: the prior is really used.
    ignored = variational_bound(data.eps_fn(schedule, prior), schedule, x0[:4000], generator=generator,
                                variance=_optimal_reverse_variances(schedule))
    assert ignored.total.mean().item() > nll + 0.1


def test_prior_term_is_the_closed_form_kl_under_the_prior():
    """KL(N(sqrt(a) x, (1 - a) S^2) || N(0, S^2)) = 0.5 (a x^2 / S^2 + (1 - a) - 1 - log(1 - a))."""
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    x0 = torch.tensor([[0.3, -0.6]], dtype=torch.float64)
    prior = torch.tensor([0.5, 2.0], dtype=torch.float64)
    bound = variational_bound(lambda x, t: torch.zeros_like(x), schedule, x0,
                              generator=torch.Generator().manual_seed(0), prior_std=prior)
    a = schedule.alpha_bars[-1].item()
    expected = sum(0.5 * (a * v**2 / p**2 + (1 - a) - 1 - math.log(1 - a)) for v, p in ((0.3, 0.5), (-0.6, 2.0))) / 2
    assert bound.prior.item() == pytest.approx(expected, rel=1e-12)


def test_a_prior_of_ones_is_the_standard_bound_bit_for_bit():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    x0 = torch.randn(4, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps_fn = gaussian(0.0, 1.0).eps_fn(schedule)
    run = lambda prior: variational_bound(eps_fn, schedule, x0, generator=torch.Generator().manual_seed(1),  # noqa: E731
                                          prior_std=prior)
    standard, ones = run(None), run(torch.ones(16, dtype=torch.float64))
    for field in ("prior", "kl", "decoder"):
        assert torch.equal(getattr(standard, field), getattr(ones, field)), field


@pytest.mark.parametrize("prior, message", [(torch.ones(5), "does not broadcast"),
                                            (torch.ones(2, 8), "does not broadcast"),
                                            (torch.zeros(8), "positive"),
                                            (torch.full((8,), float("nan")), "positive")])
def test_bad_priors_are_refused(prior, message):
    with pytest.raises(ValueError, match=message):
        sample(full_chain(NoiseSchedule.linear(10, 1e-4, 0.05)), lambda x, t: x, (1, 8), prior_std=prior)

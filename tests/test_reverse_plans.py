"""Reverse plans and the sampling loop, checked with the analytic optimal denoiser.

Every plan passes one shared test class; the fast schedule and DDIM have their own construction tests.
"""

import math

import pytest
import torch
from scipy import stats

from diffwave.cli import build_parser
from diffwave.diffusion import NoiseSchedule, ddim, fast_schedule, full_chain, sample
from diffwave.diffusion.reverse_plans import SAMPLERS, ddim_steps, plan_for
from diffwave.errors import ScheduleError
from tests.analytic import GaussianMixture, alpha_bar_at, chain_law, gaussian

BASE = NoiseSchedule.linear(50, 1e-4, 0.05)
LARGE = NoiseSchedule.linear(200, 1e-4, 0.02)

PLANS = {
    "ddpm": (BASE, lambda: full_chain(BASE)),
    "ddpm-beta": (BASE, lambda: full_chain(BASE, "beta")),
    "fast-base": (BASE, lambda: fast_schedule(BASE, "base")),
    "fast-large": (LARGE, lambda: fast_schedule(LARGE, "large")),
    "ddim-10": (BASE, lambda: ddim(BASE, 10)),
    "ddim-eta1": (LARGE, lambda: ddim(LARGE, 25, eta=1.0)),
}


def _start(plan, data, n, seed):
    """Exact draws from the marginal of the plan's noisiest state."""
    return data.sample(n, plan.alpha_bars[-1].item(), torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(PLANS), ids=list(PLANS))
def case(request):
    schedule, build = PLANS[request.param]
    return schedule, build()


class TestEveryPlan:
    def test_shapes_steps_and_callback(self, case):
        schedule, plan = case
        seen_steps, seen_indices = [], []

        def eps_fn(x, t):
            assert t.shape == (x.shape[0],) and t.dtype == torch.float32
            seen_steps.append(t[0].item())
            return torch.zeros_like(x)

        out = sample(plan, eps_fn, (3, 17), generator=torch.Generator().manual_seed(0),
                     callback=lambda i, x: seen_indices.append(i))
        assert out.shape == (3, 17) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert seen_indices == list(reversed(range(len(plan))))
        assert len(seen_steps) == len(plan)
        assert all(0 <= s <= schedule.num_steps - 1 for s in seen_steps)
        assert seen_steps == sorted(seen_steps, reverse=True)

    def test_seeded_generator_is_deterministic(self, case):
        schedule, plan = case
        eps_fn = gaussian(0.2, 0.5).eps_fn(schedule)
        run = lambda seed: sample(plan, eps_fn, (4, 32), generator=torch.Generator().manual_seed(seed))  # noqa: E731
        assert torch.equal(run(7), run(7))
        assert not torch.equal(run(7), run(8))

    def test_noise_fn_replaces_the_generator_draw_for_draw(self, case):
        """x_T and each noisy step's noise come from noise_fn, in plan order, and only where sigma > 0."""
        schedule, plan = case
        eps_fn = gaussian(0.2, 0.5).eps_fn(schedule)
        source, asked = torch.Generator().manual_seed(5), []

        def noise_fn(i: int) -> torch.Tensor:
            asked.append(i)
            return torch.randn(4, 32, generator=source)

        from_fn = sample(plan, eps_fn, (4, 32), noise_fn=noise_fn)
        from_generator = sample(plan, eps_fn, (4, 32), generator=torch.Generator().manual_seed(5))
        assert torch.equal(from_fn, from_generator)
        noisy = [i for i in reversed(range(len(plan))) if plan.sigmas[i].item() > 0]
        assert asked == [len(plan), *noisy]

    def test_clip_bounds_output(self, case):
        schedule, plan = case
        eps_fn = gaussian(0.0, 3.0).eps_fn(schedule)
        out = sample(plan, eps_fn, (2, 500), generator=torch.Generator().manual_seed(0), clip=True)
        assert out.abs().max().item() <= 1.0
        assert (out.abs() == 1.0).any()

    def test_gaussian_samples_follow_the_exact_law_of_the_chain(self, case):
        """Mean equals mu for every plan; the std equals the chain's exact (discretised) std."""
        schedule, plan = case
        mu, s, n = 0.3, 0.5, 40_000
        data = gaussian(mu, s)
        x_T = _start(plan, data, n, seed=1)
        out = sample(plan, data.eps_fn(schedule), x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(2))
        law_mean, law_var = chain_law(plan, mu, s)
        assert law_mean == pytest.approx(mu, abs=1e-9)
        assert out.mean().item() == pytest.approx(mu, abs=4 * math.sqrt(law_var / n))
        assert out.std().item() == pytest.approx(math.sqrt(law_var), abs=4 * math.sqrt(law_var / (2 * n)))


@pytest.mark.parametrize("build", [lambda: full_chain(NoiseSchedule.linear(1000, 1e-4, 0.02)),
                                   lambda: ddim(NoiseSchedule.linear(1000, 1e-4, 0.02), 1000)],
                         ids=["ddpm-1000", "ddim-1000"])
def test_fine_chains_reproduce_the_data_distribution(build):
    """With T = 1000 small steps the chain's output law is the data's, N(mu, s^2), to within 1%."""
    law_mean, law_var = chain_law(build(), 0.3, 0.5)
    assert law_mean == pytest.approx(0.3, abs=1e-9)
    assert math.sqrt(law_var) == pytest.approx(0.5, rel=0.01)


MIXTURE = GaussianMixture((0.4, 0.6), (-0.5, 0.4), (0.15, 0.2))


def _mixture_ks_pvalue(sampling_schedule):
    plan = full_chain(sampling_schedule)
    x_T = _start(plan, MIXTURE, 20_000, seed=3)
    out = sample(plan, MIXTURE.eps_fn(LARGE), x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(4))
    return stats.kstest(out.squeeze(1).numpy(), lambda v: MIXTURE.cdf(torch.as_tensor(v)).numpy()).pvalue


def test_ddpm_samples_a_gaussian_mixture():
    assert _mixture_ks_pvalue(LARGE) > 1e-3


def test_mixture_test_detects_a_wrong_schedule():
    assert _mixture_ks_pvalue(NoiseSchedule.linear(200, 1e-4, 0.05)) < 1e-6


class TestFastSchedule:
    def test_base_preset_aligns_to_the_published_steps(self):
        steps = fast_schedule(BASE, "base").model_steps.tolist()
        # The issue quotes 22.993 for the fifth step; float64 gives 22.99249 (22.992 to 3 decimals).
        assert steps == pytest.approx([0, 0.894, 4.087, 10.452, 22.9925, 42.919], abs=1e-3)

    def test_aligned_steps_reproduce_their_alpha_bars(self):
        """Linear interpolation of sqrt(alpha_bar) at the aligned step gives back each gamma_s."""
        for schedule, name in ((BASE, "base"), (LARGE, "large")):
            plan = fast_schedule(schedule, name)
            assert torch.allclose(alpha_bar_at(schedule, plan.model_steps), plan.alpha_bars, rtol=1e-12)

    def test_user_schedule_and_its_variances(self):
        etas = [1e-4, 1e-2, 0.3]
        plan = fast_schedule(BASE, etas)
        gammas = [1 - etas[0], (1 - etas[0]) * (1 - etas[1]), (1 - etas[0]) * (1 - etas[1]) * (1 - etas[2])]
        assert plan.alpha_bars.tolist() == pytest.approx(gammas, rel=1e-12)
        sigma2 = [0.0] + [(1 - gammas[s - 1]) / (1 - gammas[s]) * etas[s] for s in (1, 2)]
        assert (plan.sigmas**2).tolist() == pytest.approx(sigma2, rel=1e-12, abs=1e-15)

    def test_training_betas_give_integer_steps_and_the_ddpm_sampler(self):
        plan = fast_schedule(BASE, BASE.betas.tolist())
        assert torch.equal(plan.model_steps, torch.arange(50, dtype=torch.float64))
        eps_fn = gaussian(0.1, 0.4).eps_fn(BASE)
        fast = sample(plan, eps_fn, (2, 64), generator=torch.Generator().manual_seed(5))
        ddpm = sample(full_chain(BASE), eps_fn, (2, 64), generator=torch.Generator().manual_seed(5))
        assert torch.equal(fast, ddpm)

    def test_schedule_below_the_training_range_is_refused_naming_the_value(self):
        with pytest.raises(ScheduleError, match=r"step 2 has alpha_bar 0\.25,.*\[0\.279673, 0\.9999\]"):
            fast_schedule(BASE, [0.5, 0.5, 0.5])

    def test_schedule_above_the_training_range_is_refused(self):
        with pytest.raises(ScheduleError, match="step 1 has alpha_bar 0.99999"):
            fast_schedule(BASE, [1e-5, 0.1])

    def test_unknown_preset_and_bad_betas(self):
        with pytest.raises(ScheduleError, match="unknown fast schedule"):
            fast_schedule(BASE, "huge")
        with pytest.raises(ScheduleError, match=r"fast schedule\[1\]"):
            fast_schedule(BASE, [0.1, 1.5])


class TestDDIM:
    def test_even_steps_end_at_the_noisiest_state(self):
        assert ddim_steps(50, 50) == list(range(50))
        steps = ddim_steps(200, 8)
        assert steps[0] == 0 and steps[-1] == 199 and steps == sorted(set(steps))
        assert ddim_steps(50, 1) == [49]  # one step starts from the noisiest state, not from step 0

    @pytest.mark.parametrize("steps", [[3, 3, 9], [5, 2], [-1, 4], [10, 50], []])
    def test_invalid_subsequences_are_refused(self, steps):
        with pytest.raises(ScheduleError):
            ddim(BASE, steps)

    def test_deterministic_without_eta(self):
        plan = ddim(BASE, [0, 10, 20, 49])
        assert torch.equal(plan.sigmas, torch.zeros(4, dtype=torch.float64))
        eps_fn = gaussian(0.0, 0.5).eps_fn(BASE)
        x_T = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
        a = sample(plan, eps_fn, x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(1))
        b = sample(plan, eps_fn, x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)

    def test_eta_one_on_every_step_is_the_ddpm_chain(self):
        """Song et al.: eta = 1 over all T steps has DDPM's posterior variance, hence the same chain."""
        plan = ddim(BASE, 50, eta=1.0)
        assert torch.allclose(plan.sigmas, full_chain(BASE).sigmas, rtol=1e-10, atol=1e-15)
        eps_fn = gaussian(0.2, 0.3).eps_fn(BASE)
        a = sample(plan, eps_fn, (3, 40), generator=torch.Generator().manual_seed(9))
        b = sample(full_chain(BASE), eps_fn, (3, 40), generator=torch.Generator().manual_seed(9))
        assert torch.allclose(a, b, atol=1e-5)


def test_x_T_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="x_T has shape"):
        sample(full_chain(BASE), lambda x, t: x, (2, 8), x_T=torch.zeros(2, 9))


def test_one_registry_drives_plan_for_and_the_cli_choices_and_help():
    """Every registered sampler builds a plan through plan_for, and the CLI offers exactly those, with their
    one-line docs as its help."""
    assert all(len(plan_for(BASE, name)) > 0 for name in SAMPLERS)
    vocode = build_parser()._subparsers._group_actions[0].choices["vocode"]
    action = next(a for a in vocode._actions if "--sampler" in a.option_strings)
    assert tuple(action.choices) == tuple(SAMPLERS) == ("fast", "ddim", "ddpm", "consistency")
    for name, entry in SAMPLERS.items():
        assert f"{name}: {entry.doc.replace('`steps`', '--steps')}" in action.help

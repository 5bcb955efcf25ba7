"""Consistency models: the boundary-conditioned parameterisation, the distillation objective and multistep
sampling, checked against independent computations (the sampler's own DDIM formulas and loop, a hand-written
Algorithm 1) and, end to end, against a Gaussian mixture whose teacher is exact (tests/analytic.py)."""

import math

import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn

from diffwave.diffusion import NoiseSchedule, sample
from diffwave.diffusion.consistency import (
    consistency_output,
    distillation_loss,
    level_alpha_bars,
    ode_step,
)
from diffwave.diffusion.reverse_plans import consistency, consistency_steps, ddim, plan_for
from diffwave.diffusion.sampling import ddim_mean
from tests.analytic import GaussianMixture

SCHEDULE = NoiseSchedule.linear(20, 1e-4, 0.25)  # alpha_bar_T = 0.08: little of the data survives at T
MIXTURE = GaussianMixture((0.5, 0.5), (-1.0, 1.0), (0.1, 0.1))


def test_the_boundary_condition_holds_for_any_network_output():
    x, output = torch.randn(3, 100), 1e3 * torch.randn(3, 100)
    assert torch.equal(consistency_output(x, output, torch.ones(3, dtype=torch.float64)), x)


def test_the_consistency_function_is_the_x0_estimate_of_ddim_from_the_same_output():
    """So a student that starts from its teacher's weights starts at the teacher's one-step DDIM estimate."""
    x, eps = torch.randn(4, 50, dtype=torch.float64), torch.randn(4, 50, dtype=torch.float64)
    alpha_bars = SCHEDULE.alpha_bars[[0, 5, 12, 19]]
    f = consistency_output(x, eps, alpha_bars)
    for i, a in enumerate(alpha_bars.tolist()):
        torch.testing.assert_close(f[i], ddim_mean(x[i], eps[i], a, 1.0, 0.0), rtol=1e-12, atol=1e-12)


def test_the_ode_step_is_the_samplers_deterministic_ddim_step():
    x, eps = torch.randn(3, 40, dtype=torch.float64), torch.randn(3, 40, dtype=torch.float64)
    levels = level_alpha_bars(SCHEDULE)
    a, a_next = levels[[20, 7, 1]], levels[[19, 3, 0]]
    stepped = ode_step(x, eps, a, a_next)
    for i in range(3):
        expected = ddim_mean(x[i], eps[i], a[i].item(), a_next[i].item(), 0.0)
        torch.testing.assert_close(stepped[i], expected, rtol=1e-12, atol=1e-12)


def exact_consistency_network(teacher, skip: int):
    """The network output F whose consistency function is the teacher's DDIM chain from each example's level
    down to the data, visiting every `skip`-th level: the fixed point of the distillation loss. The chain is run
    by the sampling loop (an independent implementation of the ODE steps)."""
    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for i, step in enumerate(t.round().long().tolist()):
            level = step + 1
            visited = sorted(n - 1 for n in range(level, 0, -skip))
            f = sample(ddim(SCHEDULE, visited), teacher, x[i:i + 1].shape, x_T=x[i:i + 1], dtype=x.dtype)
            a = SCHEDULE.alpha_bars[step].item()
            out[i] = (x[i] - math.sqrt(a) * f[0]) / math.sqrt(1 - a)  # solves consistency_output(x, F) = f
        return out
    return network


@pytest.mark.parametrize("skip", [1, 3])
def test_the_distillation_loss_vanishes_at_the_teachers_own_consistency_function(skip):
    generator = torch.Generator().manual_seed(0)
    teacher = MIXTURE.eps_fn(SCHEDULE)
    x0 = MIXTURE.sample(8, 1.0, generator).repeat(1, 5)  # [8, 5]: 5 dims per example
    levels = torch.tensor([1, 2, 3, 5, 8, 13, 19, 20])
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    exact = exact_consistency_network(teacher, skip)
    loss = distillation_loss(exact, exact, teacher, SCHEDULE, x0, levels, noise, skip=skip)
    assert loss.shape == (8,)
    assert loss.max() < 1e-11  # float64 rounding, amplified by 1 / (1 - abar) at the cleanest level
    # Any other function is penalised, and so is the right function for another skip.
    off = distillation_loss(lambda x, t: exact(x, t) + 0.01, exact, teacher, SCHEDULE, x0, levels, noise, skip=skip)
    assert (off > 1e-9).all()  # F + 0.01 moves f by 0.01 sqrt((1 - abar) / abar): 1e-4 at level 1
    other = exact_consistency_network(teacher, skip + 1)
    assert distillation_loss(other, other, teacher, SCHEDULE, x0, levels, noise, skip=skip).max() > 1e-6


def test_the_distillation_loss_is_measured_in_prior_normalised_units():
    """Under a prior S the same error counts 1/S^2: a quiet frame's error weighs as much as a loud one's."""
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    prior = torch.tensor([[0.5, 0.5, 0.5, 2.0, 2.0, 2.0]])
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    teacher = lambda x, t: 0.3 * x  # noqa: E731
    levels = torch.tensor([20, 20])  # at level T, a zero student guesses x / sqrt(abar_T) for x_0
    plain = distillation_loss(zero, zero, teacher, SCHEDULE, x0, levels, noise, skip=20)
    weighted = distillation_loss(zero, zero, teacher, SCHEDULE, x0, levels, noise, skip=20, prior_std=prior)
    a = SCHEDULE.alpha_bars[-1].item()
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    error = x_t / math.sqrt(a) - (x_t - math.sqrt(1 - a) * 0.3 * x_t) / math.sqrt(a)  # student - teacher's x0
    torch.testing.assert_close(plain, error.square().mean(dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weighted, (error / prior).square().mean(dim=1), rtol=1e-5, atol=1e-7)


def test_consistency_steps_start_at_the_noisiest_step_and_never_visit_the_cleanest():
    assert consistency_steps(50, 1) == [49]
    assert consistency_steps(50, 2) == [24, 49]
    assert consistency_steps(50, 3) == [16, 33, 49]
    assert plan_for(SCHEDULE, "consistency").name == "consistency-2"
    with pytest.raises(Exception, match="between 1 and 20"):
        consistency_steps(20, 0)


def test_multistep_consistency_sampling_is_algorithm_1():
    """The loop running the consistency plan equals Song et al.'s Algorithm 1 written out by hand: f at the
    noisiest level, then re-noise to each next level and apply f again."""
    network = lambda x, t: torch.sin(3 * x) * (1 + t[:, None] / 20)  # noqa: E731 (any network will do)
    draws = {i: torch.randn(4, 30, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64)
             for i in range(4)}
    prior = torch.rand(4, 30, generator=torch.Generator().manual_seed(9), dtype=torch.float64) + 0.5
    steps = [4, 11, 19]
    looped = sample(consistency(SCHEDULE, steps), network, (4, 30), noise_fn=draws.__getitem__,
                    dtype=torch.float64, prior_std=prior)
    x = draws[3] * prior  # x_T from the prior
    f = None
    for i, step in enumerate(reversed(steps)):
        a = SCHEDULE.alpha_bars[step].item()
        if f is not None:
            x = math.sqrt(a) * f + math.sqrt(1 - a) * prior * draws[len(steps) - i]
        t = torch.full((4,), float(step))  # the loop tells the network its step in float32
        f = (x - math.sqrt(1 - a) * network(x, t)) / math.sqrt(a)
    torch.testing.assert_close(looped, f, rtol=1e-10, atol=1e-10)


class _TimeMLP(nn.Module):
    """A small network F(x, t) for scalar data, with Fourier features of the step."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.body = nn.Sequential(nn.Linear(9, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = (t.float()[:, None] / self.steps) * torch.tensor([1.0, 2.0, 4.0, 8.0]) * math.pi
        return self.body(torch.cat([x.float(), phase.sin(), phase.cos()], dim=1)).to(x.dtype)


def test_a_distilled_one_step_student_matches_a_bimodal_mixture_far_better_than_one_step_ddim():
    """With the exact teacher of a two-mode mixture, one DDIM step returns E[x_0 | x_T]: the modes collapse
    towards their mean (KS about 0.5). The student distilled along the teacher's ODE maps x_T onto the modes."""
    torch.manual_seed(0)
    teacher = MIXTURE.eps_fn(SCHEDULE)
    student = _TimeMLP(SCHEDULE.num_steps)
    target = _TimeMLP(SCHEDULE.num_steps).requires_grad_(False)
    target.load_state_dict(student.state_dict())
    optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2000):
        x0 = MIXTURE.sample(512, 1.0, generator).float()
        levels = torch.randint(1, SCHEDULE.num_steps + 1, (512,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = distillation_loss(student, target, teacher, SCHEDULE, x0, levels, noise).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for averaged, current in zip(target.parameters(), student.parameters(), strict=True):
                averaged.lerp_(current, 1 - 0.95)
    truth = MIXTURE.sample(20000, 1.0, generator).flatten().numpy()

    def ks(plan, network) -> float:
        with torch.no_grad():
            out = sample(plan, network, (20000, 1), generator=torch.Generator().manual_seed(5))
        return ks_2samp(out.flatten().numpy(), truth).statistic

    one_step_ddim = ks(ddim(SCHEDULE, 1), teacher)
    teacher_ode = ks(ddim(SCHEDULE, SCHEDULE.num_steps), teacher)
    one_step_student, two_step_student = ks(consistency(SCHEDULE, 1), student), ks(consistency(SCHEDULE, 2), student)
    assert one_step_ddim > 0.45
    assert teacher_ode < 0.08  # what the student imitates
    assert one_step_student < 0.25 and one_step_student < one_step_ddim / 2
    assert two_step_student < 0.25

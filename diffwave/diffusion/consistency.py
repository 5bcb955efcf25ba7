"""Consistency models (Song et al. 2023) for an eps-predicting DDPM: the boundary-conditioned map to the data
and the consistency-distillation objective, as tensor maths with no network or audio in it.

Levels. The distillation walks the training schedule's states plus the data itself: level n = 0 is the data
(alpha_bar = 1) and level n = 1..T is training step n - 1 (the index the network is told). Adjacent levels are
joined by one deterministic DDIM step of the teacher, the exact ODE step for the teacher's probability-flow
discretisation.

The consistency function. f(x, n) = c_skip(n) x + c_out(n) F(x, n), with F the network's output in the units of
the noise it was trained to predict:
    c_skip = 1 / sqrt(abar),   c_out = -sqrt((1 - abar) / abar),
so f is the x_0 estimate implied by F. At the boundary (the data level, abar = 1) c_skip = 1 and c_out = 0: f(x,
data) = x holds for any weights, as a consistency model requires. A student that starts from its teacher's
weights therefore starts at the teacher's one-step DDIM estimate, not at an untrained map, and its output stays
an eps-network's: multistep consistency sampling is a reverse plan that the one sampling loop runs
(`reverse_plans.consistency`).

PriorGrad. With a prior S the forward noise is S eps and F predicts it as drawn; f is linear in (x, F), so the
formulas stand, and the distance between f's is measured in S-normalised units (the metric of PriorGrad's own
loss), so quiet frames count as much as loud ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffwave.diffusion.noise_priors import NoisePrior, whiten
from diffwave.diffusion.noise_schedule import NoiseSchedule

# F(x, t): the network's output at training step t (a float tensor [batch]); the same contract as EpsFn.
NetworkFn = Callable[[Tensor, Tensor], Tensor]


def level_alpha_bars(schedule: NoiseSchedule) -> Tensor:
    """alpha_bar of levels 0..T: 1 for the data, then the training schedule's (float64)."""
    return torch.cat([schedule.alpha_bars.new_ones(1), schedule.alpha_bars])


def boundary_coefficients(alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at the given alpha_bars: f = c_skip x + c_out F, with c_skip = 1 and c_out = 0 at the
    data (alpha_bar = 1)."""
    return alpha_bar.rsqrt(), -((1 - alpha_bar) / alpha_bar).sqrt()


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def consistency_output(x: Tensor, network_output: Tensor, alpha_bar: Tensor) -> Tensor:
    """f(x) = c_skip x + c_out F for states whose alpha_bar is given per example ([batch])."""
    c_skip, c_out = boundary_coefficients(alpha_bar.to(torch.float64))
    return _per_example(c_skip, x) * x + _per_example(c_out, x) * network_output


def ode_step(x: Tensor, eps: Tensor, alpha_bar: Tensor, alpha_bar_next: Tensor) -> Tensor:
    """One deterministic DDIM step from alpha_bar to alpha_bar_next (per example): the x_0 and the noise
    direction implied by eps, re-mixed at the new level."""
    a, a_next = alpha_bar.to(torch.float64), alpha_bar_next.to(torch.float64)
    x0 = consistency_output(x, eps, a)
    return _per_example(a_next.sqrt(), x) * x0 + _per_example((1 - a_next).sqrt(), x) * eps


def distillation_loss(student: NetworkFn, target: NetworkFn, teacher: NetworkFn, schedule: NoiseSchedule,
                      x0: Tensor, levels: Tensor, noise: Tensor, *, skip: int = 1,
                      prior_std: NoisePrior = None) -> Tensor:
    """Per-example consistency-distillation loss: || f_student(x_n, n) - f_target(x_m, m) ||^2 / S^2, averaged
    over samples, with x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) noise, m = max(n - skip, 0) and x_m the
    teacher's ODE step from x_n. `levels` holds n in 1..T per example; `noise` is the forward noise as drawn
    (already times S under a prior). At m = 0 the target is x_m itself: the boundary's c_out = 0 removes the
    target network's output there. The student carries the gradient; teacher and target do not.
    """
    if skip < 1:
        raise ValueError(f"skip must be >= 1, got {skip}")
    alpha_bars = level_alpha_bars(schedule).to(x0.device)
    n = levels.to(x0.device).long()
    if n.numel() and not (int(n.min()) >= 1 and int(n.max()) <= schedule.num_steps):
        raise ValueError(f"levels must lie in 1..{schedule.num_steps}, got {n.tolist()}")
    m = (n - skip).clamp(min=0)
    a_n, a_m = alpha_bars[n], alpha_bars[m]
    x_n = _per_example(a_n.sqrt(), x0) * x0 + _per_example((1 - a_n).sqrt(), x0) * noise
    with torch.no_grad():
        x_m = ode_step(x_n, teacher(x_n, (n - 1).float()).float(), a_n, a_m)
        target_output = target(x_m, (m - 1).clamp(min=0).float()).float()
        goal = consistency_output(x_m, target_output, a_m)  # equals x_m where m = 0: c_out vanishes there
    guess = consistency_output(x_n, student(x_n, (n - 1).float()).float(), a_n)
    error = guess - goal
    return whiten(prior_std, error).square().flatten(1).mean(dim=1)

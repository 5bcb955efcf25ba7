"""Reverse plans: which states the reverse chain visits, as values that one sampling loop runs.

A plan lists, for each reverse step, the alpha_bar of the state it starts from and of the state it moves to,
the (possibly fractional) training step the model is told, the standard deviation of the fresh noise, and
which update applies ("ancestral": the DDPM posterior-mean step; "ddim": Song et al.'s generalised step).
The full chain, DiffWave's fast schedule (Kong et al. 2021, Appendix B) and DDIM are three constructors.
Index i = 0 is the step that lands on the data; the loop runs i = S-1 down to 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from diffwave.diffusion.noise_schedule import NoiseSchedule, validate_betas
from diffwave.errors import ScheduleError

UPDATES = ("ancestral", "ddim")

# DiffWave's published 6-step inference schedules (paper, Appendix B).
FAST_SCHEDULES: dict[str, tuple[float, ...]] = {
    "base": (1e-4, 1e-3, 1e-2, 5e-2, 0.2, 0.5),
    "large": (1e-4, 1e-3, 1e-2, 5e-2, 0.2, 0.7),
}


@dataclass(frozen=True)
class ReversePlan:
    """The states a reverse chain visits; all tensors are float64 of length S (the number of steps)."""

    name: str
    alpha_bars: Tensor
    alpha_bars_prev: Tensor
    model_steps: Tensor
    sigmas: Tensor
    update: str

    def __post_init__(self) -> None:
        if self.update not in UPDATES:
            raise ValueError(f"unknown update '{self.update}', expected one of {UPDATES}")
        lengths = {len(v) for v in (self.alpha_bars, self.alpha_bars_prev, self.model_steps, self.sigmas)}
        if len(lengths) != 1:
            raise ValueError(f"plan '{self.name}' has tensors of different lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.alpha_bars)


def full_chain(schedule: NoiseSchedule, variance: str = "beta_tilde") -> ReversePlan:
    """DDPM's T-step chain with sigma_t^2 = beta_tilde_t (posterior) or beta_t; no noise on the last step."""
    if variance == "beta_tilde":
        sigmas = schedule.posterior_variance.sqrt()
    elif variance == "beta":
        sigmas = schedule.betas.sqrt()
        sigmas[0] = 0.0  # the last step returns the mean (DDPM Algorithm 2)
    else:
        raise ValueError(f"variance must be 'beta_tilde' or 'beta', got '{variance}'")
    steps = torch.arange(schedule.num_steps, dtype=torch.float64)
    return ReversePlan(f"ddpm-{variance}", schedule.alpha_bars, schedule.alpha_bars_prev, steps, sigmas,
                       "ancestral")


def align_to_training_steps(schedule: NoiseSchedule, alpha_bars: Tensor) -> Tensor:
    """Fractional training steps whose noise level matches each alpha_bar (DiffWave Appendix B).

    For abar_{t+1} <= g <= abar_t: t_s = t + (sqrt(abar_t) - sqrt(g)) / (sqrt(abar_t) - sqrt(abar_{t+1})).
    A value outside [abar_{T-1}, abar_0] is refused (the reference implementation drops it silently).
    """
    train = schedule.alpha_bars
    alpha_bars = torch.as_tensor(alpha_bars, dtype=torch.float64)
    lowest, highest = train[-1].item(), train[0].item()
    outside = (alpha_bars < lowest) | (alpha_bars > highest)
    if outside.any():
        index = int(outside.nonzero()[0])
        raise ScheduleError(
            f"reverse schedule step {index + 1} has alpha_bar {alpha_bars[index].item():.6g}, outside the "
            f"training schedule's range [{lowest:.6g}, {highest:.6g}] (T={schedule.num_steps}); "
            "choose betas whose cumulative product stays inside it")
    # t = the last training step still at least as clean as g (alpha_bars decrease with t).
    t = (train[None, :] >= alpha_bars[:, None]).sum(dim=1) - 1
    next_t = (t + 1).clamp(max=schedule.num_steps - 1)
    span = train[t].sqrt() - train[next_t].sqrt()
    fraction = torch.where(span > 0, (train[t].sqrt() - alpha_bars.sqrt()) / span.clamp(min=1e-300),
                           torch.zeros_like(span))
    return t.to(torch.float64) + fraction


def fast_schedule(schedule: NoiseSchedule, inference_betas: Sequence[float] | Tensor | str) -> ReversePlan:
    """DiffWave's fast sampler: its own short beta schedule, each state aligned to a fractional step.

    `inference_betas` is a list of betas (eta_1..eta_S) or a preset name from FAST_SCHEDULES.
    """
    if isinstance(inference_betas, str):
        if inference_betas not in FAST_SCHEDULES:
            raise ScheduleError(f"unknown fast schedule '{inference_betas}', expected one of "
                                f"{', '.join(FAST_SCHEDULES)} or a list of betas")
        inference_betas = FAST_SCHEDULES[inference_betas]
    etas = validate_betas(inference_betas, "fast schedule", terminal_one=schedule.zero_terminal_snr)
    gammas = torch.cumprod(1 - etas, dim=0)
    gammas_prev = torch.cat([gammas.new_ones(1), gammas[:-1]])
    sigmas = ((1 - gammas_prev) / (1 - gammas) * etas).sqrt()
    return ReversePlan(f"fast-{len(etas)}", gammas, gammas_prev, align_to_training_steps(schedule, gammas),
                       sigmas, "ancestral")


def ddim_steps(num_training_steps: int, num_steps: int) -> list[int]:
    """An evenly spaced increasing subsequence of 0..T-1 that always ends at the noisiest step T-1."""
    if not 1 <= num_steps <= num_training_steps:
        raise ScheduleError(f"DDIM needs between 1 and {num_training_steps} steps, got {num_steps}")
    if num_steps == 1:
        return [num_training_steps - 1]  # linspace would give [0]: one step from the cleanest state
    spaced = torch.linspace(0, num_training_steps - 1, num_steps, dtype=torch.float64).round().long()
    return spaced.tolist()


def ddim(schedule: NoiseSchedule, steps: int | Sequence[int], eta: float = 0.0) -> ReversePlan:
    """DDIM (Song et al. 2021) over a number of steps or an explicit increasing subsequence of 0..T-1.

    eta = 0 is deterministic; eta = 1 adds the posterior's noise (DDPM-like on the subsequence).
    """
    if isinstance(steps, int):
        steps = ddim_steps(schedule.num_steps, steps)
    indices = torch.as_tensor(list(steps), dtype=torch.long)
    if indices.numel() == 0 or (indices[1:] <= indices[:-1]).any():
        raise ScheduleError(f"DDIM steps must be a non-empty strictly increasing list, got {list(steps)}")
    if indices[0] < 0 or indices[-1] >= schedule.num_steps:
        raise ScheduleError(f"DDIM steps must lie in 0..{schedule.num_steps - 1}, got {list(steps)}")
    if eta < 0:
        raise ScheduleError(f"DDIM eta must be >= 0, got {eta}")
    alpha_bars = schedule.alpha_bars[indices]
    alpha_bars_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
    sigmas = eta * ((1 - alpha_bars_prev) / (1 - alpha_bars) * (1 - alpha_bars / alpha_bars_prev)).sqrt()
    return ReversePlan(f"ddim-{len(indices)}", alpha_bars, alpha_bars_prev, indices.to(torch.float64),
                       sigmas, "ddim")


def consistency_steps(num_training_steps: int, num_steps: int) -> list[int]:
    """The training steps a multistep consistency sampler visits, increasing: T-1 and then evenly spaced levels
    down towards the data (2 steps: T-1 and about T/2), never the nearly clean step 0 that would undo nothing."""
    if not 1 <= num_steps <= num_training_steps:
        raise ScheduleError(f"consistency sampling needs between 1 and {num_training_steps} steps, got {num_steps}")
    spaced = torch.linspace(num_training_steps - 1, 0, num_steps + 1, dtype=torch.float64)[:-1].round().long()
    return sorted(set(spaced.tolist()))


def consistency(schedule: NoiseSchedule, steps: int | Sequence[int]) -> ReversePlan:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) with a student f = x_0(x, eps_hat) (see
    diffusion/consistency.py): each step maps the state to f and re-noises it to the next level. That is DDIM
    with all of the next level's noise fresh, sigma^2 = 1 - abar_prev (the deterministic direction term is
    zero), so the one loop runs it; the last step lands on f itself."""
    if isinstance(steps, int):
        steps = consistency_steps(schedule.num_steps, steps)
    plan = ddim(schedule, steps)
    return replace(plan, name=f"consistency-{len(plan)}", sigmas=(1 - plan.alpha_bars_prev).sqrt())


DDIM_DEFAULT_STEPS = 12  # between the 6-step fast schedule and the full chain (capped at T)
CONSISTENCY_DEFAULT_STEPS = 2  # a distilled student's usual budget (Song et al. 2023: 1 or 2)

# build(schedule, steps or None, fast betas or a preset): the plan, each constructor filling in its own defaults.
PlanBuilder = Callable[[NoiseSchedule, int | None, Sequence[float] | str], ReversePlan]


@dataclass(frozen=True)
class Sampler:
    """One entry of the registry: how to build the plan, one line saying what it is (for --help), and which of
    the options `steps` and `schedule` it takes (the others are refused, not ignored)."""

    build: PlanBuilder
    doc: str
    takes_steps: bool = False
    takes_schedule: bool = False


SAMPLERS: dict[str, Sampler] = {
    "fast": Sampler(lambda schedule, steps, betas: fast_schedule(schedule, betas),
                    "DiffWave's short schedule (a preset such as base, or a list of betas), the default for "
                    "diffusion models", takes_schedule=True),
    "ddim": Sampler(lambda schedule, steps, betas: ddim(schedule, min(DDIM_DEFAULT_STEPS, schedule.num_steps)
                                                       if steps is None else steps),
                    f"deterministic DDIM in `steps` steps (default {DDIM_DEFAULT_STEPS}, capped at T)",
                    takes_steps=True),
    "ddpm": Sampler(lambda schedule, steps, betas: full_chain(schedule), "the full T-step chain"),
    "consistency": Sampler(lambda schedule, steps, betas: consistency(schedule, CONSISTENCY_DEFAULT_STEPS
                                                                      if steps is None else steps),
                           f"`steps` student evaluations (1 or 2, default {CONSISTENCY_DEFAULT_STEPS}): the default, "
                           "and the only sampler, for students of `diffwave distill`", takes_steps=True),
}


def _which(flag: str) -> str:
    """'the fast sampler' or 'the ddim and consistency samplers': the registry's samplers with `flag` set."""
    names = [name for name, entry in SAMPLERS.items() if getattr(entry, flag)]
    return f"the {' and '.join(names)} sampler{'s' if len(names) > 1 else ''}"


def plan_for(schedule: NoiseSchedule, sampler: str, *, steps: int | None = None,
             fast_betas: Sequence[float] | str | None = None,
             default_fast: Sequence[float] | str = "base") -> ReversePlan:
    """The plan a user names, built by its entry in SAMPLERS ("fast": `fast_betas`, default `default_fast`).
    Options that do not apply to the sampler are refused, not ignored."""
    entry = SAMPLERS.get(sampler)
    if entry is None:
        raise ScheduleError(f"unknown sampler '{sampler}', expected one of {', '.join(SAMPLERS)}")
    if fast_betas is not None and not entry.takes_schedule:
        raise ScheduleError(f"a schedule applies to {_which('takes_schedule')} only, not to '{sampler}'")
    if steps is not None and not entry.takes_steps:
        raise ScheduleError(f"steps applies to {_which('takes_steps')} only (sampler '{sampler}' fixes its own "
                            "steps)")
    return entry.build(schedule, steps, default_fast if fast_betas is None else fast_betas)


def starting_at(plan: ReversePlan, t_start: int) -> ReversePlan:
    """The plan restricted to its first t_start + 1 states, so the chain starts at plan state t_start.

    For the full chain, state t_start is training step t_start (x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps);
    this is how a partly noisy signal (zero-shot denoising, SDEdit) enters the reverse chain.
    """
    if not 0 <= t_start < len(plan):
        raise ScheduleError(f"start step must lie in 0..{len(plan) - 1} for plan '{plan.name}', got {t_start}")
    end = t_start + 1
    return ReversePlan(f"{plan.name}-from-{t_start}", plan.alpha_bars[:end], plan.alpha_bars_prev[:end],
                       plan.model_steps[:end], plan.sigmas[:end], plan.update)

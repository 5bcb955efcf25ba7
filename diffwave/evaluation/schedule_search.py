"""Search a fast reverse schedule by what it sounds like: held-out metrics of copy synthesis on a few clips.

DiffWave's fast schedules were hand-picked for its models (FAST_SCHEDULES); a model trained longer, on other
data or with another prior may sound better with other betas, and under a Griffin-Lim start the first betas set
how strongly the network reworks the estimate. The search scores candidates with `heldout.compare` (the
vocoder's own sampling path, so the model's default start applies) and the same noise seeds for every candidate:

1. a grid of geometric schedules, eta_1 = beta_min .. eta_S = beta_max for each step count S, plus the starting
   schedule itself, so the result is never worse on the clips than what the model had;
2. coordinate refinement of the best one: each beta times each factor, kept when the score improves, for a few
   rounds.

Schedules that give the same run (the states the plan visits: under a Griffin-Lim start from the last K states,
only eta_1..eta_K matter) are scored once, under the first betas that gave it.

A candidate whose noise levels leave the training schedule's range is skipped, as `fast_schedule` would refuse it.
The score is one metric, or "composite": the mean over the four metrics of the candidate's gap to a perfect
score relative to the starting schedule's gap (log-mel L1 and MR-STFT against 0, PESQ against 4.5, STOI against
1), so below 1 is better overall and no metric's units dominate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from diffwave.diffusion import NoiseSchedule, fast_schedule
from diffwave.errors import ConfigError, ScheduleError
from diffwave.evaluation.heldout import VocoderLike, compare

# metric -> its perfect value; each one's gap is |value - perfect|.
PERFECT = {"log_mel_l1": 0.0, "mr_stft": 0.0, "pesq_wb": 4.5, "stoi": 1.0}
OBJECTIVES = ("composite", *PERFECT)
GRID_BETA_MIN = (1e-4, 3e-4, 1e-3, 3e-3)
GRID_BETA_MAX = (0.2, 0.35, 0.5, 0.7)
REFINE_FACTORS = (0.5, 2.0)


@dataclass(frozen=True)
class Candidate:
    """One schedule and its mean scores over the clips; `score` is the objective (lower is better)."""

    betas: tuple[float, ...]
    scores: dict[str, float]
    score: float
    origin: str  # "start", "grid" or "refine"


def geometric_betas(steps: int, beta_min: float, beta_max: float) -> tuple[float, ...]:
    """`steps` betas from beta_min to beta_max, evenly spaced in log (one step: beta_max alone)."""
    if steps == 1:
        return (beta_max,)
    ratio = math.log(beta_max / beta_min) / (steps - 1)
    return tuple(beta_min * math.exp(ratio * index) for index in range(steps))


def fits(schedule: NoiseSchedule, betas: Sequence[float]) -> bool:
    """Whether `fast_schedule` accepts these betas for this training schedule."""
    try:
        fast_schedule(schedule, list(betas))
    except ScheduleError:
        return False
    return True


def grid(schedule: NoiseSchedule, step_counts: Sequence[int], beta_min: Sequence[float] = GRID_BETA_MIN,
         beta_max: Sequence[float] = GRID_BETA_MAX) -> list[tuple[float, ...]]:
    """The geometric grid's schedules that fit the training schedule, without repeats."""
    found: dict[tuple[float, ...], None] = {}
    for steps in step_counts:
        for low in beta_min:
            for high in beta_max:
                betas = geometric_betas(steps, low, high)
                if low < high and fits(schedule, betas):
                    found[betas] = None
    return list(found)


def objective(name: str, reference: dict[str, float]) -> Callable[[dict[str, float]], float]:
    """The score to minimise for `name`, the composite relative to the `reference` (starting) scores."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}', expected one of {', '.join(OBJECTIVES)}")
    if name != "composite":
        sign = 1.0 if PERFECT[name] == 0.0 else -1.0  # distances go down, PESQ and STOI up
        return lambda scores: sign * scores[name]

    def composite(scores: dict[str, float]) -> float:
        ratios = [abs(scores[key] - perfect) / max(abs(reference[key] - perfect), 1e-9)
                  for key, perfect in PERFECT.items()]
        return sum(ratios) / len(ratios)

    return composite


def run_key(vocoder: VocoderLike, betas: Sequence[float]) -> tuple[float, ...]:
    """What the vocoder's run depends on for these betas: the visited states of the plan it resolves."""
    plan = vocoder.plan("fast", schedule=list(betas))
    return tuple(float(value) for tensor in (plan.alpha_bars, plan.alpha_bars_prev, plan.model_steps, plan.sigmas)
                 for value in tensor)


def mean_scores(vocoder: VocoderLike, clips: dict[str, Tensor], betas: Sequence[float], seed: int) -> dict[str, float]:
    """Mean metrics of copy synthesis of `clips` with these fast betas (the vocoder's other defaults kept)."""
    results = compare(vocoder, clips, sampler="fast", seed=seed, with_griffin_lim=False, schedule=list(betas))
    return {key: sum(result.scores["diffwave"][key] for result in results) / len(results) for key in PERFECT}


def search(vocoder: VocoderLike, clips: dict[str, Tensor], schedule: NoiseSchedule, start: Sequence[float],
           step_counts: Sequence[int], objective_name: str = "composite", refine_rounds: int = 2, seed: int = 0,
           progress: Callable[[Candidate], None] | None = None) -> list[Candidate]:
    """Every candidate scored, best first (the start included); see the module docstring for the order."""
    if not clips:
        raise ConfigError("the schedule search needs at least one clip")
    start = tuple(float(beta) for beta in start)
    start_scores = mean_scores(vocoder, clips, start, seed)
    score_of = objective(objective_name, start_scores)
    seen: dict[tuple[float, ...], Candidate] = {}  # by run_key

    def consider(betas: tuple[float, ...], origin: str, scores: dict[str, float] | None = None) -> Candidate:
        key = run_key(vocoder, betas)
        if key not in seen:
            scores = scores or mean_scores(vocoder, clips, betas, seed)
            seen[key] = Candidate(betas, scores, score_of(scores), origin)
            if progress:
                progress(seen[key])
        return seen[key]

    best = consider(start, "start", start_scores)
    for betas in grid(schedule, step_counts):
        candidate = consider(betas, "grid")
        best = candidate if candidate.score < best.score else best
    for _ in range(refine_rounds):
        improved = False
        for index in range(len(best.betas)):
            for factor in REFINE_FACTORS:
                betas = tuple(beta * factor if position == index else beta
                              for position, beta in enumerate(best.betas))
                if not fits(schedule, betas):  # a beta outside (0, 1), or a level outside the range
                    continue
                candidate = consider(betas, "refine")
                if candidate.score < best.score:
                    best, improved = candidate, True
        if not improved:
            break
    return sorted(seen.values(), key=lambda candidate: candidate.score)

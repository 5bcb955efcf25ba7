"""Sampling options, resolved once at the edge, and which sampler a model takes (its policy lives here, once).

`SamplingOptions` is what a user asks for: the CLI's flags, or the keyword arguments of `Vocoder.vocode`,
`vocode_files` and `generate`: a sampler with its steps or fast schedule, the corrector, where the chain starts
(pure noise, or a Griffin-Lim estimate, plain or rescaled toward the mel's envelope, refined through the last
`start_step` states of the plan) and the
network's precision. `resolve` checks them against a model once and returns a `Sampling` (the plan, the
corrector, the prior), which the inner layers pass along without reading the options again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from diffwave.audio.prior import MelPrior
from diffwave.config import FINISHES, Config
from diffwave.config import INITS as INIT_NAMES
from diffwave.diffusion import NoiseSchedule, ReversePlan
from diffwave.diffusion.reverse_plans import plan_for, starting_at
from diffwave.diffusion.sampling import CORRECTOR_SNR, check_corrector
from diffwave.errors import DiffwaveError
from diffwave.model.cpu_kernels import LayerWorkload
from diffwave.precision import resolve_dtype

NOISE, GRIFFIN_LIM, GRIFFIN_LIM_ENVELOPE = INIT_NAMES
NO_FINISH, ENVELOPE_FINISH = FINISHES
GRIFFIN_LIM_INITS = (GRIFFIN_LIM, GRIFFIN_LIM_ENVELOPE)  # the starts from an estimate, which take start_step
INITS = dict(zip(INIT_NAMES, (
    "the plan's noisiest state, drawn from the prior (the default)",
    "a Griffin-Lim estimate of the mel (100 iterations), noised to the level of the plan's state start_step - 1, "
    "then refined through the plan's last start_step states (a shallow-diffusion warm start)",
    "the same Griffin-Lim estimate with each STFT band and frame first rescaled toward the mel (16 passes, phase "
    "kept: the network-free control of audio/griffin_lim.rescale_to_mel), then noised and refined the same way"),
    strict=True))


@dataclass(frozen=True)
class SamplingOptions:
    """What to sample with, as asked (None: the model's default). `sampler` is a name of the registry
    (diffusion.reverse_plans.SAMPLERS; None: "consistency" for a distilled student, else "fast"); `steps` are
    DDIM or consistency steps; `schedule` the fast sampler's betas or preset (None: the checkpoint's
    diffusion.fast_schedule); `corrector_steps` Langevin steps at every noisy state the sampler lands on, of
    size set by `corrector_snr` (diffusion/sampling.py); `init` where the chain starts (INITS; None: the
    model's diffusion.init) and `start_step` K how many of the plan's last states refine a Griffin-Lim start
    (1..len(plan); None: the model's diffusion.init_start_step when the init resolved to a Griffin-Lim one,
    so an explicit init="noise" still runs the whole plan); `finish` what is done to the chain's output
    (FINISHES; None: the model's diffusion.finish); `dtype` the network's precision ("auto", "fp32", "bf16",
    "fp16" or a torch dtype; None: the vocoder's own, fp32 for generate)."""

    sampler: str | None = None
    steps: int | None = None
    schedule: str | Sequence[float] | None = None
    corrector_steps: int = 0
    corrector_snr: float = CORRECTOR_SNR
    init: str | None = None
    start_step: int | None = None
    finish: str | None = None
    dtype: torch.dtype | str | None = None


def options_from(options: SamplingOptions | None, overrides: dict[str, Any]) -> SamplingOptions:
    """`options` (None: the defaults) with keyword `overrides` (SamplingOptions' field names) applied."""
    options = SamplingOptions() if options is None else options
    return replace(options, **overrides) if overrides else options


@dataclass(frozen=True)
class Corrector:
    """Langevin corrector steps at each noisy state (0: none) and their signal-to-noise ratio."""

    steps: int = 0
    snr: float = CORRECTOR_SNR


@dataclass(frozen=True)
class Sampling:
    """Options resolved against a model: the plan the one loop runs (with a Griffin-Lim start, only its last
    start_step states), the corrector, the prior (PriorGrad's or SpecGrad's, from the mel; None: N(0, I)),
    where the chain starts, what is done to its output, and the network's dtype."""

    plan: ReversePlan
    corrector: Corrector = Corrector()
    prior: MelPrior | None = None
    init: str = NOISE
    dtype: torch.dtype = torch.float32
    finish: str = NO_FINISH


def resolve(options: SamplingOptions, config: Config, *, device: torch.device | None = None,
            default_dtype: torch.dtype | None = None, prior: MelPrior | None = None,
            error: type[DiffwaveError] = DiffwaveError) -> Sampling:
    """Check `options` against the model of `config` once, with the reason when they do not fit (unknown
    sampler, options that do not apply to it, a fast schedule outside the training range, corrector settings
    out of range, a start the model cannot take), and resolve them into a `Sampling` for the inner layers.
    `default_dtype` is the precision when options.dtype is None (None: fp32)."""
    check_corrector(options.corrector_steps, options.corrector_snr)
    sampler = sampler_for(config, options.sampler, error, options.corrector_steps)
    plan = plan_for(NoiseSchedule.from_config(config.diffusion), sampler, steps=options.steps,
                    fast_betas=options.schedule, default_fast=config.diffusion.fast_schedule)
    options = _with_model_start(options, config)
    plan = _start(plan, options, config, error)
    if options.dtype is None and default_dtype is not None:
        dtype = default_dtype
    else:
        dtype = resolve_dtype(options.dtype, device or torch.device("cpu"), error,
                              workload=LayerWorkload(config.model.residual_channels))
    finish = _finish(options.finish, config, error)
    return Sampling(plan, Corrector(options.corrector_steps, options.corrector_snr), prior, options.init, dtype,
                    finish)


def _finish(finish: str | None, config: Config, error: type[DiffwaveError]) -> str:
    """The finish asked for (None: the model's diffusion.finish), refused where it cannot apply."""
    finish = config.diffusion.finish if finish is None else finish
    if finish not in FINISHES:
        raise error(f"unknown finish '{finish}', expected one of {', '.join(FINISHES)}")
    if finish != NO_FINISH and not config.model.conditional:
        raise error(f"finish '{finish}' rescales the output toward its mel: it needs a conditional (vocoder) model")
    return finish


def _with_model_start(options: SamplingOptions, config: Config) -> SamplingOptions:
    """`options` with the model's default start filled in: init None -> config.diffusion.init, and no
    start_step with a Griffin-Lim init -> config.diffusion.init_start_step."""
    init = config.diffusion.init if options.init is None else options.init
    start_step = options.start_step
    if start_step is None and init in GRIFFIN_LIM_INITS:
        start_step = config.diffusion.init_start_step
    return replace(options, init=init, start_step=start_step)


def _start(plan: ReversePlan, options: SamplingOptions, config: Config, error: type[DiffwaveError]) -> ReversePlan:
    """The plan the chain runs from its start: all of it from noise, or its last start_step states from a
    Griffin-Lim estimate (plain or envelope-rescaled)."""
    init = options.init
    if init not in INITS:
        raise error(f"unknown init '{init}', expected one of {', '.join(INITS)}")
    if init == NOISE:
        if options.start_step is not None:
            raise error(f"start_step applies to init {' or '.join(repr(name) for name in GRIFFIN_LIM_INITS)} only: "
                        "a chain from noise runs the whole plan")
        return plan
    if not config.model.conditional:
        raise error(f"init '{init}' refines an estimate made from a mel: it needs a conditional (vocoder) model")
    k = options.start_step
    if k is None:
        raise error(f"init '{init}' needs start_step K: refine the estimate through the last K of the "
                    f"{len(plan)} states of plan '{plan.name}' (1..{len(plan)})")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(plan):
        raise error(f"start_step must be a whole number in 1..{len(plan)} (plan '{plan.name}' has {len(plan)} "
                    f"states), got {k!r}")
    return starting_at(plan, k - 1)


def sampler_for(config: Config, sampler: str | None, error: type[DiffwaveError] = DiffwaveError,
                corrector_steps: int = 0) -> str:
    """The sampler to run (None: "consistency" for a distilled student, else "fast"), refused when it does not
    fit the model: a consistency student's output is an x_0 map, not a noise estimate, and vice versa. For the
    same reason a student takes no Langevin corrector, whose score is a noise estimate's."""
    student = config.model.prediction == "consistency"
    if student and corrector_steps:
        raise error("a consistency student takes no corrector steps: the Langevin corrector needs a noise estimate "
                    "(a score), and a student's output is an x_0 map")
    if sampler is None:
        return "consistency" if student else "fast"
    if student and sampler != "consistency":
        raise error(f"this checkpoint is a consistency student (diffwave distill): it samples with the consistency "
                    f"sampler (--sampler consistency --steps 1 or 2), not '{sampler}'")
    if sampler == "consistency" and not student:
        raise error("the consistency sampler needs a student made by `diffwave distill`; this checkpoint is a "
                    "diffusion model: use the fast, ddim or ddpm sampler")
    return sampler

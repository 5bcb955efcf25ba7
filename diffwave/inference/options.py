"""Sampling options, resolved at the edge: which sampler a model takes (its policy lives here, once)."""

from __future__ import annotations

from diffwave.config import Config
from diffwave.errors import DiffwaveError


def sampler_for(config: Config, sampler: str | None, error: type[DiffwaveError] = DiffwaveError,
                corrector_steps: int = 0) -> str:
    """The sampler to run (None: "consistency" for a distilled student, else "fast"), refused when it does not
    fit the model: a consistency student's output is an x_0 map, not a noise estimate, and vice versa. For the
    same reason a student takes no Langevin corrector, whose score is a noise estimate's."""
    student = config.distill.student
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

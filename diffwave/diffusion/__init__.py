"""The DDPM core: schedules, reverse plans, sampling and losses. Tensors in, tensors out; no audio."""

from diffwave.diffusion.losses import VariationalBound, diffusion_loss, epsilon_loss, variational_bound
from diffwave.diffusion.noise_schedule import NoiseSchedule
from diffwave.diffusion.reverse_plans import FAST_SCHEDULES, ReversePlan, ddim, fast_schedule, full_chain
from diffwave.diffusion.sampling import reverse_step, sample

__all__ = [
    "FAST_SCHEDULES",
    "NoiseSchedule",
    "ReversePlan",
    "VariationalBound",
    "ddim",
    "diffusion_loss",
    "epsilon_loss",
    "fast_schedule",
    "full_chain",
    "reverse_step",
    "sample",
    "variational_bound",
]

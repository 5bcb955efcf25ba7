"""diffwave: a DDPM core for audio, with the DiffWave vocoder, unconditional generation and denoising."""

__version__ = "0.1.0"

from diffwave._torch_version import check_torch_version  # noqa: E402

check_torch_version()

from diffwave.checkpoints import load_unconditional  # noqa: E402
from diffwave.config import Config, load_config  # noqa: E402
from diffwave.diffusion import (  # noqa: E402
    NoiseSchedule,
    ReversePlan,
    ddim,
    diffusion_loss,
    fast_schedule,
    full_chain,
    sample,
    variational_bound,
)
from diffwave.errors import DiffwaveError  # noqa: E402
from diffwave.inference import Vocoder  # noqa: E402
from diffwave.inference.denoise import Denoised, denoise  # noqa: E402
from diffwave.inference.generate import generate  # noqa: E402
from diffwave.model import DiffWave  # noqa: E402

__all__ = [
    "Config",
    "DiffWave",
    "Denoised",
    "DiffwaveError",
    "NoiseSchedule",
    "ReversePlan",
    "Vocoder",
    "__version__",
    "ddim",
    "denoise",
    "diffusion_loss",
    "fast_schedule",
    "full_chain",
    "generate",
    "load_config",
    "load_unconditional",
    "sample",
    "variational_bound",
]

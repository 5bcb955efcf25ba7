"""Unconditional generation: audio from noise with an unconditional model (no mel), e.g. the SC09 recipe."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffwave.config import Config, trained_steps
from diffwave.diffusion import sample
from diffwave.errors import DiffwaveError
from diffwave.inference.options import SamplingOptions, options_from, resolve
from diffwave.model import DiffWave
from diffwave.precision import autocast


def generate(model: DiffWave, config: Config, count: int, seconds: float, options: SamplingOptions | None = None,
             *, generator: torch.Generator | None = None, batch_size: int = 8, **sampling: Any) -> list[Tensor]:
    """`count` clips of `seconds` each, as CPU float32 tensors in [-1, 1], in batches of `batch_size`. The sampling
    options (`options` and/or SamplingOptions' fields as keywords: sampler, steps, schedule, corrector_steps and
    corrector_snr, dtype) are resolved once: the network in `dtype` (None: fp32; "auto", "bf16", ...: see
    diffwave/precision.py), the chain in fp32."""
    if model.conditional:
        raise DiffwaveError("generate needs an unconditional model; this one is conditioned on mels")
    if trained_steps(config) < config.diffusion.num_steps:
        raise DiffwaveError(f"this model was trained on steps 0..{trained_steps(config) - 1} of "
                            f"{config.diffusion.num_steps} only (train.max_step: a denoising prior), so it cannot "
                            "start from pure noise; use it with denoise")
    if count < 1 or seconds <= 0 or batch_size < 1:
        raise DiffwaveError(f"need count >= 1, seconds > 0 and batch_size >= 1, got {count}, {seconds}, {batch_size}")
    device = next(model.parameters()).device
    resolved = resolve(options_from(options, sampling), config, device=device)
    plan, precision = resolved.plan, resolved.dtype
    length = max(1, round(seconds * config.audio.sample_rate))

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        with autocast(device, precision):
            return model(x, t)

    clips: list[Tensor] = []
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            batch = min(batch_size, count - start)
            audio = sample(plan, eps_fn, (batch, length), generator=generator, device=device, clip=True,
                           corrector_steps=resolved.corrector.steps, corrector_snr=resolved.corrector.snr,
                           output=config.model.output)
            clips.extend(audio.float().cpu().clone())
    return clips

"""Unconditional generation: audio from noise with an unconditional model (no mel), e.g. the SC09 recipe."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from diffwave.audio import write_audio
from diffwave.config import Config, trained_steps
from diffwave.diffusion import NoiseSchedule, sample
from diffwave.diffusion.reverse_plans import plan_for
from diffwave.diffusion.sampling import CORRECTOR_SNR
from diffwave.errors import DiffwaveError
from diffwave.inference.files import output_targets
from diffwave.inference.options import sampler_for
from diffwave.inference.precision import autocast, resolve_dtype
from diffwave.model import DiffWave


def generate(model: DiffWave, config: Config, count: int, seconds: float, *, sampler: str | None = None,
             steps: int | None = None, schedule: str | list[float] | None = None,
             generator: torch.Generator | None = None, batch_size: int = 8,
             dtype: torch.dtype | str | None = None, corrector_steps: int = 0,
             corrector_snr: float = CORRECTOR_SNR) -> list[Tensor]:
    """`count` clips of `seconds` each, as CPU float32 tensors in [-1, 1], in batches of `batch_size`; the
    network in `dtype` (None: fp32; "auto", "bf16", ...: see inference/precision.py), the chain in fp32;
    `corrector_steps` Langevin steps per noisy state (predictor-corrector, see diffusion/sampling.py)."""
    if model.conditional:
        raise DiffwaveError("generate needs an unconditional model; this one is conditioned on mels")
    if trained_steps(config) < config.diffusion.num_steps:
        raise DiffwaveError(f"this model was trained on steps 0..{trained_steps(config) - 1} of "
                            f"{config.diffusion.num_steps} only (train.max_step: a denoising prior), so it cannot "
                            "start from pure noise; use it with denoise")
    if count < 1 or seconds <= 0 or batch_size < 1:
        raise DiffwaveError(f"need count >= 1, seconds > 0 and batch_size >= 1, got {count}, {seconds}, {batch_size}")
    sampler = sampler_for(config, sampler, corrector_steps=corrector_steps)
    plan = plan_for(NoiseSchedule.from_config(config.diffusion), sampler, steps=steps, fast_betas=schedule,
                    default_fast=config.diffusion.fast_schedule)
    length = max(1, round(seconds * config.audio.sample_rate))
    device = next(model.parameters()).device
    precision = resolve_dtype(dtype, device)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        with autocast(device, precision):
            return model(x, t)

    clips: list[Tensor] = []
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            batch = min(batch_size, count - start)
            audio = sample(plan, eps_fn, (batch, length), generator=generator, device=device, clip=True,
                           corrector_steps=corrector_steps, corrector_snr=corrector_snr)
            clips.extend(audio.float().cpu().clone())
    return clips


def write_clips(clips: list[Tensor], out: str | os.PathLike[str], sample_rate: int, *,
                prefix: str = "sample", force: bool = False) -> list[Path]:
    """OUT/prefix_000.wav ... (OUT made when missing), or the file OUT for a single clip (`-o one.wav`),
    atomically; existing files are replaced only with `force`."""
    paths = output_targets(out, [f"{prefix}_{i:03d}.wav" for i in range(len(clips))])
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise DiffwaveError(f"{existing[0]} already exists; pass --force to replace it")
    for path, clip in zip(paths, clips, strict=True):
        write_audio(path, clip, sample_rate)
    return paths

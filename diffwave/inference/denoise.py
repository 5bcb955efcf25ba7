"""Zero-shot denoising with an unconditional model (DiffWave, Kong et al. 2021, section on denoising).

A noisy waveform y = x0 + n with white noise of std sigma is, once scaled by sqrt(abar_t), exactly of the form
of a diffusion state x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps when sqrt(abar_t) sigma = sqrt(1 - abar_t),
i.e. sigma^2 = (1 - abar_t) / abar_t. So the reverse chain of an unconditional model is started at that step
t* from x_{t*} = sqrt(abar_{t*}) y and run down to 0; for a perfect model its output is close to a draw from the
posterior p(x0 | y) (exact in the mean for Gaussian data; the chain's Gaussian reverse kernels leave a
small variance gap, quantified in the tests). SDEdit (Meng et al. 2022) instead adds fresh noise:
x_{t*} = sqrt(abar) y + sqrt(1 - abar) z.

The model only knows the level it was trained on: the input is normalised to `target_rms` (0.1, about
-20 dBFS, the level speech corpora such as LJSpeech/SC09 are assumed to sit at) and the level is restored on
output; the noise level is estimated on the normalised signal. Long inputs run window by window with the
vocoder's layout and positional noise (`chunking`), so memory stays bounded and the output does not depend
on the windowing beyond the network's edge effects.
"""

from __future__ import annotations

import logging
import math
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor

from diffwave import pretrained
from diffwave.audio import as_mono
from diffwave.checkpoints import load_unconditional
from diffwave.config import Config, trained_steps
from diffwave.diffusion import NoiseSchedule, sample
from diffwave.diffusion.reverse_plans import full_chain, starting_at
from diffwave.diffusion.sampling import EpsFn, NoiseFn
from diffwave.errors import DiffwaveError
from diffwave.inference.chunking import OVERLAP_SECONDS, ChunkLayout, PositionalNoise, draw_seed, overlap_add
from diffwave.model import DiffWave
from diffwave.model.cpu_kernels import LayerWorkload
from diffwave.precision import autocast, resolve_dtype

logger = logging.getLogger("diffwave.denoise")

DEFAULT_TARGET_RMS = 0.1  # about -20 dBFS: the level assumed for a model trained without data.target_rms
NOISE_PERCENTILE = 0.10
DIGITAL_SILENCE = 1e-10  # frames below this fraction of the mean power are gated or padded zeros, not noise
# Windows: no conditioning is cached, so they can be long; the context scales with the network's reach
# (the unconditional preset sees +-12,285 samples), giving every cross-faded sample at least 1.1 reaches of
# real audio in both windows, as the vocoder's 0.3 s does for BASE.
DENOISE_CHUNK_SECONDS = 30.0
CONTEXT_REACHES = 2.2


# An input whose estimated noise power lies more than this factor (3 dB) below step 0's is cleaner than the
# least noise the model removes: the chain would take signal for noise, so the input is returned as it is.
ABOVE_RANGE_FACTOR = 2.0
CLIPPED_FRACTION = 1e-3  # samples at full scale beyond this share of the input: it was clipped


class Denoised(NamedTuple):
    """The denoised audio (float32, CPU, the input's rate and length), the start step t* (0-based; None when
    the input was cleaner than the model's range and came back unchanged) and the input's signal-to-noise
    ratio as estimated from its quietest frames (dB)."""

    audio: Tensor
    start_step: int | None
    estimated_snr_db: float


def estimate_noise_std(audio: Tensor, frame: int = 512) -> float:
    """Std of (roughly white) additive noise in `audio`, from its quietest frames.

    Estimator: sqrt of the 10th percentile of the per-frame mean power (mean of squares, not mean-removed)
    over non-overlapping frames of `frame` samples (a signal shorter than one frame is one frame).
    Bias: on pure white noise a frame's mean power is sigma^2 chi^2_frame / frame, whose 10th percentile is
    about 1 - 1.28 sqrt(2 / frame) of sigma^2, so the estimate is low by about 4 % for frame = 512 (more for
    short frames). Where fewer than 10 % of the frames are free of signal, the signal's power leaks in and the
    estimate is high (at worst it approaches the quiet parts' signal level plus the noise). Frames of digital
    silence (padding, gating: below DIGITAL_SILENCE of the mean power) carry no noise and are left out, or
    they would make the estimate 0 and switch denoising off.
    """
    audio = torch.as_tensor(audio).detach().reshape(-1).to(torch.float64)
    if audio.numel() == 0:
        raise DiffwaveError("cannot estimate the noise level of an empty signal")
    if frame < 1:
        raise ValueError(f"frame must be >= 1, got {frame}")
    count = max(1, audio.numel() // frame)
    frames = audio[: count * frame].reshape(count, -1) if audio.numel() >= frame else audio.reshape(1, -1)
    power = frames.pow(2).mean(dim=1)
    power = power[power > DIGITAL_SILENCE * power.mean()]
    return math.sqrt(torch.quantile(power, NOISE_PERCENTILE).item()) if power.numel() else 0.0


def choose_start_step(schedule: NoiseSchedule, noise_std: float) -> int:
    """The 0-based step t* whose noise-to-signal ratio (1 - abar_t) / abar_t is closest in log to
    noise_std^2 (where sqrt(abar) y has exactly the form of x_t); noise beyond the schedule's range gives 0
    or T-1."""
    if not math.isfinite(noise_std) or noise_std < 0:
        raise DiffwaveError(f"noise std must be finite and >= 0, got {noise_std}")
    if noise_std == 0:
        return 0
    abar = schedule.alpha_bars.to(torch.float64)
    log_ratio = torch.log1p(-abar) - torch.log(abar)
    return int(torch.argmin((log_ratio - 2 * math.log(noise_std)).abs()))


def denoise_normalised(y: Tensor, schedule: NoiseSchedule, eps_fn: EpsFn, t_start: int, *,
                       sdedit: bool = False, generator: torch.Generator | None = None,
                       noise_fn: NoiseFn | None = None, output: str = "epsilon") -> Tensor:
    """The chain itself: y [B, N] (already at the model's rate and level) -> x0 [B, N], started at t_start.

    x_{t*} = sqrt(abar_{t*}) y, or with `sdedit` sqrt(abar_{t*}) y + sqrt(1 - abar_{t*}) z; then the full
    chain restricted to its first t* + 1 states. Computed in y's dtype and on y's device; noise from
    `noise_fn` when given (z is its draw t* + 1), else from `generator`. `output`: what eps_fn predicts.
    """
    plan = starting_at(full_chain(schedule), t_start)
    alpha_bar = schedule.alpha_bars[t_start].item()
    x = math.sqrt(alpha_bar) * y
    if sdedit:
        z = noise_fn(len(plan)) if noise_fn is not None else torch.randn(y.shape, generator=generator,
                                                                          device=y.device, dtype=y.dtype)
        x = x + math.sqrt(1 - alpha_bar) * z.to(y.device, y.dtype)
    return sample(plan, eps_fn, tuple(y.shape), generator=generator, x_T=x, device=y.device, dtype=y.dtype,
                  noise_fn=noise_fn, output=output)


def _positional_noise(source: PositionalNoise, offset: int, length: int, device: torch.device) -> NoiseFn:
    """noise_fn for samples [offset, offset + length) of one signal: draw i is the same wherever it is cut."""
    buffer = torch.empty(1, length)

    def noise_fn(i: int) -> Tensor:
        source.fill(buffer[0], i, offset)
        return buffer.to(device)

    return noise_fn


def load_denoiser(checkpoint: str | os.PathLike[str] | None = None, device: torch.device | str | None = None
                  ) -> tuple[DiffWave, Config]:
    """An unconditional model for denoising and its config, from `checkpoint` or, for None, the shipped speech
    prior (its file checked against the manifest, and said in one log line)."""
    if checkpoint is None:
        shipped = pretrained.find(task=pretrained.DENOISER)
        logger.info("denoise: no model given; using the shipped speech prior '%s' (%s)", shipped.name,
                    shipped.description)
        checkpoint = pretrained.verified_path(shipped)
    return load_unconditional(checkpoint, device=device, purpose="denoising")


def _model_and_config(model: DiffWave | str | os.PathLike[str] | None, config: Config | None
                      ) -> tuple[DiffWave, Config]:
    if model is None:
        model, config = load_denoiser(device="cpu")
    elif isinstance(model, (str, os.PathLike)):
        model, config = load_denoiser(model)
    if config is None:
        raise ValueError("denoise with a DiffWave module needs its config (or pass a checkpoint path as model)")
    if model.conditional:
        raise DiffwaveError("denoising needs an unconditional model (model.conditional: false); "
                            "this one is conditioned on mels")
    if config.model.prediction == "consistency":
        raise DiffwaveError("denoising runs the full reverse chain, which needs a diffusion model; this one is a "
                            "consistency student (diffwave distill)")
    return model, config


def model_target_rms(config: Config) -> float:
    """The level denoise normalises input to: the one the model's training audio was scaled to, if any."""
    return DEFAULT_TARGET_RMS if config.data.target_rms is None else config.data.target_rms


def denoise(audio: Tensor | np.ndarray, sample_rate: int, model: DiffWave | str | os.PathLike[str] | None = None,
            t_start: int | None = None, *, config: Config | None = None, sdedit: bool = False,
            generator: torch.Generator | None = None, target_rms: float | None = None,
            chunk_seconds: float | None = DENOISE_CHUNK_SECONDS, overlap_seconds: float | None = None,
            dtype: torch.dtype | str | None = None) -> Denoised:
    """Denoise audio [samples] (or soundfile's [samples, channels], downmixed by the mean) at `sample_rate`.

    `model` is an unconditional DiffWave with its `config`, the path of an unconditional checkpoint, or None for
    the shipped speech prior (said in one log line). The signal is resampled to the model's rate (and back),
    normalised to `target_rms` (None: the level the model was trained at, see `model_target_rms`; restored on
    output), and t* is chosen from the estimated noise level unless given. An input noisier than the steps the
    model was trained on starts at its last trained step (with a warning); one cleaner than its first step by
    more than ABOVE_RANGE_FACTOR in noise power is returned unchanged (with a log line, start_step None).
    Clipped input is denoised like any other, with a warning: clipping is distortion, not additive noise, and
    stays. The same generator state gives the same output.
    Long inputs run in windows of `chunk_seconds` (None: one window) with `overlap_seconds` of context on
    each side (None: enough for the network's reach, at least the vocoder's 0.3 s). The network runs in
    `dtype` (None: fp32; "auto", "bf16", ...: see diffwave/precision.py), the chain in fp32.
    """
    model, config = _model_and_config(model, config)
    target_rms = model_target_rms(config) if target_rms is None else target_rms
    audio = as_mono(audio, "denoise input")
    if audio.numel() == 0:
        raise DiffwaveError("denoise input is empty; expected a non-empty mono signal [samples]")
    if not torch.isfinite(audio).all():
        raise DiffwaveError("the input audio has NaN/Inf samples; denoise needs finite audio")
    if sample_rate <= 0 or target_rms <= 0:
        raise DiffwaveError(f"sample_rate and target_rms must be positive, got {sample_rate} and {target_rms}")
    schedule = NoiseSchedule.from_config(config.diffusion)
    if t_start is not None and not 0 <= t_start < schedule.num_steps:
        raise DiffwaveError(f"t_start must lie in 0..{schedule.num_steps - 1} for this model, got {t_start}")
    length, model_rate = audio.numel(), config.audio.sample_rate
    if overlap_seconds is None:
        overlap_seconds = max(OVERLAP_SECONDS, CONTEXT_REACHES * model.reach / model_rate)
        overlap_seconds = overlap_seconds if chunk_seconds is None else min(overlap_seconds, chunk_seconds)
    layout = ChunkLayout.from_seconds(chunk_seconds, overlap_seconds, model_rate / config.audio.hop_length)
    y = audio.detach().to("cpu", torch.float32)
    if sample_rate != model_rate:
        y = AF.resample(y, sample_rate, model_rate)
    rms = y.pow(2).mean().sqrt().item()
    if rms == 0:
        raise DiffwaveError("the input audio is silent; there is nothing to denoise")
    peak = audio.abs().max()
    clipped = (audio.abs() >= 0.999 * peak).float().mean().item()
    if clipped > CLIPPED_FRACTION:
        logger.warning("denoise: the input looks clipped (%.2f%% of its samples at its peak %.3f); clipping is "
                       "not additive noise and stays in the output", 100 * clipped, peak.item())
    y = y * (target_rms / rms)
    noise_std = estimate_noise_std(y)
    snr_db = 10 * math.log10(max(target_rms**2 - noise_std**2, 1e-12) / max(noise_std**2, 1e-12))
    if t_start is None:
        first_level = (1 - schedule.alpha_bars[0].item()) / schedule.alpha_bars[0].item()
        if noise_std**2 * ABOVE_RANGE_FACTOR < first_level:
            logger.info("denoise: estimated input SNR %.1f dB is above the model's range (its first step's noise "
                        "is %.1f dB below the level); returned unchanged", snr_db,
                        10 * math.log10(target_rms**2 / first_level))
            return Denoised(audio.detach().to("cpu", torch.float32).clone(), None, snr_db)
        t_start = choose_start_step(schedule, noise_std)
        if t_start >= trained_steps(config):
            logger.warning("denoise: estimated input SNR %.1f dB is below the model's range (trained on steps "
                           "0..%d); starting at step %d", snr_db, trained_steps(config) - 1, trained_steps(config) - 1)
            t_start = trained_steps(config) - 1
    t_start = int(t_start)
    logger.debug("denoise: estimated input SNR %.1f dB, starting the chain at step %d of %d%s", snr_db, t_start,
                schedule.num_steps, " (SDEdit)" if sdedit else "")
    with torch.inference_mode():
        out = _windowed_chain(y, model, schedule, config.audio.hop_length, layout, t_start, sdedit,
                              PositionalNoise(draw_seed(generator)), dtype, config.model.output)
    out = out.clone() * (rms / target_rms)  # an ordinary tensor again: callers may edit it in place
    if sample_rate != model_rate:
        out = AF.resample(out, model_rate, sample_rate)
    out = out[:length] if out.numel() >= length else F.pad(out, (0, length - out.numel()))
    return Denoised(out, t_start, snr_db)


def _windowed_chain(y: Tensor, model: DiffWave, schedule: NoiseSchedule, hop: int, layout: ChunkLayout,
                    t_start: int, sdedit: bool, noise: PositionalNoise, dtype: torch.dtype | str | None,
                    output: str) -> Tensor:
    """The truncated chain over y [N] window by window (windows in blocks of `hop` samples, cross-faded)."""
    device = next(model.parameters()).device
    precision = resolve_dtype(dtype, device, workload=LayerWorkload(model.residual_channels))

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        with autocast(device, precision):
            return model(x, t)

    frames = math.ceil(y.numel() / hop)
    padded = F.pad(y, (0, frames * hop - y.numel()))

    def run(_: list[int], spans: list[tuple[int, int]]) -> Tensor:
        (start, stop), = spans
        window = padded[start * hop:stop * hop]
        return denoise_normalised(window[None].to(device), schedule, eps_fn, t_start,
                                  sdedit=sdedit, noise_fn=_positional_noise(noise, start * hop, window.numel(), device),
                                  output=output)

    return overlap_add(layout, [frames], hop, run)[0][:y.numel()]

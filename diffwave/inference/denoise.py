"""Zero-shot denoising with an unconditional model (DiffWave, Kong et al. 2021, section on denoising).

A noisy waveform y = x0 + n with white noise of std sigma is, once scaled by sqrt(abar_t), exactly of the form
of a diffusion state x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps when sqrt(abar_t) sigma = sqrt(1 - abar_t),
i.e. sigma^2 = (1 - abar_t) / abar_t. So the reverse chain of an unconditional model is started at that step
t* from x_{t*} = sqrt(abar_{t*}) y and run down to 0; for a perfect model its output is a draw from the
posterior p(x0 | y). SDEdit (Meng et al. 2022) instead adds fresh noise: x_{t*} = sqrt(abar) y + sqrt(1-abar) z.

The model only knows the level it was trained on: the input is normalised to `target_rms` (0.1, about
-20 dBFS, the level speech corpora such as LJSpeech/SC09 are assumed to sit at) and the level is restored on
output; the noise level is estimated on the normalised signal.
"""

from __future__ import annotations

import math
import os

import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from diffwave.audio import read_audio, write_audio
from diffwave.config import Config
from diffwave.diffusion import NoiseSchedule, sample
from diffwave.diffusion.reverse_plans import full_chain, starting_at
from diffwave.diffusion.sampling import EpsFn
from diffwave.errors import DiffwaveError

DEFAULT_TARGET_RMS = 0.1  # about -20 dBFS: the level the unconditional model is assumed trained on
NOISE_PERCENTILE = 0.10


def estimate_noise_std(audio: Tensor, frame: int = 512) -> float:
    """Std of (roughly white) additive noise in `audio`, from its quietest frames.

    Estimator: sqrt of the 10th percentile of the per-frame mean power (mean of squares, not mean-removed)
    over non-overlapping frames of `frame` samples (a signal shorter than one frame is one frame).
    Bias: on pure white noise a frame's mean power is sigma^2 chi^2_frame / frame, whose 10th percentile is
    about 1 - 1.28 sqrt(2 / frame) of sigma^2, so the estimate is low by about 4 % for frame = 512 (more for
    short frames). Where fewer than 10 % of the frames are free of signal, the signal's power leaks in and the
    estimate is high (at worst it approaches the quiet parts' signal level plus the noise).
    """
    audio = torch.as_tensor(audio).detach().reshape(-1).to(torch.float64)
    if audio.numel() == 0:
        raise DiffwaveError("cannot estimate the noise level of an empty signal")
    if frame < 1:
        raise ValueError(f"frame must be >= 1, got {frame}")
    count = max(1, audio.numel() // frame)
    frames = audio[: count * frame].reshape(count, -1) if audio.numel() >= frame else audio.reshape(1, -1)
    power = frames.pow(2).mean(dim=1)
    return math.sqrt(torch.quantile(power, NOISE_PERCENTILE).item())


def choose_start_step(schedule: NoiseSchedule, noise_std: float) -> int:
    """The 0-based step t* whose noise-to-signal ratio (1 - abar_t) / abar_t is closest in log to
    noise_std^2 (where sqrt(abar) y has exactly the form of x_t), clamped to [0, T-1]."""
    if not math.isfinite(noise_std) or noise_std < 0:
        raise DiffwaveError(f"noise std must be finite and >= 0, got {noise_std}")
    if noise_std == 0:
        return 0
    abar = schedule.alpha_bars.to(torch.float64)
    log_ratio = torch.log1p(-abar) - torch.log(abar)
    t = int(torch.argmin((log_ratio - 2 * math.log(noise_std)).abs()))
    return min(max(t, 0), schedule.num_steps - 1)


def denoise_normalised(y: Tensor, schedule: NoiseSchedule, eps_fn: EpsFn, t_start: int, *,
                       sdedit: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """The chain itself: y [B, N] (already at the model's rate and level) -> x0 [B, N], started at t_start.

    x_{t*} = sqrt(abar_{t*}) y, or with `sdedit` sqrt(abar_{t*}) y + sqrt(1 - abar_{t*}) z; then the full
    chain restricted to its first t* + 1 states. Computed in y's dtype and on y's device.
    """
    plan = starting_at(full_chain(schedule), t_start)
    alpha_bar = schedule.alpha_bars[t_start].item()
    x = math.sqrt(alpha_bar) * y
    if sdedit:
        z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        x = x + math.sqrt(1 - alpha_bar) * z
    return sample(plan, eps_fn, tuple(y.shape), generator=generator, x_T=x, device=y.device, dtype=y.dtype)


@torch.inference_mode()
def denoise(audio: Tensor, sample_rate: int, model, config: Config, *, t_start: int | None = None,
            sdedit: bool = False, generator: torch.Generator | None = None,
            target_rms: float = DEFAULT_TARGET_RMS) -> tuple[Tensor, int]:
    """Denoise a mono signal [samples] at `sample_rate` with an unconditional model.

    Returns (denoised float32 CPU audio at the input's rate and length, the start step t* used). The signal
    is resampled to the model's rate (and back), normalised to `target_rms` (and restored), and t* is chosen
    from the estimated noise level unless given.
    """
    if getattr(model, "conditional", False):
        raise DiffwaveError("denoising needs an unconditional model (model.conditional: false); "
                            "this one is conditioned on mels")
    audio = torch.as_tensor(audio)
    if audio.ndim != 1 or audio.numel() == 0:
        raise DiffwaveError(f"denoise expects a non-empty mono signal [samples], got shape {tuple(audio.shape)}")
    if not torch.isfinite(audio).all():
        raise DiffwaveError("the input audio has NaN/Inf samples; denoise needs finite audio")
    if sample_rate <= 0 or target_rms <= 0:
        raise DiffwaveError(f"sample_rate and target_rms must be positive, got {sample_rate} and {target_rms}")
    length = audio.numel()
    model_rate = config.audio.sample_rate
    y = audio.detach().to("cpu", torch.float32)
    if sample_rate != model_rate:
        y = AF.resample(y, sample_rate, model_rate)
    rms = y.pow(2).mean().sqrt().item()
    if rms == 0:
        raise DiffwaveError("the input audio is silent; there is nothing to denoise")
    y = y * (target_rms / rms)
    schedule = NoiseSchedule.from_config(config.diffusion)
    if t_start is None:
        t_start = choose_start_step(schedule, estimate_noise_std(y))
    device = next(model.parameters()).device
    x0 = denoise_normalised(y.unsqueeze(0).to(device), schedule, lambda x, t: model(x, t), int(t_start),
                            sdedit=sdedit, generator=generator)
    out = x0[0].float().cpu() * (rms / target_rms)
    if sample_rate != model_rate:
        out = AF.resample(out, model_rate, sample_rate)
    out = out[:length] if out.numel() >= length else torch.nn.functional.pad(out, (0, length - out.numel()))
    return out.clone(), int(t_start)


def denoise_file(path: str | os.PathLike[str], out_path: str | os.PathLike[str], model, config: Config,
                 **kwargs) -> int:
    """Denoise an audio file into `out_path` (written atomically) at the file's own rate; returns t*.

    The file is read with read_audio (mono downmix, validation, refusal of silent/non-finite files); the
    output is clipped to [-1, 1]. `kwargs` go to `denoise`.
    """
    try:
        rate = sf.info(str(path)).samplerate
    except (sf.SoundFileError, RuntimeError):
        rate = None
    audio = read_audio(path, rate or config.audio.sample_rate)  # read_audio says why an unreadable file fails
    clean, t_star = denoise(audio, rate or config.audio.sample_rate, model, config, **kwargs)
    write_audio(out_path, clean.clamp(-1.0, 1.0), rate or config.audio.sample_rate)
    return t_star

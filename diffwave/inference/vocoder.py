"""The vocoder: a checkpoint in, mels (or audio, for copy synthesis) in, waveforms out.

Everything about the model comes from the checkpoint's own config (audio preset, size, noise schedule), and
a mel that does not fit it is refused with the reason, because a vocoder given another front-end's mel
produces confident noise rather than an error.

Per utterance and window the conditioning is computed once (`DiffWave.condition`) and reused at every
reverse step. A batch of different lengths is padded, masked inside the network (`DiffWave.forward`'s
`mask`) and kept at zero in the padding, and each utterance draws its noise from a seed keyed by its own mel
(see `chunking`), so an utterance's audio does not depend on what else is in the batch. Long inputs are
synthesised in overlapping windows whose noise depends only on the absolute sample position, so chunked and
unchunked output agree up to the network's edge effects, which the context and cross-fade absorb. A priorgrad
checkpoint scales x_T and every step's noise by the standard deviations of its prior (audio/prior.py), taken
per window from the window's own mel frames; being per frame, they equal the whole utterance's.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

from diffwave.audio import LogMel, as_mono
from diffwave.audio.griffin_lim import GRIFFIN_LIM_ITERATIONS, griffin_lim, rescale_to_mel
from diffwave.audio.io import is_channels_last
from diffwave.audio.mel import check_mel_values
from diffwave.audio.prior import MelPrior, SpectralPrior, SpectralShaper, prior_from_config
from diffwave.checkpoints import load_model
from diffwave.config import Config
from diffwave.diffusion import NoiseSchedule, ReversePlan
from diffwave.diffusion.noise_priors import NoisePrior, shape_noise
from diffwave.diffusion.sampling import sample
from diffwave.errors import VocodeError
from diffwave.inference.chunking import (
    AUTO_CHUNK,
    CHUNK_SECONDS,
    OVERLAP_SECONDS,
    ChunkLayout,
    PositionalNoise,
    draw_seed,
    overlap_add,
    utterance_seed,
)
from diffwave.inference.options import (
    ENVELOPE_FINISH,
    GRIFFIN_LIM_ENVELOPE,
    GRIFFIN_LIM_INITS,
    Sampling,
    SamplingOptions,
    options_from,
    resolve,
)
from diffwave.model import DiffWave
from diffwave.model.cpu_kernels import LayerWorkload, conditioning_view
from diffwave.precision import autocast, resolve_dtype

logger = logging.getLogger("diffwave.vocoder")

MEL_MARGIN = 1  # mel frames beyond a window that make its conditioning exact (the upsampler reaches one frame)


def _unconditional(what: str) -> VocodeError:
    return VocodeError(f"{what} is an unconditional model; vocoding needs a conditional (mel) checkpoint; "
                       "use `diffwave generate`")


class Vocoder:
    """A conditional DiffWave model with its config, ready to turn mels into audio."""

    def __init__(self, model: DiffWave, config: Config, device: torch.device | str | None = None,
                 dtype: torch.dtype | str | None = None) -> None:
        if not model.conditional:
            raise _unconditional("this")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device, VocodeError, workload=LayerWorkload(model.residual_channels))
        self.model = model.to(self.device).eval()
        self._config = config
        self.schedule = NoiseSchedule.from_config(config.diffusion)
        self.prior = prior_from_config(config)  # PriorGrad's or SpecGrad's noise law from the mel; None: N(0, I)
        self.front_end = LogMel(config.audio).to(self.device)
        self._buffer = torch.empty(0)  # the conditioning of the current window (see _conditioning_buffer)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: torch.device | str | None = None,
                        dtype: torch.dtype | str | None = None, use_ema: bool = True) -> Vocoder:
        """Load a training checkpoint (its EMA weights, or the raw ones with use_ema=False) or an exported
        .safetensors; every setting comes from the config stored in the file."""
        model, config = load_model(path, use_ema)
        if not config.model.conditional:
            raise _unconditional(str(path))
        vocoder = cls(model, config, device, dtype)
        logger.info("vocoder %s: %s mels at %d Hz, on %s in %s", path, config.audio.mel_preset,
                    config.audio.sample_rate, vocoder.device, vocoder.dtype)
        return vocoder

    @classmethod
    def from_pretrained(cls, name: str | None = None, device: torch.device | str | None = None,
                        dtype: torch.dtype | str | None = None) -> Vocoder:
        """A model shipped with the package (`diffwave pretrained` lists them; None: the default one), after
        checking its file against the sha256 in the package's manifest."""
        from diffwave import pretrained

        return cls.from_checkpoint(pretrained.verified_path(pretrained.find(name)), device, dtype)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def sample_rate(self) -> int:
        return self._config.audio.sample_rate

    @property
    def hop_length(self) -> int:
        return self._config.audio.hop_length

    @property
    def n_mels(self) -> int:
        return self._config.audio.n_mels

    def mel(self, audio: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        """The checkpoint's own log-mel of audio [N] or a batch [B, N] (rows are utterances, not channels),
        resampled to the model's rate first; returned on the CPU. soundfile's [N, C] (C <= 8 channels, as
        `sf.read` returns stereo) is downmixed by the mean, as files are."""
        audio = torch.as_tensor(audio).float()
        if is_channels_last(audio):
            audio = as_mono(audio)  # soundfile's [samples, channels], not a batch of tiny clips
        if audio.ndim not in (1, 2):
            raise VocodeError(f"audio must have shape [samples] or [batch, samples], got {tuple(audio.shape)}")
        if not torch.isfinite(audio).all():
            raise VocodeError("audio has non-finite samples (NaN or Inf)")
        with torch.inference_mode():
            if sample_rate != self.sample_rate:
                audio = AF.resample(audio, sample_rate, self.sample_rate)
            mel = self.front_end(audio.to(self.device)).cpu()
        return mel.clone()  # an ordinary tensor: callers may edit it in place, which inference tensors refuse

    def resynthesize(self, audio: Tensor | np.ndarray, sample_rate: int, **vocode_kwargs: Any) -> Tensor | list[Tensor]:
        """Copy synthesis: the checkpoint's mel of `audio`, vocoded; the output is at `self.sample_rate`."""
        return self.vocode(self.mel(audio, sample_rate), **vocode_kwargs)

    def vocode(self, mel: Tensor | np.ndarray, options: SamplingOptions | Sampling | None = None, *,
               generator: torch.Generator | None = None, lengths: Sequence[int] | Tensor | None = None,
               chunk_seconds: float | str | None = AUTO_CHUNK, overlap_seconds: float = OVERLAP_SECONDS,
               **sampling: Any) -> Tensor | list[Tensor]:
        """Audio for mel [n_mels, F] (-> [F * hop]) or a padded batch [B, n_mels, F] (-> list of B tensors,
        item i trimmed to lengths[i] * hop); CPU float32 in [-1, 1].

        Sampling: `options` (SamplingOptions, or a `Sampling` this vocoder resolved already) and/or its fields
        as keywords (`sampler="ddim", steps=12`, `init="griffin-lim", start_step=2`, ...; see
        inference/options.py): the samplers are the registry's (diffusion.reverse_plans.SAMPLERS; None:
        "consistency" for a distilled student, else "fast" with the checkpoint's diffusion.fast_schedule).

        Predictor-corrector: `corrector_steps` K > 0 adds K Langevin steps at every noisy state the sampler lands
        on, K more network passes per state. Their step size comes from norms over each window of each
        utterance, so a corrected utterance is still independent of its batch, but chunked output no longer
        matches unchunked output (each window's norms differ); the cross-fade still joins the windows.

        Griffin-Lim start (`init="griffin-lim", start_step=K`): each utterance's Griffin-Lim estimate x_GL
        (audio.griffin_lim, 100 iterations) enters the plan at its state K - 1 as
        x = sqrt(abar) x_GL + sqrt(1 - abar) S eps (S: the prior's standard deviations, 1 without one), and the
        last K states of the plan refine it: K network passes. `init="griffin-lim-envelope"` first rescales x_GL
        toward the mel (audio.griffin_lim.rescale_to_mel, clamped to [-1, 1]: the network-free control).

        Finish (`finish="envelope"`; None: the model's diffusion.finish): each whole utterance's output gets the
        same rescaling toward its mel (phase kept), which removes the noise floor the network leaves in quiet
        bands; with a Griffin-Lim envelope start, the network then only reworks what the mel cannot fix.

        Randomness: one base seed is drawn from `generator` (torch's global generator when None), and each
        utterance's noise is seeded by that base seed and its own mel values, per block of absolute sample
        positions (Griffin-Lim's initial phase too). The same generator state gives the same audio, whatever
        the batch or the chunking.

        Long inputs: windows of `chunk_seconds` plus `overlap_seconds` of context on each side, cross-faded
        over `overlap_seconds` (`chunk_seconds=None`: one window), which bounds the cached conditioning's
        memory (benchmarks/inference_speed.py, memory rows). "auto": as long as 3 s of fp32 conditioning's memory
        holds in the dtype the model keeps it in, 6 s on a CPU (fp16 for fp32, bf16 for bf16) and 3 s for fp32 on
        a GPU: fewer windows, so less overlap to compute twice. A
        window edge disturbs the audio within about 1.6 receptive fields of one forward pass, not the chain's
        S-fold reach; every cross-faded sample has at least `overlap_seconds` / 2 of context in both windows.
        A Griffin-Lim start is made once per utterance and sliced per window. On a CPU the window's
        conditioning lives in one buffer that the vocoder keeps for its next window and call.
        """
        resolved = self.sampling(options, **sampling)
        if chunk_seconds == AUTO_CHUNK:
            stored = self._conditioning_dtype(resolved.dtype)
            chunk_seconds = CHUNK_SECONDS * torch.float32.itemsize / stored.itemsize
        layout = ChunkLayout.from_seconds(chunk_seconds, overlap_seconds, self.sample_rate / self.hop_length)
        with torch.inference_mode():
            mels, batched = self._validated_mels(mel, lengths)
            base_seed = draw_seed(generator)
            noises = [PositionalNoise(utterance_seed(base_seed, item)) for item in mels]
            audio = self._synthesise(resolved, mels, noises, layout)
        audio = [item.clone() for item in audio]  # ordinary tensors, as in `mel`
        if self.device.type != "cpu":
            self._buffer = torch.empty(0)  # keeping it pays on a CPU (page faults); on a GPU it would pin memory
        return audio if batched else audio[0]

    def check_mel(self, mel: Tensor | np.ndarray, what: str = "mel") -> None:
        """Refuse, with the reason, a mel [n_mels, frames] that this model cannot use (shape, bins, values):
        file runs check each input alone, so one bad mel never takes its batch down with it."""
        mel = torch.as_tensor(mel)
        if mel.ndim != 2:
            raise VocodeError(f"{what} must have shape [n_mels, frames], got {tuple(mel.shape)}")
        self._validated_mels(mel, None, what)

    def sampling(self, options: SamplingOptions | Sampling | None = None, **overrides: Any) -> Sampling:
        """The options `vocode` runs (`options` with keyword `overrides` of SamplingOptions' fields), resolved
        against this model once: refused here, before any work, when they do not fit it (inference/options.py);
        a `Sampling` is returned as it is."""
        if isinstance(options, Sampling):
            if overrides:
                raise TypeError("a resolved Sampling takes no overrides; pass SamplingOptions instead")
            return options
        return resolve(options_from(options, overrides), self._config, device=self.device, default_dtype=self.dtype,
                       prior=self.prior, error=VocodeError)

    def plan(self, sampler: str | None = None, steps: int | None = None,
             schedule: str | Sequence[float] | None = None, **options: Any) -> ReversePlan:
        """The reverse plan `vocode` runs for these options (SamplingOptions' fields), checked as `sampling`
        checks them."""
        return self.sampling(sampler=sampler, steps=steps, schedule=schedule, **options).plan

    # --- inputs ---------------------------------------------------------------------------------------
    def _validated_mels(self, mel: Tensor | np.ndarray, lengths: Sequence[int] | Tensor | None,
                        what: str = "mel") -> tuple[list[Tensor], bool]:
        """The utterances of `mel` as float32 [n_mels, F_i] tensors on the device, each checked."""
        mel = torch.as_tensor(mel)
        if mel.ndim not in (2, 3) or not mel.is_floating_point():
            raise VocodeError(f"{what} must be a float array [n_mels, frames] or [batch, n_mels, frames], got "
                              f"{mel.dtype} {tuple(mel.shape)}")
        batched = mel.ndim == 3
        if mel.shape[-2] != self.n_mels:
            transposed = (f"; its shape {tuple(mel.shape)} looks transposed: pass [n_mels, frames] (e.g. mel.T)"
                          if mel.shape[-1] == self.n_mels else "")
            raise VocodeError(f"{what} has {mel.shape[-2]} bins, model expects {self.n_mels} "
                              f"(preset {self._config.audio.mel_preset}){transposed}")
        frames = mel.shape[-1]
        if lengths is not None and not batched:
            raise VocodeError("lengths is for a batch [batch, n_mels, frames]; a single mel uses all its frames")
        batch = mel if batched else mel.unsqueeze(0)
        if batch.shape[0] == 0 or frames == 0:
            raise VocodeError(f"{what} is empty (shape {tuple(mel.shape)})")
        sizes = [frames] * batch.shape[0] if lengths is None else [int(n) for n in lengths]
        if len(sizes) != batch.shape[0] or not all(1 <= n <= frames for n in sizes):
            raise VocodeError(f"lengths must give 1..{frames} frames for each of the {batch.shape[0]} mels, "
                              f"got {sizes}")
        items = []
        for i, size in enumerate(sizes):
            item = batch[i, :, :size].to(self.device, torch.float32)
            check_mel_values(item, self._config.audio, f"{what} {i} of the batch" if batched else what, VocodeError)
            items.append(item)
        return items, batched

    # --- synthesis ------------------------------------------------------------------------------------
    def _synthesise(self, sampling: Sampling, mels: list[Tensor], noises: list[PositionalNoise],
                    layout: ChunkLayout) -> list[Tensor]:
        """Window by window (chunk-major), all utterances that reach window k in one padded batch."""
        starts = None
        if sampling.init in GRIFFIN_LIM_INITS:  # one estimate per utterance, sliced per window
            starts = [self._griffin_lim_start(sampling.init, item, noise.seed)
                      for item, noise in zip(mels, noises, strict=True)]

        # Each utterance's e_ref (per-utterance prior normalisation) from its whole mel, once, not per window.
        references = [None if sampling.prior is None else sampling.prior.reference(item) for item in mels]

        def run(active: list[int], spans: list[tuple[int, int]]) -> Tensor:
            return self._reverse_chain(sampling, [mels[i] for i in active], [noises[i] for i in active], spans,
                                       [references[i] for i in active],
                                       None if starts is None else [starts[i] for i in active])

        outputs = [output.clamp_(-1.0, 1.0)
                   for output in overlap_add(layout, [item.shape[-1] for item in mels], self.hop_length, run)]
        if sampling.finish == ENVELOPE_FINISH:  # whole utterances: the result does not depend on the windows
            outputs = [rescale_to_mel(output, mel, self._config.audio).clamp_(-1.0, 1.0).to(output)
                       for output, mel in zip(outputs, mels, strict=True)]
        return outputs

    def _griffin_lim_start(self, init: str, mel: Tensor, seed: int) -> Tensor:
        """The estimate a Griffin-Lim start refines: Griffin-Lim's audio for `mel`, rescaled toward it for
        init griffin-lim-envelope."""
        estimate = griffin_lim(mel, self._config.audio, GRIFFIN_LIM_ITERATIONS, seed=seed)
        if init == GRIFFIN_LIM_ENVELOPE:
            estimate = rescale_to_mel(estimate, mel, self._config.audio).clamp_(-1.0, 1.0)
        return estimate

    def _reverse_chain(self, sampling: Sampling, mels: list[Tensor], noises: list[PositionalNoise],
                       spans: list[tuple[int, int]], references: list[Tensor | None],
                       starts: list[Tensor] | None = None) -> Tensor:
        """Run the chain of `sampling` on one window of each utterance (all share the window's start); CPU [n, N].
        `references`: each utterance's e_ref (`MelPrior.reference` of its whole mel); `starts`: each utterance's
        whole Griffin-Lim estimate when the chain starts from one.

        The chain stays in float32 whatever the model's precision (`sample` keeps x in its dtype)."""
        hop, plan = self.hop_length, sampling.plan
        offset = spans[0][0] * hop
        lengths = [(stop - start) * hop for start, stop in spans]
        width = max(lengths)
        with self._autocast(sampling.dtype):
            cond = self._conditioning(mels, spans, width, sampling.dtype)
        mask = None
        if min(lengths) < width:
            mask = torch.arange(width, device=self.device) < torch.tensor(lengths, device=self.device)[:, None]
        noise = torch.zeros(len(spans), width)  # drawn on the CPU, refilled in place at every noisy step
        noise_on_device = noise.to(self.device)  # the same tensor on a CPU device

        def draw(index: int) -> Tensor:
            for row, (source, length) in enumerate(zip(noises, lengths, strict=True)):
                source.fill(noise[row, :length], index, offset)
            return noise_on_device.copy_(noise)

        def eps_fn(x: Tensor, t: Tensor) -> Tensor:
            with self._autocast(sampling.dtype):
                return self.model(x, t, cond, mask)

        prior_std = self._noise_prior(sampling.prior, mels, spans, references, width)
        x_start = None if starts is None else self._noised_start(plan, starts, lengths, offset, draw, prior_std)
        x = sample(plan, eps_fn, (len(spans), width), device=self.device, noise_fn=draw, x_T=x_start,
                   prior_std=prior_std, mask=mask, corrector_steps=sampling.corrector.steps,
                   corrector_snr=sampling.corrector.snr, output=self._config.model.output)
        return x.cpu()

    def _noised_start(self, plan: ReversePlan, starts: list[Tensor], lengths: list[int], offset: int,
                      draw: Callable[[int], Tensor], prior_std: NoisePrior) -> Tensor:
        """[n, width] x = sqrt(abar) x_GL + sqrt(1 - abar) S eps at the plan's first (noisiest) state: each row's
        window of its estimate, and the noise the chain would draw for x_T (index len(plan)); zero padding."""
        estimate = torch.zeros(len(lengths), max(lengths), device=self.device)
        for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
            estimate[row, :length] = start[offset:offset + length].to(self.device)
        alpha_bar = plan.alpha_bars[-1].item()
        noise = draw(len(plan))
        return estimate.mul_(math.sqrt(alpha_bar)).add_(shape_noise(prior_std, noise), alpha=math.sqrt(1 - alpha_bar))

    def _noise_prior(self, prior: MelPrior | None, mels: list[Tensor], spans: list[tuple[int, int]],
                     references: list[Tensor | None], width: int) -> NoisePrior:
        """The noise law of each window from its own mel frames (and its whole utterance's reference energy).
        PriorGrad: [n, width] standard deviations (per frame, so a window's equal the slice of the whole
        utterance's), 1 in the padding, which the mask hides. SpecGrad: the windows' filters, the floor beyond
        a shorter window; its STFT reaches a window of samples across a window's edges, which the overlap
        of chunked synthesis cross-fades."""
        if prior is None:
            return None
        spectral = isinstance(prior, SpectralPrior)
        if spectral:
            padded = torch.full((len(mels), self.front_end.mel_basis.shape[1], width // self.hop_length),
                                prior.energy.floor, device=self.device)
        else:
            padded = torch.ones(len(mels), width, device=self.device)
        for row, (mel, (start, stop), reference) in enumerate(zip(mels, spans, references, strict=True)):
            window = (prior.gain if spectral else prior.std)(mel[:, start:stop], reference)
            padded[row, ..., :window.shape[-1]] = window
        return SpectralShaper(padded, self.config.audio) if spectral else padded

    def _conditioning(self, mels: list[Tensor], spans: list[tuple[int, int]], width: int,
                      dtype: torch.dtype) -> Tensor:
        """[n, L, 2C, width]: each window's conditioning from its own mel (plus MEL_MARGIN frames, so it
        equals the corresponding slice of the whole utterance's). Beyond a shorter utterance's window it holds
        at most MEL_MARGIN frames of its own conditioning, then zeros; the mask hides all of it."""
        hop, start = self.hop_length, spans[0][0]
        low = max(0, start - MEL_MARGIN)  # the same for every row: the windows share their start
        margin = (start - low) * hop
        cond = self._conditioning_buffer(len(mels), margin + width + MEL_MARGIN * hop, dtype)
        for row, (mel, (_, stop)) in enumerate(zip(mels, spans, strict=True)):
            high = min(mel.shape[-1], stop + MEL_MARGIN)
            length = (high - low) * hop
            self.model.condition(mel[None, :, low:high], out=cond[row:row + 1, ..., :length])
            cond[row, ..., length:].zero_()
        return cond[..., margin:margin + width]

    def _conditioning_buffer(self, rows: int, length: int, dtype: torch.dtype) -> Tensor:
        """A [rows, L, 2C, length] view of one buffer kept across windows and calls, in the dtype the model's
        engine reads for sampling in `dtype` (`_conditioning_dtype`; reallocated only
        to grow or for another dtype): on a CPU, a fresh tensor of that size costs about 1 s of page faults per
        5 s window (BASE). Laid out as the model's engine reads it (`cpu_kernels.conditioning_view`)."""
        layers, channels = len(self.model.residual_layers), 2 * self.model.residual_channels
        size = rows * layers * channels * length
        dtype = self._conditioning_dtype(dtype)
        if self._buffer.numel() < size or self._buffer.dtype != dtype:
            self._buffer = torch.empty(0)  # release the old one before allocating the new one
            self._buffer = torch.empty(size, device=self.device, dtype=dtype)
        return conditioning_view(self._buffer, rows, layers, channels, length)

    def _conditioning_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of the conditioning buffer for sampling in `dtype` (the model's engine decides: fp16 for
        fp32 on a CPU), which sets how long an "auto" window is."""
        return self.model.conditioning_dtype(dtype, self.device)

    def _autocast(self, dtype: torch.dtype) -> torch.autocast:
        return autocast(self.device, dtype)

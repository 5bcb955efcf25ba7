"""Log-mel front-end with named presets, each reproducing one published convention exactly.

A vocoder only works on mels made the way its training mels were made, so a preset is a whole
convention, not a set of numbers (those come from `AudioConfig`):

- ``hifigan`` (default; HiFi-GAN / Tacotron 2 ``mel_spectrogram``): reflect-pad (n_fft - hop) // 2 on
  both sides, STFT without centring, Hann window of win_length, magnitude sqrt(re^2 + im^2 + 1e-9),
  Slaney mel scale with Slaney area normalisation (librosa.filters.mel defaults), ln(max(x, 1e-5)).
- ``lmnt`` (lmnt-com/diffwave's preprocess, so its pretrained checkpoints can be used): audio clamped to
  [-1, 1] as its preprocess does, then torchaudio MelSpectrogram conventions (centred frames, i.e.
  reflect-pad n_fft // 2; Hann window; HTK mel scale without normalisation), magnitude (power 1) of the
  STFT divided by sqrt(sum(window^2)) (normalized=True), then
  clamp((20 log10(max(S, 1e-5)) - 20 + 100) / 100, 0, 1). Its window is 4 hops (win_length = 4 * hop).

Each filterbank is built by the library its reference used (librosa for hifigan, torchaudio for lmnt),
so quirks such as torchaudio's integer Nyquist for odd sample rates are reproduced rather than fixed.

Frame counts. Both presets reflect-pad P samples on each side and take frames of n_fft every hop, so
``frames = (N + 2P - n_fft) // hop + 1`` (`num_frames`). With the usual even n_fft and n_fft - hop:
lmnt gives N // hop + 1 frames and hifigan N // hop. For N a multiple of hop that is N / hop + 1
(lmnt: one frame more than the audio/mel ratio; crops keep the first N / hop) and exactly N / hop
(hifigan). Both clamp before the log, so silence gives finite values.
"""

from __future__ import annotations

import math

import librosa
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from diffwave.config import AudioConfig
from diffwave.errors import AudioError, DiffwaveError

LOG_FLOOR = 1e-5  # both references clamp magnitudes here before the log
HIFIGAN_EPS = 1e-9  # added to re^2 + im^2 under the square root by HiFi-GAN


def _f_max(config: AudioConfig) -> float:
    return config.sample_rate / 2 if config.f_max is None else config.f_max


def reflect_padding(config: AudioConfig) -> int:
    """Reflect padding on each side: n_fft // 2 for lmnt (centred frames), (n_fft - hop) // 2 for hifigan."""
    if config.mel_preset == "lmnt":
        return config.n_fft // 2
    return (config.n_fft - config.hop_length) // 2


def num_frames(num_samples: int, config: AudioConfig) -> int:
    """Mel frames that `LogMel` makes from `num_samples` samples (for num_samples >= `min_samples`).

    lmnt: 1 + N // hop; hifigan: N // hop (both for even n_fft and n_fft - hop; see the module doc).
    """
    return (num_samples + 2 * reflect_padding(config) - config.n_fft) // config.hop_length + 1


def min_samples(config: AudioConfig) -> int:
    """The shortest signal with a mel: reflect padding needs more samples than it pads, and one frame."""
    pad = reflect_padding(config)
    return max(pad + 1, config.n_fft - 2 * pad)


def _mel_basis(config: AudioConfig) -> Tensor:
    """[n_mels, n_fft // 2 + 1] filterbank, made by the library the preset's reference used."""
    if config.mel_preset == "lmnt":
        return AF.melscale_fbanks(config.n_fft // 2 + 1, config.f_min, _f_max(config), config.n_mels,
                                  config.sample_rate, norm=None, mel_scale="htk").T.contiguous()
    basis = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                fmin=config.f_min, fmax=_f_max(config))
    return torch.from_numpy(basis)


def band_to_bin_weights(basis: Tensor) -> tuple[Tensor, Tensor]:
    """(spread [bins, n_mels], covered [bins]) for a filterbank [n_mels, bins]: spread @ per-band values gives
    each linear bin the filterbank-weighted mean of the bands covering it (a row of zeros where none does)."""
    weight = basis.sum(dim=0)
    covered = weight > 0
    spread = torch.where(covered[:, None], basis.T / weight.clamp(min=torch.finfo(basis.dtype).tiny)[:, None], 0.0)
    return spread, covered


class LogMel(nn.Module):
    """audio [B, N] or [N] -> log-mel [B, n_mels, frames] or [n_mels, frames], per `config.mel_preset`.

    The window and filterbank are buffers, so the module follows `.to(device)`; they are not
    persistent (derived from the config, which checkpoints carry), so state dicts stay free of them.
    """

    window: Tensor
    mel_basis: Tensor

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        self.register_buffer("mel_basis", _mel_basis(config), persistent=False)

    def extra_repr(self) -> str:
        c = self.config
        return (f"preset={c.mel_preset}, sample_rate={c.sample_rate}, n_fft={c.n_fft}, "
                f"win_length={c.win_length}, hop_length={c.hop_length}, n_mels={c.n_mels}")

    def _magnitude(self, audio: Tensor) -> Tensor:
        """[B, N] -> |STFT| [B, n_fft // 2 + 1, frames] with the preset's padding and magnitude."""
        c = self.config
        pad = reflect_padding(c)
        padded = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(padded, c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                          window=self.window, center=False, return_complex=True)
        if c.mel_preset == "lmnt":
            return spec.abs() / self.window.pow(2).sum().sqrt()
        return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + HIFIGAN_EPS)

    def _compress(self, mel: Tensor) -> Tensor:
        clamped = mel.clamp(min=LOG_FLOOR)
        if self.config.mel_preset == "lmnt":
            return ((20 * torch.log10(clamped) - 20 + 100) / 100).clamp(0.0, 1.0)
        return torch.log(clamped)

    def forward(self, audio: Tensor) -> Tensor:
        if audio.dim() not in (1, 2):
            raise ValueError(f"LogMel expects audio [samples] or [batch, samples], got shape "
                             f"{tuple(audio.shape)}")
        batch = audio.unsqueeze(0) if audio.dim() == 1 else audio
        shortest = min_samples(self.config)
        if batch.shape[-1] < shortest:
            raise AudioError(f"audio of {batch.shape[-1]} samples is too short for a mel: expected at "
                             f"least {shortest} samples ({self.config.mel_preset} preset, "
                             f"n_fft {self.config.n_fft}, hop {self.config.hop_length})")
        batch = batch.to(self.window.dtype)
        if self.config.mel_preset == "lmnt":
            batch = batch.clamp(-1.0, 1.0)
        mel = self._compress(self.mel_basis @ self._magnitude(batch))
        return mel.squeeze(0) if audio.dim() == 1 else mel


def check_mel_values(mel: Tensor, config: AudioConfig, what: str, error: type[DiffwaveError] = AudioError) -> None:
    """Refuse non-finite values, and a value range that belongs to the other preset: a vocoder given another
    front end's mel produces confident noise rather than an error."""
    if not torch.isfinite(mel).all():
        frame = int((~torch.isfinite(mel)).any(dim=0).nonzero()[0])
        raise error(f"{what} has non-finite values (NaN or Inf), first at frame {frame}")
    low, high = mel.min().item(), mel.max().item()
    floor = math.log(LOG_FLOOR)  # hifigan mels are clamped here
    if config.mel_preset == "lmnt" and low < -0.01:
        raise error(f"{what} has values down to {low:.3g}: it looks like a natural-log (hifigan-style) mel, but this "
                    "model expects lmnt mels in [0, 1]")
    if config.mel_preset == "lmnt" and high > 1.01:
        raise error(f"{what} has values up to {high:.3g}, outside [0, 1]: this model expects lmnt mels (a "
                    "natural-log hifigan mel would not fit either)")
    if config.mel_preset == "hifigan" and low >= 0.0 and high <= 1.0:
        raise error(f"{what} lies entirely in [0, 1]: it looks like an lmnt mel in [0, 1], but this model expects "
                    f"hifigan mels (natural-log magnitudes, from ln(1e-5) = {floor:.1f} up to about 5)")
    if config.mel_preset == "hifigan" and (low < 2 * floor or high > 10.0):
        raise error(f"{what} has values in [{low:.3g}, {high:.3g}]: this model expects hifigan mels (natural-log "
                    f"magnitudes, from {floor:.1f} up to about 5), not lmnt [0, 1] mels nor decibels")

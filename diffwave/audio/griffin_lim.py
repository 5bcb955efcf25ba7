"""Griffin-Lim from a log-mel: the model-free baseline a vocoder has to beat on the same mels, and the
network-free control that follows it with a mel-envelope rescaling (`rescale_to_mel`).

The mel is decompressed with the preset's own inverse (`prior.mel_magnitudes`), the filterbank is inverted
by least squares (the minimum-norm solution, negative bins set to zero, as torchaudio's InverseMelScale
does), and the phase is found by fast Griffin-Lim (Perraudin et al. 2013: torchaudio's `griffinlim` with
momentum 0.99). torchaudio frames are centred on n * hop; the preset's frames are centred on
n * hop + (n_fft // 2 - padding) (hifigan: 128 samples later), so the result is shifted by that much to line
up with the audio the mel was made from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor

from diffwave.audio.mel import LogMel, band_to_bin_weights, reflect_padding
from diffwave.audio.prior import mel_magnitudes
from diffwave.config import AudioConfig

GRIFFIN_LIM_ITERATIONS = 100
GRIFFIN_LIM_MOMENTUM = 0.99
ENVELOPE_PASSES = 16
MAX_BAND_GAIN = 1e3  # per pass: a band the estimate left silent is lifted, but not from numerical zero to anything


def linear_magnitude(mel: Tensor, config: AudioConfig) -> Tensor:
    """[n_mels, frames] log-mel -> [n_fft // 2 + 1, frames] STFT magnitude (unnormalised window)."""
    basis = LogMel(config).mel_basis.double()
    mel_magnitude = mel_magnitudes(mel.double(), config)
    linear = torch.linalg.lstsq(basis, mel_magnitude, driver="gelsd").solution.clamp(min=0.0)
    if config.mel_preset == "lmnt":  # lmnt divides the STFT by the window's L2 norm (normalized=True)
        linear = linear * torch.hann_window(config.win_length, dtype=torch.float64).pow(2).sum().sqrt()
    return linear.float()


def griffin_lim(mel: Tensor, config: AudioConfig, iterations: int = GRIFFIN_LIM_ITERATIONS,
                seed: int = 0) -> Tensor:
    """Audio [frames * hop] whose log-mel approximates `mel` [n_mels, frames]; the random initial phase is
    drawn from `seed` (torch's global generator is left as it was)."""
    if mel.ndim != 2 or mel.shape[0] != config.n_mels:
        raise ValueError(f"mel must have shape [{config.n_mels}, frames], got {tuple(mel.shape)}")
    magnitude = linear_magnitude(mel.detach().cpu(), config)
    frames = mel.shape[-1]
    shift = config.n_fft // 2 - reflect_padding(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        audio = AF.griffinlim(magnitude, torch.hann_window(config.win_length), config.n_fft, config.hop_length,
                              config.win_length, power=1.0, n_iter=iterations, momentum=GRIFFIN_LIM_MOMENTUM,
                              length=(frames - 1) * config.hop_length + 1, rand_init=True)
    audio = F.pad(audio, (shift, 0))  # frame n of the preset is centred `shift` samples after n * hop
    length = frames * config.hop_length
    return F.pad(audio, (0, max(0, length - audio.numel())))[:length].clamp(-1.0, 1.0)


def rescale_to_mel(audio: Tensor, mel: Tensor, config: AudioConfig, passes: int = ENVELOPE_PASSES) -> Tensor:
    """`audio` [frames * hop] with each STFT frame's bins rescaled, `passes` times, so that its log-mel moves to
    `mel` [n_mels, frames], the phase kept: the network-free control a vocoder must also beat.

    Each pass measures the audio's mel magnitudes with the preset's own front end, takes the ratio to the
    target's per band and frame, spreads it over the linear bins by the filterbank's weights (bins no band
    covers keep their gain of 1) and resynthesises by overlap-add. Frame n of the preset is centred `shift`
    samples after n * hop, so the STFT runs on the audio from sample `shift` on; the first `shift` samples keep
    their values.
    """
    if mel.ndim != 2 or mel.shape[0] != config.n_mels:
        raise ValueError(f"mel must have shape [{config.n_mels}, frames], got {tuple(mel.shape)}")
    front_end = LogMel(config)
    spread, covered = band_to_bin_weights(front_end.mel_basis.double())
    target = mel_magnitudes(mel.detach().cpu().double(), config)
    shift = config.n_fft // 2 - reflect_padding(config)
    window = torch.hann_window(config.win_length, dtype=torch.float64)
    stft = {"n_fft": config.n_fft, "hop_length": config.hop_length, "win_length": config.win_length,
            "window": window, "center": True}
    result = audio.detach().cpu().double()
    for _ in range(passes):
        current = mel_magnitudes(front_end(result.float()).double(), config)
        frames = min(current.shape[-1], target.shape[-1])
        ratio = (target[:, :frames] / current[:, :frames].clamp(min=1e-12)).clamp(1 / MAX_BAND_GAIN, MAX_BAND_GAIN)
        gain = torch.ones(covered.numel(), frames, dtype=torch.float64)
        gain[covered] = (spread @ ratio)[covered]
        body = result[shift:]
        spectrum = torch.stft(body, return_complex=True, **stft)
        count = min(frames, spectrum.shape[-1])
        spectrum[:, :count] *= gain[:, :count]
        result = torch.cat([result[:shift], torch.istft(spectrum, length=body.numel(), **stft)])
    return result.float()

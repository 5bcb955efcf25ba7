"""Griffin-Lim from a log-mel: the model-free baseline a vocoder has to beat on the same mels.

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

from diffwave.audio.mel import LogMel, reflect_padding
from diffwave.audio.prior import mel_magnitudes
from diffwave.config import AudioConfig

GRIFFIN_LIM_ITERATIONS = 100
GRIFFIN_LIM_MOMENTUM = 0.99


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

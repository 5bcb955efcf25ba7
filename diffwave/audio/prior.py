"""Data-dependent priors from the mel: PriorGrad's per-sample standard deviation from the frame energy, and
SpecGrad's time-frequency noise shaping from the spectral envelope (`SpectralPrior`, at the end).

PriorGrad (Lee et al., ICLR 2022) draws the forward noise from N(0, Sigma), Sigma = diag(S^2), with S following
the loudness of the speech, so the reverse chain starts from noise already shaped like the utterance's envelope
and the network has less to learn. S is made per mel frame and then per sample:

1. Magnitudes: undo the preset's compression in every mel bin. ``hifigan`` stores ln(max(M, 1e-5)), so
   M = exp(mel); ``lmnt`` stores clamp((20 log10 M - 20 + 100) / 100, 0, 1), so M = 10^(5 mel - 4), in
   [1e-4, 10] (its 1/sqrt(sum(window^2)) scale is absorbed by step 3).
2. Frame energy: e = sqrt(sum over the mel bins of M), the reference code's energy for its HiFi-GAN mels.
3. Normalisation with statistics of the training corpus (`DiffusionConfig.prior_energy_min/max`, stored in
   the checkpoint's config): S = clamp((e - e_min) / (e_max - e_min), floor, 1), floor = 0.1 as in PriorGrad.
   e_min is the quietest training frame; e_max is the 99.9th percentile of the training frames rather than
   the loudest one, so one click does not shrink every other frame's S (the reference clips its energy at a
   hand-set 4 for the same reason; on LJSpeech our hifigan percentile is 4.2). S <= 1: the prior is never
   wider than the standard one.
4. S of frame f is held over its hop, samples [f * hop, (f + 1) * hop), as the reference does.

Corpus statistics clamp a voice louder or quieter than the corpus: a quiet one gets the floor nearly
everywhere, a loud one 1, and its envelope is lost. `diffusion.prior_normalization: utterance` first brings
each utterance to the corpus's loudness: its energies are scaled by e_max / e_ref, where e_ref is the same
quantile of the whole utterance's own frame energies (`reference_energy`). A gain g on the audio scales
every energy by sqrt(g) (above the mel's floor), so S no longer depends on the input level. A silent
utterance is scaled up to S = 1 everywhere: the standard prior.

Each frame's S depends only on that frame (and, per utterance, on e_ref of the whole utterance, passed in),
so a window of a long mel gets exactly the slice of the whole utterance's S, and chunked synthesis still
equals unchunked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from diffwave.audio.mel import LogMel, band_to_bin_weights
from diffwave.config import AudioConfig, Config
from diffwave.errors import ConfigError

ENERGY_QUANTILE = 0.999  # e_max: this quantile of the training frames' energies (see the module doc)


def mel_magnitudes(mel: Tensor, config: AudioConfig) -> Tensor:
    """The mel filterbank magnitudes M that the preset compressed into `mel` (step 1 of the module doc)."""
    if config.mel_preset == "lmnt":
        return torch.pow(10.0, 5.0 * mel - 4.0)
    return mel.exp()


def frame_energy(mel: Tensor, config: AudioConfig) -> Tensor:
    """[..., n_mels, frames] -> [..., frames]: sqrt of the summed mel magnitudes of each frame.

    Each frame is summed as one contiguous row, so its energy does not depend on the other frames in the
    tensor (a reduction across columns may group them differently for another width): a window's energies
    are bit for bit the slice of the whole utterance's."""
    return mel_magnitudes(mel, config).transpose(-1, -2).contiguous().sum(dim=-1).sqrt()


def _float64(mel: Tensor | np.ndarray) -> Tensor:
    """A float64 copy of a mel, from a tensor or a (possibly memory-mapped, read-only) array."""
    return mel.detach().cpu().double() if isinstance(mel, Tensor) else torch.from_numpy(np.array(mel, np.float64))


def corpus_energy_range(mels: Iterable[Tensor | np.ndarray], config: AudioConfig) -> tuple[float, float]:
    """(e_min, e_max) of the frame energies of a corpus's mels ([n_mels, frames] each), in float64."""
    energies = [frame_energy(_float64(mel), config).numpy() for mel in mels]
    if not energies or sum(e.size for e in energies) == 0:
        raise ConfigError("diffusion.prior needs the training split's frame-energy statistics, but it has no mel "
                          "frames to take them from")
    values = np.concatenate(energies)
    low, high = float(values.min()), float(np.quantile(values, ENERGY_QUANTILE))
    if not high > low * (1 + 1e-6):  # the quantile's interpolation may round a constant up by an ulp
        raise ConfigError(f"diffusion.prior needs frame-energy statistics, but every training frame has the same "
                          f"energy ({low:.4g}): the corpus is silent or constant, so it defines no envelope")
    return low, high


def reference_energy(mel: Tensor | np.ndarray, config: AudioConfig) -> float:
    """e_ref of one whole utterance's mel [n_mels, frames]: its frames' ENERGY_QUANTILE energy quantile, in
    float64 (the loudness that per-utterance normalisation maps to the corpus's e_max)."""
    energies = frame_energy(_float64(mel), config)
    if energies.numel() == 0:
        raise ValueError("a mel with no frames has no reference energy")
    return float(torch.quantile(energies, ENERGY_QUANTILE))


def needs_reference_energy(config: Config) -> bool:
    """Whether `config`'s prior reads each utterance's e_ref (per-utterance normalisation)."""
    return config.diffusion.prior != "standard" and config.diffusion.prior_normalization == "utterance"


def with_corpus_statistics(config: Config, mels: Iterable[Tensor | np.ndarray]) -> Config:
    """`config` with the prior's energy statistics of the training mels filled in; unchanged (and `mels` never
    read) for the standard prior or when they are already set (a resumed run keeps its own)."""
    diffusion = config.diffusion
    if diffusion.prior == "standard" or diffusion.prior_energy_max is not None:
        return config
    low, high = corpus_energy_range(mels, config.audio)
    return dataclasses.replace(config, diffusion=dataclasses.replace(diffusion, prior_energy_min=low,
                                                                     prior_energy_max=high))


@dataclass(frozen=True)
class EnergyPrior:
    """PriorGrad's S for mels of one audio config, normalised with one corpus's energy range, and per
    utterance to the corpus's loudness when `per_utterance`."""

    audio: AudioConfig
    energy_min: float
    energy_max: float
    floor: float
    per_utterance: bool = False

    @classmethod
    def from_config(cls, config: Config) -> EnergyPrior | None:
        """The energy part of the prior `config` asks for (PriorGrad's S, which SpecGrad's filter follows too):
        None for the standard N(0, I)."""
        diffusion = config.diffusion
        if diffusion.prior == "standard":
            return None
        if diffusion.prior_energy_min is None or diffusion.prior_energy_max is None:
            raise ConfigError(f"diffusion.prior is '{diffusion.prior}', but diffusion.prior_energy_min/max (the "
                              "training corpus's frame-energy statistics, set when training starts) are missing")
        return cls(config.audio, diffusion.prior_energy_min, diffusion.prior_energy_max, diffusion.prior_floor,
                   needs_reference_energy(config))

    def reference(self, mel: Tensor) -> Tensor | None:
        """e_ref of a whole utterance's mel [n_mels, frames] as a 0-d tensor, or None when this prior does not
        normalise per utterance."""
        return torch.tensor(reference_energy(mel, self.audio)) if self.per_utterance else None

    def frame_std(self, mel: Tensor, reference: Tensor | None = None) -> Tensor:
        """[..., n_mels, frames] -> S per frame [..., frames], in [floor, 1]. `reference` ([...]: e_ref of the
        whole utterance each mel was cut from) is required per utterance and refused otherwise."""
        if (reference is None) == self.per_utterance:
            raise ValueError("this prior normalises per utterance and needs each utterance's reference energy"
                             if self.per_utterance else "a corpus-normalised prior takes no reference energy")
        energy = frame_energy(mel.float(), self.audio)
        if reference is not None:
            tiny = torch.finfo(torch.float32).tiny  # a log-mel's energy is positive: this only guards bad input
            gain = self.energy_max / reference.to(energy.device, torch.float64).clamp(min=tiny)
            energy = energy * gain.float().unsqueeze(-1)
        return ((energy - self.energy_min) / (self.energy_max - self.energy_min)).clamp(self.floor, 1.0)

    def std(self, mel: Tensor, reference: Tensor | None = None) -> Tensor:
        """[..., n_mels, frames] -> S per audio sample [..., frames * hop], each frame's S held over its hop."""
        return self.frame_std(mel, reference).repeat_interleave(self.audio.hop_length, dim=-1)

    noise_prior = std  # the forward noise's law for these mels, as diffusion/noise_priors.py takes it


class SpectralShaper:
    """L = G+ H G on signals [..., N]: the STFT G (Hann window, the mel's n_fft, win and hop, centred frames),
    a real gain H [..., bins, frames] per bin and frame, and the iSTFT G+ (its least-squares inverse).
    `whiten` applies G+ H^-1 G, SpecGrad's approximation of L^-1. STFT frame j takes gain frame j (the last
    one beyond them): centred frames sit within half a hop of the preset's mel frames."""

    def __init__(self, gain: Tensor, audio: AudioConfig) -> None:
        self.gain, self.audio = gain, audio
        self.window = torch.hann_window(audio.win_length, device=gain.device)

    def _filter(self, signal: Tensor, gain: Tensor) -> Tensor:
        a, length = self.audio, signal.shape[-1]
        flat = signal.reshape(-1, length).float()
        stft = {"n_fft": a.n_fft, "hop_length": a.hop_length, "win_length": a.win_length, "window": self.window,
                "center": True}
        spectrum = torch.stft(flat, return_complex=True, **stft)
        frames = spectrum.shape[-1]
        gain = gain.reshape(-1, *gain.shape[-2:]).to(flat.device)
        if gain.shape[-1] < frames:
            gain = torch.cat([gain, gain[..., -1:].expand(*gain.shape[:-1], frames - gain.shape[-1])], dim=-1)
        filtered = torch.istft(spectrum * gain[..., :frames], length=length, **stft)
        return filtered.reshape(signal.shape).to(signal.dtype)

    def shape(self, noise: Tensor) -> Tensor:
        return self._filter(noise, self.gain)

    def whiten(self, residual: Tensor) -> Tensor:
        return self._filter(residual, self.gain.reciprocal())


@dataclass(frozen=True)
class SpectralPrior:
    """SpecGrad (Koizumi et al., Interspeech 2022): Sigma = L L^T with L = G+ H G (`SpectralShaper`), the noise
    shaped like the utterance's spectral envelope and the loss weighted by the inverse filter.

    In frame t, the envelope E_t(f) is the mel's magnitudes spread over the linear bins by the filterbank
    weights (as `griffin_lim.rescale_to_mel` spreads its gains; bins that no band covers get 0). Its square
    root, as PriorGrad's energy is the square root of the summed magnitudes (speech spans 60 dB of magnitude,
    which would leave all but the formant peaks at the floor), is scaled so that its largest bin is PriorGrad's
    S_t of that frame (`energy`, corpus- or utterance-normalised):
        H(t, f) = clamp(S_t sqrt(E_t(f) / max_f E_t(f)), floor, 1),
    never wider than the standard prior, and at least the floor, so that the inverse filter stays bounded.
    Unlike the paper, the filter has zero phase (no minimum-phase design) and the envelope is not liftered:
    80 mel bands already give a smooth one.
    """

    energy: EnergyPrior
    spread: Tensor = field(init=False, repr=False, compare=False)  # [bins, n_mels]: mel bands -> linear bins

    def __post_init__(self) -> None:
        object.__setattr__(self, "spread", band_to_bin_weights(LogMel(self.energy.audio).mel_basis)[0])

    @property
    def per_utterance(self) -> bool:
        return self.energy.per_utterance

    def reference(self, mel: Tensor) -> Tensor | None:
        return self.energy.reference(mel)

    def gain(self, mel: Tensor, reference: Tensor | None = None) -> Tensor:
        """[..., n_mels, frames] -> H [..., n_fft // 2 + 1, frames], in [floor, 1]."""
        envelope = self.spread.to(mel.device) @ mel_magnitudes(mel.float(), self.energy.audio)
        peak = envelope.amax(dim=-2, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
        std = self.energy.frame_std(mel, reference).unsqueeze(-2)
        return (std * (envelope / peak).sqrt()).clamp(self.energy.floor, 1.0)

    def noise_prior(self, mel: Tensor, reference: Tensor | None = None) -> SpectralShaper:
        """The forward noise's law for mels [B, n_mels, frames]: L for signals [B, frames * hop]."""
        return SpectralShaper(self.gain(mel, reference), self.energy.audio)


MelPrior = EnergyPrior | SpectralPrior


def prior_from_config(config: Config) -> MelPrior | None:
    """The data-dependent prior `config` asks for (diffusion.prior); None for the standard N(0, I)."""
    energy = EnergyPrior.from_config(config)
    return SpectralPrior(energy) if config.diffusion.prior == "specgrad" else energy

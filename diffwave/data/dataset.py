"""Random-crop training datasets and fixed validation crops, read from a preprocessed feature folder.

Every item is one crop of one utterance. Where a crop starts is a pure function of (seed, epoch,
index), never of the global RNG, the worker that loads it or what was loaded before, so a run that
resumes mid-epoch with DataLoader workers sees exactly the crops an uninterrupted run would have seen.
An utterance shorter than the crop is zero-padded at the end (its mel with the front-end's value for
silence) rather than dropped, and the item's "length" says how many of its audio samples are real.

Files are memory-mapped and only the crop is copied, so a crop never reads a whole long file. The
training classes and `ValidationCrops` share one cropping function and differ only in where the crop
starts. With persistent DataLoader workers, `set_epoch` must be called before the workers start: they
hold copies of the dataset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffwave.audio import LogMel, min_samples, num_frames
from diffwave.audio.prior import needs_reference_energy, reference_energy
from diffwave.config import AudioConfig, Config
from diffwave.data.manifest import Utterance, read_manifest
from diffwave.errors import DataError

Item = dict[str, Any]


@dataclass(frozen=True)
class _MelFormat:
    """What a mel crop needs to know: the audio config its files were made with, and its silence column."""

    config: AudioConfig
    silence: np.ndarray  # float32 [n_mels]

    @classmethod
    def of(cls, config: AudioConfig) -> _MelFormat:
        """Compute the front-end's mel of silence (the value of a padded frame) rather than hard-code it:
        it depends on the preset and the filterbank (lmnt clamps silence to 0, hifigan to about ln(1e-5))."""
        with torch.inference_mode():
            mel = LogMel(config)(torch.zeros(max(min_samples(config), config.n_fft)))
        return cls(config, mel[:, 0].numpy().astype(np.float32))


def _open(path: Path, what: str) -> np.ndarray:
    """Memory-map a .npy file: its header gives the shape for free, and only sliced data is read."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the {what} file ({error}); rerun 'diffwave preprocess'") from None


def _read_audio(utterance: Utterance, start: int, crop_samples: int) -> tuple[np.ndarray, int]:
    """Samples [start, start + crop_samples), zero-padded past the end; and how many of them are real."""
    audio = _open(utterance.audio, "audio")
    if audio.shape != (utterance.samples,):
        raise DataError(f"{utterance.audio}: audio has shape {list(audio.shape)}, expected [{utterance.samples}] "
                        "as in the manifest; rerun 'diffwave preprocess'")
    crop = np.zeros(crop_samples, dtype=np.float32)
    length = max(0, min(crop_samples, utterance.samples - start))
    crop[:length] = audio[start:start + length]
    return crop, length


def _read_mel(utterance: Utterance, mel_format: _MelFormat, start_frame: int, crop_frames: int) -> np.ndarray:
    """Frames [start_frame, start_frame + crop_frames), padded past the end with silence columns."""
    config = mel_format.config
    mel = _open(utterance.mel, "mel")
    expected_frames = max(0, num_frames(utterance.samples, config))
    if mel.ndim != 2 or mel.shape[0] != config.n_mels:
        raise DataError(f"{utterance.mel}: mel has {mel.shape[0] if mel.ndim == 2 else list(mel.shape)} bins, "
                        f"expected {config.n_mels} (audio.n_mels, {config.mel_preset} preset)")
    if mel.shape[1] != expected_frames or utterance.frames != expected_frames:
        raise DataError(f"{utterance.mel}: mel has {mel.shape[1]} frames (manifest: {utterance.frames}), expected "
                        f"{expected_frames} for {utterance.samples} samples ({config.mel_preset} preset, "
                        f"hop {config.hop_length}); rerun 'diffwave preprocess'")
    crop = np.repeat(mel_format.silence[:, None], crop_frames, axis=1)
    real = max(0, min(crop_frames, mel.shape[1] - start_frame))
    crop[:, :real] = mel[:, start_frame:start_frame + real]
    return crop


def _crop(utterance: Utterance, start: int, crop_samples: int, mel_format: _MelFormat | None) -> Item:
    """The one cropping function: audio from sample `start` (a multiple of hop with a mel), and its mel."""
    audio, length = _read_audio(utterance, start, crop_samples)
    item: Item = {"audio": torch.from_numpy(audio), "id": utterance.id, "length": length}
    if mel_format is not None:
        hop = mel_format.config.hop_length
        item["mel"] = torch.from_numpy(_read_mel(utterance, mel_format, start // hop, crop_samples // hop))
    return item


class _Crops(Dataset[Item], ABC):
    """One crop per utterance; subclasses choose where it starts (`_start`).

    With `config`, crops also carry the aligned mel and start on frame boundaries; `crop_samples` is
    then a whole number of frames. With `with_reference_energy` they also carry "reference_energy", the
    whole utterance's e_ref (audio/prior.py), which a per-utterance prior needs and a crop cannot give.
    """

    def __init__(self, utterances: Sequence[Utterance], crop_samples: int, config: AudioConfig | None,
                 target_rms: float | None = None, with_reference_energy: bool = False) -> None:
        if crop_samples <= 0:
            raise ValueError(f"crop_samples must be positive, got {crop_samples}")
        if config is not None and crop_samples % config.hop_length:
            raise ValueError(f"crop_samples ({crop_samples}) must be a multiple of hop_length ({config.hop_length})")
        self.utterances = list(utterances)
        self.crop_samples = crop_samples
        self.config = config
        self.mel_format = None if config is None else _MelFormat.of(config)
        if target_rms is not None and (config is not None or target_rms <= 0):
            raise ValueError("target_rms needs audio-only crops (a mel would no longer match) and must be positive")
        self.target_rms = target_rms
        self._utterance_rms: dict[int, float] = {}
        if with_reference_energy and config is None:
            raise ValueError("with_reference_energy needs crops with a mel")
        # Read once here, so DataLoader workers (copies of the dataset) never reread whole mels each epoch.
        self._reference_energy = ([reference_energy(_open(u.mel, "mel"), config) for u in self.utterances]
                                  if with_reference_energy else None)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops are served (as DistributedSampler.set_epoch does for order)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def _unit(self) -> int:
        """Crops start on multiples of this many samples: a mel frame, or any sample without a mel."""
        return 1 if self.config is None else self.config.hop_length

    def _last_start(self, utterance: Utterance) -> int:
        """The latest start, in units, that keeps the crop inside the utterance (negative: it must be padded).

        With a mel, a crop needs its frames in the mel file and their samples in the audio file; lmnt
        mels have one frame more than the audio covers, and that frame is never the start of a full crop.
        """
        if self.config is None:
            available = utterance.samples
        else:
            available = min(utterance.samples // self.config.hop_length,
                            max(0, num_frames(utterance.samples, self.config)))
        return available - self.crop_samples // self._unit()

    @abstractmethod
    def _start(self, index: int) -> int:
        """Where item `index` starts, in units of `_unit()` samples."""

    def _level_db(self, index: int) -> float:
        """Where item `index` sits relative to `target_rms`, in dB (0 here; random crops may jitter it)."""
        return 0.0

    def _gain(self, index: int) -> float:
        """The factor that brings the whole utterance to `target_rms` (then the item's level), 1 for a silent
        utterance: the same level whichever crop of it is served."""
        assert self.target_rms is not None
        if index not in self._utterance_rms:
            audio = _open(self.utterances[index].audio, "audio")
            power = np.mean(np.square(audio, dtype=np.float64)) if audio.size else 0.0
            self._utterance_rms[index] = float(np.sqrt(power))
        rms = self._utterance_rms[index]
        return self.target_rms / rms * 10 ** (self._level_db(index) / 20) if rms > 0 else 1.0

    def __getitem__(self, index: int) -> Item:
        utterance = self.utterances[index]
        item = _crop(utterance, self._start(index) * self._unit(), self.crop_samples, self.mel_format)
        if self.target_rms is not None:
            item["audio"].mul_(self._gain(index))
        if self._reference_energy is not None:
            item["reference_energy"] = self._reference_energy[index]
        return item


class _RandomCrops(_Crops):
    """Training crops at a random start drawn from numpy.random.default_rng([seed, epoch, index])."""

    def __init__(self, utterances: Sequence[Utterance], crop_samples: int, config: AudioConfig | None,
                 seed: int, target_rms: float | None = None, with_reference_energy: bool = False) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {seed}")
        super().__init__(utterances, crop_samples, config, target_rms, with_reference_energy)
        self.seed = seed

    def _start(self, index: int) -> int:
        last = self._last_start(self.utterances[index])
        if last <= 0:
            return 0
        return int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, last + 1))


class ConditionalCrops(_RandomCrops):
    """Random (audio, mel) crops of `crop_frames` frames for the mel-conditioned vocoder.

    Items: {"audio": float32 [crop_frames * hop], "mel": float32 [n_mels, crop_frames], "id": str,
    "length": real audio samples in the crop} (and "reference_energy" with `with_reference_energy`).
    """

    def __init__(self, utterances: Sequence[Utterance], config: AudioConfig, crop_frames: int, seed: int,
                 with_reference_energy: bool = False) -> None:
        if crop_frames <= 0:
            raise ValueError(f"crop_frames must be positive, got {crop_frames}")
        super().__init__(utterances, crop_frames * config.hop_length, config, seed,
                         with_reference_energy=with_reference_energy)


class UnconditionalCrops(_RandomCrops):
    """Random audio-only crops of `crop_samples` samples, starting at any sample, for the unconditional model.

    With `target_rms`, each utterance is scaled to that RMS and then by a level drawn uniformly from
    [-level_jitter_db, 0] dB per (seed, epoch, index): a prior for denoising sees speech at the levels the
    denoiser's normalisation hands it (noisy input at `target_rms` leaves the speech itself a few dB lower).
    Items: {"audio": float32 [crop_samples], "id": str, "length": real audio samples in the crop}.
    """

    def __init__(self, utterances: Sequence[Utterance], crop_samples: int, seed: int,
                 target_rms: float | None = None, level_jitter_db: float = 0.0) -> None:
        if level_jitter_db < 0:
            raise ValueError(f"level_jitter_db must be >= 0, got {level_jitter_db}")
        super().__init__(utterances, crop_samples, None, seed, target_rms)
        self.level_jitter_db = level_jitter_db

    def _level_db(self, index: int) -> float:
        if not self.level_jitter_db:
            return 0.0
        return float(np.random.default_rng([self.seed, self.epoch, index, 1]).uniform(-self.level_jitter_db, 0.0))


class ValidationCrops(_Crops):
    """One fixed crop per utterance, from its middle (on a frame boundary with a mel), whatever the epoch.

    Validation losses are comparable across epochs, runs and processes only if they are measured on the
    same audio. With `config` the items carry the mel as `ConditionalCrops` do (`crop_samples` must
    then be a multiple of hop); without it they are audio-only, as `UnconditionalCrops`.
    """

    def __init__(self, utterances: Sequence[Utterance], crop_samples: int, config: AudioConfig | None = None,
                 target_rms: float | None = None, with_reference_energy: bool = False) -> None:
        super().__init__(utterances, crop_samples, config, target_rms, with_reference_energy)

    def _start(self, index: int) -> int:
        return max(0, self._last_start(self.utterances[index]) // 2)


def reference_energies(batch: Item, device: torch.device | str) -> Tensor | None:
    """A collated batch's per-utterance e_ref [batch] (float64), or None when its crops carry none."""
    return batch["reference_energy"].to(device, torch.float64) if "reference_energy" in batch else None


def read_split(folder: Path | str, audio: AudioConfig, split: str,
               hint: str = "preprocess more audio") -> list[Utterance]:
    """The utterances of a feature folder's split; an empty split is refused, with `hint` on what to do."""
    utterances = read_manifest(folder, audio, split)
    if not utterances:
        raise DataError(f"{folder}: the '{split}' split has no utterances; {hint} or choose another split")
    return utterances


def crops_for_training(folder: Path | str, config: Config, split: str = "train", seed: int | None = None
                       ) -> ConditionalCrops | UnconditionalCrops:
    """The training dataset of a feature folder: conditional or unconditional as `config.model` says.

    `seed` defaults to `config.train.seed`. Features made with other audio settings are refused.
    """
    utterances = read_split(folder, config.audio, split)
    seed = config.train.seed if seed is None else seed
    if config.model.conditional:
        return ConditionalCrops(utterances, config.audio, config.data.crop_frames, seed,
                                needs_reference_energy(config))
    return UnconditionalCrops(utterances, config.data.crop_samples, seed, config.data.target_rms,
                              config.data.level_jitter_db)


def crops_for_validation(folder: Path | str, config: Config, split: str = "valid") -> ValidationCrops:
    """Fixed validation crops of a feature folder, the same size and kind as the training crops."""
    utterances = read_split(folder, config.audio, split)
    if config.model.conditional:
        return ValidationCrops(utterances, config.data.crop_frames * config.audio.hop_length, config.audio,
                               with_reference_energy=needs_reference_energy(config))
    return ValidationCrops(utterances, config.data.crop_samples, target_rms=config.data.target_rms)

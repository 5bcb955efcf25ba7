"""Read and write audio with soundfile: mono float32 at the configured rate, validated on the way in.

One policy for every entry point (preprocess, `vocode` wav-in, denoise), because they all read here:
several channels are downmixed by their mean (never channel 0 alone); another sample rate is resampled
with torchaudio's sinc resampler, or refused with `strict_rate`; peaks above 1.0 are clipped with a
warning. Files that cannot give a usable signal raise `AudioError`, one line naming the file and what
was expected against what was found.

Our own checks exist because soundfile stays quiet where we must not: it reads a truncated WAV as the
frames that happen to be there, passes NaN/Inf from float WAVs through, and says "System error." for a
missing path. Writes are atomic (`diffwave.fileio.atomic_write`), so an interrupted run never leaves a
half-written WAV that looks valid.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from diffwave.errors import AudioError
from diffwave.fileio import atomic_write

logger = logging.getLogger("diffwave.audio")

PathLike = str | os.PathLike[str]

# Size fields that a writer streaming to a pipe leaves in the header, since it cannot seek back to fix
# them: 0, 0x7FFFFFFF and 0xFFFFFFFF are the usual ones; espeak-ng --stdout writes 0x7FFFF024 (RIFF) and
# 0x7FFFF000 (data). Such a header says nothing about the length, so it is not evidence of truncation.
_PLACEHOLDER_SIZES = frozenset({0, 0x7FFFF000, 0x7FFFF024, 0x7FFFFFFF, 0xFFFFFFFF})
_U32_MAX = 0xFFFFFFFF


def _refusal(path: Path, problem: str, expected: str, found: str) -> AudioError:
    """Every refusal reads the same way: file, problem, expected against found."""
    return AudioError(f"{path}: {problem}: expected {expected}, found {found}", problem)


def _soundfile_reason(error: Exception) -> str:
    """libsndfile's own words without soundfile's "Error opening '...':" prefix (we name the file)."""
    reason = getattr(error, "error_string", None) or getattr(error, "strerror", None) or str(error)
    return reason.strip().splitlines()[0] if reason.strip() else type(error).__name__


@dataclass(frozen=True)
class _WavLayout:
    riff_size: int  # as declared: file size - 8 when the writer could fix it
    data_offset: int  # first byte of the samples
    data_size: int  # as declared

    @property
    def streamed(self) -> bool:
        return self.riff_size in _PLACEHOLDER_SIZES or self.data_size in _PLACEHOLDER_SIZES


def _wav_layout(path: Path, file: io.BufferedReader) -> _WavLayout | None:
    """Walk the RIFF chunks up to `data`; None when the file is not RIFF/WAVE (RF64, FLAC, ...)."""
    head = file.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return None
    (riff_size,) = struct.unpack("<I", head[4:8])
    offset = 12
    while True:
        chunk = file.read(8)
        if len(chunk) < 8:
            raise _refusal(path, "truncated WAV", "a data chunk", f"the end of the file at byte {offset}")
        chunk_id, (size,) = chunk[:4], struct.unpack("<I", chunk[4:])
        offset += 8
        if chunk_id == b"data":
            return _WavLayout(riff_size, offset, size)
        offset += size + (size & 1)  # chunks are padded to an even length
        file.seek(offset)


def _checked_source(path: Path) -> Path | io.BytesIO:
    """What soundfile should read: the path itself, or for a streamed WAV its bytes with the real sizes.

    libsndfile reads zero frames when a streamed header says data size 0, so the placeholders are
    replaced by the sizes the file really has. A WAV whose data chunk declares more bytes than the file
    holds is truncated and refused.
    """
    try:
        with open(path, "rb") as file:
            layout = _wav_layout(path, file)
            if layout is None:
                return path
            file_size = os.fstat(file.fileno()).st_size
            available = file_size - layout.data_offset
            if layout.streamed:
                file.seek(0)
                patched = bytearray(file.read())
                struct.pack_into("<I", patched, 4, min(file_size - 8, _U32_MAX))
                struct.pack_into("<I", patched, layout.data_offset - 4, min(available, _U32_MAX))
                return io.BytesIO(patched)
            if layout.data_size > available:
                raise _refusal(path, "truncated WAV", f"{layout.data_size} bytes of samples (as its header "
                               "declares)", f"{available} in the file")
            return path
    except OSError as error:
        raise _refusal(path, "unreadable", "a readable file", _soundfile_reason(error)) from None


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise _refusal(path, "missing", "an audio file", "nothing at this path")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "something else (a device, socket or pipe)"
        raise _refusal(path, "not a file", "an audio file", kind)
    if path.stat().st_size == 0:
        raise _refusal(path, "empty", "audio", "a 0-byte file")


def _downmix(samples: np.ndarray, path: Path) -> np.ndarray:
    """[frames, channels] -> [frames] by the mean, so no channel is silently dropped."""
    channels = samples.shape[1]
    if channels == 1:
        return samples[:, 0]
    logger.info("%s: downmixed %d channels to mono by their mean", path, channels)
    return samples.mean(axis=1, dtype=np.float32)


MAX_CHANNELS = 8  # a 2-D array [N, C] with C up to this (and N > C) is read as soundfile's [samples, channels]


def is_channels_last(audio: Tensor) -> bool:
    """Whether a 2-D array is soundfile's [samples, channels] (few columns, more rows than columns)."""
    return audio.ndim == 2 and audio.shape[1] <= MAX_CHANNELS and audio.shape[0] > audio.shape[1]


def as_mono(audio: Tensor | np.ndarray, what: str = "audio") -> Tensor:
    """float32 mono [samples] from [samples] or soundfile's [samples, channels], averaging channels as
    read_audio does, so arrays from `sf.read` follow the same policy as files."""
    audio = torch.as_tensor(audio)
    if is_channels_last(audio):
        if audio.shape[1] > 1:
            logger.info("%s: downmixed %d channels to mono by their mean", what, audio.shape[1])
        audio = audio.float().mean(dim=1)
    if audio.ndim != 1:
        raise AudioError(f"{what}: expected mono [samples] or [samples, channels<={MAX_CHANNELS}], "
                         f"found shape {tuple(audio.shape)}", "wrong shape")
    return audio.float()


def read_audio(path: PathLike, sample_rate: int, *, strict_rate: bool = False) -> Tensor:
    """Read any file soundfile decodes as float32 mono [samples] at `sample_rate`.

    Multichannel audio is averaged to mono; another rate is resampled (logged) or, with `strict_rate`,
    refused. Refused with `AudioError`: a missing path or non-file, a file that is not audio, a
    truncated WAV, no samples ("empty"), all zeros ("silent"), or NaN/Inf samples. Peaks above 1.0 are
    clipped with a warning. Only WAV gets the truncation check; FLAC/OGG/... are read as they are.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = Path(path)
    _check_is_file(path)
    source = _checked_source(path)
    try:
        samples, file_rate = sf.read(source, dtype="float32", always_2d=True)
    except sf.SoundFileError as error:
        raise _refusal(path, "not audio", "a file soundfile can decode",
                       f"'{_soundfile_reason(error)}'") from None
    if samples.shape[0] == 0:
        raise _refusal(path, "empty", "audio samples", "a header with no samples")
    nonfinite = samples.size - np.count_nonzero(np.isfinite(samples))
    if nonfinite:
        raise _refusal(path, "non-finite samples", "finite audio", f"{nonfinite} NaN/Inf values")
    mono = _downmix(samples, path)
    if not mono.any():
        raise _refusal(path, "silent", "audio", f"{mono.size} samples that are all zero")
    audio = torch.from_numpy(mono)
    if file_rate != sample_rate:
        if strict_rate:
            raise _refusal(path, "wrong sample rate", f"{sample_rate} Hz", f"{file_rate} Hz "
                           "(strict_rate forbids resampling)")
        logger.warning("%s: resampled from %d Hz to %d Hz", path, file_rate, sample_rate)
        audio = AF.resample(audio, file_rate, sample_rate)
    peak = float(audio.abs().max())
    if peak > 1.0:
        logger.warning("%s: peak %.4f exceeds 1.0; clipped to [-1, 1]", path, peak)
        audio = audio.clamp(-1.0, 1.0)
    return audio.contiguous()


def write_audio(path: PathLike, audio: Tensor | np.ndarray, sample_rate: int, *,
                subtype: str = "PCM_16") -> None:
    """Write a 1-D signal atomically; the format follows the extension (.wav, .flac, .ogg, ...).

    A reader never sees a half-written file: the data goes to a temp file beside the target and is
    renamed over it only once complete. Refused with `AudioError`: non-finite samples (they would be
    written as noise or garbage), a missing output folder, an unknown extension, a failed write.
    """
    path = Path(path)
    if isinstance(audio, Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"write_audio expects a 1-D signal [samples], got shape {tuple(samples.shape)}")
    nonfinite = samples.size - np.count_nonzero(np.isfinite(samples))
    if nonfinite:
        raise _refusal(path, "not written", "finite audio", f"{nonfinite} NaN/Inf samples")
    if not path.parent.is_dir():
        raise _refusal(path, "missing output directory", "an existing directory",
                       f"no directory {path.parent}")
    # The temp file's name ends in .tmp, so soundfile cannot infer the format from it: name it here.
    file_format = path.suffix[1:].upper()
    if file_format not in sf.available_formats():
        raise _refusal(path, "unknown audio format", "an extension soundfile writes (.wav, .flac, .ogg)",
                       f"'{path.suffix}'")
    try:
        with atomic_write(path) as temp:
            sf.write(temp, samples, sample_rate, subtype=subtype, format=file_format)
    except (sf.SoundFileError, OSError) as error:
        raise _refusal(path, "write failed", "a complete file",
                       f"'{_soundfile_reason(error)}' (the previous file, if any, is untouched)") from None

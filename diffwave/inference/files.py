"""Runs over files: `vocode` (mel files or audio files in, WAV files out), `denoise` (audio in, audio out) and
`generate` (WAV files out).

One bad input is reported and skipped; the others are still processed. Outputs are written atomically,
never over an input, and over an existing file only when asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from diffwave.audio import read_audio, write_audio
from diffwave.config import Config
from diffwave.data.corpus import AUDIO_SUFFIXES
from diffwave.errors import DiffwaveError, VocodeError
from diffwave.inference.denoise import denoise
from diffwave.inference.generate import generate
from diffwave.inference.options import Sampling, SamplingOptions
from diffwave.inference.vocoder import Vocoder
from diffwave.model import DiffWave

logger = logging.getLogger("diffwave.files")

MEL_SUFFIXES = (".npy", ".pt")
SPEC_SUFFIX = ".spec.npy"  # the reference implementation's preprocess writes NAME.wav.spec.npy


@dataclass
class RunSummary:
    """What a run over files did: written files, audio seconds, wall seconds, and the inputs it refused."""

    files: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        """Compute seconds per second of audio (below 1 is faster than real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def line(self) -> str:
        return (f"{self.files} files, {self.audio_seconds:.2f} s of audio in {self.wall_seconds:.2f} s "
                f"(real-time factor {self.real_time_factor:.3f}), {len(self.failures)} failed")


def find_inputs(inputs: Sequence[str | Path], suffixes: Sequence[str] = MEL_SUFFIXES + AUDIO_SUFFIXES) -> list[Path]:
    """Files named directly, or found (recursively, by suffix) in named folders, in a stable order."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                            and not p.name.startswith("."))
        else:
            found.append(item)
    return found


def output_name(path: Path) -> str:
    """<stem>.wav for an input; the reference implementation's mel NAME.wav.spec.npy gives NAME.wav."""
    if path.name.lower().endswith(SPEC_SUFFIX):
        base = Path(path.name[: -len(SPEC_SUFFIX)])
        return f"{base.stem if base.suffix.lower() in AUDIO_SUFFIXES else base.name}.wav"
    return f"{path.stem}.wav"


def output_targets(out: str | Path, names: Sequence[str]) -> list[Path]:
    """The files a run writes: OUT/<name> for each name, OUT made (with its parents) when missing; or OUT
    itself when it names an audio file (`-o out.wav`) and there is a single output. Nothing is deleted."""
    out = Path(out)
    if out.suffix.lower() in AUDIO_SUFFIXES and not out.is_dir():
        if len(names) != 1:
            raise DiffwaveError(f"-o {out} names a single file, but this run has {len(names)} outputs; "
                                "name a folder instead")
        out.parent.mkdir(parents=True, exist_ok=True)
        return [out]
    if out.exists() and not out.is_dir():
        raise DiffwaveError(f"output {out} exists and is not a folder; name a folder (created when missing) or, "
                            f"for a single output, an audio file ({', '.join(AUDIO_SUFFIXES)})")
    out.mkdir(parents=True, exist_ok=True)
    return [out / name for name in names]


def _run_inputs(inputs: Sequence[str | Path], out: str | Path, suffixes: Sequence[str],
                described: str) -> tuple[list[tuple[Path, Path]], set[Path]]:
    """((input, output) pairs, the inputs' resolved paths) of a run; refused before any work (and before
    the output folder is made) when no input file is named."""
    paths = find_inputs(inputs, suffixes)
    if not paths:
        raise DiffwaveError(f"no input files: name {described}, or folders holding them")
    targets = output_targets(out, [output_name(path) for path in paths])
    return list(zip(paths, targets, strict=True)), {p.resolve() for p in paths if p.exists()}


def check_output(path: Path, target: Path, inputs: set[Path], claimed: dict[Path, Path], force: bool) -> Path:
    """`target` for input `path`, refused when it is one of the (resolved) inputs, when an earlier input of
    the run writes it too, or when it exists and `force` is off; it is then claimed for `path`."""
    resolved = target.resolve()
    if resolved in inputs:
        raise DiffwaveError(f"{path}: its output {target} would overwrite an input; choose another -o")
    if resolved in claimed:
        raise DiffwaveError(f"{path}: its output {target} is also the output of {claimed[resolved]}; name the "
                            "inputs one kind at a time (e.g. DIR/*.spec.npy)")
    if target.exists() and not force:
        raise DiffwaveError(f"{target} already exists; pass --force to replace it")
    claimed[resolved] = path
    return target


def load_mel_file(path: Path) -> torch.Tensor:
    """A [n_mels, frames] mel from .npy (no pickle) or .pt (weights_only), refused clearly otherwise."""
    try:
        if path.suffix.lower() == ".npy":
            mel = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            mel = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VocodeError(f"{path}: not a readable mel file ({first_line})") from None
    if not isinstance(mel, torch.Tensor) or mel.ndim != 2:
        shape = tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__
        raise VocodeError(f"{path}: expected a mel of shape [n_mels, frames], found {shape}")
    return mel.float()


def _input_mel(vocoder: Vocoder, path: Path) -> torch.Tensor:
    if not path.exists():
        raise VocodeError(f"{path}: no such file")
    if path.suffix.lower() in MEL_SUFFIXES:
        mel = load_mel_file(path)
        vocoder.check_mel(mel, f"{path}: mel")
        return mel
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return vocoder.mel(read_audio(path, vocoder.sample_rate), vocoder.sample_rate)
    raise VocodeError(f"{path}: expected a mel (.npy, .pt) or audio file ({', '.join(AUDIO_SUFFIXES)})")


def _batches(items: list[tuple[Path, Path, torch.Tensor]], size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def vocode_files(vocoder: Vocoder, inputs: Sequence[str | Path], out: str | Path,
                 options: SamplingOptions | None = None, *, batch_size: int = 1, seed: int = 0, force: bool = False,
                 **sampling: Any) -> RunSummary:
    """Vocode every input into OUT/<name>.wav (see `output_targets`: OUT may be one .wav file for one input);
    bad inputs are listed in the summary's failures. The sampling options (`options` and/or SamplingOptions'
    fields as keywords) are `Vocoder.vocode`'s, resolved once for the run: bad ones are one error, not one per
    file."""
    resolved = vocoder.sampling(options, **sampling)
    pairs, resolved_inputs = _run_inputs(inputs, out, MEL_SUFFIXES + AUDIO_SUFFIXES, "mel (.npy, .pt) or audio files")
    summary = RunSummary()
    ready: list[tuple[Path, Path, torch.Tensor]] = []
    claimed: dict[Path, Path] = {}
    for path, target in pairs:
        try:
            ready.append((path, check_output(path, target, resolved_inputs, claimed, force),
                          _input_mel(vocoder, path)))
        except DiffwaveError as error:
            logger.error("%s", error)
            summary.failures.append(str(error))
    start = time.perf_counter()
    progress = tqdm(total=len(ready), desc="vocode", unit="file", disable=None)
    for batch in _batches(ready, batch_size):
        try:
            audio = _vocode_batch(vocoder, [mel for _, _, mel in batch], seed, resolved)
        except DiffwaveError as error:  # inputs were checked one by one; what is left fails the whole batch
            for path, _, _ in batch:
                logger.error("%s: %s", path, error)
                summary.failures.append(f"{path}: {error}")
            progress.update(len(batch))
            continue
        for (_, target, _), samples in zip(batch, audio, strict=True):
            write_audio(target, samples.float().cpu(), vocoder.sample_rate)
            summary.files += 1
            summary.audio_seconds += samples.numel() / vocoder.sample_rate
        progress.update(len(batch))
    progress.close()
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _vocode_batch(vocoder: Vocoder, mels: list[torch.Tensor], seed: int, sampling: Sampling) -> list[torch.Tensor]:
    generator = torch.Generator(vocoder.device).manual_seed(seed)
    if len(mels) == 1:
        return [vocoder.vocode(mels[0], sampling, generator=generator)]
    lengths = [mel.shape[-1] for mel in mels]
    padded = torch.zeros(len(mels), mels[0].shape[0], max(lengths))
    for i, mel in enumerate(mels):
        padded[i, :, : mel.shape[-1]] = mel
    return vocoder.vocode(padded, sampling, generator=generator, lengths=lengths)


def _read_at_own_rate(path: Path, fallback_rate: int) -> tuple[torch.Tensor, int]:
    """A file's mono audio at its own sample rate (read_audio's checks; it names the problem of a file
    whose rate cannot even be read)."""
    try:
        rate = sf.info(str(path)).samplerate
    except (sf.SoundFileError, RuntimeError):
        rate = fallback_rate
    return read_audio(path, rate), rate


def denoise_files(model: DiffWave, config: Config, inputs: Sequence[str | Path], out: str | Path, *,
                  t_start: int | None = None, sdedit: bool = False, seed: int = 0, force: bool = False,
                  target_rms: float | None = None) -> RunSummary:
    """Denoise every audio input into OUT/<name>.wav (or the file OUT, for one input) at the input's own rate
    and length (stereo is downmixed); each file's noise is seeded by `seed` alone, so the order of the inputs
    does not matter."""
    pairs, resolved_inputs = _run_inputs(inputs, out, AUDIO_SUFFIXES, f"audio files ({', '.join(AUDIO_SUFFIXES)})")
    summary = RunSummary()
    claimed: dict[Path, Path] = {}
    start = time.perf_counter()
    for path, target in tqdm(pairs, desc="denoise", unit="file", disable=None):
        try:
            check_output(path, target, resolved_inputs, claimed, force)
            audio, rate = _read_at_own_rate(path, config.audio.sample_rate)
        except DiffwaveError as error:
            logger.error("%s", error)
            summary.failures.append(str(error))
            continue
        try:
            result = denoise(audio, rate, model, t_start, config=config, sdedit=sdedit, target_rms=target_rms,
                             generator=torch.Generator().manual_seed(seed))
        except DiffwaveError as error:
            logger.error("%s: %s", path, error)
            summary.failures.append(f"{path}: {error}")
            continue
        if result.start_step is not None:
            logger.info("%s: start step %d of %d, estimated input SNR %.1f dB", path, result.start_step,
                        config.diffusion.num_steps, result.estimated_snr_db)
        write_audio(target, result.audio.clamp(-1.0, 1.0), rate)
        summary.files += 1
        summary.audio_seconds += result.audio.numel() / rate
    summary.wall_seconds = time.perf_counter() - start
    return summary


def write_clips(clips: list[torch.Tensor], out: str | Path, sample_rate: int, *, prefix: str = "sample",
                force: bool = False) -> list[Path]:
    """OUT/prefix_000.wav ... (OUT made when missing), or the file OUT for a single clip (`-o one.wav`),
    atomically; existing files are replaced only with `force`."""
    paths = output_targets(out, [f"{prefix}_{i:03d}.wav" for i in range(len(clips))])
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise DiffwaveError(f"{existing[0]} already exists; pass --force to replace it")
    for path, clip in zip(paths, clips, strict=True):
        write_audio(path, clip, sample_rate)
    return paths


def generate_files(model: DiffWave, config: Config, count: int, seconds: float, out: str | Path,
                   options: SamplingOptions | None = None, *, seed: int = 0, batch_size: int = 8,
                   force: bool = False) -> RunSummary:
    """`count` clips of `seconds` from noise into OUT/sample_NNN.wav (see `write_clips`), the noise seeded by
    `seed` on the model's device; the summary times the generation, not the writing."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    start = time.perf_counter()
    clips = generate(model, config, count, seconds, options, generator=generator, batch_size=batch_size)
    summary = RunSummary(wall_seconds=time.perf_counter() - start)
    summary.files = len(write_clips(clips, out, config.audio.sample_rate, force=force))
    summary.audio_seconds = sum(clip.numel() for clip in clips) / config.audio.sample_rate
    return summary

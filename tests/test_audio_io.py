"""read_audio / write_audio on real files in tmp_path, including the broken ones corpora really contain."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.audio import read_audio, write_audio
from diffwave.errors import AudioError
from diffwave.fileio import atomic_write
from tests.audio_fixtures import chop, harmonic_tone, pcm16_wav_bytes, write_tone

SR = 22050
PCM16_STEP = 1 / 32768


def refusal(path: Path, match: str) -> contextlib.AbstractContextManager[pytest.ExceptionInfo[AudioError]]:
    """An AudioError whose single-line message starts with the file and matches `match`."""
    return pytest.raises(AudioError, match=rf"\A{re.escape(str(path))}: [^\n]*{match}[^\n]*\Z")


def logged(caplog: pytest.LogCaptureFixture, path: Path, text: str, level: int) -> bool:
    """Whether a `diffwave.audio` record at `level` names the file and says `text`."""
    return any(r.name == "diffwave.audio" and r.levelno == level and str(path) in r.getMessage()
               and text in r.getMessage() for r in caplog.records)


def test_mono_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    audio = torch.from_numpy(harmonic_tone(SR, 0.5))
    write_audio(path, audio, SR)
    back = read_audio(path, SR)
    assert back.dtype == torch.float32 and back.shape == audio.shape
    assert (back - audio).abs().max().item() < 2 * PCM16_STEP
    assert sf.info(path).subtype == "PCM_16"


def test_numpy_input_and_other_formats(tmp_path: Path) -> None:
    audio = harmonic_tone(16000, 0.25)
    path = tmp_path / "tone.flac"
    write_audio(path, audio, 16000)
    assert sf.info(path).format == "FLAC"
    assert np.abs(read_audio(path, 16000).numpy() - audio).max() < 2 * PCM16_STEP


def test_stereo_is_downmixed_by_mean_not_channel_0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "stereo.wav"
    stored = write_tone(path, SR, 0.5, channels=2, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="diffwave.audio"):
        mono = read_audio(path, SR).numpy()
    np.testing.assert_allclose(mono, stored.mean(axis=1), rtol=0, atol=1e-7)
    assert np.abs(mono - stored[:, 0]).max() > 0.1
    assert logged(caplog, path, "downmixed 2 channels to mono by their mean", logging.INFO)


def dominant_frequency(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sample_rate)[spectrum.argmax()])


def test_another_rate_is_resampled_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cd.wav"
    stored = write_tone(path, 44100, 1.0, f0=1000.0, num_harmonics=1, formants=())
    with caplog.at_level(logging.WARNING, logger="diffwave.audio"):
        audio = read_audio(path, 22050).numpy()
    assert len(audio) == 22050
    assert dominant_frequency(audio, 22050) == pytest.approx(1000.0, abs=1.0)
    assert dominant_frequency(stored, 44100) == pytest.approx(1000.0, abs=1.0)
    assert logged(caplog, path, "resampled from 44100 Hz to 22050 Hz", logging.WARNING)


def test_strict_rate_refuses_naming_both_rates(tmp_path: Path) -> None:
    path = tmp_path / "cd.wav"
    write_tone(path, 44100, 0.1)
    with refusal(path, "expected 22050 Hz, found 44100 Hz"):
        read_audio(path, 22050, strict_rate=True)


def test_truncated_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    write_tone(path, SR, 0.5)
    assert sf.read(path)[0].shape == (SR // 2,)  # unchanged file: fine
    chop(path, 1000)
    assert len(sf.read(path)[0]) == SR // 2 - 500  # soundfile reads what is left without complaint
    with refusal(path, "truncated WAV: expected 22050 bytes of samples.*found 21050"):
        read_audio(path, SR)


def test_wav_cut_inside_its_header_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "stub.wav"
    path.write_bytes(pcm16_wav_bytes(np.zeros(10), SR)[:30])
    with refusal(path, "truncated WAV: expected a data chunk"):
        read_audio(path, SR)


@pytest.mark.parametrize(("riff_size", "data_size"), [
    (0xFFFFFFFF, 0xFFFFFFFF),  # ffmpeg to a pipe
    (0x7FFFF024, 0x7FFFF000),  # espeak-ng --stdout
    (0x7FFFFFFF, 0x7FFFFFFF),
    (0, 0),  # libsndfile alone would read no samples from this one
    (0xFFFFFFFF, 0),
], ids=["ffffffff", "espeak-ng", "7fffffff", "zeros", "riff-ffffffff-data-0"])
def test_streamed_wav_placeholders_are_accepted_with_the_real_length(
        tmp_path: Path, riff_size: int, data_size: int) -> None:
    path = tmp_path / "streamed.wav"
    tone = harmonic_tone(SR, 0.3)
    path.write_bytes(pcm16_wav_bytes(tone, SR, riff_size=riff_size, data_size=data_size))
    audio = read_audio(path, SR).numpy()
    assert len(audio) == len(tone)
    assert np.abs(audio - tone).max() < 2 * PCM16_STEP


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("this is a transcript, not audio\n")


def _header_only(path: Path) -> None:
    path.write_bytes(pcm16_wav_bytes(np.zeros(0), SR))


def _directory(path: Path) -> None:
    path.mkdir()


def _nothing(path: Path) -> None:
    pass


def _all_zero(path: Path) -> None:
    sf.write(path, np.zeros(SR // 10, dtype=np.float32), SR)


def _stereo_cancelling(path: Path) -> None:
    left = harmonic_tone(SR, 0.1)
    sf.write(path, np.stack([left, -left], axis=1), SR, subtype="FLOAT")


def _float_nan(path: Path) -> None:
    audio = harmonic_tone(SR, 0.1)
    audio[[10, 20]] = np.nan
    audio[30] = np.inf
    sf.write(path, audio, SR, subtype="FLOAT")


UNUSABLE = [
    (_zero_bytes, "empty: expected audio, found a 0-byte file"),
    (_text, "not audio: expected a file soundfile can decode, found 'Format not recognised"),
    (_header_only, "empty: expected audio samples, found a header with no samples"),
    (_directory, "not a file: expected an audio file, found a directory"),
    (_nothing, "missing: expected an audio file, found nothing at this path"),
    (_all_zero, "silent: expected audio, found 2205 samples that are all zero"),
    (_stereo_cancelling, "silent"),
    (_float_nan, "non-finite samples: expected finite audio, found 3 NaN/Inf values"),
]


@pytest.mark.parametrize(("make", "reason"), UNUSABLE, ids=[make.__name__.strip("_") for make, _ in UNUSABLE])
def test_unusable_files_are_refused_naming_file_and_reason(
        tmp_path: Path, make: Callable[[Path], None], reason: str) -> None:
    path = tmp_path / "clip.wav"
    make(path)
    with refusal(path, reason):
        read_audio(path, SR)


def test_peaks_above_one_are_clipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "hot.wav"
    audio = harmonic_tone(SR, 0.2, amplitude=1.5)
    sf.write(path, audio, SR, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="diffwave.audio"):
        out = read_audio(path, SR).numpy()
    assert out.max() == 1.0 and out.min() >= -1.0
    np.testing.assert_array_equal(out, np.clip(audio, -1, 1))
    assert logged(caplog, path, "peak 1.5000 exceeds 1.0; clipped", logging.WARNING)


def test_failed_write_leaves_the_old_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.wav"
    write_audio(path, harmonic_tone(SR, 0.2), SR)
    before = path.read_bytes()

    def write_half_then_fail(file: Path, *args: object, **kwargs: object) -> None:
        Path(file).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf, "write", write_half_then_fail)
    with refusal(path, "write failed.*No space left on device"):
        write_audio(path, harmonic_tone(SR, 0.2, seed=5), SR)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_successful_write_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    for seed in (0, 1):  # the second write replaces the first
        write_audio(path, harmonic_tone(SR, 0.1, seed=seed), SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
    assert np.abs(read_audio(path, SR).numpy() - harmonic_tone(SR, 0.1, seed=1)).max() < 2 * PCM16_STEP


def test_atomic_write_removes_its_temp_when_the_body_fails(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".") and temp.name.endswith(".tmp")
        temp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_writing_into_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "out.wav"
    with refusal(path, f"missing output directory: expected an existing directory, found no directory "
                       f"{re.escape(str(path.parent))}"):
        write_audio(path, harmonic_tone(SR, 0.1), SR)


def test_non_finite_signal_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    audio = torch.zeros(100)
    audio[5] = float("nan")
    with refusal(path, "found 1 NaN/Inf samples"):
        write_audio(path, audio, SR)
    assert not path.exists()

"""LogMel presets against independent numpy computations of their conventions, and the frame-count rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.transforms as TT
from numpy.lib.stride_tricks import sliding_window_view

from diffwave.audio import LogMel, min_samples, num_frames, read_audio
from diffwave.config import AudioConfig, load_config
from diffwave.data.synthetic import synthesize_clip
from diffwave.errors import AudioError
from tests.audio_fixtures import harmonic_tone

BASE = load_config("base").audio
CONFIGS = {
    "base": BASE,  # 22050 Hz, 1024/1024/256, 80 mels, 0-8000 Hz
    "tiny": load_config("tiny").audio,  # 8000 Hz, 256/256/64, 20 mels
    "lmnt-own-band": dataclasses.replace(BASE, f_min=20.0, f_max=None),  # lmnt's 20 Hz to Nyquist
    "short-window": AudioConfig(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=40),
}
PRESETS = ("hifigan", "lmnt")


def with_preset(name: str, preset: str) -> AudioConfig:
    return dataclasses.replace(CONFIGS[name], mel_preset=preset)


def numpy_log_mel(audio: np.ndarray, c: AudioConfig) -> np.ndarray:
    """The preset's convention written out in float64 numpy: pad, frame, window, rfft, mel, log."""
    lmnt = c.mel_preset == "lmnt"
    pad = c.n_fft // 2 if lmnt else (c.n_fft - c.hop_length) // 2
    frames = sliding_window_view(np.pad(audio, pad, mode="reflect"), c.n_fft)[:: c.hop_length]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(c.win_length) / c.win_length)  # periodic
    window = np.zeros(c.n_fft)
    left = (c.n_fft - c.win_length) // 2  # torch.stft centres a short window in the frame
    window[left:left + c.win_length] = hann
    spectrum = np.fft.rfft(frames * window, axis=-1).T  # [freqs, frames]
    f_max = c.sample_rate / 2 if c.f_max is None else c.f_max
    mel_args = dict(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.f_min, fmax=f_max,
                    dtype=np.float64)
    if lmnt:
        magnitude = np.abs(spectrum) / np.sqrt(np.sum(hann**2))
        mel = librosa.filters.mel(**mel_args, htk=True, norm=None) @ magnitude
        return np.clip((20 * np.log10(np.maximum(mel, 1e-5)) - 20 + 100) / 100, 0, 1)
    magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-9)
    return np.log(np.maximum(librosa.filters.mel(**mel_args) @ magnitude, 1e-5))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", CONFIGS)
def test_matches_independent_numpy(preset: str, name: str) -> None:
    config = with_preset(name, preset)
    # float32 STFT error scales with the frame's energy, so bins ~80 dB under the peak differ by ~1e-4
    # in log between any float32 and float64 computation; a -40 dB noise floor keeps all bins in reach.
    audio = harmonic_tone(config.sample_rate, 0.5, seed=1, noise=1e-2)
    expected = numpy_log_mel(audio.astype(np.float64), config)
    mel = LogMel(config)(torch.from_numpy(audio))
    assert mel.dtype == torch.float32
    assert mel.shape == expected.shape == (config.n_mels, num_frames(len(audio), config))
    np.testing.assert_allclose(mel.numpy(), expected, rtol=0, atol=1e-4)


def test_lmnt_matches_the_reference_code() -> None:
    """lmnt-com/diffwave's preprocess, line for line: torchaudio MelSpectrogram then its log scaling."""
    config = with_preset("lmnt-own-band", "lmnt")
    audio = torch.from_numpy(harmonic_tone(config.sample_rate, 0.5, seed=2))
    transform = TT.MelSpectrogram(sample_rate=config.sample_rate, win_length=config.win_length,
                                  hop_length=config.hop_length, n_fft=config.n_fft, f_min=20.0,
                                  f_max=config.sample_rate / 2.0, n_mels=config.n_mels, power=1.0,
                                  normalized=True)
    reference = 20 * torch.log10(torch.clamp(transform(audio), min=1e-5)) - 20
    reference = torch.clamp((reference + 100) / 100, 0.0, 1.0)
    torch.testing.assert_close(LogMel(config)(audio), reference, rtol=0, atol=1e-5)


def reference_preprocess(path: Path, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> torch.Tensor:
    """lmnt-com/diffwave's preprocess as issue 13 states it, written out here: the file's first
    channel as float in [-1, 1], clamped; MelSpectrogram(win 4 hops, 20 Hz to Nyquist, power 1, normalized);
    20 log10(max(x, 1e-5)) - 20; clamp((x + 100) / 100, 0, 1)."""
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == sample_rate
    audio = torch.clamp(torch.from_numpy(samples[:, 0].copy()), -1.0, 1.0)
    transform = TT.MelSpectrogram(sample_rate=rate, win_length=4 * hop, hop_length=hop, n_fft=n_fft, f_min=20.0,
                                  f_max=rate / 2.0, n_mels=n_mels, power=1.0, normalized=True)
    decibels = 20 * torch.log10(torch.clamp(transform(audio), min=1e-5)) - 20
    return torch.clamp((decibels + 100) / 100, 0.0, 1.0)


@pytest.mark.parametrize(("sample_rate", "n_fft", "hop", "n_mels"), [(22050, 1024, 256, 80), (16000, 1024, 200, 64)])
def test_lmnt_preset_equals_the_reference_preprocess_on_a_speech_file(tmp_path, sample_rate, n_fft, hop, n_mels):
    """Real audio through our file reader and the preset (a config as a reference checkpoint maps to), against
    the reference formula: values and frame count. A second, louder file has peaks above 1 (float WAV)."""
    config = load_config("lmnt", [f"audio.sample_rate={sample_rate}", f"audio.n_fft={n_fft}",
                                  f"audio.hop_length={hop}", f"audio.win_length={4 * hop}",
                                  f"audio.n_mels={n_mels}"]).audio
    speech = synthesize_clip(1.3, sample_rate, torch.Generator().manual_seed(5)).numpy()
    sf.write(tmp_path / "speech.wav", speech, sample_rate, subtype="PCM_16")
    sf.write(tmp_path / "loud.wav", 3.0 * speech, sample_rate, subtype="FLOAT")
    for name in ("speech.wav", "loud.wav"):
        expected = reference_preprocess(tmp_path / name, sample_rate, n_fft, hop, n_mels)
        ours = LogMel(config)(read_audio(tmp_path / name, sample_rate))
        assert ours.shape == expected.shape == (n_mels, len(speech) // hop + 1)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        loud = torch.from_numpy(sf.read(tmp_path / name, dtype="float32")[0])  # an array in: clamped the same
        torch.testing.assert_close(LogMel(config)(loud), expected, rtol=0, atol=1e-5)


ODD = AudioConfig(sample_rate=8000, n_fft=255, win_length=200, hop_length=64, n_mels=20, f_max=None)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("config", [BASE, CONFIGS["tiny"], CONFIGS["short-window"], ODD],
                         ids=["base", "tiny", "short-window", "odd-n_fft"])
def test_frame_count_rule_is_what_the_module_makes(preset: str, config: AudioConfig) -> None:
    config = dataclasses.replace(config, mel_preset=preset)
    hop = config.hop_length
    lengths = [min_samples(config), 10 * hop, 10 * hop + 1, 11 * hop - 1, 12345]
    mels = LogMel(config)
    for n in lengths:
        assert mels(torch.rand(n) - 0.5).shape[-1] == num_frames(n, config), n
        if config.n_fft % 2 == 0 and (config.n_fft - hop) % 2 == 0:
            assert num_frames(n, config) == n // hop + (1 if preset == "lmnt" else 0), n


@pytest.mark.parametrize("preset", PRESETS)
def test_a_multiple_of_hop_gives_n_over_hop_frames_plus_one_for_lmnt(preset: str) -> None:
    config = with_preset("base", preset)
    frames = 40
    expected = frames + 1 if preset == "lmnt" else frames
    assert num_frames(frames * config.hop_length, config) == expected


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["base", "tiny"])
def test_silence_gives_finite_values_at_the_floor(preset: str, name: str) -> None:
    config = with_preset(name, preset)
    mel = LogMel(config)(torch.zeros(config.sample_rate // 4))
    assert torch.isfinite(mel).all()
    floor = 0.0 if preset == "lmnt" else float(np.log(1e-5))
    assert mel.min().item() == pytest.approx(floor, abs=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_batch_equals_its_signals_one_by_one(preset: str) -> None:
    config = with_preset("tiny", preset)
    batch = torch.from_numpy(np.stack([harmonic_tone(config.sample_rate, 0.3, seed=s, f0=110.0 * (s + 1))
                                       for s in range(3)]))
    mels = LogMel(config)
    out = mels(batch)
    assert out.shape == (3, config.n_mels, num_frames(batch.shape[1], config))
    for row, signal in zip(out, batch, strict=True):
        torch.testing.assert_close(row, mels(signal), rtol=0, atol=1e-6)


def test_buffers_follow_the_module_and_stay_out_of_the_state_dict() -> None:
    mels = LogMel(CONFIGS["tiny"])
    assert mels.state_dict() == {}
    assert {name for name, _ in mels.named_buffers()} == {"window", "mel_basis"}
    mels = mels.to(torch.float64)
    assert mels.window.dtype == mels.mel_basis.dtype == torch.float64
    assert mels(torch.rand(1000)).dtype == torch.float64


@pytest.mark.parametrize("preset", PRESETS)
def test_too_short_audio_is_refused_clearly(preset: str) -> None:
    config = with_preset("tiny", preset)
    with pytest.raises(AudioError, match=f"10 samples is too short.*at least {min_samples(config)}"):
        LogMel(config)(torch.rand(10))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", PRESETS)
def test_on_cuda_matches_cpu(preset: str) -> None:
    config = with_preset("base", preset)
    audio = torch.from_numpy(harmonic_tone(config.sample_rate, 0.5, seed=3))
    mels = LogMel(config)
    expected = mels(audio)
    torch.testing.assert_close(mels.to("cuda")(audio.cuda()).cpu(), expected, rtol=0, atol=1e-4)

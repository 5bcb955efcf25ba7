"""Random-crop datasets on a tiny feature folder written to disk (RELIABILITY 11, 12, 36)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffwave.audio import LogMel, min_samples, num_frames
from diffwave.config import Config, load_config
from diffwave.data.dataset import (
    ConditionalCrops,
    UnconditionalCrops,
    ValidationCrops,
    crops_for_training,
    crops_for_validation,
)
from diffwave.data.manifest import Utterance, read_manifest, write_manifest
from diffwave.errors import DataError
from tests.audio_fixtures import harmonic_tone

PRESETS = {"hifigan": [], "lmnt": ["audio.mel_preset=lmnt"]}
# id -> (samples, split); tiny config: hop 64, crops of 16 frames = 1024 samples (2048 unconditional).
LENGTHS = {"a_long": (4000, "train"), "b_odd": (2963, "train"), "c_short": (700, "train"),
           "d_ten": (10, "train"), "e_valid": (3001, "valid")}
TOO_SHORT_VALUE = 0.25  # mel value written for clips too short for LogMel (preprocess would skip them)


def tiny(preset: str = "hifigan", *overrides: str) -> Config:
    return load_config("tiny", [*PRESETS[preset], *overrides])


def speech_like(num_samples: int, sample_rate: int, seed: int) -> np.ndarray:
    """A harmonic tone under a 2.5 Hz envelope: non-stationary, so a crop one frame off has another mel."""
    t = np.arange(num_samples) / sample_rate
    envelope = 0.2 + 0.8 * np.sin(2 * np.pi * 2.5 * t) ** 2
    tone = harmonic_tone(sample_rate, num_samples / sample_rate, seed=seed, f0=150.0 + 30 * seed)
    return (tone * envelope).astype(np.float32)


def make_folder(root: Path, config: Config) -> Path:
    """audio/ID.npy and mel/ID.npy made as preprocess makes them, and a complete manifest."""
    audio_config = config.audio
    front_end = LogMel(audio_config)
    (root / "audio").mkdir(parents=True)
    (root / "mel").mkdir()
    utterances = []
    for seed, (item_id, (samples, split)) in enumerate(LENGTHS.items()):
        audio = speech_like(samples, audio_config.sample_rate, seed)
        if samples >= min_samples(audio_config):
            with torch.inference_mode():
                mel = front_end(torch.from_numpy(audio)).numpy()
        else:
            mel = np.full((audio_config.n_mels, max(0, num_frames(samples, audio_config))), TOO_SHORT_VALUE,
                          dtype=np.float32)
        np.save(root / "audio" / f"{item_id}.npy", audio)
        np.save(root / "mel" / f"{item_id}.npy", mel)
        utterances.append(Utterance(item_id, Path("audio") / f"{item_id}.npy", Path("mel") / f"{item_id}.npy",
                                    samples, mel.shape[1], split))
    write_manifest(root, audio_config, utterances)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Features made with the default (hifigan) tiny config."""
    return make_folder(tmp_path / "features", tiny())


@pytest.fixture(params=list(PRESETS))
def preset(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def preset_folder(tmp_path: Path, preset: str) -> Path:
    """Features made with the tiny config and `preset`."""
    return make_folder(tmp_path / "features", tiny(preset))


def conditional(folder: Path, preset: str = "hifigan", seed: int = 0) -> ConditionalCrops:
    dataset = crops_for_training(folder, tiny(preset), seed=seed)
    assert isinstance(dataset, ConditionalCrops)
    return dataset


def silence(preset: str) -> torch.Tensor:
    """LogMel of silence, [n_mels, 1]."""
    with torch.inference_mode():
        return LogMel(tiny(preset).audio)(torch.zeros(1024))[:, :1]


def index_of(dataset: ConditionalCrops | UnconditionalCrops | ValidationCrops, item_id: str) -> int:
    return [u.id for u in dataset.utterances].index(item_id)


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_conditional_crops_have_the_configured_shapes(preset_folder: Path, preset: str) -> None:
    dataset = conditional(preset_folder, preset)
    assert len(dataset) == 4  # the train split, short clips included
    for item in dataset:
        assert set(item) == {"audio", "mel", "id", "length"}
        assert item["audio"].shape == (16 * 64,) and item["audio"].dtype == torch.float32
        assert item["mel"].shape == (20, 16) and item["mel"].dtype == torch.float32
        assert isinstance(item["id"], str) and isinstance(item["length"], int)


def test_default_collate_batches_of_three(folder: Path) -> None:
    batches = list(DataLoader(conditional(folder), batch_size=3))
    assert [len(b["id"]) for b in batches] == [3, 1]
    first = batches[0]
    assert first["audio"].shape == (3, 1024) and first["mel"].shape == (3, 20, 16)
    assert first["length"].tolist() == [1024, 1024, 700]
    assert first["id"] == ["a_long", "b_odd", "c_short"]


def test_workers_load_exactly_what_one_process_loads(folder: Path) -> None:
    def load(num_workers: int) -> list[dict]:
        dataset = conditional(folder, seed=5)
        dataset.set_epoch(3)
        return list(DataLoader(dataset, batch_size=2, num_workers=num_workers))

    single, workers = load(0), load(2)
    assert len(single) == len(workers) == 2
    for a, b in zip(single, workers, strict=True):
        assert_items_equal(a, b)


def test_crops_are_aligned_slices_of_the_files(preset_folder: Path, preset: str) -> None:
    dataset = conditional(preset_folder, preset, seed=1)
    for name in ("a_long", "b_odd"):
        index = index_of(dataset, name)
        audio = np.load(preset_folder / "audio" / f"{name}.npy")
        mel = np.load(preset_folder / "mel" / f"{name}.npy")
        starts = set()
        for epoch in range(8):
            dataset.set_epoch(epoch)
            item = dataset[index]
            matches = [f for f in range(len(audio) // 64 - 16 + 1)
                       if np.array_equal(audio[f * 64:(f + 16) * 64], item["audio"].numpy())]
            assert len(matches) == 1
            start = matches[0]
            np.testing.assert_array_equal(item["mel"].numpy(), mel[:, start:start + 16])
            starts.add(start)
        assert len(starts) > 1  # the crops move


def test_crop_mel_is_the_mel_of_the_crop_audio(preset_folder: Path, preset: str) -> None:
    """Away from the edges (where the crop's reflect padding differs from the utterance's context)."""
    config = tiny(preset).audio
    front_end = LogMel(config)
    edge = config.n_fft // config.hop_length
    dataset = conditional(preset_folder, preset, seed=2)
    checked = 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for item in dataset:
            if item["length"] < 1024:
                continue
            with torch.inference_mode():
                recomputed = front_end(item["audio"])[:, :16]  # lmnt makes one frame more
            inner = slice(edge, 16 - edge)
            torch.testing.assert_close(recomputed[:, inner], item["mel"][:, inner], atol=1e-4, rtol=0)
            shifted = slice(edge + 1, 16 - edge + 1)  # the test would notice a crop one frame off
            assert (recomputed[:, shifted] - item["mel"][:, inner]).abs().max() > 1e-3
            checked += 1
    assert checked == 6


def test_same_seed_epoch_and_index_give_the_same_crop(folder: Path) -> None:
    first, second = conditional(folder, seed=7), conditional(folder, seed=7)
    reversed_order = [second[i] for i in reversed(range(len(second)))][::-1]  # access order must not matter
    for i in range(len(first)):
        assert_items_equal(first[i], reversed_order[i])
        assert_items_equal(first[i], first[i])


def test_crops_follow_the_documented_seed_scheme(folder: Path) -> None:
    """Start frame = default_rng([seed, epoch, index]), so resuming needs only (seed, epoch, position)."""
    dataset = conditional(folder, seed=11)
    dataset.set_epoch(4)
    index = index_of(dataset, "a_long")
    audio = np.load(folder / "audio" / "a_long.npy")
    last = 4000 // 64 - 16
    start = int(np.random.default_rng([11, 4, index]).integers(0, last + 1))
    np.testing.assert_array_equal(dataset[index]["audio"].numpy(), audio[start * 64:(start + 16) * 64])


def test_set_epoch_and_seed_change_the_crops(folder: Path) -> None:
    def crops(seed: int, epoch: int) -> list[torch.Tensor]:
        dataset = conditional(folder, seed=seed)
        dataset.set_epoch(epoch)
        return [dataset[i]["audio"] for i in range(2)]  # the two clips longer than a crop

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(crops(0, 0), crops(0, 0))
    assert not same(crops(0, 0), crops(0, 1))
    assert not same(crops(0, 0), crops(1, 0))


def test_global_random_state_is_neither_used_nor_touched(folder: Path) -> None:
    dataset = conditional(folder, seed=3)
    states = (np.random.get_state()[1].copy(), torch.get_rng_state(), random.getstate())
    before = [dataset[i] for i in range(len(dataset))]
    np.testing.assert_array_equal(np.random.get_state()[1], states[0])
    assert torch.equal(torch.get_rng_state(), states[1]) and random.getstate() == states[2]
    np.random.seed(123)
    torch.manual_seed(123)
    random.seed(123)
    for i, item in enumerate(before):
        assert_items_equal(item, dataset[i])


def test_short_clips_are_padded_with_zeros_and_silence(preset_folder: Path, preset: str) -> None:
    config = tiny(preset).audio
    dataset = conditional(preset_folder, preset)
    quiet = silence(preset)
    for name, samples in (("c_short", 700), ("d_ten", 10)):
        item = dataset[index_of(dataset, name)]
        audio = np.load(preset_folder / "audio" / f"{name}.npy")
        mel = np.load(preset_folder / "mel" / f"{name}.npy")
        real_frames = num_frames(samples, config)
        assert item["length"] == samples
        np.testing.assert_array_equal(item["audio"][:samples].numpy(), audio)
        assert not item["audio"][samples:].any()
        np.testing.assert_array_equal(item["mel"][:, :real_frames].numpy(), mel)
        torch.testing.assert_close(item["mel"][:, real_frames:], quiet.expand(-1, 16 - real_frames), atol=1e-6,
                                   rtol=0)
    if preset == "hifigan":  # the log of the magnitude floor, so zero-padding the mel would be caught
        assert quiet.abs().min() > 1


def test_validation_crops_are_fixed_middle_crops(preset_folder: Path, preset: str) -> None:
    config = tiny(preset)
    first, second = crops_for_validation(preset_folder, config, split="train"), ValidationCrops(
        read_manifest(preset_folder, config.audio, "train"), 1024, config.audio)
    items = [first[i] for i in range(len(first))]
    for epoch in (0, 1, 5):
        second.set_epoch(epoch)
        for i, item in enumerate(items):
            assert_items_equal(item, second[i])
    index = index_of(first, "a_long")
    start = (4000 // 64 - 16) // 2 * 64
    audio = np.load(preset_folder / "audio" / "a_long.npy")
    np.testing.assert_array_equal(items[index]["audio"].numpy(), audio[start:start + 1024])
    assert items[index_of(first, "d_ten")]["length"] == 10


def test_validation_crops_of_the_valid_split(folder: Path) -> None:
    dataset = crops_for_validation(folder, tiny())
    assert [u.id for u in dataset.utterances] == ["e_valid"]
    assert dataset[0]["mel"].shape == (20, 16)
    audio_only = crops_for_validation(folder, tiny("hifigan", "model.conditional=false"))
    assert set(audio_only[0]) == {"audio", "id", "length"} and audio_only[0]["audio"].shape == (2048,)


def test_unconditional_crops(folder: Path) -> None:
    dataset = crops_for_training(folder, tiny("hifigan", "model.conditional=false"), seed=4)
    assert isinstance(dataset, UnconditionalCrops)
    audio = np.load(folder / "audio" / "a_long.npy")
    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        item = dataset[index_of(dataset, "a_long")]
        assert set(item) == {"audio", "id", "length"}
        assert item["audio"].shape == (2048,) and item["length"] == 2048
        matches = [s for s in range(4000 - 2048 + 1) if np.array_equal(audio[s:s + 2048], item["audio"].numpy())]
        assert len(matches) == 1
        starts.add(matches[0])
    assert len(starts) > 1
    short = dataset[index_of(dataset, "d_ten")]
    assert short["length"] == 10 and not short["audio"][10:].any()
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["audio"].shape == (3, 2048)


def test_mel_with_wrong_bins_names_the_file(folder: Path) -> None:
    path = folder / "mel" / "a_long.npy"
    np.save(path, np.zeros((19, 4000 // 64), np.float32))
    dataset = conditional(folder)
    with pytest.raises(DataError, match="a_long.npy: mel has 19 bins, expected 20"):
        dataset[index_of(dataset, "a_long")]
    assert dataset[index_of(dataset, "b_odd")]["mel"].shape == (20, 16)  # the others still load


def test_mel_with_wrong_frames_names_the_file(folder: Path) -> None:
    np.save(folder / "mel" / "b_odd.npy", np.zeros((20, 2963 // 64 + 3), np.float32))
    dataset = conditional(folder)
    with pytest.raises(DataError, match=r"b_odd.npy: mel has 49 frames .* expected 46 for 2963 samples"):
        dataset[index_of(dataset, "b_odd")]


@pytest.mark.parametrize("override, field", [("audio.n_mels=40", "n_mels"),
                                             ("audio.mel_preset=lmnt", "mel_preset")])
def test_features_of_another_audio_config_are_refused(tmp_path: Path, override: str, field: str) -> None:
    folder = make_folder(tmp_path, tiny())
    with pytest.raises(DataError, match=f"other audio settings.*{field}"):
        crops_for_training(folder, load_config("tiny", [override]))


def test_an_empty_split_is_refused(folder: Path) -> None:
    with pytest.raises(DataError, match="'test' split has no utterances"):
        crops_for_training(folder, tiny(), split="test")

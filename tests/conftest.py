"""Shared fixtures: a tiny synthetic corpus preprocessed into a feature folder, made once per session."""

import os
from pathlib import Path

import pytest
import torch

from diffwave.config import load_config
from diffwave.data.preprocess import preprocess
from tests.audio_fixtures import write_tone

# Each test process measures `--dtype auto` itself, as the tests that drive it expect; the user's cache file is
# neither read nor written (the CLI tests' subprocesses inherit this).
os.environ["DIFFWAVE_PRECISION_CACHE"] = "off"
# The CLI's `--threads auto` keeps a count the user set: the suite runs every command at torch's own count, in
# this process and in the subprocesses, rather than at one measured under the suite's own load.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


def make_tone_corpus(root: Path, count: int, sample_rate: int, seconds: float = 0.5) -> Path:
    """A folder of vowel-like clips with different pitches, lengths and seeds."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_tone(root / f"clip{i:02d}.wav", sample_rate, seconds + 0.05 * (i % 4), seed=i, f0=110 + 15 * i)
    return root


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory) -> Path:
    """13 clips at 8 kHz -> features for the tiny config (11 train, 1 valid, 1 test after the split)."""
    base = tmp_path_factory.mktemp("tiny")
    config = load_config("tiny", ["data.valid_fraction=0.1", "data.test_fraction=0.05"])
    corpus = make_tone_corpus(base / "corpus", 13, config.audio.sample_rate)
    preprocess(corpus, base / "features", config)
    return base / "features"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_features, tmp_path_factory) -> Path:
    """A tiny conditional model trained for 20 steps: enough to load and vocode, not to sound good."""
    from diffwave.training.run import train

    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    overrides = ["train.max_steps=20", "train.log_every=100", "train.valid_every=100", "train.sample_every=100",
                 "train.save_every=20"]
    train(load_config("tiny", overrides), tiny_features, run_dir, device="cpu")
    return run_dir / "checkpoints" / "step_00000020.pt"


@pytest.fixture(scope="session")
def unconditional_checkpoint(tiny_features, tmp_path_factory) -> Path:
    """A tiny unconditional model trained for 3 steps (for generation and denoising plumbing)."""
    from diffwave.training.run import train

    run_dir = tmp_path_factory.mktemp("uncond") / "run"
    config = load_config("tiny", ["model.conditional=false", "train.max_steps=3", "train.save_every=3",
                                  "train.valid_every=100", "train.sample_every=100"])
    train(config, tiny_features, run_dir, device="cpu")
    return run_dir / "checkpoints" / "step_00000003.pt"

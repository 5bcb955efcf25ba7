"""The `vocode` command as a user runs it: real files, exit codes, one-line errors, partial failures."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.audio import LogMel
from diffwave.config import load_config
from tests.audio_fixtures import harmonic_tone, write_tone

TINY = load_config("tiny").audio
VOCODE = [sys.executable, "-c", "import sys; from diffwave.cli import vocode_main; sys.exit(vocode_main())"]


def run_vocode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VOCODE, *args], capture_output=True, text=True, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error" in line.lower()]


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    mel = LogMel(TINY)(torch.from_numpy(harmonic_tone(TINY.sample_rate, 0.5, seed=1)))
    np.save(folder / "utt_mel.npy", mel.numpy())
    torch.save(mel, folder / "utt_pt.pt")
    write_tone(folder / "utt_audio.wav", TINY.sample_rate, 0.4, seed=2)
    return folder


def test_vocodes_mels_and_audio_into_wavs(tiny_checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = run_vocode(str(inputs), "--checkpoint", str(tiny_checkpoint), "-o", str(out), "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "precision auto -> " in result.stderr  # the default dtype says which precision it picked, and why
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("vocode: 3 files, ") and "real-time factor" in summary and "0 failed" in summary
    frames = np.load(inputs / "utt_mel.npy").shape[1]
    for name, samples in (("utt_mel", frames * TINY.hop_length), ("utt_pt", frames * TINY.hop_length)):
        audio, rate = sf.read(out / f"{name}.wav")
        assert rate == TINY.sample_rate and audio.shape == (samples,)
    assert sf.info(out / "utt_audio.wav").samplerate == TINY.sample_rate


def test_same_seed_same_bytes(tiny_checkpoint, inputs, tmp_path):
    """Two processes, one seed: the same bytes. The precision is named: the tests measure `auto` in each process
    (DIFFWAVE_PRECISION_CACHE=off, conftest.py), and on a CPU where the tiny model's layer times alike in fp32
    and bf16 (about 0.8 of each other here, against the 0.9 margin) two processes may choose differently; users'
    processes share the first one's choice through the cache file."""
    digests = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        result = run_vocode(str(inputs / "utt_mel.npy"), "--checkpoint", str(tiny_checkpoint), "-o",
                            str(tmp_path / name), "--seed", "3", "--sampler", "ddim", "--steps", "4", "--dtype", "fp32")
        assert result.returncode == 0, result.stderr
        digests.append(hashlib.sha256((tmp_path / name / "utt_mel.wav").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_one_bad_input_among_many(tiny_checkpoint, inputs, tmp_path):
    np.save(inputs / "wide.npy", np.zeros((100, 30), np.float32))
    np.save(inputs / "lmnt_like.npy", np.full((TINY.n_mels, 30), 0.5, np.float32))
    with_nan = np.full((TINY.n_mels, 30), -5.0, np.float32)
    with_nan[3, 7] = np.nan
    np.save(inputs / "with_nan.npy", with_nan)
    (inputs / "broken.wav").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    # batches of 3 mix the bad mels with good ones: each input is checked alone, so only the bad ones fail
    result = run_vocode(str(inputs), str(tmp_path / "missing.npy"), "--checkpoint", str(tiny_checkpoint),
                        "-o", str(out), "--batch-size", "3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["utt_audio.wav", "utt_mel.wav", "utt_pt.wav"]
    stderr = result.stderr
    assert "wide.npy: mel has 100 bins, model expects 20 (preset hifigan)" in stderr
    assert "lmnt" in stderr and "hifigan" in stderr
    assert "broken.wav: empty" in stderr
    assert "missing.npy: no such file" in stderr
    assert "with_nan.npy: mel has non-finite values (NaN or Inf), first at frame 7" in stderr
    assert "5 failed" in result.stdout


def test_existing_outputs_and_inputs_are_never_overwritten(tiny_checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "utt_mel.wav").write_bytes(b"keep me")
    result = run_vocode(str(inputs / "utt_mel.npy"), "--checkpoint", str(tiny_checkpoint), "-o", str(out))
    assert result.returncode == 2 and "already exists; pass --force" in result.stderr
    assert (out / "utt_mel.wav").read_bytes() == b"keep me"
    forced = run_vocode(str(inputs / "utt_mel.npy"), "--checkpoint", str(tiny_checkpoint), "-o", str(out), "--force")
    assert forced.returncode == 0 and sf.info(out / "utt_mel.wav").frames > 0
    into_inputs = run_vocode(str(inputs / "utt_audio.wav"), "--checkpoint", str(tiny_checkpoint), "-o", str(inputs),
                             "--force")
    assert into_inputs.returncode == 2 and "would overwrite an input" in into_inputs.stderr


@pytest.mark.parametrize("case", ["missing checkpoint", "out is a file", "code checkpoint", "schedule out of range"])
def test_fatal_errors_are_one_line(tiny_checkpoint, inputs, tmp_path, case, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    checkpoint = tiny_checkpoint
    if case == "missing checkpoint":
        checkpoint = tmp_path / "nope.pt"
    elif case == "out is a file":
        out = tmp_path / "a_file"
        out.write_text("keep")
    elif case == "code checkpoint":
        checkpoint = tmp_path / "evil.pt"
        torch.save({"format_version": 1, "payload": _RunsCode()}, checkpoint)
    extra = ["--schedule", "0.5,0.9"] if case == "schedule out of range" else []  # gbar far below the training range
    result = subprocess.run([*VOCODE, str(inputs), "--checkpoint", str(checkpoint), "-o", str(out), *extra],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("vocode: error: ")
    assert len(error_lines(result)) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "MARKER").exists()


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch MARKER",))


def test_unconditional_checkpoint_is_refused(tiny_features, inputs, tmp_path):
    from diffwave.training.run import train

    config = load_config("tiny", ["model.conditional=false", "train.max_steps=1", "train.save_every=1",
                                  "train.sample_every=100", "train.valid_every=100"])
    train(config, tiny_features, tmp_path / "uncond", device="cpu")
    out = tmp_path / "out"
    out.mkdir()
    result = run_vocode(str(inputs), "--checkpoint", str(tmp_path / "uncond" / "checkpoints" / "step_00000001.pt"),
                        "-o", str(out))
    assert result.returncode == 2 and "unconditional" in result.stderr and "Traceback" not in result.stderr

"""Unconditional generation from the command line and the Python API, on a tiny unconditional model."""

import hashlib
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from diffwave.checkpoints import load_unconditional
from diffwave.config import load_config
from diffwave.errors import CheckpointError
from diffwave.inference.generate import generate
from diffwave.model import DiffWave


def run_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffwave", "generate", *args], capture_output=True, text=True,
                          timeout=300)


def test_generate_command_writes_seeded_clips(unconditional_checkpoint, tmp_path):
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        result = run_generate("--checkpoint", str(unconditional_checkpoint), "-n", "3", "--seconds", "0.25",
                              "-o", str(out), "--seed", "4", "--batch-size", "2")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("generate: 3 files, 0.75 s of audio")
        files = sorted(out.glob("sample_*.wav"))
        assert [f.name for f in files] == ["sample_000.wav", "sample_001.wav", "sample_002.wav"]
        for file in files:
            audio, rate = sf.read(file)
            assert rate == 8000 and audio.shape == (2000,)
        digests.append([hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    assert digests[0] == digests[1] and len(set(digests[0])) == 3
    again = run_generate("--checkpoint", str(unconditional_checkpoint), "-n", "1", "-o", str(tmp_path / "a"))
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr


def test_a_conditional_checkpoint_is_refused_saying_what_is_needed(tiny_checkpoint, tmp_path):
    result = run_generate("--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is a conditional (mel) model; generation needs an unconditional checkpoint" in result.stderr
    with pytest.raises(CheckpointError, match="needs an unconditional checkpoint"):
        load_unconditional(tiny_checkpoint, device="cpu")


def test_python_api_with_every_sampler(unconditional_checkpoint):
    model, config = load_unconditional(unconditional_checkpoint, device="cpu")
    for sampler in ("fast", "ddim", "ddpm"):
        clips = generate(model, config, 3, 0.1, sampler=sampler, generator=torch.Generator().manual_seed(0),
                         batch_size=2)
        assert len(clips) == 3 and all(c.shape == (800,) and c.abs().max() <= 1 for c in clips)


@pytest.mark.parametrize(("sampler", "steps", "expected"), [
    ("ddim", 5, [49, 37, 24, 12, 0]),  # linspace(0, 49, 5) rounded, noisiest first
    ("ddim", None, 12),  # the default: 12 steps
    ("ddpm", None, list(range(49, -1, -1))),
    ("fast", None, 6),  # the tiny preset's 6 betas
])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_generate_runs_the_sampler_and_steps_it_is_given(sampler, steps, expected, precision):
    """The model is called once per reverse step of the named plan, with that plan's steps, for every clip of
    the batch at once, in either precision (bf16: the network under autocast, the chain in fp32)."""
    config = load_config("tiny", ["model.conditional=false"])
    torch.manual_seed(0)
    model = DiffWave.from_config(config).eval()
    calls: list[list[float]] = []
    outputs: list[torch.dtype] = []

    def record(module, args, out):
        calls.append(args[1].tolist())  # the precision the network ran under (its CPU output is fp32 in either)
        outputs.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)

    model.register_forward_hook(record)
    clips = generate(model, config, 2, 0.05, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0),
                     dtype=precision)
    assert len(clips) == 2 and all(c.shape == (400,) and c.dtype == torch.float32 for c in clips)
    assert set(outputs) == {torch.float32 if precision == "fp32" else torch.bfloat16}
    assert all(len(t) == 2 and t[0] == t[1] for t in calls)
    if isinstance(expected, int):
        assert len(calls) == expected and len({t[0] for t in calls}) == expected
    else:
        assert [t[0] for t in calls] == expected
    if sampler == "fast":  # fractional steps, decreasing, from DiffWave's alignment of the fast betas
        steps_seen = [t[0] for t in calls]
        assert steps_seen == sorted(steps_seen, reverse=True) and steps_seen[-1] < 1 < steps_seen[0]

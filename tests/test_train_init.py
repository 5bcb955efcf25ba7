"""`train --init-from`: a new run that starts from trained (EMA) weights, e.g. the shipped voice, with a fresh
optimizer, learning-rate schedule and step count."""

import logging
import subprocess
import sys

import pytest
import torch

from diffwave.checkpoints import export_safetensors, load_checkpoint, load_model
from diffwave.config import load_config
from diffwave.errors import CheckpointError
from diffwave.training.distributed import init_distributed
from diffwave.training.run import train
from diffwave.training.trainer import Trainer

QUIET = ["train.log_every=100", "train.valid_every=100", "train.sample_every=100", "train.save_every=2"]


@pytest.fixture(scope="module")
def shipped(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's EMA weights exported as a shipped model is: safetensors with its config."""
    path = tmp_path_factory.mktemp("shipped") / "model.safetensors"
    export_safetensors(tiny_checkpoint, path)
    return path


def test_a_new_run_starts_from_the_weights_with_a_fresh_optimizer(shipped, tiny_features, tmp_path):
    config = load_config("tiny", [*QUIET, "train.warmup_steps=10"])
    trainer = Trainer.from_config(config, tiny_features, tmp_path / "run", init_distributed("cpu"), init_from=shipped)
    weights, _ = load_model(shipped)
    for name, value in weights.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
        assert torch.equal(trainer.ema.module.state_dict()[name], value), name
    assert trainer.step == 0 and not trainer.optimizer.state
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 10)  # warm-up starts again


def test_the_run_trains_on_from_there_and_resumes_without_it(shipped, tiny_features, tmp_path):
    config = load_config("tiny", [*QUIET, "train.max_steps=2"])
    train(config, tiny_features, tmp_path / "run", device="cpu", init_from=shipped)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.pt")
    weights, _ = load_model(shipped)
    moved = max((state["model"][name] - value).abs().max().item() for name, value in weights.state_dict().items())
    assert 0 < moved < 1e-2  # two small Adam steps away from the shipped weights, not from a new initialisation
    resumed = train(load_config("tiny", [*QUIET, "train.max_steps=4"]), tiny_features, tmp_path / "run",
                    device="cpu", init_from=shipped)
    assert resumed.step == 4 and len(resumed.losses) == 2


def test_weights_of_another_model_are_refused_with_the_differences(shipped, tiny_features, tmp_path):
    config = load_config("tiny", ["model.residual_channels=16"])
    with pytest.raises(CheckpointError, match="model.residual_channels"):
        Trainer.from_config(config, tiny_features, tmp_path / "run", init_distributed("cpu"), init_from=shipped)


def test_the_command_line_option(shipped, tiny_features, tmp_path):
    result = subprocess.run([sys.executable, "-m", "diffwave", "train", "--config", "tiny", "--data",
                             str(tiny_features), "--out", str(tmp_path / "run"), "--max-steps", "2",
                             "--init-from", str(shipped), "--device", "cpu", *QUIET],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"starting from the weights of {shipped} with a fresh optimizer" in result.stderr


def test_a_priorgrad_run_keeps_the_statistics_its_weights_were_trained_with(tiny_features, tmp_path, caplog):
    config = load_config("tiny", [*QUIET, "train.max_steps=1", "train.save_every=1", "diffusion.prior=priorgrad",
                                  "diffusion.prior_energy_min=0.01", "diffusion.prior_energy_max=3.0"])
    train(config, tiny_features, tmp_path / "first", device="cpu")
    caplog.set_level(logging.INFO, logger="diffwave")
    fresh = load_config("tiny", [*QUIET, "diffusion.prior=priorgrad"])  # statistics unset: would be recomputed
    trainer = Trainer.from_config(fresh, tiny_features, tmp_path / "second", init_distributed("cpu"),
                                  init_from=tmp_path / "first" / "checkpoints" / "step_00000001.pt")
    assert (trainer.config.diffusion.prior_energy_min, trainer.config.diffusion.prior_energy_max) == (0.01, 3.0)
    assert trainer.prior.energy_min == 0.01 and trainer.prior.energy_max == 3.0
    assert "starting from the weights of" in caplog.text
    assert "prior_energy" not in caplog.text  # taken from the weights, not reported as a changed setting

    caplog.clear()
    asked = load_config("tiny", [*QUIET, "diffusion.prior=priorgrad", "diffusion.prior_energy_min=0.01",
                                 "diffusion.prior_energy_max=2.0"])
    trainer = Trainer.from_config(asked, tiny_features, tmp_path / "third", init_distributed("cpu"),
                                  init_from=tmp_path / "first" / "checkpoints" / "step_00000001.pt")
    assert trainer.config.diffusion.prior_energy_max == 3.0
    assert "diffusion.prior_energy_max=2.0 ignored: the weights were trained with 3.0" in caplog.text

"""The pieces of a speech prior for denoising: training only the low-noise steps (train.max_step), utterances
at denoise's level (data.target_rms), the range checks of `denoise`, and one default model per task."""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffwave import pretrained
from diffwave.config import load_config, trained_steps
from diffwave.data.dataset import crops_for_training, crops_for_validation
from diffwave.diffusion import NoiseSchedule
from diffwave.errors import CheckpointError, ConfigError, DiffwaveError
from diffwave.inference.denoise import ABOVE_RANGE_FACTOR, choose_start_step, denoise
from diffwave.inference.generate import generate
from diffwave.training.distributed import DistributedContext
from diffwave.training.trainer import Trainer
from tests.analytic import GaussianNetwork
from tests.test_denoise import paused_tone

UNCONDITIONAL = ["model.conditional=false"]


def test_max_step_and_target_rms_are_checked_against_the_rest_of_the_config():
    assert trained_steps(load_config("tiny", [*UNCONDITIONAL, "train.max_step=4"])) == 5
    assert trained_steps(load_config("tiny")) == load_config("tiny").diffusion.num_steps
    with pytest.raises(ConfigError, match=r"train.max_step must lie in 0..49"):
        load_config("tiny", ["train.max_step=50"])
    with pytest.raises(ConfigError, match="data.target_rms rescales the audio but not its mel"):
        load_config("tiny", ["data.target_rms=0.1"])
    with pytest.raises(ConfigError, match="level_jitter_db must not be negative"):
        load_config("tiny", [*UNCONDITIONAL, "data.level_jitter_db=-1"])


def test_training_draws_only_the_steps_up_to_max_step(tiny_features, tmp_path):
    config = load_config("tiny", [*UNCONDITIONAL, "train.max_step=2"])
    trainer = Trainer.from_config(config, tiny_features, tmp_path / "run",
                                  DistributedContext(0, 1, 0, torch.device("cpu")))
    drawn = torch.cat([trainer._draws([f"id{i}"], torch.Size([8]))[0] for i in range(300)])
    assert set(drawn.tolist()) == {0, 1, 2}  # all of them, and nothing above: 300 uniform draws of 3 values
    unrestricted = Trainer.from_config(load_config("tiny", UNCONDITIONAL), tiny_features, tmp_path / "run2",
                                       DistributedContext(0, 1, 0, torch.device("cpu")))
    assert unrestricted._draws(["id"] * 1, torch.Size([8]))[0].item() < 50
    assert max(unrestricted._draws([f"id{i}"], torch.Size([8]))[0].item() for i in range(100)) > 2


def utterance_rms(folder: Path, item_id: str) -> float:
    audio = np.load(folder / "audio" / f"{item_id}.npy").astype(np.float64)
    return float(np.sqrt(np.mean(audio**2)))


def test_utterances_come_at_the_target_level_with_a_seeded_jitter(tiny_features):
    plain = crops_for_training(tiny_features, load_config("tiny", UNCONDITIONAL), seed=3)
    levelled = crops_for_training(tiny_features, load_config(
        "tiny", [*UNCONDITIONAL, "data.target_rms=0.1", "data.level_jitter_db=6"]), seed=3)
    levels = []
    for epoch in range(4):
        plain.set_epoch(epoch), levelled.set_epoch(epoch)
        for index in range(len(plain)):
            raw, scaled = plain[index]["audio"].double(), levelled[index]["audio"].double()
            gain = (scaled @ raw / (raw @ raw)).item()  # the same crop, scaled by one factor
            assert torch.allclose(scaled, gain * raw, rtol=1e-5, atol=1e-7)
            levels.append(20 * math.log10(gain * utterance_rms(tiny_features, plain[index]["id"]) / 0.1))
    assert min(levels) >= -6 - 1e-4 and max(levels) <= 1e-4  # each utterance within [-6, 0] dB of the target
    assert max(levels) - min(levels) > 3  # and the level does vary
    levelled.set_epoch(1)
    assert torch.equal(levelled[0]["audio"], levelled[0]["audio"])  # a pure function of (seed, epoch, index)
    validation = crops_for_validation(tiny_features, load_config("tiny", [*UNCONDITIONAL, "data.target_rms=0.1",
                                                                          "data.level_jitter_db=6"]))
    raw = crops_for_validation(tiny_features, load_config("tiny", UNCONDITIONAL))
    gain = (validation[0]["audio"].double() @ raw[0]["audio"].double() / raw[0]["audio"].double().pow(2).sum()).item()
    assert gain * utterance_rms(tiny_features, raw[0]["id"]) == pytest.approx(0.1, rel=1e-5)  # no jitter there


@pytest.fixture
def prior_model():
    """The optimal eps of white Gaussian data, trained (so to speak) on steps 0..1 of the tiny schedule."""
    config = load_config("tiny", [*UNCONDITIONAL, "train.max_step=1"])
    return GaussianNetwork(config, 0.08).eval(), config


def tone() -> torch.Tensor:
    """2 s at 8 kHz, on and off every 0.25 s: the pauses are where denoise reads the noise level."""
    return torch.from_numpy(paused_tone(8000, 2.0, 0.1)).float()


def test_input_cleaner_than_the_first_step_comes_back_unchanged(prior_model, caplog):
    model, config = prior_model
    schedule = NoiseSchedule.from_config(config.diffusion)
    first = (1 - schedule.alpha_bars[0].item()) / schedule.alpha_bars[0].item()
    clean = tone()
    noisy = clean + math.sqrt(first / (4 * ABOVE_RANGE_FACTOR)) * torch.randn(clean.shape,
                                                                            generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="diffwave.denoise"):
        result = denoise(noisy, 8000, model, config=config)
    assert result.start_step is None and torch.equal(result.audio, noisy)
    assert "above the model's range" in caplog.text
    # Control: at the first step's own noise level the chain runs and changes the signal.
    noisier = clean + math.sqrt(first) * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    ran = denoise(noisier, 8000, model, config=config)
    assert ran.start_step == 0 and not torch.equal(ran.audio, noisier)


def test_input_noisier_than_the_trained_steps_starts_at_the_last_one(prior_model, caplog):
    model, config = prior_model
    noisy = tone() + 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))  # about 0 dB
    with caplog.at_level(logging.WARNING, logger="diffwave.denoise"):
        result = denoise(noisy, 8000, model, config=config)
    assert result.start_step == 1 and "below the model's range (trained on steps 0..1)" in caplog.text
    unrestricted = load_config("tiny", UNCONDITIONAL)
    assert denoise(noisy, 8000, GaussianNetwork(unrestricted, 0.08).eval(), config=unrestricted).start_step == 3


def test_clipped_input_is_denoised_with_a_warning(prior_model, caplog):
    model, config = prior_model
    clipped = (tone() * 4).clamp(-0.2, 0.2) + 0.01 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    clipped = clipped.clamp(-0.2, 0.2)
    with caplog.at_level(logging.WARNING, logger="diffwave.denoise"):
        result = denoise(clipped, 8000, model, config=config)
    assert result.audio.shape == clipped.shape and "looks clipped" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffwave.denoise"):
        denoise(tone() + 0.01 * torch.randn(16000, generator=torch.Generator().manual_seed(0)), 8000, model,
                config=config)
    assert "looks clipped" not in caplog.text


def test_generation_refuses_a_model_trained_on_the_low_noise_steps_only(prior_model):
    model, config = prior_model
    with pytest.raises(DiffwaveError, match="trained on steps 0..1 of 50 only"):
        generate(model, config, 1, 0.1)


def test_each_task_has_its_own_default_model(tmp_path, monkeypatch):
    entries = [{"name": "voice", "file": "v.safetensors", "sha256": "0", "description": "a voice", "default": True},
               {"name": "old", "file": "o.safetensors", "sha256": "0", "description": "an older voice"},
               {"name": "speech", "file": "s.safetensors", "sha256": "0", "description": "a prior", "default": True,
                "task": "denoiser"}]
    (tmp_path / pretrained.MANIFEST).write_text(json.dumps({"models": entries}))
    monkeypatch.setattr(pretrained, "pretrained_dir", lambda: tmp_path)
    assert pretrained.find().name == "voice"  # entries without a task are vocoders, as the old manifests were
    assert pretrained.find(task=pretrained.DENOISER).name == "speech"
    assert pretrained.find("old").name == "old"
    with pytest.raises(CheckpointError, match="no pretrained denoiser 'voice'; shipped: speech"):
        pretrained.find("voice", task=pretrained.DENOISER)
    entries[0]["default"] = False
    (tmp_path / pretrained.MANIFEST).write_text(json.dumps({"models": entries}))
    with pytest.raises(CheckpointError, match="expected one default vocoder, found 0"):
        pretrained.find()


def test_the_shipped_prior_recipe_trains_every_step_denoise_can_start_from():
    """The noise of an input scaled to the model's level is at most that level; its start step must be trained."""
    config = load_config(Path(__file__).resolve().parents[1] / "recipes" / "denoiser" / "prior.yaml")
    schedule = NoiseSchedule.from_config(config.diffusion)
    level = config.data.target_rms
    zero_db = choose_start_step(schedule, level / math.sqrt(2))
    all_noise = choose_start_step(schedule, level)
    assert zero_db == 9 and all_noise <= config.train.max_step < schedule.num_steps - 1
    assert not config.model.conditional and config.data.level_jitter_db > 0


def test_the_shipped_prior_denoises_held_out_speech_out_of_the_box(caplog):
    """denoise(noisy, rate) with no model: the shipped prior (one log line says so) cleans 1.5 s of a speaker
    it never heard at 10 dB white noise, at the input's rate and length. (Its card has the full table.)"""
    from diffwave.audio import read_audio
    from diffwave.evaluation.metrics import si_sdr

    clean = read_audio(Path(__file__).resolve().parents[1] / "recipes" / "demo" / "unseen" / "june_dir-first.flac",
                       22050)[: int(1.5 * 22050)]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = clean + noise * clean.pow(2).mean().sqrt() / 10 ** (10 / 20)
    with caplog.at_level(logging.INFO, logger="diffwave.denoise"):
        result = denoise(noisy, 22050, generator=torch.Generator().manual_seed(0))
    assert "using the shipped speech prior 'speech_prior'" in caplog.text
    assert result.audio.shape == noisy.shape and result.start_step in (2, 3, 4)  # 10 dB: step 3 of T = 200
    assert si_sdr(clean, result.audio) > si_sdr(clean, noisy) + 1  # +4 to +5 dB on June at 10 dB (card)

"""`diffwave distill`: the distiller is the trainer with the consistency objective, so a run starts from its
teacher, checkpoints and resumes exactly, logs to TensorBoard, and its students vocode with the consistency
sampler (and only with it), from Python and from the command line."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.checkpoints import load_checkpoint, load_model
from diffwave.config import load_config
from diffwave.errors import CheckpointError, TrainingError, VocodeError
from diffwave.inference.vocoder import Vocoder
from diffwave.training.distill import distill, student_config
from diffwave.training.run import train
from tests.test_training import assert_same_state, scalar_events

FAST = ["train.log_every=1", "train.valid_every=2", "train.sample_every=4", "train.save_every=2",
        "train.num_samples=1", "train.learning_rate=1e-3"]
CLI = [sys.executable, "-m", "diffwave"]


def test_a_student_starts_from_its_teacher_and_records_it(tiny_checkpoint, tiny_features, tmp_path):
    distill(tiny_checkpoint, tiny_features, tmp_path / "run", [*FAST, "train.max_steps=2"], device="cpu")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.pt")
    config = state["config"]
    assert config["model"]["prediction"] == "consistency" and config["distill"]["teacher"] == str(tiny_checkpoint)
    assert config["name"] == "tiny-consistency"
    teacher, _ = load_model(tiny_checkpoint)
    # Two steps of Adam at 1e-3 move every weight by about 1e-3: the student is near its teacher, not random.
    moved = max((state["model"][name] - weight).abs().max().item() for name, weight in teacher.state_dict().items())
    assert 1e-5 < moved < 1e-2
    assert set(state) >= {"target", "ema", "optimizer"}


def test_distillation_resumes_bit_identically(tiny_checkpoint, tiny_features, tmp_path):
    straight = distill(tiny_checkpoint, tiny_features, tmp_path / "straight", [*FAST, "train.max_steps=4"],
                       device="cpu")
    distill(tiny_checkpoint, tiny_features, tmp_path / "resumed", [*FAST, "train.max_steps=2"], device="cpu")
    resumed = distill(tiny_checkpoint, tiny_features, tmp_path / "resumed", [*FAST, "train.max_steps=4"],
                      resume=True, device="cpu")
    assert resumed.losses == straight.losses[2:]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000004.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000004.pt")
    for key in ("model", "ema", "target", "optimizer", "step"):
        assert_same_state(a[key], b[key], key)
    assert [step for step, _ in scalar_events(tmp_path / "straight", "train/loss")] == [1, 2, 3, 4]
    assert scalar_events(tmp_path / "straight", "valid/loss")


def test_the_target_follows_the_student_at_its_decay(tiny_checkpoint, tiny_features, tmp_path):
    """After one step, target = mu * teacher + (1 - mu) * student (it started as a copy of the teacher)."""
    distill(tiny_checkpoint, tiny_features, tmp_path / "run", [*FAST, "train.max_steps=1", "train.save_every=1",
                                                                "distill.target_ema=0.9"], device="cpu")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001.pt")
    teacher, _ = load_model(tiny_checkpoint)
    for name, weight in teacher.state_dict().items():
        expected = 0.9 * weight + 0.1 * state["model"][name]
        torch.testing.assert_close(state["target"][name], expected, rtol=0, atol=1e-6)  # weights moved ~1e-3


def test_overrides_may_not_change_the_teachers_model(tiny_checkpoint, tiny_features, tmp_path):
    with pytest.raises(TrainingError, match="model.residual_channels"):
        distill(tiny_checkpoint, tiny_features, tmp_path / "run", ["model.residual_channels=16"], device="cpu")


def test_a_training_run_is_not_resumed_as_a_distillation(tiny_checkpoint, tiny_features, tmp_path):
    run = tmp_path / "run"
    train(load_config("tiny", [*FAST, "train.max_steps=2"]), tiny_features, run, device="cpu")
    with pytest.raises(CheckpointError, match="not a distillation checkpoint"):
        distill(tiny_checkpoint, tiny_features, run, [*FAST, "train.max_steps=4"], device="cpu")


def test_students_and_teachers_each_refuse_the_others_sampler(tiny_checkpoint, tiny_features, tmp_path):
    distill(tiny_checkpoint, tiny_features, tmp_path / "run", [*FAST, "train.max_steps=2"], device="cpu")
    student = Vocoder.from_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.pt", device="cpu")
    teacher = Vocoder.from_checkpoint(tiny_checkpoint, device="cpu")
    mel = torch.zeros(teacher.n_mels, 10) - 5.0
    assert student.plan().name == "consistency-2" and teacher.plan().name.startswith("fast")
    assert student.vocode(mel, steps=1, generator=torch.Generator().manual_seed(0)).shape == (10 * 64,)
    with pytest.raises(VocodeError, match="consistency student"):
        student.plan("fast")
    with pytest.raises(VocodeError, match="needs a student"):
        teacher.plan("consistency")
    with pytest.raises(VocodeError, match="no corrector steps"):
        student.vocode(mel, corrector_steps=1)


def test_teacher_to_student_to_audio_on_the_command_line(tiny_checkpoint, tiny_features, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([*CLI, "distill", "--teacher", str(tiny_checkpoint), "--data", str(tiny_features),
                             "--out", str(run), "--max-steps", "2", "--device", "cpu", *FAST],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "distill: stopped at step 2" in result.stdout
    student = run / "checkpoints" / "step_00000002.pt"
    mel = next((tiny_features / "mel").glob("*.npy"))
    for steps in ("1", "2"):
        out = tmp_path / f"out{steps}"
        result = subprocess.run([*CLI, "vocode", str(mel), "--checkpoint", str(student), "--sampler", "consistency",
                                 "--steps", steps, "-o", str(out), "--device", "cpu"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        audio, rate = sf.read(next(out.glob("*.wav")))
        assert rate == 8000 and audio.shape == (np.load(mel).shape[-1] * 64,) and np.isfinite(audio).all()
    refused = subprocess.run([*CLI, "vocode", str(mel), "--checkpoint", str(student), "--sampler", "fast",
                              "-o", str(tmp_path / "no")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "consistency student" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_torchrun_processes_distil_as_one_does(tiny_checkpoint, tiny_features, tmp_path):
    """DDP under the real torchrun (2 CPU processes on gloo): the same global batch gives the same student."""
    settings = [*FAST, "train.batch_size=4", "data.num_workers=0", "train.max_steps=2"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffwave",
               "distill", "--teacher", str(tiny_checkpoint), "--data", str(tiny_features), "--out",
               str(tmp_path / "ddp"), "--device", "cpu", *settings]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    distill(tiny_checkpoint, tiny_features, tmp_path / "one", settings, device="cpu")
    ddp, one = (load_checkpoint(tmp_path / run / "checkpoints" / "step_00000002.pt") for run in ("ddp", "one"))
    for key in ("model", "target", "ema"):
        for name, value in one[key].items():
            torch.testing.assert_close(ddp[key][name], value, rtol=0, atol=1e-5, msg=f"{key}.{name}")


def test_a_student_starts_from_noise_whatever_its_teachers_default_start():
    """The shipped voice starts from Griffin-Lim + envelope; its student's 1-2 passes are from noise unless asked."""
    teacher = load_config("tiny", ["diffusion.init=griffin-lim-envelope", "diffusion.init_start_step=1"])
    student = student_config(teacher, "teacher.safetensors", [])
    assert (student.diffusion.init, student.diffusion.init_start_step) == ("noise", None)
    assert student.model.prediction == "consistency" and teacher.diffusion.init == "griffin-lim-envelope"

"""The training loop on CPU: exact resume, non-finite guard, mixed precision paths, monitoring, run folders."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffwave.checkpoints import latest_checkpoint, load_checkpoint, load_model_weights
from diffwave.config import load_config
from diffwave.errors import CheckpointError, TrainingError
from diffwave.training.distributed import DistributedContext, ResumableSampler, init_distributed
from diffwave.training.run import train
from diffwave.training.setup import prepare_run_dir
from diffwave.training.trainer import Trainer

FAST = ["train.log_every=1", "train.valid_every=3", "train.sample_every=6", "train.save_every=3",
        "train.num_samples=1"]


def tiny(*overrides: str):
    return load_config("tiny", [*FAST, *overrides])


def make_trainer(features: Path, run_dir: Path, *overrides: str) -> Trainer:
    checkpoint = prepare_run_dir(run_dir, resume=False, overwrite=False)
    return Trainer.from_config(tiny(*overrides), features, run_dir, init_distributed("cpu"), resume_from=checkpoint)


def scalar_events(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(run_dir / "logs"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_new_process_is_bit_identical(tiny_features, tmp_path, workers):
    overrides = [f"data.num_workers={workers}"]
    straight = train(tiny("train.max_steps=8", *overrides), tiny_features, tmp_path / "straight", device="cpu")
    train(tiny("train.max_steps=5", *overrides), tiny_features, tmp_path / "resumed", device="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "diffwave", "train", "--config", "tiny", "--data", str(tiny_features),
         "--out", str(tmp_path / "resumed"), "--max-steps", "8", "--device", "cpu", *FAST, *overrides],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr and "step 5" in result.stderr
    final_straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000008.pt")
    final_resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000008.pt")
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "step", "epoch", "batch_in_epoch"):
        assert_same_state(final_straight[key], final_resumed[key], key)
    losses = scalar_events(tmp_path / "resumed", "train/loss")
    assert [step for step, _ in losses] == list(range(1, 9))  # no duplicated or missing steps
    # TensorBoard stores float32: the resumed run's logged losses equal the straight run's, rounded alike
    assert [value for _, value in losses] == [float(np.float32(value)) for value in straight.losses]


def test_monitoring_writes_every_promised_tag(tiny_features, tmp_path):
    train(tiny("train.max_steps=6"), tiny_features, tmp_path / "run", device="cpu")
    accumulator = EventAccumulator(str(tmp_path / "run" / "logs"), size_guidance={"scalars": 0, "images": 0,
                                                                                 "audio": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    for tag in ("train/loss", "train/grad_norm", "train/lr", "train/steps_per_sec", "valid/loss", "valid/mel_l1"):
        assert tag in tags["scalars"], tag
    assert any(tag.startswith("train/loss_by_step/") for tag in tags["scalars"])
    assert "sample/0/generated" in tags["audio"] and "sample/0/reference" in tags["audio"]
    assert "sample/0/mel_generated" in tags["images"] and "sample/0/mel_reference" in tags["images"]
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    assert checkpoints == ["step_00000003.pt", "step_00000006.pt"]


def nan_output_at(trainer: Trainer, bad_steps: set[int]):
    """Forward hook: the network's output turns NaN on the given (0-based) step numbers."""
    def hook(module, inputs, output):
        return output * float("nan") if trainer.step in bad_steps else output
    return trainer.model.register_forward_hook(hook)


@pytest.mark.parametrize("clip", ["null", "1.0"])
def test_non_finite_loss_is_skipped_and_logged(tiny_features, tmp_path, clip):
    """Also with clipping on: a NaN gradient norm is a skipped step, never a "clipped" one."""
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.max_steps=4", f"train.grad_clip_norm={clip}")
    nan_output_at(trainer, {2})
    snapshots = {}

    def snapshot(t: Trainer) -> None:
        snapshots[t.step] = ({k: v.clone() for k, v in t.model.state_dict().items()},
                             {k: v.clone() for k, v in t.ema.module.state_dict().items()})

    result = trainer.fit(on_step=snapshot)
    assert result.skipped_steps == 1 and trainer.non_finite_total == 1 and len(result.losses) == 3
    before, after = snapshots[2], snapshots[3]  # state after step index 1, and after the NaN step index 2
    for name in before[0]:
        assert torch.equal(before[0][name], after[0][name]), name
        assert torch.equal(before[1][name], after[1][name]), name
    assert not all(torch.equal(snapshots[3][0][n], snapshots[4][0][n]) for n in before[0])  # training went on
    assert scalar_events(tmp_path / "run", "train/non_finite_steps") == [(3, 1.0)]


def test_consecutive_non_finite_steps_stop_training_and_keep_the_last_checkpoint(tiny_features, tmp_path):
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.max_steps=20", "train.max_non_finite_steps=3")
    nan_output_at(trainer, set(range(4, 20)))
    with pytest.raises(TrainingError, match="non-finite loss at step 7: 3 steps in a row"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "run").name == "step_00000003.pt"


def test_fp16_grad_scaler_skips_inf_gradients_and_halves_the_scale(tiny_features, tmp_path):
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.max_steps=3", "train.precision=fp16")
    assert trainer.scaler.is_enabled()
    scales, params = [], []
    weight = trainer.model.input_projection.weight
    weight.register_hook(lambda grad: grad * float("inf") if trainer.step == 1 else grad)

    def record(t: Trainer) -> None:
        scales.append(t.scaler.get_scale())
        params.append(weight.detach().clone())

    result = trainer.fit(on_step=record)
    assert result.skipped_steps == 1
    assert scales[1] == scales[0] / 2
    assert torch.equal(params[0], params[1])


def test_bf16_uses_no_grad_scaler_and_an_fp32_loss(tiny_features, tmp_path):
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.max_steps=1", "train.precision=bf16")
    assert not trainer.scaler.is_enabled()
    dtypes = []
    trainer.model.register_forward_hook(lambda m, i, output: dtypes.append(output.dtype))
    result = trainer.fit()
    assert dtypes == [torch.bfloat16] and len(result.losses) == 1
    from diffwave.diffusion import epsilon_loss
    assert epsilon_loss(torch.zeros(2, 3, dtype=torch.bfloat16), torch.ones(2, 3)).dtype == torch.float32


def test_run_folder_rules(tiny_features, tmp_path):
    with pytest.raises(TrainingError, match="--resume given, but .* holds no checkpoint"):
        prepare_run_dir(tmp_path / "empty", resume=True, overwrite=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not empty and holds no checkpoint"):
        prepare_run_dir(stray, resume=False, overwrite=False)
    (stray / "logs").mkdir()
    (stray / "logs" / "events.out").write_text("old run")
    assert prepare_run_dir(stray, resume=False, overwrite=True) is None
    assert (stray / "notes.txt").read_text() == "mine" and not (stray / "logs").exists()  # only run artefacts go


def test_resume_with_another_model_shape_is_refused(tiny_features, tmp_path):
    train(tiny("train.max_steps=3"), tiny_features, tmp_path / "run", device="cpu")
    with pytest.raises(CheckpointError, match="residual_channels"):
        train(tiny("train.max_steps=6", "model.residual_channels=16"), tiny_features, tmp_path / "run", device="cpu")
    with pytest.raises(CheckpointError, match="diffusion.prior"):  # the prior changes what the weights predict
        train(tiny("train.max_steps=6", "diffusion.prior=priorgrad"), tiny_features, tmp_path / "run", device="cpu")


def test_a_resumed_priorgrad_run_keeps_its_own_corpus_statistics(tiny_features, tmp_path):
    run = tmp_path / "run"
    train(tiny("train.max_steps=3", "diffusion.prior=priorgrad"), tiny_features, run, device="cpu")
    saved = load_checkpoint(latest_checkpoint(run))["config"]["diffusion"]
    assert saved["prior_energy_max"] > saved["prior_energy_min"] >= 0
    # Statistics from another corpus in the config: the resumed run keeps the ones it started with.
    other = tiny("train.max_steps=6", "diffusion.prior=priorgrad", "diffusion.prior_energy_min=0.5",
                 "diffusion.prior_energy_max=9.0")
    train(other, tiny_features, run, device="cpu")
    resumed = load_checkpoint(latest_checkpoint(run))["config"]["diffusion"]
    assert (resumed["prior_energy_min"], resumed["prior_energy_max"]) == (saved["prior_energy_min"],
                                                                          saved["prior_energy_max"])


def test_a_resume_that_asks_for_another_learning_rate_gets_it(tiny_features, tmp_path):
    run = tmp_path / "run"
    train(tiny("train.max_steps=3", "train.learning_rate=1e-3", "train.warmup_steps=10"), tiny_features, run,
          device="cpu")
    checkpoint = prepare_run_dir(run, resume=True, overwrite=False)
    trainer = Trainer.from_config(tiny("train.learning_rate=4e-4", "train.warmup_steps=10"), tiny_features, run,
                                  init_distributed("cpu"), resume_from=checkpoint)
    assert trainer.step == 3
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(4e-4 * 4 / 10)  # still warming up
    trainer.scheduler.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(4e-4 * 5 / 10)


def test_train_command_end_to_end(tiny_features, tmp_path):
    command = [sys.executable, "-m", "diffwave", "train", "--config", "tiny", "--data", str(tiny_features),
               "--out", str(tmp_path / "run"), "--max-steps", "2", *FAST]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("train: stopped at step 2, last loss ")
    again = subprocess.run([*command, "--resume", "--max-steps", "2"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "stopped at step 2" in again.stdout
    bad = subprocess.run([*command[:-len(FAST) - 2], "--max-steps", "3", "--out", str(tmp_path / "other"),
                          "--resume"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("diffwave: error: --resume given")


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_validation_loss(tiny_features, tmp_path):
    trainer = make_trainer(tiny_features, tmp_path / "run", "train.max_steps=300", "train.log_every=50",
                           "train.valid_every=1000", "train.sample_every=1000", "train.save_every=1000",
                           "train.ema_decay=0.99")
    before = trainer.validation_loss()
    trainer.fit()
    after = trainer.validation_loss()
    assert after < 0.6 * before, (before, after)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch MARKER",))


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_features, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"format_version": 1, "payload": _RunsCode()}, folder / "step_00000003.pt")
    (folder / "latest").write_text("step_00000003.pt")
    with pytest.raises(CheckpointError, match=r"step_00000003\.pt.*(posix|os)\.system"):
        train(tiny("train.max_steps=6"), tiny_features, tmp_path / "run", resume=True, device="cpu")
    assert not (tmp_path / "MARKER").exists()


def test_export_command_writes_loadable_ema_weights(tiny_features, tmp_path):
    train(tiny("train.max_steps=3"), tiny_features, tmp_path / "run", device="cpu")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000003.pt"
    command = [sys.executable, "-m", "diffwave", "export", str(checkpoint), str(tmp_path / "model.safetensors")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    weights, config = load_model_weights(tmp_path / "model.safetensors")
    ema = load_checkpoint(checkpoint)["ema"]
    assert weights.keys() == ema.keys() and all(torch.equal(weights[k], ema[k]) for k in ema)
    assert config["model"]["residual_channels"] == 8
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr


def test_sampler_reshuffles_per_epoch_with_disjoint_shards_and_resumes_mid_epoch():
    data = list(range(11))
    ranks = [ResumableSampler(data, DistributedContext(r, 2, r, torch.device("cpu")), seed=5) for r in (0, 1)]
    epochs = []
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_position(epoch, 0)
        shards = [list(sampler) for sampler in ranks]
        assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])
        epochs.append(shards)
    assert epochs[0] != epochs[1]
    ranks[0].set_position(1, 3)
    assert list(ranks[0]) == epochs[1][0][3:] and len(ranks[0]) == 2

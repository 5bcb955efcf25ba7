"""SIGTERM/SIGINT end training cleanly at a step boundary with a checkpoint; a full disk is one clear line.

Real signals to real processes (the train command, and torchrun with 2 gloo ranks), and a real full disk (a
small tmpfs, where this machine lets root mount one).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffwave.checkpoints import latest_checkpoint, load_checkpoint
from diffwave.config import load_config
from diffwave.training.distributed import init_distributed
from diffwave.training.run import train
from diffwave.training.setup import prepare_run_dir
from diffwave.training.trainer import Trainer

QUIET = ["train.log_every=1", "train.valid_every=100000", "train.sample_every=100000", "train.save_every=100000",
         "data.num_workers=0"]


def train_command(features: Path, run: Path, max_steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "diffwave", "train", "--config", "tiny", "--data", str(features), "--out", str(run),
            "--max-steps", str(max_steps), "--device", "cpu", *QUIET, *extra]


def wait_for_training(run: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run's first TensorBoard scalars exist (steps are being taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = list((run / "logs").glob("events.out.tfevents.*"))
        if events and events[0].stat().st_size > 200:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not start")


def stopped_step(run: Path) -> int:
    checkpoints = sorted((run / "checkpoints").glob("step_*.pt"))
    assert len(checkpoints) == 1, checkpoints  # the stop's own checkpoint and nothing else
    assert latest_checkpoint(run) == checkpoints[0]
    return load_checkpoint(checkpoints[0])["step"]


@pytest.mark.slow
def test_ctrl_c_ends_training_with_a_checkpoint_and_resume_is_exact(tiny_features, tmp_path):
    """SIGINT here; SIGTERM takes the same path (the torchrun test below sends it)."""
    signum, run = signal.SIGINT, tmp_path / "run"
    process = subprocess.Popen(train_command(tiny_features, run, 100_000, "data.num_workers=2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(run, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    step = stopped_step(run)
    assert 0 < step < 100_000
    assert f"stopped by {name} after step {step}" in stderr
    assert f"stopped at step {step} by {name}" in stdout

    resumed = subprocess.run(train_command(tiny_features, run, step + 3), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    train(load_config("tiny", [*QUIET, f"train.max_steps={step + 3}"]), tiny_features, tmp_path / "straight",
          device="cpu")
    final = [load_checkpoint(folder / "checkpoints" / f"step_{step + 3:08d}.pt") for folder in (run, tmp_path /
                                                                                                 "straight")]
    for key in ("model", "ema"):
        for param, value in final[0][key].items():
            assert torch.equal(value, final[1][key][param]), f"{key}.{param}"


def test_a_second_signal_during_the_save_does_not_corrupt_it(tiny_features, tmp_path):
    """SIGTERM after step 2 stops the run after step 3; a SIGINT sent while that checkpoint is being written
    is only logged, and the file is complete. The old handlers are back afterwards."""
    run = tmp_path / "run"
    config = load_config("tiny", [*QUIET, "train.max_steps=50"])
    trainer = Trainer.from_config(config, tiny_features, run, init_distributed("cpu"),
                                  resume_from=prepare_run_dir(run, resume=False, overwrite=False))
    save = trainer.save

    def save_interrupted():
        os.kill(os.getpid(), signal.SIGINT)  # arrives while this save runs
        return save()

    trainer.save = save_interrupted
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = trainer.fit(on_step=lambda t: t.step == 2 and os.kill(os.getpid(), signal.SIGTERM))
    assert result.stopped_by == "SIGTERM" and result.step == 3
    assert stopped_step(run) == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.slow
@pytest.mark.distributed
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tiny_features, tmp_path):
    """SIGTERM to rank 1 only (as a node-local preemption would): both ranks agree through the step's
    all-reduce, rank 0 writes the checkpoint, and torchrun exits 0."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *train_command(tiny_features, run, 100_000)[1:], "train.batch_size=4"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_training(run, launcher)
        workers = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        rank1 = next(pid for pid in workers if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes())
        os.kill(int(rank1), signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, stderr[-3000:]
    step = stopped_step(run)
    assert f"stopped by a stop signal sent to another rank after step {step}" in stderr
    assert f"stopped at step {step}" in stdout


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tiny_features, tmp_path):
    """A tiny checkpoint is about 5.4 MB (the step embedding MLP, EMA and Adam): on 8 MB the first save fits and
    the second cannot."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        run = disk / "run"
        result = subprocess.run(train_command(tiny_features, run, 3, "train.save_every=1"), capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("diffwave: error: could not write checkpoint step_00000002.pt in ")
        assert str(run / "checkpoints") in error and "MiB free" in error
        assert f"the last good checkpoint is still {run / 'checkpoints' / 'step_00000001.pt'}" in error
        assert latest_checkpoint(run) == run / "checkpoints" / "step_00000001.pt"  # loads, fully verified
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000001.pt"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)

"""Real torchrun with 2 CPU processes on gloo (RELIABILITY E): equal weights, 1-process equivalence, no hangs."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("ddp_worker.py")
SETTINGS = ["train.max_steps=4", "train.batch_size=4", "train.log_every=1", "train.valid_every=1",
            "train.sample_every=2", "train.num_samples=1", "train.save_every=2", "data.num_workers=0"]


def launch(processes: int, features: Path, tmp: Path, name: str, fail_at: int = -1, timeout: int = 240):
    out = tmp / name
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(WORKER), str(features), str(out / "run"), str(out), str(fail_at), *SETTINGS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return result, out


def test_two_processes_match_one_with_the_same_global_batch(tiny_features, tmp_path):
    """11 training utterances: not divisible by 2 ranks, and validation runs on rank 0 at every step."""
    result, out = launch(2, tiny_features, tmp_path, "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][name]), name
    assert len(rank0["losses"]) == 4 and rank0["losses"] == rank1["losses"]
    assert sorted(p.name for p in (out / "run" / "checkpoints").glob("step_*.pt")) == [
        "step_00000002.pt", "step_00000004.pt"]
    # only rank 0 writes TensorBoard: one event file (a second rank's writer would add its own)
    assert len(list((out / "run" / "logs").rglob("events.out.tfevents.*"))) == 1

    single, single_out = launch(1, tiny_features, tmp_path, "single")
    assert single.returncode == 0, single.stderr[-3000:]
    alone = torch.load(single_out / "rank0.pt", weights_only=True)
    assert rank0["losses"] == pytest.approx(alone["losses"], rel=1e-4)
    for name, value in alone["model"].items():
        assert torch.allclose(value, rank0["model"][name], atol=1e-5), name


def test_a_failing_rank_ends_every_process(tiny_features, tmp_path):
    result, out = launch(2, tiny_features, tmp_path, "failing", fail_at=3)
    assert result.returncode != 0
    assert "injected failure on rank 1 at step 3" in result.stderr
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert leftover.returncode == 1, f"orphan processes: {leftover.stdout}"  # pgrep: 1 = nothing matched
    assert not list(out.glob("rank*.pt"))
    checkpoints = sorted(p.name for p in (out / "run" / "checkpoints").glob("*"))
    assert checkpoints in ([], ["latest", "step_00000002.pt"])  # never a partial file


def torchrun_train(features: Path, run: Path, max_steps: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffwave",
               "train", "--config", "tiny", "--data", str(features), "--out", str(run), "--max-steps", str(max_steps),
               "--device", "cpu", *SETTINGS[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=240)


def test_resume_under_ddp_is_bit_identical(tiny_features, tmp_path):
    """RELIABILITY 29: 2 ranks, 2 steps, a new torchrun resumes to 4 == 2 ranks straight to 4 (the real CLI)."""
    from diffwave.checkpoints import load_checkpoint

    for run, stops in (("straight", (4,)), ("resumed", (2, 4))):
        for max_steps in stops:
            result = torchrun_train(tiny_features, tmp_path / run, max_steps)
            assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr
    straight, resumed = (load_checkpoint(tmp_path / run / "checkpoints" / "step_00000004.pt")
                         for run in ("straight", "resumed"))
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name}"
    assert straight["step"] == resumed["step"] == 4

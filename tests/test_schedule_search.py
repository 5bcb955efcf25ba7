"""`diffwave tune-schedule`: the geometric grid, the objective, the search on a vocoder whose error is a known
function of its schedule, and the command end to end on a tiny model (its output vocodes with the found schedule
by default, with the same weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from diffwave.checkpoints import export_safetensors, load_model_weights
from diffwave.cli import main
from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule, fast_schedule
from diffwave.diffusion.reverse_plans import starting_at
from diffwave.errors import ScheduleError
from diffwave.evaluation.schedule_search import PERFECT, geometric_betas, grid, objective, search
from diffwave.inference import Vocoder

pytest.importorskip("pesq")
pytest.importorskip("pystoi")

TINY = load_config("tiny")
SCHEDULE = NoiseSchedule.from_config(TINY.diffusion)


def test_geometric_betas_match_numpy_geomspace():
    assert geometric_betas(5, 1e-4, 0.5) == pytest.approx(np.geomspace(1e-4, 0.5, 5).tolist(), rel=1e-12)
    assert geometric_betas(1, 1e-4, 0.5) == (0.5,)


def test_grid_keeps_only_schedules_the_training_range_takes():
    found = grid(SCHEDULE, [3, 6], beta_min=(1e-4, 1e-3), beta_max=(0.3, 0.99))
    lowest = SCHEDULE.alpha_bars[-1].item()
    for betas in found:
        assert np.prod([1 - beta for beta in betas]) >= lowest  # noisiest state inside [abar_T-1, abar_0]
        fast_schedule(SCHEDULE, list(betas))
    # three steps up to 0.99 fall below abar_{T-1} (about 0.28 here): refused by fast_schedule, so left out
    too_noisy = geometric_betas(3, 1e-4, 0.99)
    with pytest.raises(ScheduleError):
        fast_schedule(SCHEDULE, list(too_noisy))
    assert too_noisy not in found
    assert geometric_betas(6, 1e-3, 0.3) in found and len(found) == len(set(found))


def test_composite_is_the_mean_gap_to_perfect_relative_to_the_start():
    start = {"log_mel_l1": 0.5, "mr_stft": 2.0, "pesq_wb": 2.5, "stoi": 0.9}
    better = {"log_mel_l1": 0.25, "mr_stft": 2.0, "pesq_wb": 3.5, "stoi": 0.8}
    # gaps: 0.25/0.5, 2/2, (4.5-3.5)/(4.5-2.5), 0.2/0.1 -> mean of 0.5, 1, 0.5, 2
    assert objective("composite", start)(better) == pytest.approx((0.5 + 1 + 0.5 + 2) / 4)
    assert objective("composite", start)(start) == pytest.approx(1.0)
    assert objective("pesq_wb", start)(better) < objective("pesq_wb", start)(start)
    assert objective("log_mel_l1", start)(better) < objective("log_mel_l1", start)(start)
    assert set(PERFECT) == {"log_mel_l1", "mr_stft", "pesq_wb", "stoi"}


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """The command in process (exit code, stdout + stderr): argparse's refusals exit with 2."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


class ScheduleSensitiveVocoder:
    """Returns the reference plus noise whose level grows with |log eta_1 - log best_eta|: the search must find
    best_eta. Its run depends on eta_1 only, like a Griffin-Lim start refined by the last state."""

    def __init__(self, best_eta: float) -> None:
        self.config, self.sample_rate, self.device = TINY, TINY.audio.sample_rate, torch.device("cpu")
        self.best_eta, self.calls = best_eta, 0

    def mel(self, audio: Tensor, sample_rate: int) -> Tensor:
        return audio  # the "mel" carries the reference itself

    def plan(self, sampler=None, steps=None, schedule=None, **sampling):
        return starting_at(fast_schedule(SCHEDULE, list(schedule)), 0)  # K = 1: state 0 only

    def vocode(self, mel: Tensor, *, generator=None, schedule=None, **sampling) -> Tensor:
        self.calls += 1
        level = 0.02 * abs(math.log(schedule[0] / self.best_eta))
        noise = torch.randn(mel.shape, generator=generator, dtype=mel.dtype)
        return mel + level * noise


def _clips() -> dict[str, Tensor]:
    time = torch.arange(int(0.6 * TINY.audio.sample_rate)) / TINY.audio.sample_rate
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * time)
    return {f"tone{f0}": 0.3 * envelope * torch.sin(2 * math.pi * f0 * time) for f0 in (180, 240)}


def test_the_grid_finds_the_best_first_beta_and_dedupes_equal_runs():
    vocoder = ScheduleSensitiveVocoder(best_eta=1e-3)
    start = TINY.diffusion.fast_schedule
    found = search(vocoder, _clips(), SCHEDULE, start, [6], objective_name="log_mel_l1", refine_rounds=0)
    assert found[0].betas[0] == pytest.approx(1e-3) and found[0].origin == "grid"
    assert found[0].score < next(c.score for c in found if c.origin == "start")
    assert [c.score for c in found] == sorted(c.score for c in found)
    # the runs depend on eta_1 only: one candidate per distinct first beta, each vocoded once per clip
    first_betas = {round(c.betas[0], 12) for c in found}
    assert len(found) == len(first_betas) and vocoder.calls == 2 * len(found)


def test_refinement_moves_off_the_grid_when_that_is_better():
    vocoder = ScheduleSensitiveVocoder(best_eta=1.7e-3)  # between the grid's 1e-3 and 3e-3; 2e-3 is closer
    found = search(vocoder, _clips(), SCHEDULE, TINY.diffusion.fast_schedule, [6], objective_name="log_mel_l1",
                   refine_rounds=2)
    assert found[0].origin == "refine" and found[0].betas[0] == pytest.approx(2e-3)
    grid_only = search(ScheduleSensitiveVocoder(1.7e-3), _clips(), SCHEDULE, TINY.diffusion.fast_schedule, [6],
                       objective_name="log_mel_l1", refine_rounds=0)
    assert found[0].score < grid_only[0].score


def test_tune_schedule_command_writes_a_model_that_vocodes_with_the_found_schedule(tiny_checkpoint, tiny_features,
                                                                                  tmp_path, capsys):
    out = tmp_path / "tuned.safetensors"
    code, text = run_cli(["tune-schedule", str(tiny_checkpoint), "--data", str(tiny_features), "-o", str(out),
                          "--clips", "1", "--seconds", "0.5", "--steps", "3", "--refine-rounds", "0"], capsys)
    assert code == 0, text
    assert "tune-schedule:" in text and out.is_file()
    tuned = Vocoder.from_checkpoint(out)
    betas = tuned.config.diffusion.fast_schedule
    assert len(betas) in (3, 6)  # a 3-step grid schedule, or the model's own 6 if none beat it
    assert f"[{', '.join(f'{beta:.4g}' for beta in betas)}]" in text
    expected = fast_schedule(SCHEDULE, betas)
    assert torch.equal(tuned.plan().alpha_bars, expected.alpha_bars)  # vocode's default plan is the tuned one
    tuned_weights, _ = load_model_weights(out)
    original, _ = load_model_weights(tiny_checkpoint)
    assert tuned_weights.keys() == original.keys()
    assert all(torch.equal(tuned_weights[name], original[name]) for name in original)


def test_tune_schedule_refuses_what_it_cannot_tune(tiny_checkpoint, tiny_features, tmp_path, capsys):
    out = tmp_path / "tuned.safetensors"
    out.write_bytes(b"keep me")
    code, text = run_cli(["tune-schedule", str(tiny_checkpoint), "--data", str(tiny_features), "-o", str(out)], capsys)
    assert code != 0 and "already exists" in text and out.read_bytes() == b"keep me"
    code, text = run_cli(["tune-schedule", str(tiny_checkpoint), "--data", str(tiny_features), "-o",
                          str(tmp_path / "missing" / "x.safetensors")], capsys)
    assert code != 0 and "does not exist" in text and "Traceback" not in text
    code, text = run_cli(["tune-schedule", str(tiny_checkpoint), "--data", str(tiny_features), "-o",
                          str(tmp_path / "y.safetensors"), "--steps", "0,3"], capsys)
    assert code != 0 and "step counts" in text
    student = tmp_path / "student.safetensors"
    export_safetensors(tiny_checkpoint, student, changes={"model": {"prediction": "consistency"}})
    code, text = run_cli(["tune-schedule", str(student), "--data", str(tiny_features), "-o",
                          str(tmp_path / "z.safetensors")], capsys)
    assert code != 0 and "consistency model samples with its own steps" in text and "Traceback" not in text

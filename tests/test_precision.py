"""The one precision policy: dtype names, training's "auto", and inference's measured "auto" (fake timers drive
both branches), cached per process."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

from diffwave import precision
from diffwave.errors import DiffwaveError
from diffwave.model.cpu_kernels import LayerWorkload
from diffwave.precision import DTYPES, PRECISIONS, calibrate, resolve_dtype, training_precision

MACHINE_RUNNING_THREADS = precision.running_threads  # the real one, which the autouse fixture replaces


class CountingWorkload:
    def __init__(self, key: str) -> None:
        self.key, self.calls = key, []

    def __call__(self, dtype: torch.dtype) -> None:
        self.calls.append(dtype)


def fake_timer(fp32_seconds: float, bf16_seconds: float):
    """A clock that advances by the given duration over each timed call: calibrate reads it before and after
    each call, fp32 and bf16 alternating."""
    durations = itertools.cycle([fp32_seconds, bf16_seconds])
    now, reads = [0.0], itertools.count()

    def timer() -> float:
        if next(reads) % 2:
            now[0] += next(durations)
        return now[0]
    return timer


@pytest.fixture(autouse=True)
def fresh_calibrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process on a quiet machine (the suite's own load must not decide what these tests see)."""
    monkeypatch.setattr(precision, "_calibrations", {})
    monkeypatch.setattr(precision, "_provenance", {})
    monkeypatch.setattr(precision, "load_average", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(precision, "running_threads", lambda: 1)


def test_names_and_explicit_dtypes() -> None:
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) is torch.float32
    for name, dtype in DTYPES.items():
        if name != "fp16":
            assert resolve_dtype(name, cpu) is dtype and resolve_dtype(dtype, cpu) is dtype
    with pytest.raises(DiffwaveError, match="needs a CUDA device"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(DiffwaveError, match="one of fp32, bf16, fp16"):
        resolve_dtype("fp8", cpu)


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [(2e-3, 1e-3, torch.bfloat16),  # measured faster
                                                         (1e-3, 2e-3, torch.float32),  # slower (emulated)
                                                         (1e-3, 0.95e-3, torch.float32)])  # within the margin
def test_auto_picks_bf16_only_where_measured_faster_and_logs_both_timings(
        fp32: float, bf16: float, expected: torch.dtype, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(precision, "clock", fake_timer(fp32, bf16))
    workload = CountingWorkload("shapes")
    with caplog.at_level("INFO", logger="diffwave.precision"):
        assert resolve_dtype("auto", torch.device("cpu"), workload=workload) is expected
    assert workload.calls == [torch.float32, torch.bfloat16] * (1 + precision.CALIBRATION_REPEATS)
    line, = (r.message for r in caplog.records if "precision auto -> " in r.message)
    assert line.startswith(f"precision auto -> {'bf16' if expected is torch.bfloat16 else 'fp32'}")
    assert f"fp32 {fp32 * 1e3:.2f} ms, bf16 {bf16 * 1e3:.2f} ms" in line


def test_calibration_runs_once_per_process_and_shape() -> None:
    cpu = torch.device("cpu")
    first, same, other = CountingWorkload("a"), CountingWorkload("a"), CountingWorkload("b")
    timings = calibrate(first, cpu, fake_timer(2e-3, 1e-3))
    assert timings == {torch.float32: pytest.approx(2e-3), torch.bfloat16: pytest.approx(1e-3)}
    assert calibrate(same, cpu, fake_timer(1.0, 1.0)) is timings and same.calls == []
    calibrate(other, cpu, fake_timer(1.0, 1.0))
    assert len(other.calls) == 2 * (1 + precision.CALIBRATION_REPEATS)


def test_auto_is_fp32_off_the_cpu_and_without_shapes() -> None:
    assert precision.auto_dtype(torch.device("cuda"), CountingWorkload("x"))[0] is torch.float32
    assert precision.auto_dtype(torch.device("cpu"), None)[0] is torch.float32


def test_the_layer_workload_runs_both_engines_in_a_few_milliseconds() -> None:
    timings = calibrate(LayerWorkload(16, n_mels=8), torch.device("cpu"))
    assert set(timings) == {torch.float32, torch.bfloat16}
    assert all(0 < seconds < 0.5 for seconds in timings.values())


def test_training_auto_is_fp32_on_the_cpu_and_names_pass_through() -> None:
    cpu = torch.device("cpu")
    assert training_precision("auto", cpu) == "fp32"
    assert [training_precision(name, cpu) for name in DTYPES] == list(DTYPES)


def test_a_cache_file_keeps_the_calibration_for_later_processes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With DIFFWAVE_PRECISION_CACHE, a new process (a fresh per-process cache) reuses the file's timings without
    measuring; other shapes are measured and added; an unreadable file is measured over, not fatal."""
    cache = tmp_path / "cache" / "precision.json"
    monkeypatch.setenv(precision.CACHE_ENV, str(cache))
    cpu = torch.device("cpu")
    first = calibrate(CountingWorkload("a"), cpu, fake_timer(2e-3, 1e-3))
    assert cache.is_file()
    monkeypatch.setattr(precision, "_calibrations", {})  # a later process
    again = CountingWorkload("a")
    assert calibrate(again, cpu, fake_timer(1.0, 1.0)) == first and again.calls == []
    other = CountingWorkload("b")
    calibrate(other, cpu, fake_timer(5e-3, 1e-3))
    assert len(other.calls) == 2 * (1 + precision.CALIBRATION_REPEATS) and len(json.loads(cache.read_text())) == 2
    cache.write_text("{not json")
    monkeypatch.setattr(precision, "_calibrations", {})
    measured = CountingWorkload("a")
    assert calibrate(measured, cpu, fake_timer(3e-3, 1e-3))[torch.float32] == pytest.approx(3e-3)
    assert measured.calls and len(json.loads(cache.read_text())) == 1  # rewritten from this measurement


def test_by_default_the_cache_is_the_users_and_off_keeps_none(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variable the file lies in the user's cache folder, so that every process on a machine makes
    the first one's choice; "off" measures in every process and writes nothing."""
    monkeypatch.delenv(precision.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calibrate(CountingWorkload("a"), torch.device("cpu"), fake_timer(2e-3, 1e-3))
    assert precision.cache_path() == tmp_path / "xdg" / "diffwave" / "precision.json"
    assert list(json.loads(precision.cache_path().read_text()).values()) == [{"fp32": 2e-3, "bf16": 1e-3}]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert precision.cache_path() == tmp_path / "home" / ".cache" / "diffwave" / "precision.json"
    for off in ("off", ""):
        monkeypatch.setenv(precision.CACHE_ENV, off)
        monkeypatch.setattr(precision, "_calibrations", {})
        monkeypatch.chdir(tmp_path)
        measured = CountingWorkload("a")
        calibrate(measured, torch.device("cpu"), fake_timer(3e-3, 1e-3))
        assert precision.cache_path() is None and measured.calls
        assert sorted(p.name for p in tmp_path.iterdir()) == ["xdg"]


def test_a_measurement_made_on_a_busy_machine_is_used_but_not_kept(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside other work a measurement can be far off; kept, it would decide every later process. Other runnable
    work beyond the CPUs this process leaves free makes the machine busy."""
    cache = tmp_path / "precision.json"
    monkeypatch.setenv(precision.CACHE_ENV, str(cache))
    cpus = len(os.sched_getaffinity(0))
    free = max(0, cpus - torch.get_num_threads())
    monkeypatch.setattr(precision, "load_average", lambda: (free + 1.5, 0.0, 0.0))
    assert precision.machine_busy() == f"load {free + 1.5:.2f} on {cpus} CPUs"
    dtype, why = precision.auto_dtype(torch.device("cpu"), CountingWorkload("a"), fake_timer(2e-3, 1e-3))
    assert dtype is torch.bfloat16 and "machine was busy" in why and not cache.exists()
    monkeypatch.setattr(precision, "load_average", lambda: (free + 0.25, 0.0, 0.0))
    assert precision.machine_busy() is None
    monkeypatch.setattr(precision, "running_threads", lambda: torch.get_num_threads() + free + 2)  # a job just started
    assert precision.machine_busy() == f"load {free + 2:.2f} on {cpus} CPUs"
    monkeypatch.setattr(precision, "running_threads", lambda: torch.get_num_threads())  # only this process
    assert precision.machine_busy() is None
    monkeypatch.setattr(precision, "_calibrations", {})
    assert "kept in" in precision.auto_dtype(torch.device("cpu"), CountingWorkload("a"), fake_timer(2e-3, 1e-3))[1]
    monkeypatch.setattr(precision, "_calibrations", {})  # a later process reads it, and says so
    assert f"by an earlier process, read from {cache}" in precision.auto_dtype(
        torch.device("cpu"), CountingWorkload("a"), fake_timer(1.0, 1.0))[1]


def test_the_running_threads_are_read_from_the_system() -> None:
    assert MACHINE_RUNNING_THREADS() >= 1  # this one, at least (procs_running of /proc/stat)


def test_a_cache_that_cannot_be_written_does_not_stop_the_choice(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(precision.CACHE_ENV, str(blocker / "precision.json"))  # its folder is a file
    with caplog.at_level("WARNING", logger="diffwave.precision"):
        dtype, why = precision.auto_dtype(torch.device("cpu"), CountingWorkload("a"), fake_timer(2e-3, 1e-3))
    assert dtype is torch.bfloat16 and "measured faster" in why
    assert "not written" in caplog.text and str(blocker) in caplog.text

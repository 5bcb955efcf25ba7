"""The inference thread count: measured where the user set none (fake timers drive both branches), and never
left changed by the measurement itself."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from diffwave import precision, threads
from diffwave.cli import main
from diffwave.errors import DiffwaveError
from diffwave.model.cpu_kernels import LayerWorkload


@pytest.fixture(autouse=True)
def torch_threads(monkeypatch: pytest.MonkeyPatch):
    """Every test starts at 4 threads with OMP_NUM_THREADS unset, and torch's count is restored after it."""
    before = torch.get_num_threads()
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


class CountingWorkload:
    key = "layer"

    def __init__(self) -> None:
        self.calls: list[tuple[torch.dtype, int]] = []

    def __call__(self, dtype: torch.dtype) -> None:
        self.calls.append((dtype, torch.get_num_threads()))


def thread_timer(seconds: dict[int, float]):
    """A clock that advances, over each timed call, by the duration given for the thread count torch has then."""
    now, reads = [0.0], itertools.count()

    def timer() -> float:
        if next(reads) % 2:
            now[0] += seconds[torch.get_num_threads()]
        return now[0]
    return timer


def test_the_counts_tried_are_all_threads_and_halves_down_to_one() -> None:
    assert threads.thread_counts(16) == [16, 8, 4, 2, 1]
    assert threads.thread_counts(6) == [6, 3, 1]
    assert threads.thread_counts(1) == [1]


@pytest.mark.parametrize(("seconds", "expected"), [({4: 1e-3, 2: 2e-3, 1: 4e-3}, 4),  # idle: all cores
                                                   ({4: 0.4, 2: 0.1, 1: 0.02}, 1),  # busy cores: one thread
                                                   ({4: 0.4, 2: 0.01, 1: 0.02}, 2)])
def test_the_fastest_count_is_measured_in_fp32_and_torch_is_left_as_it_was(seconds: dict[int, float],
                                                                         expected: int) -> None:
    workload = CountingWorkload()
    count, measured = threads.measured_threads(workload, thread_timer(seconds))
    assert count == expected and measured == pytest.approx(seconds)
    assert {dtype for dtype, _ in workload.calls} == {torch.float32}
    assert sorted({n for _, n in workload.calls}) == [1, 2, 4]
    assert len(workload.calls) == 3 * (1 + precision.CALIBRATION_REPEATS)
    assert torch.get_num_threads() == 4


def test_auto_sets_the_measured_count_and_logs_every_timing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="diffwave.threads"):
        assert threads.choose_threads("auto", CountingWorkload(), thread_timer({4: 0.4, 2: 0.1, 1: 0.02})) == 1
    assert torch.get_num_threads() == 1
    assert "threads auto -> 1" in caplog.text and "4 threads 400.00 ms" in caplog.text
    assert "1 thread 20.00 ms" in caplog.text


def test_auto_keeps_the_users_omp_num_threads_and_a_count_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """With OMP_NUM_THREADS set, auto changes nothing (torch read it at start; here torch was set to 4 after)."""
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    workload = CountingWorkload()
    assert threads.choose_threads("auto", workload) == 4 and torch.get_num_threads() == 4 and workload.calls == []
    assert threads.choose_threads("2", workload) == 2 and torch.get_num_threads() == 2 and workload.calls == []
    for bad in ("0", "-1", "two", "\u00b2"):
        with pytest.raises(DiffwaveError, match=f"--threads must be auto or a count of at least 1, got {bad}"):
            threads.choose_threads(bad, workload)


def test_auto_on_the_real_clock_times_a_real_layer_and_keeps_a_count_it_tried() -> None:
    """The engines' own layer, timed for real (4 channels: milliseconds): whatever the load, the choice is one of
    the counts tried, and torch runs at it."""
    count = threads.choose_threads("auto", LayerWorkload(4))
    assert count in threads.thread_counts(4) and torch.get_num_threads() == count


def test_the_cli_refuses_a_bad_thread_count_in_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert main(["vocode", str(tmp_path / "missing.npy"), "-o", str(tmp_path / "out"), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads must be auto or a count of at least 1, got 0" in err and "Traceback" not in err

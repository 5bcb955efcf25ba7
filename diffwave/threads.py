"""How many CPU threads inference uses: measured, so that a process beside other work does not oversubscribe.

PyTorch starts one thread per core, and each operation of the CPU engines waits for all of its threads. When
another process keeps some of the cores busy, a thread that shares a core with it waits for a time slice at
every operation, and the fp32 tiles run thousands of operations per second of audio: fewer threads are then
much faster (README, Measured speed). `choose_threads("auto")` keeps OMP_NUM_THREADS where the user set it;
otherwise it times one residual layer (`model.cpu_kernels.LayerWorkload`) at torch's thread count and at halves
of it, down to 1, and keeps the fastest. The CLI's inference commands call it before anything else is measured
(`precision`'s calibration then times the chosen count); the Python API leaves torch's setting alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

from diffwave.errors import DiffwaveError
from diffwave.precision import Workload, best_seconds

logger = logging.getLogger("diffwave.threads")

THREADS_ENV = "OMP_NUM_THREADS"  # the user's own setting, which "auto" keeps
clock = time.perf_counter  # what `measured_threads` reads (tests give it a fake one)


def thread_counts(threads: int) -> list[int]:
    """The counts `measured_threads` tries: `threads` and its halves down to 1."""
    counts = [threads]
    while counts[-1] > 1:
        counts.append(counts[-1] // 2)
    return counts


def measured_threads(workload: Workload, timer: Callable[[], float] | None = None) -> tuple[int, dict[int, float]]:
    """The thread count of `thread_counts` at which one fp32 `workload` call ran fastest (timed as `precision`
    times the precisions: `best_seconds`), with every count's seconds. torch's thread count is left as it was."""
    current = torch.get_num_threads()
    try:
        best = best_seconds(thread_counts(current), lambda threads: workload(torch.float32), timer or clock,
                            select=torch.set_num_threads)
    finally:
        torch.set_num_threads(current)
    return min(best, key=lambda threads: (best[threads], -threads)), best


def choose_threads(threads: str | int, workload: Workload, timer: Callable[[], float] | None = None) -> int:
    """Sets torch's CPU thread count for `threads`, `--threads`' value: a count, or "auto" (OMP_NUM_THREADS where
    set, else `measured_threads`); logs the choice and why. Returns the count."""
    if threads != "auto":
        try:
            count = int(threads)
        except ValueError:
            count = 0
        if count < 1:
            raise DiffwaveError(f"--threads must be auto or a count of at least 1, got {threads}")
        logger.info("threads %d (--threads)", count)
        torch.set_num_threads(count)
        return count
    if os.environ.get(THREADS_ENV):
        logger.info("threads auto -> %d (%s is set)", torch.get_num_threads(), THREADS_ENV)
        return torch.get_num_threads()
    count, seconds = measured_threads(workload, timer)
    timings = ", ".join(f"{n} {'thread' if n == 1 else 'threads'} {s * 1e3:.2f} ms" for n, s in seconds.items())
    logger.info("threads auto -> %d (one residual layer in fp32: %s; --threads N or %s=N sets it)", count, timings,
                THREADS_ENV)
    torch.set_num_threads(count)
    return count

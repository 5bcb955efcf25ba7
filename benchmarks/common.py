"""What the benchmark scripts share: device synchronisation, the measured matmul peak they compare with, and
child processes that fail fast."""

from __future__ import annotations

import subprocess
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The best of several square matmuls of `size`: what this device and thread count can do at best."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def run_child(command: list[str], what: str, **kwargs) -> str:
    """Run a benchmark's child process and return its stdout; if it dies, stop at once with its exit code and
    the last line of its error output (a traceback's last line is the error), not a bare CalledProcessError."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise SystemExit(f"{what} failed (exit code {result.returncode}): {lines[-1] if lines else 'no error output'}")
    return result.stdout

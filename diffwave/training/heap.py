"""A training process keeps the memory it frees, rather than give it back to the system at every step.

glibc serves blocks above a threshold (at most 32 MiB, raised as large blocks are freed) with their own mappings
and returns the top of its heap when it is freed: a training step allocates and frees the same gigabytes of
activations and gradients each time, and the next step faults them in again page by page, the kernel zeroing
each one. A run's resident memory is its per-step peak anyway, so keeping it costs nothing that the first step
did not already take (README, Measured speed, has the figures).
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger("diffwave.train")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 2**31 - 1  # bytes: blocks below this come from the heap, whose top is never returned


def keep_freed_memory() -> bool:
    """On glibc, every block below `KEEP_BELOW` from the heap and no trimming of it; elsewhere nothing. Returns
    whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc (musl has no such thresholds)
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
    logger.debug("keep freed memory in the process (glibc mallopt): %s", "applied" if applied else "refused")
    return applied

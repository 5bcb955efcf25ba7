"""SIGTERM and SIGINT during training: finish the step, save, stop cleanly.

Clusters send SIGTERM some seconds before they kill a job, and people press Ctrl-C. Either one is only
remembered here; the trainer acts on it between steps (all ranks agree through the step's all-reduce), so a
signal never interrupts a step or a checkpoint being written, and a second signal during the save does
not either.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger("diffwave.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first stop signal received, by name (None until one arrives)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = name
            logger.warning("%s received: finishing this step, then saving a checkpoint and stopping", name)
        else:
            logger.warning("%s received again: the checkpoint is being written; stopping when it is complete", name)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Route SIGTERM and SIGINT to a StopRequest while the block runs; the old handlers come back after.

    Outside the main thread (where Python cannot install handlers) the request simply never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.signal(signum, request) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: a Ctrl-C or a group-wide SIGTERM must not kill the workers mid-epoch; the
    main process stops them when it is done."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

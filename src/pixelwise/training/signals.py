"""Ctrl-C and SIGTERM during training: finish the step, commit a checkpoint, then stop."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader

__all__ = ["StopFlag", "TrainingInterrupted", "batches", "stop_on_signals"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training after a resumable checkpoint was saved.

    ``str(err)`` is the one-line message (with the ``--resume`` command); ``signum`` the signal.
    """

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


@dataclass
class StopFlag:
    """Set by SIGINT / SIGTERM: the loop saves and stops at the next step boundary."""

    signum: int = 0
    at: float = 0.0
    armed: bool = False  # False until the training loop runs: a signal stops at once

    @property
    def requested(self) -> bool:
        return self.signum != 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turn the first SIGINT/SIGTERM into a request to stop cleanly; a second Ctrl-C more than
    two seconds later raises KeyboardInterrupt at once (the previous commit stays). Outside
    the main thread signals cannot be caught: nothing changes there."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if not flag.armed:  # nothing trained yet: nothing to save
            raise KeyboardInterrupt("interrupted before training started; nothing was saved")
        if not flag.signum:
            flag.signum, flag.at = signum, now
        elif now - flag.at > 2.0:  # a repeat within 2 s is the same request (torchrun relays it)
            raise KeyboardInterrupt("interrupted twice; the last committed checkpoint is kept")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def batches(loader: DataLoader, stop: StopFlag) -> Iterator[Any]:
    """Iterate ``loader``; if its worker processes died because of a Ctrl-C, just end."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if stop.requested:
                return
            raise
        yield batch

"""Progress for the commands: tqdm bars on a terminal; elsewhere (a log file, a pipe, CI) one
plain line per finished phase, ``epoch 3/10: 120 batch in 14.2 s (8.5 batch/s)``, and never a
carriage return."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

_started = [time.perf_counter()]  # when the command started: ``--budget`` counts from here


def mark_start() -> None:
    """The command starts now (:func:`pixelwise.cli.main` calls it first)."""
    _started[0] = time.perf_counter()


def seconds_since_start() -> float:
    return time.perf_counter() - _started[0]


__all__ = ["LineBar", "iter_progress", "log", "progress_factory"]


class LineBar:
    """A progress bar with tqdm's interface (the part the library uses) that prints one line when
    its phase ends: nothing while it runs, nothing for a phase shorter than ``delay`` seconds,
    and nothing for a phase cut short (an error or an interruption says that itself)."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        delay: float = 0.0,
        file: TextIO | None = None,
        **_tqdm_options: Any,
    ) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.delay, self.file = delay, file
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def line(self, elapsed: float) -> str:
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        shown = f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"
        text = f"{self.desc}: {self.n} {self.unit} in {elapsed:.1f} s ({shown} {self.unit}/s)"
        if self.postfix:
            text += ", " + ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        return text

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = time.perf_counter() - self.start
        if elapsed < self.delay or (self.total is not None and self.n < self.total):
            return
        print(self.line(elapsed), file=self.file or sys.stderr, flush=True)


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_factory(quiet: bool) -> Callable[..., Any] | None:
    """``progress(total=, desc=, unit=, ...)`` bars for the library: None with ``--quiet``."""
    if quiet:
        return None
    if not _on_terminal():
        return lambda **kwargs: LineBar(file=sys.stderr, **kwargs)
    from tqdm import tqdm

    return lambda **kwargs: tqdm(dynamic_ncols=True, file=sys.stderr, leave=False, **kwargs)


def iter_progress(quiet: bool, desc: str, unit: str) -> Callable[[Iterable], Iterable] | None:
    """``progress(items) -> items`` with a bar (what the data functions take)."""
    if quiet:
        return None
    if not _on_terminal():
        return lambda items: LineBar(items, desc=desc, unit=unit, file=sys.stderr)
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit=unit, file=sys.stderr, leave=False)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

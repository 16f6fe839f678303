"""``--budget``: a wall-clock promise. Training stops in time for its last validation and
checkpoint to finish inside the budget, however the machine's speed drifts.

The loop asks :meth:`Budget.must_stop` at every optimizer-step boundary: it answers yes when the
time left is less than what the rest needs, that is the validation (measured on the first
validation image before training, then on every real validation, whichever is slower) plus a
checkpoint and a step (measured as they happen), with a safety factor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Budget", "format_duration", "parse_duration"]

SAFETY = 1.25  # the reserve is this many times the measured costs


def parse_duration(text: str) -> float | None:
    """``"20m"``, ``"1.5h"``, ``"90s"``, ``"600"`` (seconds) -> seconds; ``"none"`` -> None."""
    from pixelwise.errors import ConfigError

    value = str(text).strip().lower()
    if value in ("none", "off", ""):
        return None
    units = {"s": 1, "m": 60, "min": 60, "h": 3600}
    number, unit = value, "s"
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            number, unit = value[: -len(suffix)], suffix
            break
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(
            f"--budget {text!r}: give a positive duration such as 20m, 1.5h, 90s or a number "
            "of seconds"
        )
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Budget:
    """The deadline of one training process and the measured costs of what must fit before it.

    ``seconds`` is the whole budget of the run; ``spent`` what earlier sessions of a resumed
    run used; ``started`` this process's start (``time.perf_counter()``).
    """

    seconds: float
    started: float
    spent: float = 0.0
    validation: float = 0.0  # seconds of one validation (estimate, then the slowest measured)
    checkpoint: float = 0.0  # seconds of one commit + publish
    step: float = 0.0  # seconds of one optimizer step (the slowest of the recent ones)
    stopped: bool = False
    _last: float = field(default=0.0, repr=False)
    _first: float = field(default=0.0, repr=False)  # the first training step of this process

    @property
    def deadline(self) -> float:
        return self.started + self.seconds - self.spent

    def left(self, now: float | None = None) -> float:
        return self.deadline - (time.perf_counter() if now is None else now)

    def reserve(self) -> float:
        """Seconds the end of the run needs: a validation, a checkpoint and one more step."""
        return SAFETY * (self.validation + self.checkpoint + self.step)

    def must_stop(self) -> bool:
        """Called at a step boundary: stop now so that the end fits in the budget?"""
        now = time.perf_counter()
        if not self._first:
            self._first = now
        if self._last:
            # a decaying maximum: a slow-down is believed at once, a speed-up slowly
            self.step = max(now - self._last, 0.9 * self.step)
        self._last = now
        if self.left(now) < self.reserve():
            self.stopped = True
        return self.stopped

    def fraction(self) -> float:
        """How far training is through the time it has (0 before the first step, 1 when only
        the reserve is left): the learning-rate schedule follows it, so that a budgeted run
        anneals to its end whatever its epochs turn out to be."""
        if not self._first:
            return 0.0
        span = self.deadline - self.reserve() - self._first
        return min(1.0, max(0.0, (time.perf_counter() - self._first) / max(span, 1e-6)))

    def pause(self) -> None:
        """Time outside the training steps (validation, checkpoint) is not a step."""
        self._last = 0.0

    def measured_validation(self, seconds: float) -> None:
        self.validation = max(self.validation, seconds)

    def measured_checkpoint(self, seconds: float) -> None:
        self.checkpoint = max(self.checkpoint, seconds)

    def postfix(self) -> str:
        return format_duration(self.left())

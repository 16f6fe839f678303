"""What keeps ``pixelwise serve`` standing under load: a bounded number of requests in the server,
a deadline per request, and one model worker that drops work nobody waits for any more.

- **Admission** (:meth:`ModelQueue.admit`): at most ``max_queue`` prediction requests are in the
  server at once (reading their upload, decoding, waiting for the model or running on it); one
  more is refused at once with :class:`Overloaded` (the app answers 503 + ``Retry-After``) before
  its body is read. Memory is therefore bounded by about ``max_queue`` uploads and decoded images.
- **Deadline**: each admitted request has ``timeout`` seconds from its arrival. A request whose
  deadline passes while it waits for the model is taken out of the queue (never run); one that is
  already on the model runs to the end (a forward pass cannot be interrupted) and its result is
  dropped. Its slot is freed only when the model is done with it, so the bound stays true. A
  queued request with less time left than the model's median time per image (at most half the
  timeout) gets its 503 when its turn comes, without running: work that would be thrown away
  does not delay the requests behind it.
- **One worker thread** runs the model, one job (or one batch) at a time: torch's own intra-op
  threads use the cores, and one model call at a time bounds the activations' memory.
- **Batching** (``batch > 1``): the worker takes up to ``batch`` queued images of the same size
  and runs them as one ``(N, C, H, W)`` call, waiting at most ``batch_wait`` seconds for more
  only while other admitted requests may still join. Off by default: on the CPUs measured it did
  not pay (docs/performance.md, "Serving under load").
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import statistics
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelwise.errors import ConfigError

__all__ = ["ModelQueue", "Overloaded", "Ticket", "check_limits", "rss_mb"]

RunOne = Callable[[np.ndarray], np.ndarray]
RunBatch = Callable[[list[np.ndarray]], list[np.ndarray]]


def check_limits(max_queue: int, timeout: float, batch: int, batch_wait_ms: float) -> None:
    """``ConfigError`` naming the ``pixelwise serve`` option when a limit is out of range."""
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ConfigError(f"--max-queue: must be a whole number >= 1, got {max_queue}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"--timeout: must be a positive number of seconds, got {timeout}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 256:
        raise ConfigError(f"--batch: must be a whole number in 1..256 (1: none), got {batch}")
    if not (0 <= batch_wait_ms <= 1000):
        raise ConfigError(f"--batch-wait-ms: must be in 0..1000 milliseconds, got {batch_wait_ms}")


def rss_mb() -> float | None:
    """This process's resident memory in MB (``VmRSS`` of ``/proc/self/status``; None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Overloaded(Exception):
    """The server is full (or the request ran out of time): answer 503 with ``retry_after``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(eq=False)
class Ticket:
    """One admitted request: its deadline and who still holds its slot (the request, and the
    worker while the job is queued or running)."""

    deadline: float
    holders: int = 1

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - time.monotonic()


@dataclass(eq=False)
class _Job:
    image: np.ndarray
    key: Hashable | None  # images with the same key may share a batch; None: alone
    ticket: Ticket
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class ModelQueue:
    """Admission, deadlines and the model worker of one served model (see the module doc).

    ``run_one(image)``: ``(H, W, C)`` uint8 -> ``(H, W)`` mask; ``run_batch(images)``: a list of
    same-size images -> their masks (used when ``batch > 1``)."""

    def __init__(
        self,
        run_one: RunOne,
        run_batch: RunBatch | None = None,
        *,
        max_queue: int = 16,
        timeout: float = 30.0,
        batch: int = 1,
        batch_wait_ms: float = 2.0,
    ) -> None:
        check_limits(max_queue, timeout, batch, batch_wait_ms)
        if batch > 1 and run_batch is None:
            raise ConfigError("--batch: this model has no batched prediction; use --batch 1")
        self.run_one, self.run_batch = run_one, run_batch
        self.max_queue, self.timeout = max_queue, timeout
        self.batch, self.batch_wait = batch, batch_wait_ms / 1000
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.in_server = 0  # admitted requests whose slot is held
        self.counts = collections.Counter()  # admitted, rejected, timed_out, served, failed, ...
        self._recent: collections.deque[float] = collections.deque(maxlen=16)  # s per image

    # -- admission -------------------------------------------------------------------------

    def admit(self) -> Ticket:
        """A slot for one request, or :class:`Overloaded` when ``max_queue`` are in already."""
        with self._cond:
            if self.in_server >= self.max_queue:
                self.counts["rejected"] += 1
                raise Overloaded(
                    f"the server is busy ({self.in_server} requests in it, the limit is "
                    f"{self.max_queue}: pixelwise serve --max-queue); retry later",
                    self.retry_after(),
                )
            self.in_server += 1
            self.counts["admitted"] += 1
            return Ticket(time.monotonic() + self.timeout)

    def release(self, ticket: Ticket) -> None:
        """Drop one holder of ``ticket``; the slot is free when nobody holds it."""
        with self._cond:
            self._release(ticket)

    def _release(self, ticket: Ticket) -> None:  # with self._cond held
        ticket.holders -= 1
        if ticket.holders == 0:
            self.in_server -= 1

    def service(self) -> float:
        """The median model time per image over the last 16 calls, in seconds (0: none yet)."""
        return statistics.median(self._recent) if self._recent else 0.0

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the expected time to drain the server, >= 1."""
        per_image = self.service() or 1.0
        return max(1, math.ceil(per_image * self.in_server / self.batch))

    def timed_out(self, dropped: Overloaded | None = None) -> Overloaded:
        """The 503 of a request whose deadline passed, or ``dropped``: the one the worker gave
        a request it would not run (counted here, once per request, whichever came first)."""
        with self._cond:
            self.counts["timed_out"] += 1
        return dropped or Overloaded(
            f"the request took longer than {self.timeout:g} s in the server "
            "(pixelwise serve --timeout); it was dropped, retry later",
            self.retry_after(),
        )

    # -- prediction ------------------------------------------------------------------------

    async def predict(self, ticket: Ticket, image: np.ndarray, key: Hashable | None) -> np.ndarray:
        """The mask of ``image`` ``(H, W, C)`` from the worker. Cancelled (the request's deadline
        passed): a job still queued is taken out at once; a running one is left to finish and
        its result dropped."""
        job = _Job(image, key if self.batch > 1 else None, ticket)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(
                    target=self._work, name="pixelwise-serve-model", daemon=True
                )
                self._thread.start()
            ticket.holders += 1
            self._queue.append(job)
            self._cond.notify_all()
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            self._withdraw(job)
            raise

    def _withdraw(self, job: _Job) -> None:
        with self._cond:
            if job in self._queue:  # never started: out of the queue, its slot freed now
                self._queue.remove(job)
                job.future.cancel()
                self._release(job.ticket)
                self.counts["dropped_queued"] += 1
            elif job.future.running():  # on the model: it finishes, the worker frees the slot
                self.counts["dropped_running"] += 1
            # else: taken by the worker but not started; it sees the cancel and frees the slot

    def _take(self) -> list[_Job] | None:
        """The next job and, when batching, the same-size jobs that join it (None: closed)."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            jobs = [self._queue.popleft()]
            if jobs[0].key is None:
                return jobs
            end = time.monotonic() + self.batch_wait
            while len(jobs) < self.batch:
                same = [j for j in self._queue if j.key == jobs[0].key][: self.batch - len(jobs)]
                for j in same:
                    self._queue.remove(j)
                jobs += same
                left = end - time.monotonic()
                # wait only while admitted requests that are not queued yet may still join
                if len(jobs) >= self.batch or left <= 0 or self.in_server <= len(jobs):
                    break
                self._cond.wait(left)
            return jobs

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            jobs = [j for j in taken if j.future.set_running_or_notify_cancel()]
            if len(jobs) < len(taken):  # cancelled between the queue and the model: never run
                with self._cond:
                    for j in taken:
                        if j.future.cancelled():
                            self._release(j.ticket)
                            self.counts["dropped_queued"] += 1
            jobs = self._drop_late(jobs)
            if jobs:
                self._run(jobs)

    def _drop_late(self, jobs: list[_Job]) -> list[_Job]:
        """``jobs`` less those that would miss their deadline: less time left than the model's
        median time per image (capped at half the timeout, so that a fresh request always runs
        and a few slow calls never stop the server). Those get their 503 now, never run."""
        limit = min(self.service(), self.timeout / 2)
        late = [j for j in jobs if j.ticket.remaining() < limit]
        if not late:
            return jobs
        with self._cond:
            self.counts["dropped_queued"] += len(late)
            for j in late:
                self._release(j.ticket)
        for j in late:
            j.future.set_exception(
                Overloaded(
                    f"the request would not finish within {self.timeout:g} s "
                    "(pixelwise serve --timeout); it was dropped before running, retry later",
                    self.retry_after(),
                )
            )
        return [j for j in jobs if j not in late]

    def _run(self, jobs: list[_Job]) -> None:
        start = time.monotonic()
        try:
            if len(jobs) == 1:
                masks = [self.run_one(jobs[0].image)]
            else:  # batch > 1: __init__ checked run_batch
                masks = self.run_batch([j.image for j in jobs])  # type: ignore[misc]
            error = None
        except Exception as err:  # handed to the request: a one-line 500
            masks, error = [], err
        seconds = (time.monotonic() - start) / len(jobs)
        with self._cond:
            self._recent.append(seconds)
            self.counts["batches"] += 1
            self.counts["images"] += len(jobs)
            self.counts["failed" if error else "served"] += len(jobs)
            for j in jobs:
                self._release(j.ticket)
        for i, j in enumerate(jobs):
            if error is not None:
                j.future.set_exception(error)
            else:
                j.future.set_result(masks[i])

    def close(self) -> None:
        """Stop the worker (queued jobs are left unanswered; the server is shutting down)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        """Queue depth, limits and counters (``GET /api/stats``)."""
        with self._cond:
            c = self.counts
            return {
                "in_server": self.in_server,
                "queued": len(self._queue),
                "max_queue": self.max_queue,
                "timeout_s": self.timeout,
                "batch": self.batch,
                **{k: c[k] for k in ("admitted", "rejected", "timed_out", "served", "failed")},
                "dropped_queued": c["dropped_queued"],
                "dropped_running": c["dropped_running"],
                "batches": c["batches"],
                "images": c["images"],
                "mean_batch": c["images"] / c["batches"] if c["batches"] else None,
                "ms_per_image": round(self.service() * 1000, 2) if self._recent else None,
                "rss_mb": rss_mb(),
            }

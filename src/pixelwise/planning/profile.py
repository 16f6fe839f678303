"""The device profile: how long a training step and an inference pass take *on this machine*,
measured, not assumed. The planner asks it for candidate configurations and fits the epochs to
the budget; tests give the planner a fake profile (CI has no GPU)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

__all__ = ["Candidate", "DeviceProfile", "MeasuredProfile", "ScaledProfile"]


@dataclass(frozen=True)
class Candidate:
    """One model and batch shape the planner considers."""

    model: str
    base_width: int
    depth: int
    crop: int
    batch: int


class DeviceProfile(Protocol):
    """What the planner needs to know of a device."""

    name: str  # "cpu (2 threads, no native bf16)", "cuda: NVIDIA H200"
    kind: str  # "cpu" or "cuda"
    workers: int  # data loader processes beside the network (0: data work adds to the step)

    def step_seconds(self, c: Candidate, channels: int, classes: int) -> float:
        """Seconds of one optimizer step (forward, backward, update) of ``c``."""
        ...

    def infer_seconds_per_megapixel(self, c: Candidate, channels: int, classes: int) -> float:
        """Seconds of inference per million input pixels (validation, prediction)."""
        ...


def _model(c: Candidate, channels: int, classes: int, device: torch.device) -> torch.nn.Module:
    from pixelwise.models import build

    kwargs = {"base_width": c.base_width, "depth": c.depth, "in_channels": channels}
    model = build(c.model, classes, **kwargs).to(device)
    return model.to(memory_format=torch.channels_last)


@dataclass
class MeasuredProfile:
    """Times real steps of each candidate on ``device`` (cached per candidate): one warm-up
    step, then the median of ``repeats`` steps, with the training loop's own settings
    (channels-last, AdamW, fp32 or the device's autocast)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    repeats: int = 2
    workers: int = 0
    _steps: dict = field(default_factory=dict, repr=False)
    _infer: dict = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return self.device.type

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda: {torch.cuda.get_device_name(self.device)}"
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'' if n == 1 else 's'})"

    def step_seconds(self, c: Candidate, channels: int, classes: int) -> float:
        key = (c, channels, classes)
        if key not in self._steps:
            self._steps[key] = self._time_steps(c, channels, classes)
        return self._steps[key]

    def _time_steps(self, c: Candidate, channels: int, classes: int) -> float:
        torch.manual_seed(0)
        model = _model(c, channels, classes, self.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(c.batch, channels, c.crop, c.crop, device=self.device)
        x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (c.batch, c.crop, c.crop), device=self.device)
        times = []
        for _ in range(1 + self.repeats):
            began = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - began)
        return float(sorted(times[1:])[len(times[1:]) // 2])

    def infer_seconds_per_megapixel(self, c: Candidate, channels: int, classes: int) -> float:
        key = (c.model, c.base_width, c.depth, channels, classes)
        if key not in self._infer:
            model = _model(c, channels, classes, self.device).eval()
            side = max(64, c.crop)
            x = torch.randn(1, channels, side, side, device=self.device)
            with torch.inference_mode():
                model(x)  # warm-up
                began = time.perf_counter()
                model(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            self._infer[key] = (time.perf_counter() - began) / (side * side / 1e6)
        return self._infer[key]


@dataclass
class ScaledProfile:
    """A profile from a formula (tests, and planning for another machine): seconds proportional
    to multiply-adds, ``seconds_per_gmac`` per giga multiply-add of a training step (forward +
    backward, about 3x the forward)."""

    name: str
    kind: str
    seconds_per_gmac: float
    workers: int = 0

    def _gmacs(self, c: Candidate, pixels: int, channels: int) -> float:
        # a same-padded U-Net: two 3x3 convs per level, widths doubling as resolution halves,
        # so each level costs about the same: ~ 2 * 9 * (w^2 + w^2) MACs per pixel per level
        w = c.base_width
        per_pixel = 9 * (channels * w + w * w) + sum(
            2 * 9 * 2 * (w * 2**d) ** 2 / 4**d for d in range(1, c.depth + 1)
        )
        return 2 * per_pixel * pixels / 1e9  # encoder + decoder

    def step_seconds(self, c: Candidate, channels: int, classes: int) -> float:
        return 3 * self._gmacs(c, c.batch * c.crop * c.crop, channels) * self.seconds_per_gmac

    def infer_seconds_per_megapixel(self, c: Candidate, channels: int, classes: int) -> float:
        return self._gmacs(c, 1_000_000, channels) * self.seconds_per_gmac


@dataclass
class CalibratedProfile:
    """Times one reference configuration (base width 16, depth 4, the candidate's batch of
    128 px crops: small shapes run far below a CPU's speed per multiply-add and would make
    every estimate pessimistic) and carries it to every candidate by their multiply-add ratio
    (:class:`ScaledProfile`'s count): three timed steps instead of a set per candidate, so
    that planning costs seconds of a short budget, not a minute. The budget absorbs the
    error of the ratio (the loop measures the real steps)."""

    measured: MeasuredProfile = field(default_factory=MeasuredProfile)
    reference: int = 16
    exact: set = field(default_factory=set)  # candidates timed themselves (the planner's pick)

    @property
    def kind(self) -> str:
        return self.measured.kind

    @property
    def workers(self) -> int:
        return self.measured.workers

    @property
    def name(self) -> str:
        return self.measured.name

    def _reference(self, c: Candidate) -> Candidate:
        return Candidate(c.model, self.reference, 4, 128, c.batch)

    def _ratio(self, c: Candidate, ref: Candidate, channels: int) -> float:
        count = ScaledProfile("count", self.kind, 1.0)
        return count.step_seconds(c, channels, 2) / count.step_seconds(ref, channels, 2)

    def _time(self, what: str, c: Candidate, channels: int, classes: int) -> float:
        """``what`` ("step_seconds", "infer_seconds_per_megapixel") of ``c``: measured for
        the exact candidates, else the reference's carried over by the multiply-add ratio."""
        measure = getattr(self.measured, what)
        if c in self.exact:
            return measure(c, channels, classes)
        ref = self._reference(c)
        return measure(ref, channels, classes) * self._ratio(c, ref, channels)

    def step_seconds(self, c: Candidate, channels: int, classes: int) -> float:
        return self._time("step_seconds", c, channels, classes)

    def infer_seconds_per_megapixel(self, c: Candidate, channels: int, classes: int) -> float:
        return self._time("infer_seconds_per_megapixel", c, channels, classes)

"""The data side of a training step, measured: decoding is cached after the first epoch, but
every step still crops, rescales, rotates, deforms and jitters ``batch`` samples on the CPU. On a
GPU that work, not the network, can set the pace (an H200 ran a planned ISBI step in 0.023 s of
network time and 0.47 s of wall time, docs/planning.md), so the plan times it on the real
images with the planned augmentations and adds it to the step time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from pixelwise.planning.profile import Candidate, DeviceProfile

__all__ = ["PipelineProfile", "loader_workers", "sample_seconds"]


def loader_workers(kind: str, cores: int | None = None) -> int:
    """Data loader processes for a device: 0 on a CPU (the network needs every core; a worker
    would only take cores from it), else all cores but one for the main process, at most 8."""
    cores = cores or os.cpu_count() or 1
    if kind != "cuda" or cores < 3:
        return 0
    return min(8, cores - 1)


def sample_seconds(dataset: Any, options: dict[str, Any], samples: int = 6) -> float:
    """Seconds to produce one augmented training sample of ``dataset`` (a SegmentationDataset)
    with the planned ``options`` (crop_size, scale, flips, rotate, elastic, color_jitter):
    the median over ``samples`` images of the time to decode and augment an image minus the time
    to decode it (the training loop caches decoded images, so decoding is not part of a
    step)."""
    from pixelwise.data.pipeline import training_set
    from pixelwise.training.config import TrainConfig
    from pixelwise.training.setup import train_transform

    config = TrainConfig.from_dict(options)
    zeros, ones = [0.0] * dataset.channels, [1.0] * dataset.channels
    transform = train_transform(config, config.crop_size, zeros, ones, dataset.classes.ignore_index)
    train = training_set(dataset, transform, cache="off")
    picks = [round(i * (len(train) - 1) / max(1, samples - 1)) for i in range(samples)]
    times = []
    for i in dict.fromkeys(picks):
        began = time.perf_counter()
        dataset[i]
        decoded = time.perf_counter()
        train[i]
        times.append(max(0.0, time.perf_counter() - decoded - (decoded - began)))
    return sorted(times)[len(times) // 2]


@dataclass
class PipelineProfile:
    """A device profile whose step includes the data: ``batch`` samples at ``seconds`` each
    (measured at ``crop`` px; other crops scale with their area), spread over ``workers``
    loader processes that run beside the network (0: in the main process, one after the
    other)."""

    network: DeviceProfile
    seconds: float  # per sample at ``crop``
    crop: int
    workers: int = 0

    @property
    def kind(self) -> str:
        return self.network.kind

    @property
    def name(self) -> str:
        return self.network.name

    def data_seconds(self, c: Candidate) -> float:
        """Seconds of data work per step of ``c`` (before it is spread over workers)."""
        return c.batch * self.seconds * (c.crop / self.crop) ** 2

    def step_seconds(self, c: Candidate, channels: int, classes: int) -> float:
        net = self.network.step_seconds(c, channels, classes)
        data = self.data_seconds(c)
        if self.workers == 0:
            return net + data
        return max(net, data / self.workers)

    def infer_seconds_per_megapixel(self, c: Candidate, channels: int, classes: int) -> float:
        return self.network.infer_seconds_per_megapixel(c, channels, classes)

"""Keeping decoded training images in memory, and deciding whether they fit.

Decoding PNG/JPEG files is often the slowest part of the input pipeline. :class:`InMemory` wraps a
dataset and keeps every decoded :class:`Sample`; :meth:`InMemory.load` decodes them all once in the
main process, before DataLoader workers start, so forked workers share the arrays (copy-on-write)
instead of each decoding its own copy. :func:`plan_cache` turns ``--cache on|off|auto`` into a
yes/no: "auto" caches when the decoded size is below a fraction (25%) of the memory available now.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pixelwise.data.base import PairedFileDataset, Sample, SegmentationDataset
from pixelwise.errors import ConfigError

__all__ = ["InMemory", "available_memory", "decoded_bytes", "plan_cache"]

AUTO_FRACTION = 0.25
_HEADER_SAMPLE = 64  # file headers read to estimate the decoded size of a large dataset


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; elsewhere the free
    physical pages), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _base(dataset) -> object:
    """The innermost dataset under wrappers that keep a ``.dataset`` attribute."""
    seen = 0
    while hasattr(dataset, "dataset") and seen < 16:
        dataset, seen = dataset.dataset, seen + 1
    return dataset


def _pixels_from_headers(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with Image.open(p) as img:
            w, h = img.size
        total += w * h
    return total


def decoded_bytes(dataset: SegmentationDataset, extra_bytes_per_pixel: int = 0) -> int:
    """Estimated memory of every decoded sample: ``pixels * (channels + 1 mask byte +
    extra_bytes_per_pixel)``. File datasets are measured from image headers (all of them, or an
    evenly spaced sample of 64 for larger sets); other datasets from a few decoded samples."""
    n = len(dataset)
    if n == 0:
        return 0
    per_pixel = int(dataset.channels) + 1 + int(extra_bytes_per_pixel)
    picks = np.unique(np.linspace(0, n - 1, min(n, _HEADER_SAMPLE)).round().astype(int))
    base = _base(dataset)
    pixels = None
    if isinstance(base, PairedFileDataset) and len(base) == n:
        try:
            pixels = _pixels_from_headers([base.pairs[int(i)][0] for i in picks])
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pixels = None  # decoding below raises the precise DataError
    if pixels is None:
        picks = picks[:: max(1, len(picks) // 8)]  # decoding costs more than reading a header
        pixels = sum(int(np.asarray(dataset[int(i)].mask).size) for i in picks)
    return int(pixels / len(picks) * n * per_pixel)


def plan_cache(
    mode: str,
    dataset: SegmentationDataset,
    extra_bytes_per_pixel: int = 0,
    fraction: float = AUTO_FRACTION,
) -> tuple[bool, str]:
    """Decide whether to keep decoded samples in memory: ``mode`` "on", "off" or "auto"
    (cache when the estimated size is under ``fraction`` of :func:`available_memory`).
    Returns (cache?, a one-line explanation for the log)."""
    if mode not in ("on", "off", "auto"):
        raise ConfigError(f"--cache: choose 'on', 'off' or 'auto', got {mode!r}")
    if mode == "off":
        return False, "image cache off (--cache off): images are decoded every epoch"
    need = decoded_bytes(dataset, extra_bytes_per_pixel)
    size = f"{need / 2**20:.0f} MiB for {len(dataset)} images"
    if mode == "on":
        return True, f"image cache on (--cache on): {size} decoded once and kept in memory"
    avail = available_memory()
    if avail is None:
        return False, f"image cache off (auto): {size}, available memory unknown"
    verdict = need < fraction * avail
    state = "on" if verdict else "off"
    relation = "<" if verdict else ">="
    return verdict, (
        f"image cache {state} (auto): {size} {relation} {fraction:.0%} of "
        f"{avail / 2**30:.1f} GiB available"
    )


class InMemory(SegmentationDataset):
    """``dataset`` whose samples are kept in memory after their first read (per process).
    :meth:`load` reads them all now; call it in the main process before starting workers."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset
        self.classes = dataset.classes
        self.channels = dataset.channels
        self.names = dataset.names
        self._samples: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        sample = self._samples.get(i)
        if sample is None:
            sample = self._samples[i] = self.dataset[i]
        return sample

    def load(self, progress: Callable[[Iterable], Iterator] | None = None) -> InMemory:
        """Decode every sample not yet in memory; returns self."""
        missing = [i for i in range(len(self)) if i not in self._samples]
        for i in progress(missing) if progress else missing:
            self[i]
        return self

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached images and masks."""
        return sum(s.image.nbytes + s.mask.nbytes for s in self._samples.values())

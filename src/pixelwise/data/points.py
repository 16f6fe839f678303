"""Sparse point labels: simulate an annotator who clicked a few pixels per class.

:func:`sample_points` keeps ``n`` randomly chosen labelled pixels of each class present in a mask
and turns every other pixel into ``ignore_index``. :class:`PointLabels` wraps a dataset so that
the points of image ``i`` are drawn ONCE from ``(seed, i)`` and stay the same for the whole run
(every epoch, every worker): the annotator clicked once. The loss
(:func:`pixelwise.losses.pixel_cross_entropy`) averages over labelled pixels only, so an image
with 5 points per class weighs as much per labelled pixel as a densely labelled one.
"""

from __future__ import annotations

import numpy as np

from pixelwise.data.base import Sample, SegmentationDataset
from pixelwise.errors import ConfigError

__all__ = ["PointLabels", "point_indices", "sample_points"]

_POINTS_TAG = 0x706F696E  # "poin": keeps these streams apart from the augmentation seeds


def point_indices(
    mask: np.ndarray, n: int, rng: np.random.Generator, ignore_index: int = 255
) -> np.ndarray:
    """Flat indices (sorted, int64) of ``n`` distinct random pixels of every class present in
    ``mask`` (all of a class's pixels when it has ``n`` or fewer); ignored pixels never."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"--points: must be a positive integer, got {n!r}")
    flat = np.asarray(mask).ravel()
    order = np.argsort(flat, kind="stable")  # pixels grouped by class, in raster order
    values, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    chosen = []
    for value, start, count in zip(values, starts, counts, strict=True):
        if value == ignore_index:
            continue
        members = order[start : start + count]
        chosen.append(members if count <= n else rng.choice(members, size=n, replace=False))
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def sample_points(
    mask: np.ndarray, n: int, rng: np.random.Generator, ignore_index: int = 255
) -> np.ndarray:
    """``mask`` (H, W) with only ``n`` random labelled pixels per present class kept (all of
    them if fewer); every other pixel becomes ``ignore_index``. Same dtype and shape."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConfigError(f"points: mask must be 2-D (H, W), got shape {mask.shape}")
    keep = point_indices(mask, n, rng, ignore_index)
    out = np.full_like(mask, ignore_index)
    out.ravel()[keep] = mask.ravel()[keep]
    return out


class PointLabels(SegmentationDataset):
    """``dataset`` with every mask reduced to ``n`` points per class by :func:`sample_points`,
        drawn once per image from ``(seed, i)``: item ``i`` has the same points in every epoch, in
        every process, whatever the access order. Images and names are the wrapped dataset's; the
    chosen pixel indices are kept per item (the masks are not)."""

    def __init__(self, dataset: SegmentationDataset, n: int, seed: int = 0) -> None:
        point_indices(np.zeros((1, 1), np.uint8), n, np.random.default_rng(0))  # validates n
        self.dataset = dataset
        self.n = int(n)
        self.seed = int(seed)
        self.classes = dataset.classes
        self.channels = dataset.channels
        self.names = dataset.names
        self._points: dict[int, np.ndarray] = {}  # flat indices per item (a few bytes each)

    def __len__(self) -> int:
        return len(self.dataset)

    def rng(self, i: int) -> np.random.Generator:
        """The generator that draws the points of item ``i``."""
        return np.random.default_rng([self.seed, int(i), _POINTS_TAG])

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        sample = self.dataset[i]
        mask = np.asarray(sample.mask)
        ignore = self.classes.ignore_index
        keep = self._points.get(i)
        if keep is None:
            keep = self._points[i] = point_indices(mask, self.n, self.rng(i), ignore)
        sparse = np.full_like(mask, ignore)
        sparse.ravel()[keep] = mask.ravel()[keep]
        return Sample(sample.image, sparse, sample.name)

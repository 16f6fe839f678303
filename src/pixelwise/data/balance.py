"""Class re-weighting for imbalanced data: median-frequency balancing (Eigen & Fergus; SegNet).

For each class c, ``freq(c)`` is the number of pixels of class c divided by the total number of
pixels in the images where c is present; its weight is ``median(freq) / freq(c)``. Frequent
classes (road, sky, background) get weights below 1, rare ones (poles, signs) above 1. Ignored
pixels (255) count nowhere. A class that never occurs in the training masks gets weight 0 (there
is nothing to balance) and is reported by :func:`class_pixel_counts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from pixelwise.data.base import SegmentationDataset

__all__ = ["class_pixel_counts", "median_frequency_weights"]


def class_pixel_counts(
    dataset: SegmentationDataset, progress: Callable[[Iterable], Iterator] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read every mask once; return ``(pixels per class, labelled pixels of images containing
    the class)``, both int64 ``(num_classes,)``."""
    n = dataset.classes.num_classes
    counts = np.zeros(n, dtype=np.int64)
    image_pixels = np.zeros(n, dtype=np.int64)
    indices = range(len(dataset))
    for i in progress(indices) if progress else indices:
        mask = dataset[i].mask
        hist = np.bincount(mask.ravel(), minlength=256)[:n].astype(np.int64)
        labelled = int(hist.sum())
        counts += hist
        image_pixels[hist > 0] += labelled
    return counts, image_pixels


def median_frequency_weights(counts: np.ndarray, image_pixels: np.ndarray) -> list[float]:
    """Median-frequency weights from :func:`class_pixel_counts`; 0 for classes never seen."""
    counts = np.asarray(counts, dtype=np.float64)
    image_pixels = np.asarray(image_pixels, dtype=np.float64)
    seen = counts > 0
    if not seen.any():
        return [0.0] * len(counts)
    freq = np.zeros_like(counts)
    freq[seen] = counts[seen] / image_pixels[seen]
    median = float(np.median(freq[seen]))
    return [float(median / f) if f > 0 else 0.0 for f in freq]

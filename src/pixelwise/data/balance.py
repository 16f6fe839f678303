"""Class re-weighting for imbalanced data: median-frequency balancing (Eigen & Fergus; SegNet).

For each class c, ``freq(c)`` is the number of pixels of class c divided by the total number of
pixels in the images where c is present; its weight is ``median(freq) / freq(c)``. Frequent
classes (road, sky, background) get weights below 1, rare ones (poles, signs) above 1. Ignored
pixels (255) count nowhere. A class that never occurs in the training masks gets weight 0 (there
is nothing to balance) and is reported by :func:`class_pixel_counts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pixelwise.data import cache
from pixelwise.data.base import PairedFileDataset, SegmentationDataset

__all__ = [
    "PixelCounts",
    "cached_class_pixel_counts",
    "class_pixel_counts",
    "counts_key",
    "median_frequency_weights",
]


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


class PixelCounts(NamedTuple):
    """:func:`class_pixel_counts` results plus where they came from."""

    counts: np.ndarray
    image_pixels: np.ndarray
    cached: bool  # read from the cache (no mask decoded)
    path: Path | None  # the cache entry read or written; None when not cached


def counts_key(dataset: SegmentationDataset) -> str | None:
    """Cache key of a file-backed dataset's pixel counts: its layout, the absolute paths, sizes
    and mtimes of its mask files (and region masks), its label map and classes. None for
    datasets not read from files (e.g. the generated digits) or when a file cannot be stat'ed."""
    if not isinstance(dataset, PairedFileDataset):
        return None
    masks: list[Path] = [m for _, m in dataset.pairs]
    masks += [v for v in (dataset.valid_masks or []) if v is not None]
    try:
        files = cache.file_signature(masks)
    except OSError:
        return None
    label_map = sorted((dataset.label_map or {}).items())
    layout = getattr(dataset, "layout", type(dataset).__name__)
    return cache.cache_key("class_counts", layout, files, label_map, dataset.classes.to_dict())


def cached_class_pixel_counts(
    dataset: SegmentationDataset,
    progress: Callable[[Iterable], Iterator] | None = None,
    use_cache: bool = True,
) -> PixelCounts:
    """:func:`class_pixel_counts`, remembered per dataset in :func:`cache.cache_dir` (keyed by
    :func:`counts_key`): a second call on unchanged files decodes no mask."""
    key = counts_key(dataset) if use_cache else None
    n = dataset.classes.num_classes
    if key is not None:
        entry = cache.load("class_counts", key)
        if entry is not None:
            counts = np.asarray(entry.get("counts", []), dtype=np.int64)
            image_pixels = np.asarray(entry.get("image_pixels", []), dtype=np.int64)
            if counts.shape == (n,) and image_pixels.shape == (n,):
                return PixelCounts(
                    counts, image_pixels, True, cache.entry_path("class_counts", key)
                )
    counts, image_pixels = class_pixel_counts(dataset, progress)
    path = None
    if key is not None:
        path = cache.save(
            "class_counts",
            key,
            {
                "classes": list(dataset.classes.names),
                "images": len(dataset),
                "counts": counts.tolist(),
                "image_pixels": image_pixels.tolist(),
            },
        )
    return PixelCounts(counts, image_pixels, False, path)

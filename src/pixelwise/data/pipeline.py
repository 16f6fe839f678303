"""The training input pipeline: dataset -> (memory cache) -> (point labels) -> (weight maps) ->
joint augmentation. ``train`` builds it with :func:`training_set`.

Decoding happens at most once per image per epoch (the DataLoader reads item ``i`` once), and
only once per run when the decoded images are kept in memory (``cache``): they are then decoded
in the main process before workers start, and forked workers share them. The U-Net weight maps
are computed on the original (untransformed) masks, cached per index under the same decision,
and augmented jointly with image and mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pixelwise.data.base import SegmentationDataset
from pixelwise.data.memory import InMemory, plan_cache
from pixelwise.data.points import PointLabels
from pixelwise.data.transforms import TransformedDataset
from pixelwise.data.weights import BorderWeights
from pixelwise.errors import ConfigError

__all__ = ["bar_iter", "training_set"]

WEIGHT_MAP_BYTES = 4  # float32 per pixel


def bar_iter(
    progress: Callable[..., Any] | None, desc: str, unit: str = "img", **bar_args: Any
) -> Callable[[Iterable], Iterator] | None:
    """Turn a ``progress(total=, desc=, unit=, ...)`` bar factory into an iterable wrapper
    (what the data functions take); None stays None."""
    if progress is None:
        return None

    def wrap(items: Iterable) -> Iterator:
        items = list(items)
        bar = progress(total=len(items), desc=desc, unit=unit, **bar_args)
        try:
            for item in items:
                yield item
                bar.update(1)
        finally:
            bar.close()

    return wrap


def training_set(
    dataset: SegmentationDataset,
    transform: Callable[..., Any],
    seed: int = 0,
    points: int = 0,
    cache: str = "auto",
    weight_map: str | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Sequence[float] | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[..., Any] | None = None,
) -> TransformedDataset:
    """Wrap the training split for the DataLoader.

    ``cache`` "on" / "off" / "auto" (see :func:`pixelwise.data.memory.plan_cache`; the weight
    maps count in the estimate and are cached under the same decision); ``points`` > 0 keeps
    that many clicked pixels per class per image, fixed from ``(seed, i)``; ``weight_map``
    "unet" adds the border weight map (``w0``, ``sigma``, ``class_weights`` as ``w_c``; default
    per-image balancing) as a third item of every sample. ``log`` gets one line about the cache.
    """
    say = log or (lambda _msg: None)
    if weight_map not in (None, "unet"):
        raise ConfigError(f"--weight-map: choose 'unet', got {weight_map!r}")
    if weight_map and points:
        raise ConfigError(
            "--points: border weight maps need dense masks; drop --weight-map or --points"
        )
    use_cache, note = plan_cache(cache, dataset, WEIGHT_MAP_BYTES if weight_map else 0)
    say(note)
    if use_cache:
        dataset = InMemory(dataset).load(bar_iter(progress, "decoding"))
    if points:
        dataset = PointLabels(dataset, points, seed)
        say(f"point labels: {points} pixel(s) per class per training image, fixed for the run")
    weights = None
    if weight_map == "unet":
        weights = BorderWeights(
            w0, sigma, class_weights, dataset.classes.ignore_index, cache=use_cache
        )
        if use_cache:
            weights.fill(dataset, bar_iter(progress, "weight maps"))
    return TransformedDataset(dataset, transform, seed=seed, weights=weights)

"""What the stored values of label masks say: clean labels, or labels blurred by lossy saving.

Masks saved as JPEG, or resized / drawn with anti-aliasing, keep their class values on most
pixels but gain a tail of values in between (JPEG ringing near edges, blended edge pixels). Read
as they are, such masks give one class per stored value (a 0/255 mask becomes a 200-class
dataset whose ignore index 255 swallows the foreground). :func:`lossy_values` recognises them
from a histogram of the stored 8-bit values (one mask, or a whole dataset):

- *binary*: at least 8 distinct values, 90% or more of the pixels within 48 of 0 or of 255,
  each end dominated by one value (its mode holds 40% of that end's pixels), and no other
  sharp value holding 2% of the pixels in between: read with a threshold halfway between the
  two modes (``--mask-threshold 128``);
- *palette*: 3 to 16 sharp values (each 0.5% of the pixels or more, at least 16 apart, and
  holding as many pixels as all values within 8 of it together), 75% or more of the pixels
  within 2 of one of them, and at least 6 other values: read with nearest-class rounding
  (``--label-map round``).

Clean label masks are never flagged: fewer than 8 distinct values, or small index values
(every value but 255 below 64, filling half of 0..max or more, as in CamVid or Cityscapes), or
many values without a few dominant ones (a 150-class dataset).

:func:`class_count_problem` is the guard against training on such values anyway: more than
:data:`MAX_PLAUSIBLE_CLASSES` inferred classes with most of them rare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.errors import DataError

__all__ = [
    "MAX_PLAUSIBLE_CLASSES",
    "LossyValues",
    "check_class_count",
    "class_count_problem",
    "lossy_message",
    "lossy_values",
    "value_histogram",
]

MIN_DISTINCT = 8
END = 48  # "near 0" is 0..48, "near 255" is 207..255
MAX_PLAUSIBLE_CLASSES = 32  # more inferred classes than this, most of them rare: noise
RARE_SHARE = 0.001  # a class holding less than 0.1% of the labelled pixels is rare


def value_histogram(values: np.ndarray) -> np.ndarray | None:
    """Pixels per stored value, int64 ``(256,)``, of an 8-bit mask; None for other masks
    (colour, 16-bit)."""
    a = np.asarray(values)
    if a.dtype != np.uint8 or a.ndim != 2:
        return None
    return np.bincount(a.ravel(), minlength=256).astype(np.int64)


@dataclass(frozen=True)
class LossyValues:
    """Masks whose values look lossy: ``kind`` "binary" or "palette", the ``class_values``
    they were meant to hold, the number of ``distinct`` values, and the share of the pixels
    ``near`` the class values."""

    kind: str
    class_values: tuple[int, ...]
    distinct: int
    near: float

    @property
    def threshold(self) -> int:
        """For binary masks: the value halfway between the two class values (128 for 0/255)."""
        lo, hi = self.class_values[0], self.class_values[-1]
        return (lo + hi + 1) // 2

    @property
    def option(self) -> str:
        """The read option that fixes them: ``--mask-threshold T`` or ``--label-map round``."""
        return (
            f"--mask-threshold {self.threshold}" if self.kind == "binary" else ("--label-map round")
        )

    def describe(self) -> str:
        """``"212 distinct values, 98% near 0 or 255"``."""
        values = (
            " or ".join(map(str, self.class_values))
            if self.kind == "binary"
            else (", ".join(map(str, self.class_values)))
        )
        near = f"{100 * self.near:.0f}%" if self.near < 0.995 else f"{100 * self.near:.1f}%"
        return f"{self.distinct} distinct values, {near} near {values}"

    def what(self, jpeg: bool) -> str:
        """``"a JPEG-compressed binary mask"`` and the like."""
        how = "JPEG-compressed" if jpeg else "JPEG-compressed or anti-aliased"
        if self.kind == "binary":
            return f"a {how} binary mask"
        return f"a {how} mask of {len(self.class_values)} values"


def lossy_message(lossy: LossyValues, root: str | Path, jpeg: bool = False) -> str:
    """``"values look like a JPEG-compressed binary mask (...); read them with
    --mask-threshold 128 or clean the folder with 'pixelwise data fix ROOT --out CLEAN'"``."""
    return (
        f"values look like {lossy.what(jpeg)} ({lossy.describe()}); read them with "
        f"{lossy.option} or clean the folder with 'pixelwise data fix {root} --out CLEAN'"
    )


def _sharp_peaks(hist: np.ndarray, min_share: float) -> list[int]:
    """Values holding ``min_share`` of the pixels or more and at least as many pixels as all
    values within 8 of them together; at least 16 apart (the larger wins)."""
    total = int(hist.sum())
    out: list[int] = []
    for v in np.argsort(-hist, kind="stable"):
        c = int(hist[v])
        if c == 0 or c < min_share * total:
            break
        around = int(hist[max(0, v - 8) : v + 9].sum()) - c
        if c >= around and all(abs(int(v) - p) >= 16 for p in out):
            out.append(int(v))
    return sorted(out)


def _index_like(values: np.ndarray) -> bool:
    low = values[values != 255]
    return bool(len(low)) and int(low.max()) < 64 and len(low) >= 0.5 * (int(low.max()) + 1)


def _binary(hist: np.ndarray, distinct: int) -> LossyValues | None:
    total = int(hist.sum())
    lo, hi = hist[: END + 1], hist[255 - END :]
    lo_n, hi_n = int(lo.sum()), int(hi.sum())
    if min(lo_n, hi_n) < 0.001 * total or lo_n + hi_n < 0.9 * total:
        return None
    if lo.max() < 0.4 * lo_n or hi.max() < 0.4 * hi_n:
        return None
    if any(END < p < 255 - END for p in _sharp_peaks(hist, 0.02)):
        return None
    values = (int(np.argmax(lo)), 255 - END + int(np.argmax(hi)))
    return LossyValues("binary", values, distinct, (lo_n + hi_n) / total)


def _palette(hist: np.ndarray, distinct: int) -> LossyValues | None:
    peaks = _sharp_peaks(hist, 0.005)
    if not 3 <= len(peaks) <= 16 or distinct - len(peaks) < 6:
        return None
    dist = np.min(np.abs(np.arange(256)[:, None] - np.asarray(peaks)[None, :]), axis=1)
    total = int(hist.sum())
    if hist[dist <= 2].sum() < 0.75 * total:
        return None
    gap = min(b - a for a, b in zip(peaks, peaks[1:], strict=False))
    near = float(hist[dist <= min(32, gap // 4)].sum()) / total
    return LossyValues("palette", tuple(peaks), distinct, near)


def lossy_values(hist: np.ndarray | Sequence[int]) -> LossyValues | None:
    """:class:`LossyValues` when the histogram of stored values (see the module docstring)
    looks like lossy binary or palette masks; None when the values look like labels."""
    h = np.asarray(hist, dtype=np.int64)[:256]
    values = np.flatnonzero(h)
    if len(values) < MIN_DISTINCT or _index_like(values):
        return None
    return _binary(h, len(values)) or _palette(h, len(values))


def class_count_problem(num_classes: int, class_pixels: Sequence[int] | None) -> str | None:
    """Why ``num_classes`` inferred classes look like noise, or None: more than
    :data:`MAX_PLAUSIBLE_CLASSES` classes and most of them rare (under 0.1% of the labelled
    pixels, or absent; without ``class_pixels`` the count alone decides)."""
    if num_classes <= MAX_PLAUSIBLE_CLASSES:
        return None
    if class_pixels is None:
        return f"{num_classes} classes inferred from the mask values"
    pixels = np.asarray(class_pixels, dtype=np.float64)[:num_classes]
    total = float(pixels.sum())
    rare = int(np.sum(pixels < RARE_SHARE * total)) + max(0, num_classes - len(pixels))
    if rare * 2 <= num_classes:
        return None
    return (
        f"{num_classes} classes inferred from the mask values, {rare} of them rare "
        "(under 0.1% of the pixels each)"
    )


def check_class_count(dataset: Any, *, force: bool = False) -> None:
    """Refuse to train on classes inferred from mask values that look like noise.

    ``dataset``: a dataset whose ``classes_inferred`` is true (a generic folder without
    classes.txt; other datasets pass) and ``label_pixels`` (pixels per label) tell how its
    classes came about. :func:`class_count_problem` -> DataError naming the folder and the
    fixes, unless ``force``.
    """
    if force or not getattr(dataset, "classes_inferred", False):
        return
    n = dataset.classes.num_classes
    problem = class_count_problem(n, getattr(dataset, "label_pixels", None))
    if problem is None:
        return
    root = getattr(dataset, "root", "data")
    raise DataError(
        root,
        f"{problem}: the masks look noisy (JPEG-compressed or anti-aliased?); run 'pixelwise "
        f"data check {root}', then read them with --mask-threshold 128 or --label-map round, "
        f"or clean them with 'pixelwise data fix {root} --out CLEAN'; if {n} classes is right, "
        "write a classes.txt or pass --force-classes",
    )

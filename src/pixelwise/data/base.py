"""The dataset interface every data source implements, and the file-pair reader behind them all.

On-disk layouts (the generic folders here; VOC, CamVid, ... later) only *find* (image, mask)
file pairs; :class:`PairedFileDataset` reads and checks them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch.utils.data

from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import image_channels, read_image, read_mask
from pixelwise.errors import ConfigError, DataError


class Sample(NamedTuple):
    """One labelled image: ``image`` uint8 (H, W, C), ``mask`` uint8 (H, W), ``name`` an id."""

    image: np.ndarray
    mask: np.ndarray
    name: str


class SegmentationDataset(torch.utils.data.Dataset):
    """Abstract base: a sequence of :class:`Sample`.

    Attributes: ``classes`` (names, colours, ignore index), ``channels`` (1 or 3: channels of
    every returned image), ``names`` (one id per sample). Image sizes may differ between samples;
    within a sample image and mask have the same height and width.
    """

    classes: ClassInfo
    channels: int
    names: list[str]
    notes: Sequence[str] = ()  # choices worth telling the user ("0/255 masks read as binary")
    label_map: Mapping[int, int] | None = None  # mask value -> label applied when reading
    layout: str = ""  # the folder layout it was read from ("generic", "camvid", ...), if any

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def _index(self, i: int) -> int:
        """Normalise a possibly negative index; out of range -> IndexError."""
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"dataset index must be an int, got {type(i).__name__}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} samples")
        return j


class PairedFileDataset(SegmentationDataset):
    """Samples read from (image file, mask file) pairs.

    ``channels``: 1 or 3, or ``None`` -> 1 if every image file is grayscale (judged from the file
    headers), else 3. ``label_map`` is passed to :func:`read_mask`. ``cache=True`` keeps decoded
    samples in memory (per process: each DataLoader worker holds its own copy). ``names``
    defaults to the image file stems. ``valid_masks`` (one file or None per pair): pixels where
    that file is 0 (e.g. outside DRIVE's field of view) become ``classes.ignore_index``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | Path, str | Path]],
        classes: ClassInfo,
        channels: int | None = None,
        label_map: Mapping[int, int] | None = None,
        cache: bool = False,
        names: Sequence[str] | None = None,
        valid_masks: Sequence[str | Path | None] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        if channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}")
        if not isinstance(classes, ClassInfo):
            raise ConfigError(f"classes must be a ClassInfo, got {type(classes).__name__}")
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.classes = classes
        self.label_map = dict(label_map) if label_map is not None else None
        self.names = list(names) if names is not None else [a.stem for a, _ in self.pairs]
        if len(self.names) != len(self.pairs):
            raise ConfigError(f"{len(self.names)} names for {len(self.pairs)} file pairs")
        self.valid_masks = (
            None if valid_masks is None else [None if v is None else Path(v) for v in valid_masks]
        )
        if self.valid_masks is not None and len(self.valid_masks) != len(self.pairs):
            raise ConfigError(f"{len(self.valid_masks)} valid masks for {len(self.pairs)} pairs")
        self.notes = list(notes)
        if channels is None:
            channels = 1 if all(image_channels(a) == 1 for a, _ in self.pairs) else 3
            if not self.pairs:
                channels = 3
        self.channels = channels
        self.cache = cache
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        if self.cache and i in self._cache:
            return self._cache[i]
        image_path, mask_path = self.pairs[i]
        image = read_image(image_path, self.channels)
        mask = read_mask(mask_path, self.classes, self.label_map)
        if image.shape[:2] != mask.shape:
            (h, w), (mh, mw) = image.shape[:2], mask.shape
            raise DataError(
                image_path,
                f"image is {w}x{h} but its mask {mask_path} is {mw}x{mh} (width x height)"
                + size_hint((w, h), (mw, mh)),
            )
        valid = self.valid_masks[i] if self.valid_masks is not None else None
        if valid is not None:
            mask = apply_valid_mask(mask, valid, self.classes.ignore_index, mask_path)
        sample = Sample(image, mask, self.names[i])
        if self.cache:
            self._cache[i] = sample
        return sample


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Are sizes ``a`` and ``b`` (width, height) one picture at two scales: both sides differ,
    and the aspect ratios agree up to the rounding of a resize (half a pixel at the smaller
    size)?"""
    (w, h), (bw, bh) = a, b
    if w == bw or h == bh or min(w, h, bw, bh) < 1:
        return False
    return abs(w * bh - h * bw) <= max(w, h, bw, bh) / 2


def size_hint(image: tuple[int, int], mask: tuple[int, int], root: str | Path = "DIR") -> str:
    """What to say after "image is WxH but its mask is wxh": transposed sizes (EXIF), or one
    aspect ratio (resize one to the other with ``pixelwise data fix``), else nothing."""
    (w, h), (mw, mh) = image, mask
    if (h, w) == (mw, mh):
        return "; the sizes are transposed: check EXIF orientation"
    if not same_aspect(image, mask):
        return ""
    factor = w / mw
    scale = f"{factor:.3g}x its mask" if factor >= 1 else f"1/{1 / factor:.3g} of its mask"
    return (
        f"; same aspect ratio (the image is {scale}): resize the images to their masks with "
        f"'pixelwise data fix {root} --out CLEAN --resize images' (or the masks with "
        "--resize masks)"
    )


def apply_valid_mask(
    mask: np.ndarray, valid_path: str | Path, ignore_index: int, mask_path: str | Path = ""
) -> np.ndarray:
    """``mask`` (H, W) with the pixels where the region mask file ``valid_path`` is 0 set to
    ``ignore_index``; a region mask of another size raises DataError."""
    valid = read_mask(valid_path)
    if valid.shape != mask.shape:
        (h, w), (vh, vw) = mask.shape, valid.shape
        raise DataError(
            valid_path, f"region mask is {vw}x{vh} but the label mask {mask_path} is {w}x{h}"
        )
    out = mask.copy()
    out[valid == 0] = ignore_index
    return out

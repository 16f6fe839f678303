"""Data: reading images and masks, dataset layouts, the embedded digits dataset, transforms.

``open_dataset(source, split)`` is the one entry point the command line uses: ``"digits"`` gives
the embedded :class:`DigitsScenes`; a folder gives a :class:`LayoutDataset` of its layout
(generic images/ + masks/ -> :class:`FolderDataset`; VOC, CamVid, ISBI 2012, DRIVE, Cityscapes;
see :mod:`pixelwise.data.layouts`); an images folder with ``masks=DIR`` gives
:class:`PairedFolders`. Every folder has the split "all" (every pair).

Messy data: :func:`pixelwise.data.check.check_dataset` finds lossy (JPEG / anti-aliased) mask
values, ``mask_threshold=`` / ``label_map="round"`` read them, :func:`check_class_count` refuses
inferred classes that look like noise, and :func:`pixelwise.data.fix.fix_dataset` writes a
cleaned copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixelwise.data.base import PairedFileDataset, Sample, SegmentationDataset
from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.data.digits import DIGITS_CLASSES, DigitsScenes, write_digits_folder
from pixelwise.data.folders import FolderDataset, detect_layout
from pixelwise.data.io import read_image, read_mask, set_max_image_pixels, write_image, write_mask
from pixelwise.data.layouts import (
    ALL,
    FORMATS,
    LayoutDataset,
    detect,
    open_layout,
    parse_label_map,
)
from pixelwise.data.maskvalues import check_class_count
from pixelwise.data.paired import PairedFolders
from pixelwise.data.transforms import (
    EvalTransform,
    TrainTransform,
    TransformedDataset,
    default_normalization,
    mask_to_tensor,
    to_tensor,
)
from pixelwise.errors import ConfigError


def open_dataset(
    source: str | Path,
    split: str,
    channels: int | None = None,
    format: str | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """``"digits"`` -> ``DigitsScenes(split, channels=channels or 3, **kwargs)``; an existing
    folder -> the :class:`LayoutDataset` of its layout (``format``: None/"auto" detects it, or
    one of ``FORMATS``); ``kwargs`` are ``classes``, ``label_map`` (also ``"round"``,
    ``"threshold:T"``), ``mask_threshold``, ``cache``, ``limit``, ``val_fraction``, ``seed``,
    ``masks`` (``source`` is then an images folder, paired with this masks folder) and layout
    options (``folds``, ``fold`` for isbi). ``split`` may be "all". Else ConfigError."""
    if str(source) == "digits":
        if format not in (None, "auto"):
            raise ConfigError(f"--format {format}: the embedded digits data has no file layout")
        if kwargs.pop("label_map", None) is not None:
            raise ConfigError("--label-map: the embedded digits data needs no label map")
        for key, flag in (("mask_threshold", "--mask-threshold"), ("masks", "--masks")):
            if kwargs.pop(key, None) is not None:
                raise ConfigError(f"{flag}: the embedded digits data has no mask files")
        return DigitsScenes(split, channels=3 if channels is None else channels, **kwargs)
    path = Path(source)
    if path.is_dir():
        return open_layout(path, split, channels, format=format, **kwargs)
    if path.exists():
        raise ConfigError(f"--data {source}: is a file; give a dataset folder or 'digits'")
    raise ConfigError(f"--data {source}: no such folder; give a dataset folder or 'digits'")


__all__ = [
    "ALL",
    "DIGITS_CLASSES",
    "FORMATS",
    "ClassInfo",
    "DigitsScenes",
    "EvalTransform",
    "FolderDataset",
    "LayoutDataset",
    "PairedFileDataset",
    "PairedFolders",
    "Sample",
    "SegmentationDataset",
    "TrainTransform",
    "TransformedDataset",
    "check_class_count",
    "default_normalization",
    "default_palette",
    "detect",
    "detect_layout",
    "mask_to_tensor",
    "open_dataset",
    "parse_label_map",
    "read_image",
    "read_mask",
    "set_max_image_pixels",
    "to_tensor",
    "write_digits_folder",
    "write_image",
    "write_mask",
]

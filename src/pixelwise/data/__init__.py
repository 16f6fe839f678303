"""Data: reading images and masks, dataset layouts, the embedded digits dataset, transforms.

``open_dataset(source, split)`` is the one entry point the command line uses: ``"digits"`` gives
the embedded :class:`DigitsScenes`; a folder gives a :class:`FolderDataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixelwise.data.base import PairedFileDataset, Sample, SegmentationDataset
from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.data.digits import DIGITS_CLASSES, DigitsScenes, write_digits_folder
from pixelwise.data.folders import FolderDataset, detect_layout
from pixelwise.data.io import read_image, read_mask, set_max_image_pixels, write_image, write_mask
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
    source: str | Path, split: str, channels: int | None = None, **kwargs: Any
) -> SegmentationDataset:
    """``"digits"`` -> ``DigitsScenes(split, channels=channels or 3, **kwargs)``; an existing
    folder -> ``FolderDataset(source, split, channels, **kwargs)``; else ConfigError."""
    if str(source) == "digits":
        return DigitsScenes(split, channels=3 if channels is None else channels, **kwargs)
    path = Path(source)
    if path.is_dir():
        return FolderDataset(path, split, channels, **kwargs)
    if path.exists():
        raise ConfigError(f"--data {source}: is a file; give a dataset folder or 'digits'")
    raise ConfigError(f"--data {source}: no such folder; give a dataset folder or 'digits'")


__all__ = [
    "DIGITS_CLASSES",
    "ClassInfo",
    "DigitsScenes",
    "EvalTransform",
    "FolderDataset",
    "PairedFileDataset",
    "Sample",
    "SegmentationDataset",
    "TrainTransform",
    "TransformedDataset",
    "default_normalization",
    "default_palette",
    "detect_layout",
    "mask_to_tensor",
    "open_dataset",
    "read_image",
    "read_mask",
    "set_max_image_pixels",
    "to_tensor",
    "write_digits_folder",
    "write_image",
    "write_mask",
]

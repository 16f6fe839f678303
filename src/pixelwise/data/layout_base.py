"""What every dataset layout is made of: the :class:`Layout` interface, the file pairs it finds,
the listing and pairing helpers, and :class:`LayoutDataset`, which reads a layout's pairs.

A :class:`Layout` only *finds* files and knows its classes (names + display colours) and its own
label mapping (e.g. CamVid's void index 11 -> ignore, Cityscapes' label ids -> the 19 train ids).
Reading stays in :class:`~pixelwise.data.base.PairedFileDataset` and
:func:`~pixelwise.data.io.read_mask`; :class:`LayoutDataset` glues the two together.

The layout modules (folders.py, voc.py, ...) import this module; :mod:`pixelwise.data.layouts`
imports them (the registry, detection, ``open_layout``), so nothing here imports a layout.

Listing runs in two modes: *strict* (``problems=None``: the first pairing problem raises
DataError, as datasets want) and *lenient* (a list: every unpaired or duplicated file is
appended as a :class:`Problem` and listing goes on, as ``pixelwise data check`` wants).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from pixelwise.data.base import PairedFileDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.labelmaps import merge_label_maps, parse_label_map
from pixelwise.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp")

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "Layout",
    "LayoutDataset",
    "Pair",
    "Problem",
    "index_files",
    "match",
    "natural_key",
    "paths_of",
    "pool_split",
    "report",
    "seeded_split",
]


class Pair(NamedTuple):
    """One sample's files: ``valid`` is an optional region mask (0 = outside: ignored)."""

    name: str
    image: Path
    mask: Path
    valid: Path | None = None


class Problem(NamedTuple):
    """A problem with one file (or folder); ``str()`` gives ``"path: problem"``."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


Problems = list[Problem] | None


def report(problems: Problems, path: str | Path, problem: str) -> None:
    """Strict mode (``problems is None``): raise DataError; lenient: append and go on."""
    if problems is None:
        raise DataError(path, problem)
    problems.append(Problem(str(path), problem))


# ---- listing and pairing --------------------------------------------------------------------


def natural_key(text: str) -> tuple:
    """Sort key putting ``"2"`` before ``"10"`` (digit runs compared as numbers)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def index_files(
    folder: Path,
    suffixes: tuple[str, ...],
    key: Callable[[Path], str | None] = lambda p: p.stem,
    problems: Problems = None,
    recursive: bool = False,
) -> dict[str, Path]:
    """Map ``key(file)`` -> file for the files of ``folder`` with one of ``suffixes``
    (case-insensitive; hidden files and keys of ``None`` skipped). Two files with one key:
    strict -> DataError naming them; lenient -> a problem per extra file, the first is kept."""
    found: dict[str, list[Path]] = {}
    files = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(files):
        if p.name.startswith(".") or p.suffix.lower() not in suffixes or not p.is_file():
            continue
        k = key(p)
        if k is not None:
            found.setdefault(k, []).append(p)
    dups = {k: ps for k, ps in found.items() if len(ps) > 1}
    if dups and problems is None:
        stem, ps = next(iter(sorted(dups.items())))
        more = f" ({len(dups) - 1} more stems like it)" if len(dups) > 1 else ""
        raise DataError(
            folder,
            f"several files share the name {stem!r}: {', '.join(p.name for p in ps)}{more}; "
            "keep one file per name",
        )
    for ps in dups.values():
        for p in ps[1:]:
            report(problems, p, f"duplicate: same name as {ps[0].name}; keep one file per name")
    return {k: ps[0] for k, ps in sorted(found.items())}


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match(
    images: dict[str, Path],
    masks: dict[str, Path],
    images_dir: Path,
    masks_dir: Path,
    problems: Problems = None,
    what: str = "mask",
) -> list[tuple[str, Path, Path]]:
    """``(key, image, mask)`` for the keys on both sides, in ``images`` order. Unmatched files:
    strict -> one DataError listing them; lenient -> one problem per file."""
    lonely = [k for k in images if k not in masks]
    orphans = [k for k in masks if k not in images]
    if problems is None:
        if lonely:
            raise DataError(
                masks_dir,
                f"no {what} for {len(lonely)} image(s) of {images_dir}: "
                f"{_some([images[k].name for k in lonely])}; masks must have the same file "
                "name stem as their image",
            )
        if orphans:
            raise DataError(
                images_dir,
                f"no image for {len(orphans)} {what}(s) of {masks_dir}: "
                f"{_some([masks[k].name for k in orphans])}",
            )
    for k in lonely:
        report(problems, images[k], f"image without {what} (none in {masks_dir.name}/)")
    for k in orphans:
        report(problems, masks[k], f"{what} without image (none in {images_dir.name}/)")
    return [(k, images[k], masks[k]) for k in images if k in masks]


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic random split of ``range(n)`` into disjoint (train, val) index lists
    (``val_fraction`` of them, at least one, at most ``n - 1``, go to val)."""
    if n < 2:
        raise ConfigError(f"cannot split {n} sample(s) into train and val")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def need_dir(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "no such folder")
    if not path.is_dir():
        raise DataError(path, "not a folder; give the dataset folder")


# ---- the layout interface -------------------------------------------------------------------


class Layout:
    """Base class: subclasses set ``name``, ``expected`` (one phrase: what the folder must
    hold), ``options`` (extra data args and their types) and implement :meth:`detect`,
    :meth:`splits` and :meth:`find`; built-in classes and label maps via :meth:`declared_classes`
    and :meth:`base_label_map`.

    ``val_fraction`` and ``seed`` are used by layouts whose train/val split is a seeded random
    split of one pool of samples; layouts with fixed splits ignore them.
    """

    name: ClassVar[str] = ""
    expected: ClassVar[str] = ""
    options: ClassVar[dict[str, type]] = {}

    def __init__(
        self, root: str | Path, val_fraction: float = 0.1, seed: int = 0, **options: Any
    ) -> None:
        root = Path(root)
        need_dir(root)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
            raise ConfigError(f"val_fraction must be a number, got {val_fraction!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
        for key, value in options.items():
            if key not in self.options:
                takes = ", ".join(sorted(self.options)) or "none"
                raise ConfigError(
                    f"--data-arg {key}: not an option of the {self.name} layout "
                    f"(its options: {takes}; all layouts take limit)"
                )
            typ = self.options[key]
            if isinstance(value, bool) or not isinstance(value, typ):
                raise ConfigError(
                    f"--data-arg {key}={value!r}: expected {typ.__name__} for the {self.name} "
                    "layout"
                )
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.opts = dict(options)
        self.root = self.locate(root)

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Does ``root`` look like this layout (cheap: folder names only)?"""
        raise NotImplementedError

    def locate(self, root: Path) -> Path:
        """The dataset root inside ``root`` (``root`` itself for most layouts); DataError when
        ``root`` is not in this layout."""
        if not self.detect(root):
            raise DataError(root, f"not a {self.name} dataset: expected {self.expected}")
        return root

    def splits(self) -> list[str]:
        """Names of the splits that exist."""
        raise NotImplementedError

    def find(self, split: str, problems: Problems = None) -> list[Pair]:
        """The pairs of ``split`` (strict or lenient, see the module docstring)."""
        raise NotImplementedError

    def unknown_split(self, split: str) -> DataError:
        return DataError(
            self.root,
            f"no '{split}' split in this {self.name} dataset (it has: "
            f"{', '.join(self.splits()) or 'none'})",
        )

    def declared_classes(self) -> ClassInfo | None:
        """Classes known without reading masks (built in, or a classes.txt); None: infer."""
        return None

    def base_label_map(self, classes: ClassInfo) -> dict[int, int] | None:
        """The layout's own raw value -> label mapping."""
        return None

    def labels(
        self,
        classes: ClassInfo | None = None,
        user_map: Mapping[int, int] | None = None,
        seen: np.ndarray | None = None,
    ) -> tuple[ClassInfo, dict[int, int] | None, list[str]]:
        """``(classes, effective label map, notes)``. ``classes`` overrides the layout's own;
        ``user_map`` entries replace the layout's for the same raw values. ``seen`` (bool
        (256,), label values present after the map, from a check pass) saves layouts that
        infer classes from the masks a second read."""
        classes = classes or self.declared_classes()
        if classes is None:  # pragma: no cover - every non-generic layout declares classes
            raise DataError(self.root, "no classes known for this layout")
        return classes, merge_label_maps(self.base_label_map(classes), user_map), []

    def extra_files(self) -> list[Path]:
        """Files besides the pairs whose content changes the dataset (classes.txt, split lists)."""
        return []

    def all_pairs(self, problems: Problems = None) -> list[Pair]:
        """Every pair of every split, each once."""
        seen: dict[tuple[Path, Path], Pair] = {}
        for split in self.splits():
            for p in self.find(split, problems):
                seen.setdefault((p.image, p.mask), p)
        return list(seen.values())


def pool_split(
    pool: list[Pair], split: str, layout: Layout, extra: Mapping[str, list[Pair]] | None = None
) -> list[Pair]:
    """ "train"/"val" as a seeded split of ``pool`` (or K-fold when the layout has ``folds``),
    "trainval" = the whole pool; ``extra`` holds other fixed splits (e.g. DRIVE's "test")."""
    if extra and split in extra:
        return extra[split]
    if split == "trainval":
        return pool
    if split not in ("train", "val"):
        raise layout.unknown_split(split)
    folds = layout.opts.get("folds")
    if folds is not None:
        fold = layout.opts.get("fold", 0)
        if not 2 <= folds <= len(pool):
            raise ConfigError(
                f"--data-arg folds={folds}: need 2 <= folds <= {len(pool)} (the samples)"
            )
        if not 0 <= fold < folds:
            raise ConfigError(f"--data-arg fold={fold}: must be in 0..{folds - 1}")
        val = set(range(fold, len(pool), folds))
        idx = sorted(val) if split == "val" else [i for i in range(len(pool)) if i not in val]
        return [pool[i] for i in idx]
    if "fold" in layout.opts:
        raise ConfigError("--data-arg fold: give folds=K too (K-fold cross-validation)")
    if len(pool) < 2:
        raise DataError(layout.root, f"only {len(pool)} sample(s); need at least 2 to split")
    train_idx, val_idx = seeded_split(len(pool), layout.val_fraction, layout.seed)
    return [pool[i] for i in (train_idx if split == "train" else val_idx)]


class LayoutDataset(PairedFileDataset):
    """The samples of one split of a dataset in any layout.

    ``classes`` overrides the layout's (e.g. val takes train's); ``label_map`` (text or
    mapping, see :func:`parse_label_map`) is applied to the stored values, replacing the
    layout's own mapping for the values it names; ``limit`` keeps the first N samples of the
    split (quick experiments). Attributes besides :class:`PairedFileDataset`'s: ``layout``
    (its name), ``root``, ``split``, ``notes`` (choices worth telling the user), ``label_map``.
    """

    def __init__(
        self,
        layout: Layout,
        split: str,
        channels: int | None = None,
        classes: ClassInfo | None = None,
        label_map: str | Mapping[Any, Any] | None = None,
        cache: bool = False,
        limit: int | None = None,
    ) -> None:
        pairs = layout.find(split)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ConfigError(f"--data-arg limit={limit!r}: must be a positive integer")
            pairs = pairs[:limit]
        if not pairs:
            raise DataError(layout.root, f"the '{split}' split has no samples")
        classes, effective, notes = layout.labels(classes, parse_label_map(label_map))
        valid = [p.valid for p in pairs]
        super().__init__(
            [(p.image, p.mask) for p in pairs],
            classes,
            channels,
            label_map=effective,
            cache=cache,
            names=[p.name for p in pairs],
            valid_masks=valid if any(v is not None for v in valid) else None,
            notes=notes,
        )
        self.layout = layout.name
        self.root = layout.root
        self.split = split

    @classmethod
    def from_layout(cls, layout: Layout, split: str, **kwargs: Any) -> LayoutDataset:
        """Build a ``cls`` (a subclass may have its own constructor) from a layout."""
        obj = cls.__new__(cls)
        LayoutDataset.__init__(obj, layout, split, **kwargs)
        return obj


def paths_of(pairs: Iterable[Pair]) -> list[Path]:
    """Every file of ``pairs`` (images, masks, region masks)."""
    out: list[Path] = []
    for p in pairs:
        out += [p.image, p.mask] + ([p.valid] if p.valid is not None else [])
    return out

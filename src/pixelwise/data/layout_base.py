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

from pixelwise.data import cache as _cache
from pixelwise.data.base import PairedFileDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import read_raw_mask
from pixelwise.data.labelmaps import (
    LabelSpec,
    merge_label_maps,
    parse_label_spec,
    round_map,
    threshold_map,
)
from pixelwise.data.maskvalues import lossy_values, value_histogram
from pixelwise.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
#: in order of preference: when several mask files share a name, the first suffix wins
MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp", ".webp", ".jpg", ".jpeg")
JPEG_SUFFIXES = (".jpg", ".jpeg")
ALL = "all"  # the split holding every pair of a dataset

__all__ = [
    "ALL",
    "IMAGE_SUFFIXES",
    "JPEG_SUFFIXES",
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
    "resolve_label_spec",
    "seeded_split",
    "stored_values",
]


class Pair(NamedTuple):
    """One sample's files: ``valid`` is an optional region mask (0 = outside: ignored)."""

    name: str
    image: Path
    mask: Path
    valid: Path | None = None


class Problem(NamedTuple):
    """A problem with one file (or folder); ``str()`` gives ``"path: problem"``. ``kind``
    names problems a program may want to single out (``"lossy-masks"``); "" for the rest."""

    path: str
    problem: str
    kind: str = ""

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
    prefer: bool = False,
) -> dict[str, Path]:
    """Map ``key(file)`` -> file for the files of ``folder`` with one of ``suffixes``
    (case-insensitive; hidden files and keys of ``None`` skipped). Two files with one key:
    with ``prefer``, the one whose suffix comes first in ``suffixes`` is taken (``a.png`` over
    ``a.jpg``); otherwise strict -> DataError naming them; lenient -> a problem per extra
    file, the first is kept."""
    found: dict[str, list[Path]] = {}
    files = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(files):
        if p.name.startswith(".") or p.suffix.lower() not in suffixes or not p.is_file():
            continue
        k = key(p)
        if k is not None:
            found.setdefault(k, []).append(p)
    if prefer:
        for k, ps in found.items():
            rank = [suffixes.index(p.suffix.lower()) for p in ps]
            best = [p for p, r in zip(ps, rank, strict=True) if r == min(rank)]
            found[k] = best
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
    hold), ``options`` (extra data args and their types) and implement :meth:`detect` and
    either :meth:`fixed_splits` + :meth:`find_fixed` (splits stored as such; a missing "val"
    is then carved out of "train") or :meth:`splits` + :meth:`find` themselves; built-in
    classes and label maps via :meth:`declared_classes` and :meth:`base_label_map`.

    ``val_fraction`` and ``seed`` are used where a train/val split is a seeded random split of
    one pool of samples (a folder without val/, a flat folder, ISBI, DRIVE); the seed is the
    layout's (default 0), not the training seed, so every run holds out the same images. Every
    layout also has the split "all": every pair of every split, once (:meth:`pairs`).

    After a split is listed, ``split_note`` tells how its validation set was carved (None when
    it was not); after :meth:`labels`, ``classes_inferred`` says whether the classes were
    inferred from the mask values, and ``label_pixels`` (int64 (256,), pixels per label over
    every mask) holds what they were inferred from.
    """

    name: ClassVar[str] = ""
    expected: ClassVar[str] = ""
    options: ClassVar[dict[str, type]] = {}
    #: how the note on a carved validation set starts, and what it was carved from
    val_missing: ClassVar[str] = "no val split"
    pool_source: ClassVar[str] = "train/"

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
                    f"(its options: {takes}; all layouts take limit and mask_threshold)"
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
        self.split_note: str | None = None
        self.classes_inferred = False
        self.label_pixels: np.ndarray | None = None
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

    def fixed_splits(self) -> list[str]:
        """The splits stored as such (folders, split lists)."""
        raise NotImplementedError

    def find_fixed(self, split: str, problems: Problems = None) -> list[Pair]:
        """The pairs of one of :meth:`fixed_splits`."""
        raise NotImplementedError

    def carves_val(self) -> bool:
        """Is "val" carved out of "train" (a "train" split stored, but no "val")? False for
        layouts that list their splits themselves."""
        try:
            fixed = self.fixed_splits()
        except NotImplementedError:
            return False
        return "train" in fixed and "val" not in fixed

    def splits(self) -> list[str]:
        """Names of the splits that exist ("all" aside)."""
        fixed = self.fixed_splits()
        if not self.carves_val():
            return fixed
        i = fixed.index("train") + 1
        return [*fixed[:i], "val", *fixed[i:]]

    def find(self, split: str, problems: Problems = None) -> list[Pair]:
        """The pairs of ``split`` (strict or lenient, see the module docstring)."""
        if split in ("train", "val") and self.carves_val():
            pool = self.find_fixed("train", problems)
            if len(pool) >= 2:
                return pool_split(pool, split, self)
            if split == "train" or problems is not None:
                return pool if split == "train" else []
            raise DataError(
                self.root,
                f"{self.val_missing}, and {self.pool_source or 'the folder'} has "
                f"{len(pool)} image(s): nothing to hold out for validation; add a val split "
                "or more images",
            )
        if split not in self.fixed_splits():
            raise self.unknown_split(split)
        return self.find_fixed(split, problems)

    def pairs(self, split: str, problems: Problems = None) -> list[Pair]:
        """:meth:`find`, and "all": every pair of every split (:meth:`all_pairs`)."""
        if split == ALL:
            return self.all_pairs(problems)
        return self.find(split, problems)

    def unknown_split(self, split: str) -> DataError:
        return DataError(
            self.root,
            f"no '{split}' split in this {self.name} dataset (it has: "
            f"{', '.join([*self.splits(), ALL]) or 'none'})",
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
        """Every pair of every split, each once, in file order (folders, then natural name
        order); names that repeat across splits get their folder as a prefix."""
        seen: dict[tuple[Path, Path], Pair] = {}
        carving = self.carves_val()  # then the stored splits hold every pair
        find = self.find_fixed if carving else self.find
        for split in self.fixed_splits() if carving else self.splits():
            for p in find(split, problems):
                seen.setdefault((p.image, p.mask), p)
        pairs = sorted(seen.values(), key=lambda p: natural_key(self._relative(p.image)))
        counts: dict[str, int] = {}
        for p in pairs:
            counts[p.name] = counts.get(p.name, 0) + 1
        return [
            p._replace(name=str(Path(self._relative(p.image)).with_suffix("")))
            if counts[p.name] > 1
            else p
            for p in pairs
        ]

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()


def _carve_note(layout: Layout, kept: int, total: int, how: str) -> str:
    source = f"{layout.pool_source} " if layout.pool_source else ""
    return f"{layout.val_missing}: {kept} of {total} {source}images held out for validation ({how})"


def pool_split(
    pool: list[Pair], split: str, layout: Layout, extra: Mapping[str, list[Pair]] | None = None
) -> list[Pair]:
    """ "train"/"val" as a seeded split of ``pool`` (or K-fold when the layout has ``folds``),
    "trainval" = the whole pool; ``extra`` holds other fixed splits (e.g. DRIVE's "test").
    Sets ``layout.split_note`` for "train" and "val"."""
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
        how = f"fold {fold} of {folds}: --data-arg folds={folds} --data-arg fold={fold}"
        layout.split_note = _carve_note(layout, len(val), len(pool), how)
        return [pool[i] for i in idx]
    if "fold" in layout.opts:
        raise ConfigError("--data-arg fold: give folds=K too (K-fold cross-validation)")
    if len(pool) < 2:
        raise DataError(layout.root, f"only {len(pool)} sample(s); need at least 2 to split")
    train_idx, val_idx = seeded_split(len(pool), layout.val_fraction, layout.seed)
    seeded = "seeded" if layout.seed == 0 else f"seed {layout.seed}"
    how = f"--val-fraction {layout.val_fraction:g}, {seeded}"
    layout.split_note = _carve_note(layout, len(val_idx), len(pool), how)
    return [pool[i] for i in (train_idx if split == "train" else val_idx)]


# ---- label maps that need the data: thresholds and rounding -----------------------------------


def stored_values(layout: Layout, pairs: Iterable[Pair] | None = None) -> np.ndarray:
    """Pixels per stored 8-bit value, int64 (256,), over the masks of ``pairs`` (default every
    pair of the dataset), before any label map. Colour, 16-bit and unreadable masks are left
    out. Cached per dataset (keyed by the masks' paths, sizes and mtimes)."""
    masks = sorted({p.mask for p in (layout.all_pairs() if pairs is None else pairs)})
    try:
        key = _cache.cache_key("values", _cache.file_signature(masks))
    except OSError:
        key = None
    entry = _cache.load("values", key) if key else None
    if entry is not None and len(entry.get("hist", ())) == 256:
        return np.asarray(entry["hist"], dtype=np.int64)
    hist = np.zeros(256, dtype=np.int64)
    for m in masks:
        try:
            h = value_histogram(read_raw_mask(m))
        except DataError:
            continue
        if h is not None:
            hist += h
    if key:
        _cache.save("values", key, {"hist": hist.tolist()})
    return hist


def resolve_label_spec(
    spec: LabelSpec,
    layout: Layout | None = None,
    hist: np.ndarray | None = None,
    pairs: Iterable[Pair] | None = None,
) -> tuple[dict[int, int] | None, list[str]]:
    """The label map a :class:`LabelSpec` means for this dataset, and a note on what a rule
    does. ``round`` without class values takes them from the masks (``hist``, else
    :func:`stored_values` of ``layout``'s ``pairs``, default all); explicit entries override
    the rule's."""
    entries = dict(spec.entries) if spec.entries else None
    if spec.threshold is not None:
        t = spec.threshold
        note = (
            f"--mask-threshold {t}: stored mask values {t}..255 read as class 1, "
            f"0..{t - 1} as class 0"
        )
        return {**threshold_map(t), **(entries or {})}, [note]
    if not spec.round:
        return entries, []
    if entries:
        mapping = round_map(entries, entries)
        values = sorted(entries)
    else:
        if hist is None:
            if layout is None:
                raise ConfigError("--label-map round: needs the dataset's masks")
            hist = stored_values(layout, pairs)
        values = _class_values(hist)
        mapping = round_map(values)
    labels = sorted({mapping[v] for v in values})
    note = (
        f"--label-map round: stored mask values rounded to the nearest of "
        f"{', '.join(map(str, values))} (read as labels {', '.join(map(str, labels))})"
    )
    return mapping, [note]


def _class_values(hist: np.ndarray) -> list[int]:
    lossy = lossy_values(hist)
    if lossy is not None:
        return list(lossy.class_values)
    present = np.flatnonzero(hist).tolist()
    if not present:
        raise ConfigError("--label-map round: no 8-bit single-channel masks to read values from")
    if len(present) > 64:
        raise ConfigError(
            f"--label-map round: the masks hold {len(present)} distinct values and no few "
            "dominant ones; name the class values, e.g. --label-map round,0:0,255:1"
        )
    return present


def jpeg_mask_note(pairs: list[Pair], root: Path, checked: bool = False) -> str | None:
    """A note when masks are JPEG files (lossy: values change near edges), or None.
    ``checked``: the note of ``pixelwise data check`` itself (which looks at the values)."""
    jpeg = [p.mask for p in pairs if p.mask.suffix.lower() in JPEG_SUFFIXES]
    if not jpeg:
        return None
    try:
        first = jpeg[0].relative_to(root).as_posix()
    except ValueError:
        first = str(jpeg[0])
    what = f"{len(jpeg)} of {len(pairs)} masks are JPEG files (e.g. {first})"
    if checked:
        return (
            f"{what}: JPEG changes mask values near edges; 'pixelwise data fix {root} --out "
            "CLEAN' writes them as PNG"
        )
    return (
        f"{what}, read as they are: JPEG changes mask values near edges; run 'pixelwise data "
        f"check {root}' to see whether they need --mask-threshold or --label-map round"
    )


class LayoutDataset(PairedFileDataset):
    """The samples of one split of a dataset in any layout.

    ``classes`` overrides the layout's (e.g. val takes train's); ``label_map`` (text, mapping
    or :class:`LabelSpec`, see :func:`parse_label_spec`) is applied to the stored values,
    replacing the layout's own mapping for the values it names; ``mask_threshold`` reads
    stored values ``>= T`` as class 1, the rest as 0; ``limit`` keeps the first N samples of
    the split (quick experiments); ``split`` may be "all" (every pair).

    Attributes besides :class:`PairedFileDataset`'s: ``layout`` (its name), ``root``,
    ``split``, ``notes`` (choices worth telling the user: a carved validation set, a label
    rule, 0/255 read as binary, JPEG masks), ``label_map`` (the effective map),
    ``classes_inferred`` (the classes come from the mask values, not from a list) and
    ``label_pixels`` (pixels per label over every mask when inferred, else None); see
    :func:`pixelwise.data.check_class_count`.
    """

    def __init__(
        self,
        layout: Layout,
        split: str,
        channels: int | None = None,
        classes: ClassInfo | None = None,
        label_map: str | Mapping[Any, Any] | LabelSpec | None = None,
        cache: bool = False,
        limit: int | None = None,
        mask_threshold: int | None = None,
    ) -> None:
        spec = parse_label_spec(label_map, mask_threshold)
        pairs = layout.pairs(split)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ConfigError(f"--data-arg limit={limit!r}: must be a positive integer")
            pairs = pairs[:limit]
        if not pairs:
            raise DataError(layout.root, f"the '{split}' split has no samples")
        split_note = layout.split_note if split in ("train", "val") else None
        user_map, rule_notes = resolve_label_spec(spec, layout)
        given = classes
        classes, effective, notes = layout.labels(classes, user_map)
        jpeg = None if spec.rule else jpeg_mask_note(pairs, layout.root)
        valid = [p.valid for p in pairs]
        super().__init__(
            [(p.image, p.mask) for p in pairs],
            classes,
            channels,
            label_map=effective,
            cache=cache,
            names=[p.name for p in pairs],
            valid_masks=valid if any(v is not None for v in valid) else None,
            notes=[n for n in (*rule_notes, *notes, split_note, jpeg) if n],
        )
        self.layout = layout.name
        self.root = layout.root
        self.split = split
        self.classes_inferred = given is None and layout.classes_inferred
        self.label_pixels = layout.label_pixels if self.classes_inferred else None

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

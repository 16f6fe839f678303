"""Checking a dataset before training on it: every file of every split is read, every problem
is listed with its file (``pixelwise data check DIR``; ``pixelwise train`` runs it first).

Problems found: unreadable, empty (0-byte), truncated or non-image files (e.g. a text file
named .png); image/mask size mismatches (with the fix when the aspect ratios agree); label
values outside the classes; colour-coded masks with a colour that is no class colour; images
without a mask and masks without an image; two files with one name stem; byte-identical images
under different names; mask values that look lossy (JPEG-compressed or anti-aliased binary or
palette masks, see :mod:`pixelwise.data.maskvalues`): one problem of kind ``"lossy-masks"``
for the whole dataset, naming a mask and the fix, unless a threshold or ``round`` reads them.
Listing is lenient, so one bad file does not hide the others. The report also counts samples
per split, image sizes, image and mask modes, and the pixels of each class; its notes tell how
a validation set was carved, what a label rule does, and whether masks are JPEG files.

A passing report can be cached (``cache=True``, what ``train`` does): it is keyed by the paths,
sizes and mtimes of every file, so re-checking an unchanged dataset costs one ``stat`` per file.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelwise.data import cache as _cache
from pixelwise.data.base import apply_valid_mask, size_hint
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import decode_mask, read_image, read_raw_mask
from pixelwise.data.labelmaps import LabelSpec, parse_label_spec
from pixelwise.data.layout_base import JPEG_SUFFIXES, jpeg_mask_note, resolve_label_spec
from pixelwise.data.layouts import (
    Layout,
    Pair,
    Problem,
    label_map_text,
    make_layout,
    merge_label_maps,
    paths_of,
)
from pixelwise.data.maskvalues import (
    LossyValues,
    class_count_problem,
    lossy_message,
    lossy_values,
    value_histogram,
)
from pixelwise.errors import ConfigError, DataError

__all__ = ["LOSSY_MASKS", "CheckReport", "check_dataset"]

LOSSY_MASKS = "lossy-masks"  # the kind of the problem "mask values look lossy"
TABLE_ROWS = 40  # classes shown in the text report's table

Progress = Callable[[Iterable], Iterator]


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``problems`` empty <=> ``ok``.

    ``class_pixels[i]``: pixels of class i over every distinct pair read (after the label map;
    ``ignored_pixels`` counts the ignore index); ``image_sizes``: ``{"min", "max",
    "most_common": "WxH", "most_common_count", "distinct"}`` (smallest/largest by area);
    ``image_modes`` / ``mask_modes``: Pillow mode -> number of files; ``image_channels``:
    natural channel count ("1" gray, "3" colour) -> number of images.
    """

    root: str
    layout: str
    splits: dict[str, int]
    pairs: int
    classes: ClassInfo | None
    label_map: str
    class_pixels: list[int]
    ignored_pixels: int
    image_sizes: dict[str, Any]
    image_modes: dict[str, int]
    mask_modes: dict[str, int]
    image_channels: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def frequencies(self) -> list[float]:
        """Share of the labelled pixels per class (sums to 1; zeros when nothing is labelled)."""
        total = sum(self.class_pixels)
        return [c / total if total else 0.0 for c in self.class_pixels]

    def relative(self, path: str) -> str:
        """``path`` relative to the dataset root when inside it."""
        return _relative(path, self.root)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = self.classes.to_dict() if self.classes is not None else None
        d["problems"] = [
            {"path": p.path, "problem": p.problem, "kind": p.kind} for p in self.problems
        ]
        d["frequencies"] = self.frequencies
        d["ok"] = self.ok
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckReport:
        d = dict(d)
        d.pop("frequencies", None)
        d.pop("ok", None)
        d["classes"] = ClassInfo.from_dict(d["classes"]) if d.get("classes") else None
        d["problems"] = [
            Problem(p["path"], p["problem"], p.get("kind", "")) for p in d.get("problems", [])
        ]
        return cls(**d)

    def format(self) -> str:
        """The report as text (tables, notes, then every problem, one per line)."""
        lines = [f"dataset  {self.root}  ({self.layout} layout)"]
        split_text = ", ".join(f"{s} {n}" for s, n in self.splits.items()) or "none"
        lines.append(f"splits   {split_text}  ({self.pairs} distinct pairs read)")
        s = self.image_sizes
        if s.get("distinct"):
            lines.append(
                f"sizes    min {s['min']}, max {s['max']}, most common {s['most_common']} "
                f"({s['most_common_count']} images; {s['distinct']} distinct size(s))"
            )
        modes = ", ".join(f"{m} {n}" for m, n in sorted(self.image_modes.items()))
        mmodes = ", ".join(f"{m} {n}" for m, n in sorted(self.mask_modes.items()))
        chans = ", ".join(f"{c}-channel {n}" for c, n in sorted(self.image_channels.items()))
        lines.append(f"modes    images: {modes or '-'} ({chans or '-'}); masks: {mmodes or '-'}")
        if self.label_map:
            shown = self.label_map if len(self.label_map) <= 80 else self.label_map[:77] + "..."
            lines.append(f"labels   map {shown}")
        if self.classes is not None:
            names = list(self.classes.names)
            width = max(len("class"), *(len(n) for n in names), len("(ignored)"))
            lines += ["", f"{'class':<{width}}  {'pixels':>14}  {'share':>7}"]
            rows = list(zip(names, self.class_pixels, self.frequencies, strict=True))
            for name, n, f in rows[:TABLE_ROWS]:
                lines.append(f"{name:<{width}}  {n:>14,}  {100 * f:>6.2f}%")
            if len(rows) > TABLE_ROWS:
                rest = rows[TABLE_ROWS:]
                share = 100 * sum(f for _, _, f in rest)
                lines.append(f"({len(rest)} more classes, {share:.2f}% of the pixels)")
            lines.append(f"{'(ignored)':<{width}}  {self.ignored_pixels:>14,}")
        for note in self.notes:
            lines.append(f"note: {note}")
        lines.append("")
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {self.relative(p.path)}: {p.problem}" for p in self.problems]
        return "\n".join(lines)

    def summary(self, limit: int = 3) -> str:
        """One line: how many problems, the first ``limit``, and what to run for the rest."""
        n = len(self.problems)
        shown = "; ".join(f"{self.relative(p.path)}: {p.problem}" for p in self.problems[:limit])
        more = ", e.g." if n > limit else ":"
        return (
            f"{n} problem(s) in the data{more} {shown}; run 'pixelwise data check {self.root}' "
            "for the full list (or pass --no-check to train anyway)"
        )


def _relative(path: str | Path, root: str | Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class _Acc:
    problems: list[Problem] = field(default_factory=list)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    sizes: Counter = field(default_factory=Counter)
    image_modes: Counter = field(default_factory=Counter)
    mask_modes: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    digests: dict[bytes, list[Path]] = field(default_factory=dict)
    values: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    lossy: list[tuple[Path, LossyValues]] = field(default_factory=list)
    masks: int = 0

    def problem(self, path: str | Path, text: str, kind: str = "") -> None:
        self.problems.append(Problem(str(path), _one_line(text), kind))


def _mode(path: Path) -> str:
    try:
        with Image.open(path) as im:
            return im.mode
    except Exception:  # only called after a successful read; be safe anyway
        return "?"


def _read_mask(
    pair: Pair,
    classes: ClassInfo | None,
    label_map: dict[int, int] | None,
    acc: _Acc,
    detect_lossy: bool,
) -> np.ndarray | None:
    """The labels of ``pair.mask``; its stored values go into ``acc.values``, and a mask whose
    values look lossy into ``acc.lossy`` (its label problems then stay unreported: the one
    lossy-masks problem covers them)."""
    try:
        raw = read_raw_mask(pair.mask)
        acc.mask_modes[_mode(pair.mask)] += 1
        acc.masks += 1
        hist = value_histogram(raw)
        lossy = lossy_values(hist) if hist is not None and detect_lossy else None
        if hist is not None:
            acc.values += hist
        if lossy is not None:
            acc.lossy.append((pair.mask, lossy))
        try:
            return decode_mask(raw, pair.mask, classes, label_map)
        except DataError as e:
            if lossy is None:
                acc.problem(e.path, e.problem)
    except DataError as e:
        acc.problem(e.path, e.problem)
    except ConfigError as e:  # e.g. an unusable label map for this mask
        acc.problem(pair.mask, str(e))
    return None


def _read_pair(
    pair: Pair,
    classes: ClassInfo | None,
    label_map: dict[int, int] | None,
    acc: _Acc,
    root: Path,
    detect_lossy: bool = True,
) -> None:
    image = None
    try:
        image = read_image(pair.image)
        acc.image_modes[_mode(pair.image)] += 1
        h, w = image.shape[:2]
        acc.sizes[(w, h)] += 1
        acc.channels[str(image.shape[2])] += 1
        digest = hashlib.blake2b(pair.image.read_bytes(), digest_size=16).digest()
        acc.digests.setdefault(digest, []).append(pair.image)
    except DataError as e:
        acc.problem(e.path, e.problem)
    except OSError as e:
        acc.problem(pair.image, f"cannot read ({e})")
    mask = _read_mask(pair, classes, label_map, acc, detect_lossy)
    if image is not None and mask is not None and image.shape[:2] != mask.shape:
        (h, w), (mh, mw) = image.shape[:2], mask.shape
        acc.problem(
            pair.image,
            f"image is {w}x{h} but its mask {pair.mask.name} is {mw}x{mh}"
            + size_hint((w, h), (mw, mh), root),
        )
        mask = None
    if mask is not None and pair.valid is not None:
        try:
            mask = apply_valid_mask(mask, pair.valid, 255, pair.mask)
        except DataError as e:
            acc.problem(e.path, e.problem)
            mask = None
    if mask is not None:
        acc.hist += np.bincount(mask.ravel(), minlength=256)


def _lossy_problem(acc: _Acc, root: Path) -> None:
    """One problem for every mask whose values look lossy (the dataset's values as a whole,
    or single masks), naming the first such mask and the fix."""
    overall = lossy_values(acc.values)
    if overall is None and not acc.lossy:
        return
    path, lossy = acc.lossy[0] if acc.lossy else (None, overall)
    lossy = overall or lossy
    assert lossy is not None
    jpeg = path is not None and path.suffix.lower() in JPEG_SUFFIXES
    text = lossy_message(lossy, root, jpeg)
    if len(acc.lossy) > 1:
        text = text.replace("); read", f"; {len(acc.lossy)} of {acc.masks} masks); read", 1)
    acc.problem(path if path is not None else root, text, LOSSY_MASKS)


def _lut(label_map: Mapping[int, int]) -> np.ndarray:
    table = np.arange(256)
    for k, v in label_map.items():
        if k < 256:
            table[k] = v
    return table


def _sizes(sizes: Counter) -> dict[str, Any]:
    if not sizes:
        return {"distinct": 0}
    by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
    common, count = sizes.most_common(1)[0]

    def fmt(wh: tuple[int, int]) -> str:
        return f"{wh[0]}x{wh[1]}"

    return {
        "min": fmt(by_area[0]),
        "max": fmt(by_area[-1]),
        "most_common": fmt(common),
        "most_common_count": count,
        "distinct": len(sizes),
    }


def _list(
    layout: Layout, splits: Iterable[str] | None, limit: int | None
) -> tuple[dict[str, int], list[Pair], list[Problem], list[str]]:
    """Samples per split, every distinct pair, the listing problems (lenient listing), and
    the note on a carved validation set."""
    listing: list[Problem] = []
    per_split: dict[str, int] = {}
    entries: dict[tuple[Path, Path], Pair] = {}
    notes: list[str] = []
    for split in list(splits) if splits is not None else layout.splits():
        found = layout.pairs(split, listing)
        if split in ("train", "val") and layout.split_note and layout.split_note not in notes:
            notes.append(layout.split_note)
        if limit is not None:
            found = found[:limit]
        per_split[split] = len(found)
        for p in found:
            entries.setdefault((p.image, p.mask), p)
    problems = list(dict.fromkeys(Problem(p.path, _one_line(p.problem), p.kind) for p in listing))
    return per_split, list(entries.values()), problems, notes


def _cache_key(layout: Layout, pairs: list[Pair], *parts: Any) -> str | None:
    """The check cache's key for these files and options (None when a file cannot be read)."""
    try:
        files = _cache.file_signature(paths_of(pairs) + layout.extra_files())
    except OSError:
        return None
    return _cache.cache_key("check", layout.name, str(layout.root.absolute()), files, *parts)


def _cached(key: str | None) -> CheckReport | None:
    """A passing report stored under ``key``, or None."""
    entry = _cache.load("check", key) if key else None
    if entry is None:
        return None
    try:
        report = CheckReport.from_dict(entry)
    except (ConfigError, KeyError, TypeError):
        return None
    if not report.ok:
        return None
    report.from_cache = True
    return report


def _read_all(
    layout: Layout,
    pairs: list[Pair],
    declared: ClassInfo | None,
    label_map: dict[int, int] | None,
    problems: list[Problem],
    progress: Progress | None,
    detect_lossy: bool,
) -> _Acc:
    """Read every pair; byte-identical images and lossy-looking mask values become
    problems."""
    acc = _Acc(problems=problems)
    for pair in progress(pairs) if progress else pairs:
        _read_pair(pair, declared, label_map, acc, layout.root, detect_lossy)
    for same in acc.digests.values():
        first = _relative(same[0], layout.root)
        for p in same[1:]:
            acc.problem(p, f"byte-identical to {first} (a duplicate under another name)")
    if detect_lossy:
        _lossy_problem(acc, layout.root)
    return acc


def _class_count_note(layout: Layout, classes: ClassInfo | None, hist: np.ndarray) -> list[str]:
    if classes is None or not layout.classes_inferred:
        return []
    problem = class_count_problem(classes.num_classes, hist[: classes.num_classes].tolist())
    if problem is None:
        return []
    return [
        f"{problem}: training refuses classes like these; read the masks with a threshold or "
        "--label-map round, or write a classes.txt (or pass --force-classes) if they are right"
    ]


def _report(
    layout: Layout,
    acc: _Acc,
    per_split: dict[str, int],
    pairs: list[Pair],
    classes: ClassInfo | None,
    first_map: dict[int, int] | None,
    user_map: dict[int, int] | None,
    spec: LabelSpec,
    notes: list[str],
    rule_notes: list[str],
) -> CheckReport:
    """The report, once every pair is read: final classes, pixels per class, notes."""
    final_classes: ClassInfo | None = None
    effective = first_map
    label_notes: list[str] = []
    try:
        final_classes, effective, label_notes = layout.labels(classes, user_map, seen=acc.hist > 0)
    except DataError as e:
        acc.problem(e.path, e.problem)
    hist = acc.hist
    if effective != first_map and effective is not None:  # e.g. 0/255 masks read as binary
        extra = {k: v for k, v in effective.items() if (first_map or {}).get(k) != v}
        hist = np.bincount(_lut(extra), weights=hist, minlength=256).astype(np.int64)
    n = final_classes.num_classes if final_classes is not None else 0
    ignore = final_classes.ignore_index if final_classes is not None else 255
    jpeg = None if spec.rule else jpeg_mask_note(pairs, layout.root, checked=True)
    problems = list(dict.fromkeys(acc.problems))
    if not any(p.kind == LOSSY_MASKS for p in problems):
        notes = notes + _class_count_note(layout, final_classes, hist)
    return CheckReport(
        root=str(layout.root),
        layout=layout.name,
        splits=per_split,
        pairs=len(pairs),
        classes=final_classes,
        label_map=spec.text() if spec.rule else label_map_text(effective),
        class_pixels=[int(v) for v in hist[:n]],
        ignored_pixels=int(hist[ignore]),
        image_sizes=_sizes(acc.sizes),
        image_modes=dict(acc.image_modes),
        mask_modes=dict(acc.mask_modes),
        image_channels=dict(acc.channels),
        problems=problems,
        notes=[x for x in (*rule_notes, *label_notes, *notes, jpeg) if x],
    )


def check_dataset(
    root: str | Path,
    format: str | None = None,
    label_map: str | Mapping[Any, Any] | LabelSpec | None = None,
    progress: Progress | None = None,
    *,
    splits: Iterable[str] | None = None,
    classes: ClassInfo | None = None,
    limit: int | None = None,
    cache: bool = False,
    mask_threshold: int | None = None,
    **options: Any,
) -> CheckReport:
    """Read every (image, mask) pair of every split of the dataset at ``root`` and report.

    ``format``/``label_map``/``mask_threshold``/``classes``/``limit``/``options``
    (``val_fraction``, ``folds``, ``masks``, ...) mean what they mean for
    :func:`pixelwise.data.open_dataset` (with ``masks=DIR``, ``root`` is an images folder);
    ``splits`` restricts the check (default: all; "all" is every pair); ``progress`` wraps
    the iterable of pairs (a tqdm bar). A folder that is no dataset at all raises DataError;
    problems *in* a dataset are collected, not raised. Never prints.
    """
    spec = parse_label_spec(label_map, mask_threshold)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--data-arg limit={limit!r}: must be a positive integer")
    layout = make_layout(root, format, **options)
    per_split, pairs, problems, notes = _list(layout, splits, limit)
    user_map, rule_notes = resolve_label_spec(spec, layout, pairs=pairs)
    try:
        declared = classes or layout.declared_classes()
    except DataError as e:  # e.g. a malformed classes.txt: a problem, and labels stay unknown
        problems.append(Problem(e.path, _one_line(e.problem)))
        declared = None
        classes = None
    base_map = layout.base_label_map(declared) if declared is not None else None
    first_map = merge_label_maps(base_map, user_map)

    key = None
    if cache and not problems:
        key = _cache_key(
            layout,
            pairs,
            spec.text(),
            classes.to_dict() if classes is not None else None,
            sorted((k, str(v)) for k, v in options.items()),
            per_split,
        )
        cached = _cached(key)
        if cached is not None:
            return cached

    acc = _read_all(layout, pairs, declared, first_map, problems, progress, spec.rule is None)
    report = _report(
        layout, acc, per_split, pairs, classes, first_map, user_map, spec, notes, rule_notes
    )
    if key is not None and report.ok:
        _cache.save("check", key, report.to_dict())
    return report

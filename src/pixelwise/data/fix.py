"""``pixelwise data fix DIR --out CLEAN``: a cleaned copy of a messy dataset, and a report.

:func:`fix_dataset` reads a dataset folder in any layout (or an images folder with a masks
folder) and writes a generic-layout copy (``images/`` + ``masks/`` for a flat or paired source,
else one ``SPLIT/images/`` + ``SPLIT/masks/`` per stored split) that ``pixelwise train`` reads
without options:

- masks become palette PNGs of class indices, named after their image: binarised
  (``mask_values="binarize"``: stored values at or above a threshold -> 1, the rest 0),
  rounded to the nearest class value (``"round"``), or read as they are (``"keep"``); ``"auto"``
  (default) binarises or rounds when the values look lossy (:mod:`pixelwise.data.maskvalues`)
  and keeps them otherwise. The layout's own label map (e.g. CamVid's void -> ignore) and
  region masks (DRIVE's field of view -> ignore) are applied;
- an image and a mask of different sizes but one aspect ratio: ``resize="images"`` scales the
  image to its mask (Lanczos, written as PNG), ``resize="masks"`` scales the mask to its image
  (nearest neighbour); without ``resize``, or when the aspect ratios differ, the pair is
  skipped;
- byte-identical images: the first (in file order) is kept, the others dropped with their
  masks (``dedupe=False`` keeps them);
- unreadable files and unpaired files are skipped;
- ``classes.txt`` is written, and the report as ``fix_report.json`` and ``fix_report.txt``.

Every change, drop and skip is in the report, one line each. ``DIR`` is only read. The copy is
written to a temporary folder beside ``CLEAN`` and renamed into place at the end, so a failure
leaves no half-written ``CLEAN``; ``CLEAN`` must be new (or an empty folder) and outside
``DIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from pixelwise.data.base import apply_valid_mask, same_aspect
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import decode_mask, read_image, read_raw_mask, write_image, write_mask
from pixelwise.data.labelmaps import LabelSpec, parse_label_spec
from pixelwise.data.layout_base import (
    JPEG_SUFFIXES,
    Layout,
    Pair,
    Problem,
    resolve_label_spec,
    stored_values,
)
from pixelwise.data.layouts import make_layout
from pixelwise.data.maskvalues import lossy_values
from pixelwise.errors import ConfigError, DataError
from pixelwise.files import atomic_open, write_json

__all__ = ["MASK_VALUES", "RESIZE_MODES", "FixChange", "FixReport", "fix_dataset"]

MASK_VALUES = ("auto", "binarize", "round", "keep")
RESIZE_MODES = (None, "images", "masks")
REPORT_JSON = "fix_report.json"
REPORT_TEXT = "fix_report.txt"

Progress = Callable[[Iterable], Iterator]


class FixChange(NamedTuple):
    """One line of the report: a source ``file`` (relative to DIR), what happened to it, and
    the file written for it (relative to CLEAN; "" when nothing was written)."""

    file: str
    change: str
    to: str = ""

    def __str__(self) -> str:
        arrow = f" -> {self.to}" if self.to else ""
        return f"{self.file}{arrow}: {self.change}"


@dataclass
class FixReport:
    """What :func:`fix_dataset` did: ``written`` pairs per output split ("" for a flat copy),
    ``changes`` (files written differently from their source), ``dropped`` (duplicates),
    ``skipped`` (pairs that could not be written as they are), ``mask_values`` (how mask values were
    read: "binarize", "round" or "keep", with the label map as ``--label-map`` text) and the
    ``classes`` written."""

    src: str
    out: str
    layout: str
    mask_values: str
    classes: ClassInfo
    written: dict[str, int] = field(default_factory=dict)
    changes: list[FixChange] = field(default_factory=list)
    dropped: list[FixChange] = field(default_factory=list)
    skipped: list[FixChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(self.written.values())

    def to_dict(self) -> dict[str, Any]:
        def rows(items: list[FixChange]) -> list[dict[str, str]]:
            return [item._asdict() for item in items]

        return {
            "src": self.src,
            "out": self.out,
            "layout": self.layout,
            "mask_values": self.mask_values,
            "classes": self.classes.to_dict(),
            "written": dict(self.written),
            "pairs": self.pairs,
            "changes": rows(self.changes),
            "dropped": rows(self.dropped),
            "skipped": rows(self.skipped),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line: what was written where."""
        splits = ", ".join(f"{s} {n}" for s, n in self.written.items() if s)
        return (
            f"wrote {self.pairs} pair(s){f' ({splits})' if splits else ''} to {self.out}: "
            f"{len(self.changes)} file(s) changed, {len(self.dropped)} duplicate(s) dropped, "
            f"{len(self.skipped)} skipped; see {Path(self.out) / REPORT_TEXT}"
        )

    def format(self) -> str:
        """The readable report (``fix_report.txt``)."""
        lines = [
            f"pixelwise data fix: {self.src} ({self.layout} layout) -> {self.out}",
            f"masks    {self.mask_values}",
            f"classes  {self.classes.num_classes}: {', '.join(self.classes.names)}",
            self.summary(),
        ]
        lines += [f"note: {n}" for n in self.notes]
        for title, items in (
            ("changed", self.changes),
            ("dropped", self.dropped),
            ("skipped", self.skipped),
        ):
            if items:
                lines += ["", f"{title} ({len(items)}):", *(f"  {item}" for item in items)]
        return "\n".join(lines) + "\n"


# ---- where the copy goes ----------------------------------------------------------------------


def _check_places(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise ConfigError(
            f"--out {out}: inside the dataset folder {src}; write the cleaned copy elsewhere "
            "(the dataset folder is never changed)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already exists and is not an empty folder; give a new one")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block succeeds and
    removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty (checked before)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- what to read ------------------------------------------------------------------------------


def _groups(layout: Layout, problems: list[Problem]) -> list[tuple[str, list[Pair]]]:
    """(output split, pairs) per stored split (each pair once); one group "" for a flat or
    paired folder."""
    if getattr(layout, "kind", None) == "flat":
        return [("", layout.all_pairs(problems))]
    try:
        names = layout.fixed_splits()
        find = layout.find_fixed
    except NotImplementedError:  # pooled layouts (ISBI, DRIVE): their splits as listed
        names = [s for s in layout.splits() if s != "trainval"]
        find = layout.find
    groups, seen = [], set()
    for name in names:  # a pair listed in two splits (VOC's trainval) is written once
        pairs = [p for p in find(name, problems) if (p.image, p.mask) not in seen]
        seen.update((p.image, p.mask) for p in pairs)
        if pairs:
            groups.append((name, pairs))
    return groups


def _mask_spec(
    mode: str, threshold: int | None, label_map: Any, hist: np.ndarray
) -> tuple[str, LabelSpec, tuple[int, ...]]:
    """The ``mask_values`` mode ("auto" decided), the label spec it means for these stored values,
    and the class values (stored values that are no change when met)."""
    user = parse_label_spec(label_map)
    lossy = lossy_values(hist)
    present = tuple(int(v) for v in np.flatnonzero(hist))
    if mode == "auto":
        mode = "keep" if lossy is None else ("binarize" if lossy.kind == "binary" else "round")
    if mode == "keep":
        return mode, user, present
    if mode == "binarize":
        if lossy is not None:
            ends = lossy.class_values
        else:
            ends = (present[0], present[-1]) if len(present) >= 2 else (0, 255)
        t = threshold if threshold is not None else user.threshold
        t = t if t is not None else (ends[0] + ends[-1] + 1) // 2
        spec = parse_label_spec(LabelSpec(user.entries, None, False), t)
        return mode, spec, (ends[0], ends[-1])
    spec = LabelSpec(user.entries, None, True)
    if user.entries:
        return mode, spec, tuple(sorted(user.entries))
    return mode, spec, lossy.class_values if lossy is not None else present


# ---- one pair ------------------------------------------------------------------------------------


@dataclass
class _Job:
    src: Path
    tmp: Path
    classes: ClassInfo
    label_map: dict[int, int] | None
    class_values: np.ndarray
    resize: str | None
    dedupe: bool
    report: FixReport
    digests: dict[bytes, str] = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        """A source file, relative to DIR."""
        try:
            return path.relative_to(self.src).as_posix()
        except ValueError:
            return str(path)

    def rel_out(self, path: Path) -> str:
        """A written file, relative to CLEAN."""
        return path.relative_to(self.tmp).as_posix()


def _fit_sizes(
    job: _Job, pair: Pair, image: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(resized image or None, labels, change text) for a pair of different sizes; DataError
    (a skip) when they cannot be matched."""
    (h, w), (mh, mw) = image.shape[:2], labels.shape
    sizes = f"image {w}x{h}, mask {mw}x{mh}"
    if not same_aspect((w, h), (mw, mh)):
        raise DataError(job.rel(pair.image), f"sizes differ and so do the aspect ratios ({sizes})")
    if job.resize is None:
        raise DataError(
            job.rel(pair.image),
            f"sizes differ, one aspect ratio ({sizes}): pass resize='images' or 'masks' "
            "(--resize images or --resize masks)",
        )
    if job.resize == "images":
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        resized = np.asarray(pil.resize((mw, mh), Image.Resampling.LANCZOS))
        return resized, labels, f"image resized from {w}x{h} to its mask's {mw}x{mh}"
    scaled = np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))
    return None, scaled, f"mask resized from {mw}x{mh} to its image's {w}x{h} (nearest neighbour)"


def _mask_changes(job: _Job, pair: Pair, raw: np.ndarray, labels: np.ndarray) -> list[str]:
    out = []
    if pair.mask.suffix.lower() in JPEG_SUFFIXES:
        out.append("JPEG mask written as PNG")
    elif pair.mask.suffix.lower() != ".png":
        out.append(f"{pair.mask.suffix.lstrip('.').upper()} mask written as PNG")
    if raw.ndim == 2 and raw.dtype == np.uint8:
        off = int(np.count_nonzero(~np.isin(raw, job.class_values)))
        if off:
            out.append(f"{off} pixel(s) off the class values set to the nearest class")
        elif not np.array_equal(raw, labels):
            out.append("values renumbered to class indices")
    return out


class _Read(NamedTuple):
    """A pair read and made consistent, ready to write."""

    digest: bytes
    raw: np.ndarray
    labels: np.ndarray
    resized: np.ndarray | None
    change: str


def _read(job: _Job, pair: Pair) -> _Read | None:
    """Read one pair and match its sizes; None for a dropped duplicate. DataError or OSError:
    the pair is skipped."""
    digest = hashlib.blake2b(pair.image.read_bytes(), digest_size=16).digest()
    if job.dedupe and digest in job.digests:
        job.report.dropped.append(
            FixChange(
                job.rel(pair.image),
                f"byte-identical to {job.digests[digest]}; dropped with its mask "
                f"{job.rel(pair.mask)}",
            )
        )
        return None
    image = read_image(pair.image)
    raw = read_raw_mask(pair.mask)
    labels = decode_mask(raw, pair.mask, job.classes, job.label_map)
    if pair.valid is not None:
        labels = apply_valid_mask(labels, pair.valid, job.classes.ignore_index, pair.mask)
    resized, change = None, ""
    if image.shape[:2] != labels.shape:
        resized, labels, change = _fit_sizes(job, pair, image, labels)
    return _Read(digest, raw, labels, resized, change)


def _write_pair(job: _Job, group: str, pair: Pair) -> None:
    """Read, clean and write one pair; a pair that cannot be read is skipped (and reported),
    a file that cannot be written stops it all (OSError)."""
    try:
        got = _read(job, pair)
    except (DataError, OSError) as e:
        where = job.rel(Path(e.path)) if isinstance(e, DataError) else job.rel(pair.image)
        why = e.problem if isinstance(e, DataError) else f"cannot read ({e})"
        job.report.skipped.append(FixChange(where, f"pair skipped: {why}"))
        return
    if got is None:
        return
    folder = job.tmp / group if group else job.tmp
    name = pair.name.replace("/", "_")
    suffix = ".png" if got.resized is not None else pair.image.suffix
    image_to = folder / "images" / f"{name}{suffix}"
    mask_to = folder / "masks" / f"{name}.png"
    if got.resized is not None:
        write_image(image_to, got.resized)
        job.report.changes.append(FixChange(job.rel(pair.image), got.change, job.rel_out(image_to)))
    else:
        image_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pair.image, image_to)
    write_mask(mask_to, got.labels, job.classes)
    mask_changes = _mask_changes(job, pair, got.raw, got.labels)
    if got.resized is None and got.change:
        mask_changes.append(got.change)
    if pair.valid is not None:
        mask_changes.append(f"pixels outside {job.rel(pair.valid)} set to ignore")
    if mask_changes:
        job.report.changes.append(
            FixChange(job.rel(pair.mask), "; ".join(mask_changes), job.rel_out(mask_to))
        )
    job.digests[got.digest] = job.rel(pair.image)
    job.report.written[group] = job.report.written.get(group, 0) + 1


# ---- the whole dataset ---------------------------------------------------------------------------


def _labels(
    layout: Layout,
    pairs: list[Pair],
    mode: str,
    threshold: int | None,
    label_map: Any,
    classes: ClassInfo | None,
) -> tuple[ClassInfo, dict[int, int] | None, np.ndarray, str, list[str]]:
    """Classes, effective label map, class values, the rule as text, and notes."""
    hist = stored_values(layout, pairs)
    mode, spec, class_values = _mask_spec(mode, threshold, label_map, hist)
    user_map, notes = resolve_label_spec(spec, layout, hist=hist)
    seen = np.zeros(256, dtype=bool)  # labels present, from the readable masks only
    for p in pairs:
        try:
            seen[np.unique(decode_mask(read_raw_mask(p.mask), p.mask, None, user_map))] = True
        except (DataError, ConfigError):  # unreadable or colour masks: skipped or decoded later
            continue
    classes, effective, label_notes = layout.labels(classes, user_map, seen=seen)
    rule = mode if spec.text() in ("", mode) else f"{mode} ({spec.text()})"
    values = np.asarray(class_values, dtype=np.uint8)
    return classes, effective, values, rule, [*notes, *label_notes]


def fix_dataset(
    src: str | Path,
    out: str | Path,
    *,
    mask_values: str = "auto",
    threshold: int | None = None,
    resize: str | None = None,
    dedupe: bool = True,
    format: str | None = None,
    label_map: str | Mapping[Any, Any] | None = None,
    classes: ClassInfo | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> FixReport:
    """Write a cleaned generic-layout copy of the dataset ``src`` to ``out`` and return the
    report (also written there); see the module docstring.

    ``mask_values``: "auto", "binarize" (at ``threshold``, default halfway between the two
    class values, 128 for 0/255), "round" or "keep"; ``resize``: None, "images" or "masks";
    ``format``, ``label_map``, ``classes`` and ``options`` (``masks=DIR`` for an images folder
    with a masks folder, ``val_fraction``, ...) as for :func:`pixelwise.data.open_dataset`.
    ``progress`` wraps the iterable of pairs. Never prints; ``src`` is only read.
    """
    if mask_values not in MASK_VALUES:
        raise ConfigError(f"--mask-values {mask_values!r}: choose one of {', '.join(MASK_VALUES)}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"--resize {resize!r}: choose images or masks (or leave it out)")
    if threshold is not None and mask_values not in ("binarize", "auto"):
        raise ConfigError(
            f"--mask-threshold {threshold}: goes with --mask-values binarize, not {mask_values}"
        )
    src, out = Path(src), Path(out)
    if threshold is not None:
        mask_values = "binarize"
    layout = make_layout(src, format, **options)
    for place in {src, layout.root, *([Path(options["masks"])] if options.get("masks") else [])}:
        _check_places(place, out)
    problems: list[Problem] = []
    groups = _groups(layout, problems)
    pairs = [p for _, ps in groups for p in ps]
    if not pairs:
        raise DataError(src, "no (image, mask) pairs to write")
    classes, effective, values, rule, notes = _labels(
        layout, pairs, mask_values, threshold, label_map, classes
    )
    report = FixReport(str(src), str(out), layout.name, rule, classes, notes=notes)
    report.skipped += [FixChange(_rel(p.path, src), p.problem) for p in problems]
    with _staging(out) as tmp:
        job = _Job(src, tmp, classes, effective, values, resize, dedupe, report)
        items = [(g, p) for g, ps in groups for p in ps]
        for group, pair in progress(items) if progress else items:
            _write_pair(job, group, pair)
        if not report.pairs:
            first = f", e.g. {report.skipped[0]}" if report.skipped else ""
            raise DataError(src, f"no pair could be written ({len(report.skipped)} skipped{first})")
        (tmp / "classes.txt").write_text(classes.to_text())
        write_json(tmp / REPORT_JSON, report.to_dict())
        with atomic_open(tmp / REPORT_TEXT) as f:
            f.write(report.format())
    return report


def _rel(path: str | Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)

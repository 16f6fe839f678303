"""The labeling project: a dataset folder in the generic flat layout that the page writes into.

Layout of ``PROJECT/``::

    classes.txt          one ``name R G B`` line per class (what ``--classes`` named)
    images/<file>        the input images, hard-linked (copied where links are impossible)
    masks/<stem>.png     one palette PNG of class indices per image; 255 = unlabelled
    run/                 the live model, a normal run directory (written by the trainer)
    .lock                held while a server has the project open (a second one is refused)

Every image gets an all-255 mask when it enters the project, so ``pixelwise data check``,
``train`` and ``evaluate`` take ``PROJECT`` as it is at any moment. Strokes are applied by the
server to the mask under a per-image lock and written atomically before the request is answered:
two tabs on one project send strokes, never whole masks, and both survive. A mask file that
cannot be read is named and never overwritten: its image refuses strokes until it is fixed or
deleted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.data.io import image_channels, read_image, read_mask, write_mask
from pixelwise.data.layouts import IMAGE_SUFFIXES
from pixelwise.errors import ConfigError, DataError
from pixelwise.files import atomic_open, check_outputs_apart, link_or_copy

__all__ = [
    "ERASE",
    "LABEL_COLORS",
    "LabelError",
    "Project",
    "Stroke",
    "parse_classes",
    "random_unlabelled",
    "stroke_footprint",
]

ERASE = 255  # the "class" of the eraser: pixels go back to unlabelled
MAX_RADIUS = 512.0
MAX_POINTS = 20_000  # per stroke
#: brush colours of the first classes (Tableau 10: distinct, visible on gray and colour images)
LABEL_COLORS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
HISTORY = 400  # undoable strokes kept per image
CACHE_PIXELS = 256_000_000  # decoded images kept in memory (bytes, about)


class LabelError(Exception):
    """A request the project refuses: ``status`` (HTTP code) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_classes(classes: str | Sequence[str]) -> tuple[str, ...]:
    """``"background,horse"`` or ``["background", "horse"]`` -> names; ConfigError on empty,
    duplicate or malformed names and over 255 classes (masks are 8-bit, 255 is unlabelled)."""
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    names = tuple(str(n).strip() for n in items)
    if not names or names == ("",):
        raise ConfigError("--classes: give the class names, e.g. --classes background,cell")
    for name in names:
        if not name:
            raise ConfigError(f"--classes {','.join(names)}: an empty class name (two commas?)")
        words = name.split()
        if "#" in name or " ".join(words) != name or (len(words) > 1 and _number(words[0])):
            raise ConfigError(
                f"--classes: class name {name!r} cannot be written to classes.txt; use letters, "
                "digits, '-' or '_' (single spaces, no '#', no number as a first word)"
            )
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ConfigError(f"--classes: duplicate class names {', '.join(dups)}; name each once")
    if len(names) > 255:
        raise ConfigError(
            f"--classes: {len(names)} classes; masks are 8-bit with 255 = unlabelled, so at "
            "most 255 classes fit"
        )
    if len(names) < 2:
        raise ConfigError(f"--classes {names[0]}: name at least 2 classes (e.g. background,cell)")
    return names


def _number(word: str) -> bool:
    return word.lstrip("+-").isdigit()


def label_classes(names: Sequence[str], colors: Sequence[Any] | None = None) -> ClassInfo:
    """``ClassInfo`` of ``names`` with the brush colours (``colors`` where given)."""
    palette = list(LABEL_COLORS) + default_palette(256)[len(LABEL_COLORS) :]
    given = list(colors or [])
    chosen = [tuple(given[i]) if i < len(given) else palette[i] for i in range(len(names))]
    return ClassInfo(tuple(names), tuple(chosen))  # type: ignore[arg-type]


def classes_text(classes: ClassInfo) -> str:
    lines = [
        "# pixelwise label: one class per line, 'name R G B' (index = line order, 0 first);",
        f"# mask value {classes.ignore_index} = unlabelled",
    ]
    for name, (r, g, b) in zip(classes.names, classes.colors, strict=True):
        lines.append(f"{name} {r} {g} {b}")
    # said explicitly, so that 0/255 masks of a 2-class project are never read as binary
    lines.append(f"{classes.ignore_index} unlabelled 224 224 192")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Stroke:
    """A brush stroke in image pixel coordinates: ``points`` ``[(x, y), ...]`` (x right, y down,
    pixel ``(row i, column j)`` has its centre at ``(j + 0.5, i + 0.5)``), ``radius`` in pixels,
    ``value`` a class index or :data:`ERASE`."""

    value: int
    radius: float
    points: tuple[tuple[float, float], ...]

    @classmethod
    def from_json(cls, data: Any, num_classes: int) -> Stroke:
        """Check a stroke sent by the page; LabelError(400) naming what is wrong."""
        if not isinstance(data, dict):
            raise LabelError(400, "a stroke must be an object {class, radius, points}")
        value, radius, points = data.get("class"), data.get("radius"), data.get("points")
        if isinstance(value, bool) or not isinstance(value, int):
            raise LabelError(400, f"stroke 'class' must be an integer, got {value!r}")
        if not (0 <= value < num_classes or value == ERASE):
            raise LabelError(
                400, f"stroke class {value}: must be 0..{num_classes - 1} or {ERASE} (eraser)"
            )
        if (
            isinstance(radius, bool)
            or not isinstance(radius, int | float)
            or not 0.5 <= radius <= MAX_RADIUS
        ):
            raise LabelError(400, f"stroke 'radius' must be a number in 0.5..{MAX_RADIUS:g}")
        if not isinstance(points, list) or not 1 <= len(points) <= MAX_POINTS:
            raise LabelError(400, f"stroke 'points' must be a list of 1..{MAX_POINTS} [x, y]")
        out = []
        for p in points:
            if (
                not isinstance(p, list | tuple)
                or len(p) != 2
                or any(isinstance(v, bool) or not isinstance(v, int | float) for v in p)
                or not all(np.isfinite(p))
                or not all(-1e6 < v < 1e6 for v in p)
            ):
                raise LabelError(400, f"stroke point {p!r}: must be [x, y], two finite numbers")
            out.append((float(p[0]), float(p[1])))
        return cls(value, float(radius), tuple(out))

    def to_json(self) -> dict[str, Any]:
        points = [list(p) for p in self.points]
        return {"class": self.value, "radius": self.radius, "points": points}


def stroke_footprint(
    points: Sequence[tuple[float, float]], radius: float, height: int, width: int
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The pixels a stroke covers: those whose centre lies within ``radius`` of the polyline
    ``points`` (a single point: a disc). Returns ``((top, left, bottom, right), bool mask of
    that box)`` or None when it misses the image. ``label.js`` computes the same formula in the
    same order (IEEE doubles), so the page's preview and the saved mask agree pixel for pixel."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    r = float(radius)
    top = max(0, int(np.floor(pts[:, 1].min() - r)))
    left = max(0, int(np.floor(pts[:, 0].min() - r)))
    bottom = min(height, int(np.ceil(pts[:, 1].max() + r)) + 1)
    right = min(width, int(np.ceil(pts[:, 0].max() + r)) + 1)
    if top >= bottom or left >= right:
        return None
    hit = np.zeros((bottom - top, right - left), dtype=bool)
    r2 = r * r
    segments = [(pts[0], pts[0])] if len(pts) == 1 else list(zip(pts[:-1], pts[1:], strict=True))
    for (x0, y0), (x1, y1) in segments:  # each over its own box: a long stroke stays cheap
        t0 = max(top, int(np.floor(min(y0, y1) - r)))
        l0 = max(left, int(np.floor(min(x0, x1) - r)))
        b0 = min(bottom, int(np.ceil(max(y0, y1) + r)) + 1)
        r0 = min(right, int(np.ceil(max(x0, x1) + r)) + 1)
        if t0 >= b0 or l0 >= r0:
            continue
        cy = np.arange(t0, b0, dtype=np.float64)[:, None] + 0.5
        cx = np.arange(l0, r0, dtype=np.float64)[None, :] + 0.5
        dx, dy = x1 - x0, y1 - y0
        length2 = dx * dx + dy * dy
        if length2 > 0:
            t = np.clip(((cx - x0) * dx + (cy - y0) * dy) / length2, 0.0, 1.0)
        else:
            t = np.zeros((1, 1))
        ex = cx - (x0 + t * dx)
        ey = cy - (y0 + t * dy)
        hit[t0 - top : b0 - top, l0 - left : r0 - left] |= ex * ex + ey * ey <= r2
    if not hit.any():
        return None
    return (top, left, bottom, right), hit


@dataclass
class _Change:
    """What one stroke changed: flat pixel indices, their values before, the value written."""

    index: np.ndarray
    before: np.ndarray
    value: np.ndarray  # per pixel (a stroke writes one value; accepted predictions many)


@dataclass
class Entry:
    """One image of the project."""

    stem: str
    path: Path  # PROJECT/images/<file>
    mask_path: Path  # PROJECT/masks/<stem>.png
    height: int
    width: int
    error: str | None = None  # the mask file is unreadable: strokes are refused
    version: int = 0
    labelled: int = 0  # labelled pixels
    counts: list[int] = field(default_factory=list)  # labelled pixels per class
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    history: OrderedDict[str, _Change] = field(default_factory=OrderedDict, repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.stem,
            "file": self.path.name,
            "width": self.width,
            "height": self.height,
            "labelled": self.labelled,
            "version": self.version,
            "error": self.error,
        }


class Project:
    """An open project (see the module docstring): :meth:`open` it, apply strokes, ``close``.

    Thread-safe: strokes on one image are serialised by its lock; the trainer reads masks
    through :meth:`mask` (a copy) and :meth:`labelled_stems`.
    """

    def __init__(self, root: Path, classes: ClassInfo, entries: list[Entry], channels: int):
        self.root = root
        self.classes = classes
        self.entries = {e.stem: e for e in entries}
        self.order = [e.stem for e in entries]
        self.channels = channels
        self.skipped: list[dict[str, str]] = []
        self.session = secrets.token_hex(4)  # stroke ids of this server: "<session>-<n>"
        self._counter = 0
        self._id_lock = threading.Lock()
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._images: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._lock_file: Any = None
        self.changed = threading.Event()  # set after every change of a mask (wakes the trainer)
        self.listeners: list[Callable[[str], None]] = []  # called with the stem after a change

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        images_dir: str | Path,
        classes: str | Sequence[str] | None,
        project: str | Path,
        *,
        colors: Sequence[Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Project:
        """Create ``project`` from ``images_dir`` (or reopen it, adding new images). ``classes``:
        the class names (None: those of ``PROJECT/classes.txt``); ``colors``: their colours for
        a new project (e.g. a ``--run``'s). ConfigError / DataError name the problem."""
        say = log or (lambda _m: None)
        images_dir, root = Path(images_dir), Path(project)
        if not images_dir.is_dir():
            what = "is a file" if images_dir.exists() else "no such folder"
            raise ConfigError(f"IMAGES_DIR {images_dir}: {what}; give the folder of images")
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--out {root}: is a file; give a folder for the project")
        check_outputs_apart([images_dir], root, option="--out")
        info = _project_classes(root, classes, colors)
        root.mkdir(parents=True, exist_ok=True)
        lock = _lock(root)
        try:
            if not (root / "classes.txt").is_file():
                with atomic_open(root / "classes.txt") as f:
                    f.write(classes_text(info))
            skipped = _import_images(images_dir, root / "images", say)
            entries, masks_written = _entries(root, info, skipped)
            if not entries:
                raise DataError(
                    images_dir,
                    f"no readable images ({' '.join(IMAGE_SUFFIXES)})"
                    + (f"; {len(skipped)} file(s) skipped, e.g. {skipped[0]['file']}: "
                       f"{skipped[0]['reason']}" if skipped else ""),
                )  # fmt: skip
            gray = all(image_channels(e.path) == 1 for e in entries)
            self = cls(root, info, entries, 1 if gray else 3)
        except BaseException:
            _unlock(lock)
            raise
        self._lock_file = lock
        self.skipped = skipped
        for s in skipped:
            say(f"skipped {s['file']}: {s['reason']}")
        for e in entries:
            if e.error:
                say(f"warning: {e.error}")
        labelled = sum(e.labelled > 0 for e in entries)
        say(
            f"project {root}: {len(entries)} images ({labelled} labelled), "
            f"{info.num_classes} classes ({', '.join(info.names)}); {masks_written} new masks"
        )
        return self

    def close(self) -> None:
        """Release the project lock (another server may open it)."""
        _unlock(self._lock_file)
        self._lock_file = None

    # -- reading -------------------------------------------------------------------------------

    def entry(self, stem: str) -> Entry:
        """The image ``stem``: LabelError 404 if the project never had it, 410 if its file is
        gone from ``PROJECT/images``."""
        entry = self.entries.get(stem)
        if entry is None:
            raise LabelError(404, f"no image {stem!r} in {self.root / 'images'}")
        if not entry.path.is_file():
            raise LabelError(
                410, f"{entry.path}: the image no longer exists; its strokes were not saved"
            )
        return entry

    def image(self, stem: str, channels: int | None = None) -> np.ndarray:
        """``uint8 (H, W, C)`` of image ``stem`` (cached; do not modify)."""
        entry = self.entry(stem)
        ch = channels or self.channels
        key = (stem, ch)
        with self._cache_lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        try:
            image = read_image(entry.path, channels=ch)
        except DataError as err:
            raise LabelError(410, str(err)) from None
        with self._cache_lock:
            self._images[key] = image
            total = sum(a.nbytes for a in self._images.values())
            while total > CACHE_PIXELS and len(self._images) > 1:
                total -= self._images.popitem(last=False)[1].nbytes
        return image

    def mask(self, stem: str) -> np.ndarray:
        """A copy of the mask of ``stem`` as saved (``uint8 (H, W)``, 255 = unlabelled)."""
        entry = self.entry(stem)
        with entry.lock:
            return self._mask(entry).copy()

    def mask_with_version(self, stem: str) -> tuple[np.ndarray, int]:
        entry = self.entry(stem)
        with entry.lock:
            return self._mask(entry).copy(), entry.version

    def suggested_points(self, stem: str, count: int) -> dict[str, Any]:
        """Where to click next in ``stem``: ``{name, version, points: [[x, y], ...]}``, up to
        ``count`` unlabelled pixels of :func:`random_unlabelled`, the image's own sequence
        (the same points in every tab and after a restart; a labelled one gives way to the
        next)."""
        mask, version = self.mask_with_version(stem)
        points = random_unlabelled(mask, count, zlib.crc32(stem.encode()))
        return {"name": stem, "version": version, "points": [[x, y] for y, x in points]}

    def labelled_stems(self) -> list[str]:
        return [s for s in self.order if self.entries[s].labelled > 0 and not self.entries[s].error]

    def counts(self) -> dict[str, int]:
        labelled = sum(1 for e in self.entries.values() if e.labelled > 0)
        return {"images": len(self.entries), "labelled": labelled,
                "unlabelled": len(self.entries) - labelled}  # fmt: skip

    def class_counts(self) -> np.ndarray:
        """Labelled pixels per class over the project."""
        total = np.zeros(self.classes.num_classes, dtype=np.int64)
        for e in self.entries.values():
            if e.counts:
                total += np.asarray(e.counts, dtype=np.int64)
        return total

    def _mask(self, entry: Entry) -> np.ndarray:
        """The cached mask array (call with ``entry.lock`` held)."""
        if entry.error:
            raise LabelError(409, entry.error)
        with self._cache_lock:
            cached = self._masks.get(entry.stem)
        if cached is not None:
            return cached
        if entry.labelled == 0:
            mask = np.full((entry.height, entry.width), ERASE, dtype=np.uint8)
        else:
            try:
                mask = _read_checked(entry, self.classes)
            except DataError as err:
                entry.error = _corrupt(entry, str(err))
                raise LabelError(409, entry.error) from None
        with self._cache_lock:
            self._masks[entry.stem] = mask
            while len(self._masks) > 64:
                self._masks.popitem(last=False)
        return mask

    # -- writing -------------------------------------------------------------------------------

    def _next_id(self) -> str:
        with self._id_lock:
            self._counter += 1
            return f"{self.session}-{self._counter}"

    def apply(self, stem: str, strokes: Iterable[Stroke]) -> dict[str, Any]:
        """Apply ``strokes`` in order to the mask of ``stem`` and save it (atomic) before
        returning ``{name, version, ids, labelled, changed}`` (``ids``: one per stroke, for
        :meth:`undo`)."""
        entry = self.entry(stem)
        with entry.lock:
            mask = self._mask(entry)
            ids, changes = [], []
            for stroke in strokes:
                change = _paint(mask, stroke)
                sid = self._next_id()
                ids.append(sid)
                if change is not None:
                    changes.append((sid, change))
            return self._commit(entry, mask, ids, changes)

    def set_pixels(self, stem: str, index: np.ndarray, values: np.ndarray) -> dict[str, Any]:
        """Write ``values`` at flat pixel ``index`` of ``stem`` as one undoable change (the
        accepted prediction)."""
        entry = self.entry(stem)
        with entry.lock:
            mask = self._mask(entry)
            flat = mask.reshape(-1)
            index = np.asarray(index, dtype=np.int64)
            values = np.asarray(values, dtype=np.uint8)
            keep = flat[index] != values
            index, values = index[keep], values[keep]
            sid = self._next_id()
            change = _Change(index, flat[index].copy(), values) if len(index) else None
            flat[index] = values
            return self._commit(entry, mask, [sid], [(sid, change)] if change else [])

    def undo(self, stem: str, sid: str) -> dict[str, Any]:
        """Undo stroke ``sid``: its pixels that still hold what it wrote get their earlier
        values back (what other strokes wrote since is kept). LabelError 409 if unknown."""
        entry = self.entry(stem)
        with entry.lock:
            mask = self._mask(entry)
            keys = list(entry.history)
            later = [entry.history[k] for k in keys[keys.index(sid) + 1 :]] if sid in keys else []
            change = entry.history.pop(sid, None)
            if change is None:
                if not sid.startswith(self.session + "-"):
                    raise LabelError(
                        409, f"stroke {sid} was drawn before the server restarted; it cannot be "
                        "undone (erase it instead)",
                    )  # fmt: skip
                return self._commit(entry, mask, [], [])  # nothing changed by it: nothing to do
            return self._commit(entry, mask, [], [], force=_unlink(later, change, mask))

    def _commit(self, entry: Entry, mask: np.ndarray, ids, changes, force: bool = False):
        changed = bool(changes) or force
        if changed:
            try:
                write_mask(entry.mask_path, mask, self.classes)
            except OSError as err:
                with self._cache_lock:  # the file keeps the old mask: forget the edited one
                    self._masks.pop(entry.stem, None)
                raise LabelError(500, f"{entry.mask_path}: cannot save the mask ({err})") from None
            for sid, change in changes:
                entry.history[sid] = change
            while len(entry.history) > HISTORY:
                entry.history.popitem(last=False)
            entry.version += 1
            _count(entry, mask, self.classes.num_classes)
            self.changed.set()
            for listener in list(self.listeners):
                listener(entry.stem)
        return {"name": entry.stem, "version": entry.version, "ids": ids,
                "labelled": entry.labelled, "changed": changed}  # fmt: skip


def random_unlabelled(mask: np.ndarray, count: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``count`` ``(y, x)`` of unlabelled pixels (255) of ``mask (H, W)``: the first
    unlabelled ones of a sequence of pixels drawn uniformly at random with ``seed``, so each is
    uniform over the unlabelled pixels and labelling one leaves the others in place (random
    point annotation, as CoralNet's; the bench's ``--where anywhere`` clicks such points);
    fewer when almost everything is labelled."""
    rng = np.random.default_rng(seed)
    flat, found, seen = mask.reshape(-1), [], set()
    for _ in range(64):  # 64 batches of 1024 draws: enough unless nearly all is labelled
        draws = rng.integers(flat.size, size=1024)
        for i in draws[flat[draws] == ERASE].tolist():
            if i not in seen:
                seen.add(i)
                found.append(divmod(i, mask.shape[1]))
                if len(found) == count:
                    return found
    return found


def _unlink(later: list[_Change], change: _Change, mask: np.ndarray) -> bool:
    """Take ``change`` out of each pixel's history: where a later change drew over it, that
    change's "before" becomes ``change``'s (undoing it later restores what was there before
    both); elsewhere the pixel gets its value before ``change`` back. ``later``: the changes
    after it, oldest first. True if a pixel of ``mask`` changed."""
    remaining = np.ones(len(change.index), dtype=bool)
    for other in later:
        if not remaining.any():
            break
        _, mine, theirs = np.intersect1d(
            change.index[remaining], other.index, assume_unique=True, return_indices=True
        )
        if len(mine):
            positions = np.flatnonzero(remaining)[mine]
            other.before[theirs] = change.before[positions]
            remaining[positions] = False
    flat = mask.reshape(-1)
    index = change.index[remaining]
    still = flat[index] == change.value[remaining]
    flat[index[still]] = change.before[remaining][still]
    return bool(still.any())


def _paint(mask: np.ndarray, stroke: Stroke) -> _Change | None:
    h, w = mask.shape
    found = stroke_footprint(stroke.points, stroke.radius, h, w)
    if found is None:
        return None
    (top, left, _, _), hit = found
    rows, cols = np.nonzero(hit)
    index = (rows + top).astype(np.int64) * w + (cols + left)
    flat = mask.reshape(-1)
    before = flat[index]
    differs = before != stroke.value
    if not differs.any():
        return None
    index, before = index[differs], before[differs].copy()
    flat[index] = stroke.value
    return _Change(index, before, np.full(len(index), stroke.value, dtype=np.uint8))


def _count(entry: Entry, mask: np.ndarray, num_classes: int) -> None:
    counts = np.bincount(mask.reshape(-1), minlength=256)
    entry.counts = [int(c) for c in counts[:num_classes]]
    entry.labelled = int(sum(entry.counts))


def _corrupt(entry: Entry, problem: str) -> str:
    return (
        f"{problem.rstrip('.')}; the mask of {entry.path.name} is not overwritten: fix or "
        "delete the file and restart"
    )


def _read_checked(entry: Entry, classes: ClassInfo) -> np.ndarray:
    mask = read_mask(entry.mask_path, classes)
    if mask.shape != (entry.height, entry.width):
        raise DataError(
            entry.mask_path,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{entry.width}x{entry.height}",
        )
    return mask


def _project_classes(root: Path, classes, colors) -> ClassInfo:
    """The project's classes: ``classes`` checked against an existing ``classes.txt``."""
    existing = root / "classes.txt"
    names = parse_classes(classes) if classes is not None else None
    if existing.is_file():
        saved = ClassInfo.from_file(existing)
        if names is not None and tuple(saved.names) != names:
            raise ConfigError(
                f"--classes {','.join(names)}: the project {root} has the classes "
                f"{','.join(saved.names)} ({existing}); use those or another --out"
            )
        return saved
    if names is None:
        raise ConfigError(f"--classes: required for a new project ({existing} does not exist)")
    if root.is_dir() and any(root.iterdir()) and not (root / "images").is_dir():
        raise ConfigError(
            f"--out {root}: folder exists and is not a labeling project; choose another"
        )
    return label_classes(names, colors)


def _lock(root: Path) -> Any:
    """Hold ``PROJECT/.lock`` (fcntl) for the life of the server; ConfigError if taken."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one server per project is on the user
        return None
    f = open(root / ".lock", "a+")  # noqa: SIM115  (held open until close())
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ConfigError(
            f"--out {root}: another 'pixelwise label' has this project open ({root / '.lock'}); "
            "close it first (two tabs of one server are fine)"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _unlock(f: Any) -> None:
    if f is None:
        return
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    f.close()


def _import_images(images_dir: Path, dest: Path, say) -> list[dict[str, str]]:
    """Hard-link (or copy) the readable images of ``images_dir`` into ``dest``; return the
    skipped files ``[{file, reason}]``. Images already in ``dest`` are kept as they are."""
    dest.mkdir(parents=True, exist_ok=True)
    present = {p.stem: p for p in dest.iterdir() if p.is_file() and not p.name.startswith(".")}
    skipped = []
    for src in sorted(images_dir.iterdir()):
        if src.name.startswith(".") or not src.is_file():
            continue
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        have = present.get(src.stem)
        if have is not None:
            if have.name != src.name:
                skipped.append({"file": src.name, "reason": f"same name as {have.name}; "
                                "keep one file per name"})  # fmt: skip
            continue
        try:
            read_image(src)
        except DataError as err:
            skipped.append({"file": src.name, "reason": err.problem})
            continue
        present[src.stem] = link_or_copy(src, dest / src.name)
    return skipped


def _entries(root: Path, classes: ClassInfo, unreadable: list[dict[str, str]]):
    """One entry per image of ``PROJECT/images`` (those that cannot be opened are appended to
    ``unreadable``) and the number of masks written: missing ones are written all-255."""
    from PIL import Image

    entries, written = [], 0
    masks = root / "masks"
    masks.mkdir(exist_ok=True)
    for path in sorted((root / "images").iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(path) as img:
                w, h = img.size
                if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # read_image turns it
                    w, h = h, w
        except Exception as err:  # unreadable now: it stays in the folder, not in the list
            unreadable.append({"file": f"images/{path.name}", "reason": f"cannot open ({err})"})
            continue
        entry = Entry(path.stem, path, masks / f"{path.stem}.png", h, w)
        if entry.mask_path.is_file():
            try:
                _count(entry, _read_checked(entry, classes), classes.num_classes)
            except DataError as err:
                entry.error = _corrupt(entry, str(err))
        else:
            write_mask(entry.mask_path, np.full((h, w), ERASE, np.uint8), classes)
            written += 1
        entries.append(entry)
    return entries, written

"""The fingerprint of a dataset: what the planner knows of the data before it trains.

nnU-Net's idea (Isensee et al. 2021): configure the method from properties of the data. Ours
are measured on the training split (a seeded sample of at most ``SAMPLE`` images for the costly
parts) and cached per dataset like the class pixel counts:

- images per split, the image size distribution, channels, intensity mean and spread;
- the class pixel frequencies and the labelled share of the pixels;
- per class, its objects as connected components: how many per image, their area, and their
  half-width (the largest distance to the object's edge: 1-3 px for membranes and vessels,
  tens of pixels for cars and horses);
- orientation: how much the classes' positions depend on the row (sky above road) or on the
  column, which says whether vertical flips and quarter turns are fair augmentations;
- alignment: whether the objects of a class share an axis (digits and pedestrians stand up,
  cells and vessels point anywhere), which says whether a rotated object is still a real one;
- handedness: whether the objects of a class are all of one hand (a 7 is never mirrored, a car
  faces either way), which says whether a mirrored object is still a real one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["SAMPLE", "VERSION", "ClassObjects", "Fingerprint", "fingerprint"]

VERSION = 3  # of what a fingerprint measures: part of its cache key (2: alignment, 3: handedness)

SAMPLE = 64  # images read for the object and orientation statistics
MIN_OBJECT_AREA = 16  # pixels: smaller components have no meaningful axis
MIN_OBJECTS = 16  # components a class needs before its alignment is measured (noise ~ 1/sqrt(n))
#: alignment above which objects keep their axis: digits 0.54 and CamVid 0.46 (median over
#: classes) against ISBI, DRIVE, STARE and PH2 <= 0.09 (docs/planning.md)
ALIGNED = 0.25
#: handedness above which mirror images are not real objects: digits 0.62 (median over classes)
#: against ISBI 0.29, STARE 0.16, DRIVE 0.15, PH2 0.14 and CamVid 0.10 (docs/planning.md)
HANDED = 0.45


@dataclass
class ClassObjects:
    """Connected components of one class over the sampled masks (medians over components)."""

    per_image: float = 0.0  # median count of components in the images that contain the class
    area: float = 0.0  # area-weighted median component area, pixels
    half_width: float = 0.0  # twice the median distance of the class's pixels to an edge, px
    #: |mean of anisotropy x exp(2i angle)| over the class's components (0: round objects or
    #: any direction; 1: needles all pointing one way); None: too few objects to tell
    alignment: float | None = None
    #: how consistently its components share one mirror signature (:func:`_consistency`: 0 as
    #: many mirror images as objects, 1 all of one handedness, like 7s); None: too few objects
    handedness: float | None = None

    @property
    def thin(self) -> bool:
        """Membrane- or vessel-like: most of its pixels lie within ~3 px of an edge."""
        return 0 < self.half_width <= 3.0


@dataclass
class Fingerprint:
    """Measured properties of a dataset's training split (see the module docstring)."""

    images: dict[str, int]
    median_size: tuple[int, int]
    min_size: tuple[int, int]
    max_size: tuple[int, int]
    channels: int
    intensity_mean: list[float]
    intensity_std: list[float]
    classes: list[str]
    frequency: list[float]  # share of the labelled pixels per class
    labelled: float  # share of all pixels that carry a label
    objects: list[ClassObjects] = field(default_factory=list)
    vertical_bias: float = 0.0  # 0: the class layout ignores the row; 1: it is fixed by it
    horizontal_bias: float = 0.0
    alignment: float = 0.0  # median of the classes' object alignment (those measured)
    handedness: float = 0.0  # median of the classes' object handedness (those measured)

    @property
    def upright(self) -> bool:
        """Images with a direction (gravity: sky above road): no vertical flips, no quarter
        turns. Threshold from the orientation statistic of street scenes (CamVid ~0.5) against
        microscopy and retina images (ISBI, DRIVE < 0.1): docs/planning.md."""
        return self.vertical_bias > 0.25

    @property
    def aligned(self) -> bool:
        """Objects that keep an axis (a digit, a standing horse, a pole): a rotated one is not
        a real one, so no rotations, whatever the layout. Threshold: :data:`ALIGNED`."""
        return self.alignment > ALIGNED

    @property
    def handed(self) -> bool:
        """Objects with a handedness (digits, letters): their mirror image is not a real one,
        so no flips, whatever the layout. Threshold: :data:`HANDED`."""
        return self.handedness > HANDED

    def thinnest(self) -> ClassObjects | None:
        """The objects of the class with the smallest half-width (among classes that occur)."""
        found = [o for o in self.objects if o.half_width > 0]
        return min(found, key=lambda o: o.half_width) if found else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        d = dict(d)
        d["objects"] = [ClassObjects(**o) for o in d.get("objects", [])]
        for key in ("median_size", "min_size", "max_size"):
            d[key] = tuple(d[key])
        return cls(**d)


def _components(mask: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Areas of the 8-connected components of class ``c`` in ``mask``, each of its pixels'
    distance to the nearest pixel of another label (the distance transform), and the shape of
    each component of at least MIN_OBJECT_AREA pixels (:func:`_shapes`)."""
    from scipy import ndimage

    region = mask == c
    if not region.any():
        return np.zeros(0), np.zeros(0), np.zeros((0, 4))
    labels, n = ndimage.label(region, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    inner = ndimage.distance_transform_edt(np.pad(region, 1, mode="edge"))[1:-1, 1:-1]
    return areas, inner[region], _shapes(labels, n, region)


def _shapes(labels: np.ndarray, n: int, region: np.ndarray) -> np.ndarray:
    """Per component (area >= MIN_OBJECT_AREA), a row of 4 numbers that describe its shape:

    - column 0 + 1j * column 1, the axis: ``anisotropy * exp(2i angle)`` of its second
      moments, ``((var_x - var_y) + 2i cov_xy) / (var_x + var_y)``. Doubling the angle makes an
      axis and its reverse the same; the mean over components is near 0 when they point
      anywhere.
    - columns 1-3, the mirror signature: the moments that change sign under a left-right
      flip, ``(2 cov_xy, E[dx^3], E[dx dy^2])``, in units of the object's size (its second
      moment ``var_x + var_y`` to the power 1 and 3/2). The mean over components is near 0
      when mirror images are as common as the objects themselves (a car faces either way), away
      from 0 when the objects have a handedness (a 7 or an L never appears mirrored).
    """
    y, x = np.nonzero(region)
    lab = labels[y, x]
    y, x = y.astype(np.float64), x.astype(np.float64)
    count = np.maximum(np.bincount(lab, minlength=n + 1).astype(np.float64), 1)
    keep = count >= MIN_OBJECT_AREA
    keep[0] = False
    dy = y - (np.bincount(lab, y, n + 1) / count)[lab]
    dx = x - (np.bincount(lab, x, n + 1) / count)[lab]

    def moment(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, values, n + 1)[keep] / count[keep]

    var_x, var_y, cov = moment(dx * dx), moment(dy * dy), moment(dx * dy)
    size = var_x + var_y + 1e-9
    return np.stack(
        [
            (var_x - var_y) / size,
            2 * cov / size,
            moment(dx**3) / size**1.5,
            moment(dx * dy * dy) / size**1.5,
        ],
        axis=1,
    )


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    if len(values) == 0:
        return 0.0
    order = np.argsort(values)
    v, w = np.asarray(values)[order], np.asarray(weights, dtype=np.float64)[order]
    return float(v[min(len(v) - 1, np.searchsorted(np.cumsum(w), 0.5 * w.sum()))])


def _objects(masks: list[np.ndarray], num_classes: int) -> list[ClassObjects]:
    """Per class: components per image, the area of the component a typical pixel belongs to
    (area-weighted median: specks of annotation noise do not count), and the half-width, twice
    the median distance of its pixels to an edge (a strip W px wide gives W / 2; a network of
    membranes is thin however large it is); with enough objects, their alignment and
    handedness (the lengths of the mean axis and of the mean mirror signature, :func:`_shapes`)."""
    out = []
    for c in range(num_classes):
        counts, areas, distances, shapes = [], [], [], []
        for mask in masks:
            comp_areas, inner, comp_shapes = _components(mask, c)
            if len(comp_areas):
                counts.append(len(comp_areas))
                areas.append(comp_areas)
                distances.append(inner)
                shapes.append(comp_shapes)
        if not counts:
            out.append(ClassObjects())
            continue
        all_areas = np.concatenate(areas).astype(np.float64)
        all_shapes = np.concatenate(shapes)
        enough = len(all_shapes) >= MIN_OBJECTS
        out.append(
            ClassObjects(
                per_image=float(np.median(counts)),
                area=round(_weighted_median(all_areas, all_areas), 1),
                half_width=round(2 * float(np.median(np.concatenate(distances))), 2),
                alignment=round(float(np.hypot(*all_shapes[:, :2].mean(0))), 3) if enough else None,
                handedness=_consistency(all_shapes[:, 1:]) if enough else None,
            )
        )
    return out


def _consistency(signatures: np.ndarray) -> float:
    """|mean of the vectors| / mean of their lengths: 1 when all point the same way, ~1/sqrt(n)
    when their signs are random."""
    lengths = np.linalg.norm(signatures, axis=1)
    return round(float(np.linalg.norm(signatures.mean(0)) / max(lengths.mean(), 1e-12)), 3)


def _median(values: list[float | None]) -> float:
    """The median of the measured values (0: none is)."""
    measured = [v for v in values if v is not None]
    return round(float(np.median(measured)), 3) if measured else 0.0


def _bias(masks: list[np.ndarray], num_classes: int, frequency: list[float], axis: int) -> float:
    """Frequency-weighted mean over classes of |first third - last third| / (sum) of the class's
    share along ``axis`` (0: rows, top against bottom; 1: columns, left against right)."""
    first = np.zeros(num_classes)
    last = np.zeros(num_classes)
    for mask in masks:
        n = mask.shape[axis]
        k = max(1, n // 3)
        a = mask[:k] if axis == 0 else mask[:, :k]
        b = mask[n - k :] if axis == 0 else mask[:, n - k :]
        first += np.bincount(a.ravel(), minlength=256)[:num_classes] / a.size
        last += np.bincount(b.ravel(), minlength=256)[:num_classes] / b.size
    total = first + last
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(total > 0, np.abs(first - last) / total, 0.0)
    w = np.asarray(frequency)
    return float((per_class * w).sum() / w.sum()) if w.sum() > 0 else 0.0


def fingerprint(train: Any, splits: dict[str, int], seed: int = 0) -> Fingerprint:
    """Measure the training split ``train`` (a dataset of ``(image, mask)`` samples); ``splits``
    are the image counts per split to record."""
    n = len(train)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(n, size=min(n, SAMPLE), replace=False).tolist()) if n else []
    num_classes = train.classes.num_classes
    sizes, masks, sums, squares, pixels = [], [], 0.0, 0.0, 0
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in picked:
        sample = train[i]
        image = np.asarray(sample.image, dtype=np.float64)
        image = image[..., None] if image.ndim == 2 else image
        scale = 65535.0 if image.max() > 255 else 255.0
        flat = image.reshape(-1, image.shape[-1]) / scale
        sums = sums + flat.sum(0)
        squares = squares + (flat**2).sum(0)
        pixels += flat.shape[0]
        sizes.append(sample.mask.shape[:2])
        masks.append(sample.mask)
        counts += np.bincount(sample.mask.ravel(), minlength=256)[:num_classes]
    labelled = int(counts.sum())
    total_pixels = sum(h * w for h, w in sizes)
    frequency = (counts / labelled).tolist() if labelled else [0.0] * num_classes
    mean = np.atleast_1d(sums / max(1, pixels))
    std = np.sqrt(np.maximum(np.atleast_1d(squares / max(1, pixels)) - mean**2, 0))
    hs, ws = [h for h, _ in sizes] or [0], [w for _, w in sizes] or [0]
    objects = _objects(masks, num_classes)
    return Fingerprint(
        images=dict(splits),
        median_size=(int(np.median(hs)), int(np.median(ws))),
        min_size=(int(min(hs)), int(min(ws))),
        max_size=(int(max(hs)), int(max(ws))),
        channels=int(train.channels),
        intensity_mean=[round(float(v), 4) for v in mean],
        intensity_std=[round(float(v), 4) for v in std],
        classes=list(train.classes.names),
        frequency=[round(f, 6) for f in frequency],
        labelled=round(labelled / total_pixels, 4) if total_pixels else 0.0,
        objects=objects,
        vertical_bias=round(_bias(masks, num_classes, frequency, 0), 4),
        horizontal_bias=round(_bias(masks, num_classes, frequency, 1), 4),
        alignment=_median([o.alignment for o in objects]),
        handedness=_median([o.handedness for o in objects]),
    )


def describe(fp: Fingerprint) -> list[str]:
    """The fingerprint in a few readable lines."""
    h, w = fp.median_size
    lines = [
        f"images: {', '.join(f'{k} {v}' for k, v in fp.images.items())}; median size {h}x{w} "
        f"(from {fp.min_size[0]}x{fp.min_size[1]} to {fp.max_size[0]}x{fp.max_size[1]}), "
        f"{fp.channels} channel(s); {100 * fp.labelled:.0f}% of the pixels labelled",
    ]
    for name, f, o in zip(fp.classes, fp.frequency, fp.objects, strict=True):
        if f > 0:
            shape = "thin" if o.thin else "blobs"
            lines.append(
                f"  {name}: {100 * f:.1f}% of the labels, {o.per_image:g} object(s) per image, "
                f"median area {o.area:.0f} px, half-width {o.half_width:.1f} px ({shape})"
            )
    orient = "upright (keep the top up)" if fp.upright else "no preferred orientation"
    lines.append(
        f"orientation: vertical bias {fp.vertical_bias:.2f}, horizontal bias "
        f"{fp.horizontal_bias:.2f}: {orient}; object alignment {fp.alignment:.2f}: "
        + ("objects keep their axis" if fp.aligned else "objects point any way")
        + f"; object handedness {fp.handedness:.2f}: "
        + ("mirrored objects are not real" if fp.handed else "mirror images are as likely")
    )
    return lines

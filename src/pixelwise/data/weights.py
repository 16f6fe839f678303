"""The U-Net border weight map (Ronneberger, Fischer & Brox 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

"w_c is the weight map to balance the class frequencies, d1 denotes the distance to the border
of the nearest cell and d2 the distance to the border of the second nearest cell. In our
experiments we set w0 = 10 and sigma ~ 5 pixels." The paper adds the separation term "to force
the network to learn the small separation borders that we introduce between touching cells":
those borders are *background* pixels, so here the term is added to labelled background pixels
only (pixels that belong to no object); inside an object the distance to its own border is not
what eq. 2 measures, and adding it there would up-weight every object's rim instead of the gaps.

Objects are the connected components (8-connectivity) of each foreground class (default: every
class but 0) or, when an instance mask is given, its instance ids (0 = no instance). Distances
are Euclidean, in pixels, from a pixel centre to the nearest pixel centre of the object.

Efficiency: the term is below ``1e-6 * w0`` (and set to exactly 0) once ``d1 + d2 > R`` with
``R = sigma * sqrt(2 ln 1e6)``; an object farther than ``R`` from a pixel can be neither its
nearest nor its second nearest object in a non-negligible term, so each object's distance
transform is computed only inside its bounding box grown by ``R``. Ignored pixels get weight 0.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from pixelwise.errors import ConfigError

__all__ = [
    "BorderWeights",
    "balancing_weights",
    "cutoff_distance",
    "unet_weight_map",
]

NEGLIGIBLE = 1e-6  # relative to w0: the separation term is dropped below this
_EIGHT = np.ones((3, 3), dtype=bool)


def cutoff_distance(sigma: float) -> float:
    """``R``: ``w0 * exp(-R^2 / (2 sigma^2)) = NEGLIGIBLE * w0``."""
    return float(sigma) * math.sqrt(2.0 * math.log(1.0 / NEGLIGIBLE))


def balancing_weights(mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Inverse-frequency class weights of one mask, float64 ``(256,)`` indexed by label:
    ``w_k = N / (K * n_k)`` for the K classes present (``n_k`` pixels of class k, N labelled
    pixels), so every present class carries the same total weight and the mean weight over
    labelled pixels is 1; 0 for absent labels and for ``ignore_index``."""
    hist = np.bincount(np.asarray(mask).ravel(), minlength=256).astype(np.float64)[:256]
    hist[ignore_index] = 0
    present = hist > 0
    out = np.zeros(256, dtype=np.float64)
    if present.any():
        out[present] = hist.sum() / (present.sum() * hist[present])
    return out


def _objects(
    mask: np.ndarray,
    foreground: Sequence[int] | None,
    instances: np.ndarray | None,
    ignore_index: int,
) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Yield (bounding-box slices, boolean object mask inside that box) per object."""
    if instances is not None:
        inst = np.asarray(instances)
        ids = np.unique(inst)
        ids = ids[ids != 0]
        relabelled = np.searchsorted(ids, inst) + 1
        relabelled[(inst == 0) | (relabelled > len(ids))] = 0
        for k, sl in enumerate(ndimage.find_objects(relabelled), 1):
            if sl is not None:
                yield sl, relabelled[sl] == k
        return
    labels = np.unique(mask)
    classes = [int(c) for c in labels if c != 0 and c != ignore_index]
    if foreground is not None:
        wanted = {int(c) for c in foreground}
        classes = [c for c in classes if c in wanted]
    for c in classes:
        components, _ = ndimage.label(mask == c, structure=_EIGHT)
        for k, sl in enumerate(ndimage.find_objects(components), 1):
            yield sl, components[sl] == k


def unet_weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Sequence[float] | np.ndarray | None = None,
    ignore_index: int = 255,
    foreground: Sequence[int] | None = None,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """Eq. 2 of the U-Net paper for one label mask.

    Args:
        mask: ``(H, W)`` integer labels; ``ignore_index`` pixels get weight 0.
        w0, sigma: the separation term's height and width (pixels); ``w0=0`` gives ``w_c``.
        class_weights: ``w_c`` per class (index = label); default :func:`balancing_weights` of
            this mask.
        foreground: classes whose connected components are objects (default: all but 0).
        instances: optional ``(H, W)`` instance ids (0 = none); each id is one object.

    Returns:
        float32 ``(H, W)``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConfigError(f"weight map: mask must be 2-D (H, W), got shape {mask.shape}")
    if not (math.isfinite(w0) and w0 >= 0):
        raise ConfigError(f"--w0: must be a non-negative number, got {w0!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"--sigma: must be a positive number of pixels, got {sigma!r}")
    if instances is not None and np.shape(instances) != mask.shape:
        raise ConfigError(f"instances {np.shape(instances)} and mask {mask.shape} differ")
    labelled = mask != ignore_index
    if class_weights is None:
        lut = balancing_weights(mask, ignore_index)
    else:
        cw = np.asarray(class_weights, dtype=np.float64)
        top = int(mask[labelled].max()) if labelled.any() else -1
        if cw.ndim != 1 or len(cw) <= top:
            raise ConfigError(
                f"--class-weights: {cw.size} value(s) given but the mask has label {top}"
            )
        lut = np.zeros(256, dtype=np.float64)
        lut[: min(len(cw), 256)] = cw[:256]
    weights = lut[mask.astype(np.intp)].astype(np.float32)
    weights[~labelled] = 0.0
    if w0 == 0:
        return weights

    h, w = mask.shape
    reach = cutoff_distance(sigma)
    margin = int(math.ceil(reach))
    d1 = np.full((h, w), np.inf, dtype=np.float32)
    d2 = np.full((h, w), np.inf, dtype=np.float32)
    inside = np.zeros((h, w), dtype=bool)
    for (ys, xs), obj in _objects(mask, foreground, instances, ignore_index):
        inside[ys, xs] |= obj
        y0, y1 = max(0, ys.start - margin), min(h, ys.stop + margin)
        x0, x1 = max(0, xs.start - margin), min(w, xs.stop + margin)
        background = np.ones((y1 - y0, x1 - x0), dtype=bool)
        background[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = ~obj
        dist = ndimage.distance_transform_edt(background).astype(np.float32)
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        np.minimum(b, np.maximum(a, dist), out=b)
        np.minimum(a, dist, out=a)
    total = d1 + d2
    near = (total <= reach) & labelled & ~inside
    weights[near] += (w0 * np.exp(-(total[near].astype(np.float64) ** 2) / (2 * sigma**2))).astype(
        np.float32
    )
    return weights


class BorderWeights:
    """``unet_weight_map`` as a per-index cached callable for
    :class:`~pixelwise.data.transforms.TransformedDataset`: ``weights(i, mask)`` computes the map
    of item ``i`` once and keeps it in memory (per process; call :meth:`fill` in the main
    process before starting DataLoader workers so they inherit it). ``cache=False`` recomputes
    every time (for datasets whose maps do not fit in memory)."""

    def __init__(
        self,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = 255,
        foreground: Sequence[int] | None = None,
        cache: bool = True,
    ) -> None:
        unet_weight_map(np.zeros((1, 1), np.uint8), w0, sigma)  # validates w0, sigma
        self.w0, self.sigma = float(w0), float(sigma)
        self.class_weights = None if class_weights is None else list(class_weights)
        self.ignore_index = ignore_index
        self.foreground = None if foreground is None else list(foreground)
        self.cache = cache
        self._maps: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def compute(self, mask: np.ndarray) -> np.ndarray:
        """The map of one mask (no caching): float32 (H, W)."""
        return unet_weight_map(
            mask, self.w0, self.sigma, self.class_weights, self.ignore_index, self.foreground
        )

    def __call__(self, i: int, mask: np.ndarray) -> np.ndarray:
        cached = self._maps.get(i)
        if cached is not None and cached.shape == np.shape(mask):
            return cached
        out = self.compute(mask)
        if self.cache:
            with self._lock:
                self._maps[i] = out
        return out

    def __len__(self) -> int:
        return len(self._maps)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def fill(
        self,
        dataset,
        progress: Callable[[Iterable], Iterator] | None = None,
    ) -> None:
        """Compute (and keep) the map of every item of ``dataset`` (reads each mask once)."""
        indices = range(len(dataset))
        for i in progress(indices) if progress else indices:
            self(i, dataset[i].mask)

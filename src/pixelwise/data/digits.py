"""The embedded default dataset: scenes of real handwritten digits on textured backgrounds.

Built from the 1,797 8x8 handwritten digits that scikit-learn ships (no download). 11 classes:
``background`` and the digits ``0`` .. ``9`` (class id = digit + 1). The digit *samples* are
split once, by a fixed seeded permutation independent of ``seed``: 80% (1,438) for "train" and
20% (359) for "val", so validation scenes hold only handwriting never seen in training.

Scene ``i`` of a split is generated from ``np.random.default_rng([seed, split_id, i])``: any item
is reproducible on its own, in any order, in any DataLoader worker.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.data.base import Sample, SegmentationDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import write_image, write_mask
from pixelwise.errors import ConfigError
from pixelwise.files import atomic_open

DIGITS_CLASSES = ClassInfo(
    names=("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"),
    colors=(
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (0, 128, 128),
    ),
)

NUM_DIGITS = 1797
TRAIN_FRACTION = 0.8
_SPLIT_SEED = 1797  # fixed: the digit-sample split never depends on the scene seed
_SPLIT_IDS = {"train": 0, "val": 1}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@lru_cache(maxsize=1)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits: float32 (1797, 8, 8) in [0, 1], and int64 (1797,) labels 0..9."""
    spec = importlib.util.find_spec("sklearn")
    data = None
    if spec is not None and spec.submodule_search_locations:
        csv = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"
        if csv.is_file():  # read directly: importing sklearn.datasets takes over a second
            data = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    if data is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        data = np.concatenate([d.data, d.target[:, None]], axis=1).astype(np.float32)
    images = (data[:, :64] / 16.0).reshape(-1, 8, 8).astype(np.float32)
    return images, data[:, 64].astype(np.int64)


@lru_cache(maxsize=1)
def digit_split() -> dict[str, np.ndarray]:
    """Sorted indices of the digit samples of each split: {"train": (1438,), "val": (359,)}."""
    perm = np.random.default_rng(_SPLIT_SEED).permutation(NUM_DIGITS)
    n_train = round(TRAIN_FRACTION * NUM_DIGITS)
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:])}


@lru_cache(maxsize=1024)
def _resize_matrix(n_out: int, n_in: int, zero_pad: bool) -> np.ndarray:
    """(n_out, n_in) cubic (Keys, a = -0.5) resampling matrix, pixel-centre aligned.

    ``zero_pad``: samples outside the input count as 0 (digits fade out at their borders);
    otherwise edges are clamped."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(x).astype(np.int64)
    t = x - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    for k in (-1, 0, 1, 2):
        d = np.abs(t - k)
        w = np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2)
        w = np.where(d < 2, w, 0.0)
        idx = i0 + k
        if zero_pad:
            ok = (idx >= 0) & (idx < n_in)
            np.add.at(m, (rows[ok], idx[ok]), w[ok])
        else:
            np.add.at(m, (rows, np.clip(idx, 0, n_in - 1)), w)
    return m.astype(np.float32)


def _upsample(grid: np.ndarray, h: int, w: int, zero_pad: bool = False) -> np.ndarray:
    """Smoothly resize (gh, gw) or (gh, gw, C) to (h, w[, C])."""
    my = _resize_matrix(h, grid.shape[0], zero_pad)
    mx = _resize_matrix(w, grid.shape[1], zero_pad)
    if grid.ndim == 2:
        return my @ grid @ mx.T
    return np.einsum("hi,ijc,wj->hwc", my, grid, mx, optimize=True)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 (h, w, 3) in about [0, 1]: two random colours blended along a gradient and a
    smooth random field, a low-frequency colour tint, a finer texture and pixel noise."""
    c0, c1 = rng.random((2, 3), dtype=np.float32)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * np.pi)
    grad = np.cos(theta) * yy + np.sin(theta) * xx
    grad = (grad - grad.min()) / max(float(grad.max() - grad.min()), 1e-6)
    low = _upsample(rng.random(tuple(rng.integers(2, 6, size=2)), dtype=np.float32), h, w)
    mix = rng.uniform(0.2, 0.8)
    t = np.clip(mix * grad + (1 - mix) * low, 0.0, 1.0)[:, :, None]
    img = c0 + (c1 - c0) * t
    tint = rng.standard_normal((*rng.integers(2, 5, size=2), 3), dtype=np.float32)
    img += rng.uniform(0.02, 0.08) * _upsample(tint, h, w)
    cells = (max(2, h // rng.integers(6, 16)), max(2, w // rng.integers(6, 16)))
    texture = _upsample(rng.standard_normal(cells, dtype=np.float32), h, w)
    img += (rng.uniform(0.01, 0.05) * texture)[:, :, None]
    return img


def _contrasting_color(rng: np.random.Generator, lum_bg: float) -> np.ndarray:
    """A random colour whose luminance differs from ``lum_bg`` by at least 0.4."""
    target = rng.uniform(0.0, lum_bg - 0.4) if lum_bg >= 0.5 else rng.uniform(lum_bg + 0.4, 1.0)
    c = rng.random(3, dtype=np.float32)
    lum = float(c @ _LUMA)
    if lum > target:
        return c * (target / max(lum, 1e-6))
    return 1.0 - (1.0 - c) * ((1.0 - target) / max(1.0 - lum, 1e-6))


class DigitsScenes(SegmentationDataset):
    """Scenes of ``digits_per_image`` (inclusive range) handwritten digits, ``num_images`` per
    split (default 400 train / 80 val); image sides drawn independently in
    ``[min_size, max_size]``; each digit ``digit_size`` pixels tall (inclusive range) with a
    slight random aspect. Images uint8 (H, W, channels), masks uint8 (H, W) with 0 = background,
    digit d = d + 1; later digits are drawn on top and the mask follows what is visible.
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        num_images: int | None = None,
        min_size: int = 64,
        max_size: int = 128,
        digits_per_image: tuple[int, int] = (2, 6),
        digit_size: tuple[int, int] = (22, 34),
        channels: int = 3,
        cache: bool = True,
    ) -> None:
        if split not in _SPLIT_IDS:
            raise ConfigError(f"digits: split must be 'train' or 'val', got {split!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"digits: seed must be a non-negative integer, got {seed!r}")
        if num_images is None:
            num_images = 400 if split == "train" else 80
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ConfigError(f"digits: num_images must be a positive integer, got {num_images!r}")
        if not (isinstance(min_size, int) and isinstance(max_size, int) and min_size >= 8):
            raise ConfigError(f"digits: min_size must be an integer >= 8, got {min_size!r}")
        if max_size < min_size:
            raise ConfigError(f"digits: max_size {max_size} is smaller than min_size {min_size}")
        for what, (lo, hi), low in (
            ("digits_per_image", digits_per_image, 0),
            ("digit_size", digit_size, 4),
        ):
            if not (isinstance(lo, int) and isinstance(hi, int) and low <= lo <= hi):
                raise ConfigError(f"digits: {what} must be (lo, hi) with {low} <= lo <= hi")
        if channels not in (1, 3):
            raise ConfigError(f"digits: channels must be 1 or 3, got {channels!r}")
        self.split = split
        self.seed = seed
        self.num_images = num_images
        self.min_size, self.max_size = min_size, max_size
        self.digits_per_image = (digits_per_image[0], digits_per_image[1])
        self.digit_size = (digit_size[0], digit_size[1])
        self.channels = channels
        self.classes = DIGITS_CLASSES
        self.pool = digit_split()[split]
        self.names = [f"digits_{split}_{i:05d}" for i in range(num_images)]
        # Scenes are deterministic, so a generated one can be kept (about 30 KB each).
        self._cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        image, mask, _ = self.compose(i)
        sample = Sample(image, mask, self.names[i])
        if self._cache is not None:
            self._cache[i] = sample
        return sample

    def compose(self, i: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Scene ``i``: image uint8 (H, W, channels), mask uint8 (H, W), and the indices (into
        the 1,797 digits) of the digits drawn."""
        digits, labels = load_digit_images()
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], i])
        h, w = (int(v) for v in rng.integers(self.min_size, self.max_size + 1, size=2))
        img = _background(rng, h, w)
        mask = np.zeros((h, w), dtype=np.uint8)
        owner = np.zeros((h, w), dtype=np.int16)  # which drawn digit (1-based) is on top
        areas: list[int] = []
        used: list[int] = []
        for _ in range(int(rng.integers(self.digits_per_image[0], self.digits_per_image[1] + 1))):
            k = int(self.pool[rng.integers(len(self.pool))])
            dh = int(rng.integers(self.digit_size[0], self.digit_size[1] + 1))
            dw = max(6, round(dh * rng.uniform(0.8, 1.2)))
            up = np.clip(_upsample(digits[k], dh, dw, zero_pad=True), 0.0, None)
            up /= max(float(up.max()), 1e-6)
            on = up > 0.4
            placed = self._place(rng, on, owner, areas, h, w)
            if placed is None:
                continue
            (y0, y1, x0, x1), (sy0, sy1, sx0, sx1) = placed
            on_c = on[sy0:sy1, sx0:sx1]
            region = img[y0:y1, x0:x1]
            lum_bg = float((region[on_c] @ _LUMA).mean()) if on_c.any() else 0.5
            color = _contrasting_color(rng, float(np.clip(lum_bg, 0.0, 1.0)))
            alpha = np.clip((up[sy0:sy1, sx0:sx1] - 0.25) / 0.3, 0.0, 1.0)[:, :, None]
            region += alpha * (color - region)
            mask[y0:y1, x0:x1][on_c] = labels[k] + 1
            areas.append(int(on_c.sum()))
            owner[y0:y1, x0:x1][on_c] = len(areas)
            used.append(k)
        img += rng.uniform(0.005, 0.03) * rng.standard_normal((h, w, 3), dtype=np.float32)
        if self.channels == 1:
            img = (img @ _LUMA)[:, :, None]
        return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8), mask, used

    def _place(
        self,
        rng: np.random.Generator,
        on: np.ndarray,
        owner: np.ndarray,
        areas: list[int],
        h: int,
        w: int,
    ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None:
        """Pick where a digit goes (up to a quarter of it may leave the frame), preferring spots
        that hide little of it and little of any earlier digit. Returns the frame and the digit
        slices (y0, y1, x0, x1), or None if it would be invisible."""
        dh, dw = on.shape
        best, best_score = None, np.inf
        for _ in range(4):
            y = int(rng.integers(-(dh // 4), max(-(dh // 4), h - dh + dh // 4) + 1))
            x = int(rng.integers(-(dw // 4), max(-(dw // 4), w - dw + dw // 4) + 1))
            y0, y1, x0, x1 = max(y, 0), min(y + dh, h), max(x, 0), min(x + dw, w)
            if y1 <= y0 or x1 <= x0:
                continue
            crop = (y0 - y, y1 - y, x0 - x, x1 - x)
            on_c = on[crop[0] : crop[1], crop[2] : crop[3]]
            n_on = int(on_c.sum())
            if n_on == 0:
                continue
            under = owner[y0:y1, x0:x1][on_c]
            covered = np.bincount(under, minlength=len(areas) + 1)[1:]
            hidden = max((c / a for c, a in zip(covered, areas, strict=True) if a), default=0.0)
            score = max(hidden, float(covered.sum()) / n_on)
            if score < best_score:
                best, best_score = ((y0, y1, x0, x1), crop), score
            if score < 0.2:
                break
        return best


def write_digits_folder(
    root: str | Path, num_train: int = 40, num_val: int = 10, seed: int = 0, **kwargs: Any
) -> Path:
    """Write digit scenes in the generic split layout: ``root/{train,val}/images/*.png``,
    ``root/{train,val}/masks/*.png`` (palette PNGs) and ``root/classes.txt``; returns ``root``.
    ``kwargs`` go to :class:`DigitsScenes`."""
    root = Path(root)
    for split, n in (("train", num_train), ("val", num_val)):
        ds = DigitsScenes(split, seed=seed, num_images=n, **kwargs)
        for sample in ds:
            write_image(root / split / "images" / f"{sample.name}.png", sample.image)
            write_mask(root / split / "masks" / f"{sample.name}.png", sample.mask, ds.classes)
    with atomic_open(root / "classes.txt") as f:
        f.write(DIGITS_CLASSES.to_text())
    return root

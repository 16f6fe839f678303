"""Joint image/mask transforms (torch-native) and the dataset wrapper that applies them.

Inside :class:`TrainTransform` the image is a float tensor ``(C, H, W)`` in [0, 1], the mask a
long tensor ``(H, W)`` and the optional per-pixel weight map a float tensor ``(H, W)``; each step
is a *joint op* ``op(image, mask, generator, weights) -> (image, mask, weights)`` drawing all its
randomness from ``generator``. Geometric ops resample the image (bilinear) and the weights
(bilinear) and the mask with nearest neighbour only, all through the same sampling grid, so image,
mask and weights stay aligned and no new label value can appear. Pixels that come from outside
the image are the mean colour in the image, ``ignore_index`` in the mask and 0 in the weights.
Normalisation ``(x - mean) / std`` comes last, so the mean-colour padding becomes 0.

The augmentations (all off unless asked for, except scale/crop/flip):

- random scale, random crop (padding a smaller image), horizontal flip;
- colour jitter (image only): brightness, contrast and (3 channels) saturation factors drawn
  uniformly from ``[1 - F, 1 + F]``;
- a small random rotation of up to ``rotate`` degrees about the image centre;
- the U-Net paper's elastic deformation: "random displacement vectors on a coarse 3 by 3 grid ...
  sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements
  are then computed using bicubic interpolation" (``elastic`` = that standard deviation).

Rotation and elastic deformation are one :class:`RandomWarp` op: the two displacements are
added into one sampling grid that is evaluated for the crop window only (the warp does the crop),
so the image is interpolated once, at the output size. Everything is plain torch
(``F.grid_sample``, ``F.interpolate``): no extra dependency, exact control of the pixel-centre
conventions shared by image, mask and weights, and the same code on CPU workers and GPU hosts.
Samples are transformed with one torch thread (:func:`one_thread`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data

from pixelwise.data.base import SegmentationDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)

Weights = torch.Tensor | None


def default_normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): ImageNet's for 3 channels, (0.449,), (0.226,) for 1."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return (0.449,), (0.226,)
    raise ConfigError(f"channels must be 1 or 3, got {channels!r}")


def _stats(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32)
    if m.ndim != 1 or m.shape != s.shape or len(m) not in (1, 3):
        raise ConfigError(f"mean {tuple(mean)} and std {tuple(std)} need 1 or 3 values each")
    if bool((s <= 0).any()):
        raise ConfigError(f"std values must be positive, got {tuple(std)}")
    return m, s


def _image01(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) or (H, W) -> float32 (C, H, W) in [0, 1]."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.dtype != np.uint8:
        raise ConfigError(f"image must be uint8 (H, W, C), got {a.dtype} {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def _normalize(img: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if img.shape[0] != len(mean):
        raise ConfigError(f"image has {img.shape[0]} channels but mean/std have {len(mean)}")
    return (img - mean[:, None, None]) / std[:, None, None]


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) equal to ``(x / 255 - mean) / std``."""
    m, s = _stats(mean, std)
    return _normalize(_image01(image), m, s)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> int64 (H, W)."""
    a = np.asarray(mask)
    if a.ndim != 2:
        raise ConfigError(f"mask must be 2-D (H, W), got shape {a.shape}")
    return torch.from_numpy(a.astype(np.int64))


def _weights_tensor(weights: np.ndarray | torch.Tensor | None, shape: tuple) -> Weights:
    if weights is None:
        return None
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if tuple(w.shape) != tuple(shape):
        raise ConfigError(f"weight map {tuple(w.shape)} and mask {tuple(shape)} differ")
    return w


class JointOp(Protocol):
    """``op(image (C, H, W) float in [0, 1], mask (H, W) long, generator, weights (H, W) float
    or None) -> (image, mask, weights)``; ops leave ``weights=None`` as None."""

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        weights: Weights = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Weights]: ...


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, n: int) -> int:
    """Uniform integer in [0, n]."""
    return int(torch.randint(0, n + 1, (), generator=generator))


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    i = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).floor().long()
    return i.clamp_(0, n_in - 1)


def resize_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of (..., H, W) to ``size``, pixel-centre aligned (matches bilinear
    with ``align_corners=False``): every output value is an input value."""
    h, w = mask.shape[-2:]
    oh, ow = size
    return mask[..., _nearest_index(h, oh), :][..., _nearest_index(w, ow)]


def _check_mode(mode: str) -> str:
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"image interpolation must be 'bilinear' or 'nearest', got {mode!r}")
    return mode


@dataclass
class RandomScale:
    """Scale both sides by a factor drawn uniformly from ``scale``; image (and weights) bilinear
    with antialiasing, mask nearest. ``image_mode="nearest"`` resamples the image and weights
    like the mask (for tests that need exact values)."""

    scale: tuple[float, float] = (0.75, 1.25)
    image_mode: str = "bilinear"

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        weights: Weights = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Weights]:
        s = _uniform(generator, *self.scale)
        h, w = mask.shape
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return image, mask, weights
        if self.image_mode == "nearest":
            image = resize_nearest(image, size)
            weights = None if weights is None else resize_nearest(weights, size)
        else:
            image = F.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
            if weights is not None:
                weights = F.interpolate(
                    weights[None, None],
                    size=size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0, 0]
        return image, resize_nearest(mask, size), weights


@dataclass
class ColorJitter:
    """Photometric jitter of the image only: brightness (``x * b``), contrast (blend with the
    mean grey level, factor ``c``) and, for 3 channels, saturation (blend with the per-pixel
    grey, factor ``s``), each factor uniform in ``[max(0, 1 - strength), 1 + strength]``,
    applied in that order, then clipped to [0, 1]. The mask and weights are untouched; a
    1-channel image gets brightness and contrast (the saturation draw is made and unused)."""

    strength: float = 0.2

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        weights: Weights = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Weights]:
        lo, hi = max(0.0, 1.0 - self.strength), 1.0 + self.strength
        b, c, s = (_uniform(generator, lo, hi) for _ in range(3))
        img = image * b
        gray = _gray(img)
        img = c * img + (1 - c) * gray.mean()
        if img.shape[0] == 3:
            img = s * img + (1 - s) * _gray(img)
        return img.clamp_(0.0, 1.0), mask, weights


def _gray(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (1, H, W) luminance (ITU-R 601 weights for 3 channels)."""
    if img.shape[0] == 1:
        return img
    luma = torch.tensor(_LUMA, dtype=img.dtype).reshape(3, 1, 1)
    return (img * luma).sum(0, keepdim=True)


@dataclass
class RandomWarp:
    """Random rotation by an angle uniform in ``[-rotate, rotate]`` degrees about the image
    centre, plus the U-Net elastic deformation: displacement vectors (x and y) on a coarse
    ``grid x grid`` lattice spanning the image, each component ~ N(0, ``elastic``^2) pixels,
    bicubically interpolated to one displacement per pixel. Output size = input size.

    Output pixel ``p`` (pixel centre, in pixels) samples the input at
    ``c + R(p - c) + d(p)``; the image (and weights) bilinearly, the mask with nearest
    neighbour, all through one grid. Samples from outside the input are ``fill`` (per channel,
    in [0, 1]) in the image, ``ignore_index`` in the mask and 0 in the weights.

    ``crop=(h, w)`` also does :class:`RandomCrop`'s job (same draws, same result) while
    computing only the cropped window: warp-then-crop in one resampling of fewer pixels.
    """

    rotate: float = 0.0
    elastic: float = 0.0
    fill: tuple[float, ...] = (0.0,)
    ignore_index: int = 255
    grid: int = 3
    image_mode: str = "bilinear"
    crop: tuple[int, int] | None = None

    def draw(self, generator: torch.Generator) -> tuple[float, torch.Tensor | None]:
        """One random draw: the angle (degrees), then the coarse displacements
        ``(2, grid, grid)`` in pixels (x then y components), or None without elastic."""
        angle = _uniform(generator, -self.rotate, self.rotate) if self.rotate > 0 else 0.0
        coarse = None
        if self.elastic > 0:
            shape = (2, self.grid, self.grid)
            coarse = torch.randn(shape, generator=generator) * self.elastic
        return angle, coarse

    def sampling_grid(self, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """The ``(H, W, 2)`` grid of one random draw (without the crop)."""
        return warp_grid(h, w, *self.draw(generator))

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        weights: Weights = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Weights]:
        if self.rotate <= 0 and self.elastic <= 0 and self.crop is None:
            return image, mask, weights
        h, w = mask.shape
        angle, coarse = self.draw(generator)
        rows = cols = None
        if self.crop is not None:  # RandomCrop's draws: canvas offset if padded, then window
            ch, cw = self.crop
            ph, pw = max(h, ch), max(w, cw)
            oy = ox = 0
            if (ph, pw) != (h, w):
                oy, ox = _randint(generator, ph - h), _randint(generator, pw - w)
            y, x = _randint(generator, ph - ch), _randint(generator, pw - cw)
            rows, cols = torch.arange(ch) + (y - oy), torch.arange(cw) + (x - ox)
        grid = warp_grid(h, w, angle, coarse, rows, cols)[None]
        return warp(image, mask, grid, self.fill, self.ignore_index, weights, self.image_mode)


_OUTSIDE = -8.0  # a grid coordinate far outside [-1, 1]: samples nothing


@lru_cache(maxsize=64)
def _cubic_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) matrix of ``F.interpolate(mode="bicubic", align_corners=True)`` along one
    axis (the 2-D bicubic is separable: field = M_y @ coarse @ M_x^T)."""
    eye = torch.eye(n_in).reshape(1, n_in, n_in, 1)
    out = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=True)
    return out[0, :, :, 0].T.contiguous()


def warp_grid(
    h: int,
    w: int,
    angle: float = 0.0,
    coarse: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.grid_sample`` grid (x, y in [-1, 1], ``align_corners=False``) for an ``h x w``
    image that rotates by ``angle`` degrees about the image centre (positive = clockwise on
    screen, y pointing down) and adds the displacement field bicubically interpolated from
    ``coarse`` ``(2, g, g)`` (x, y pixel displacements on a g x g lattice whose outer nodes sit
    on the corner pixels). ``rows``/``cols`` (int64) select the output window (default all):
    the result is ``(len(rows), len(cols), 2)``; rows or columns outside the image sample
    nothing (fill / ignore / 0)."""
    rows = torch.arange(h) if rows is None else rows
    cols = torch.arange(w) if cols is None else cols
    ys = rows.to(torch.float32) + 0.5 - h / 2
    xs = cols.to(torch.float32) + 0.5 - w / 2
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    sx, sy = px, py
    if angle:
        a = math.radians(angle)
        cos, sin = math.cos(a), math.sin(a)
        sx, sy = cos * px + sin * py, -sin * px + cos * py
    if coarse is not None:
        g = coarse.shape[-1]
        my = _cubic_matrix(h, coarse.shape[-2])[rows.clamp(0, h - 1)]
        mx = _cubic_matrix(w, g)[cols.clamp(0, w - 1)]
        c = coarse.to(torch.float32)
        sx, sy = sx + my @ c[0] @ mx.T, sy + my @ c[1] @ mx.T
    # pixel offsets from the centre -> normalised coordinates (-1 = left edge of pixel 0)
    grid = torch.stack((sx * (2.0 / w), sy * (2.0 / h)), dim=-1)
    outside = ((rows < 0) | (rows >= h))[:, None] | ((cols < 0) | (cols >= w))[None, :]
    if bool(outside.any()):
        grid[outside] = _OUTSIDE
    return grid


def warp(
    image: torch.Tensor,
    mask: torch.Tensor,
    grid: torch.Tensor,
    fill: Sequence[float],
    ignore_index: int = 255,
    weights: Weights = None,
    image_mode: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor, Weights]:
    """Resample image (C, H, W), mask (H, W) and weights (H, W) through ``grid`` (1, h, w, 2)
    (``F.grid_sample`` coordinates, ``align_corners=False``): image and weights with
    ``image_mode``, the mask with nearest neighbour; outside = ``fill`` / ignore / 0."""
    c, (h, w) = image.shape[0], mask.shape
    ones = torch.ones((1, h, w), dtype=image.dtype)
    parts = [image, ones] + ([weights[None].to(image.dtype)] if weights is not None else [])
    out = F.grid_sample(
        torch.cat(parts)[None], grid, mode=image_mode, padding_mode="zeros", align_corners=False
    )[0]
    fill_t = torch.tensor([float(v) for v in fill], dtype=image.dtype).reshape(-1, 1, 1)
    img = out[:c] + (1.0 - out[c : c + 1]) * fill_t  # bilinear: blends into the fill at edges
    new_weights = out[c + 1] if weights is not None else None
    m = F.grid_sample(
        torch.stack((mask.to(torch.float32), torch.ones((h, w))))[None],
        grid.to(torch.float32),
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    )[0]
    labels = m[0].round().long().masked_fill_(m[1] <= 0.5, ignore_index)
    return img, labels.to(mask.dtype), new_weights


@dataclass
class RandomCrop:
    """Crop ``size`` (h, w) at a random place; a smaller image is first placed at a random
    offset on a canvas of ``fill`` (per channel, in [0, 1]) with the mask ``ignore_index`` and
    the weights 0."""

    size: tuple[int, int]
    fill: tuple[float, ...]
    ignore_index: int = 255

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        weights: Weights = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Weights]:
        ch, cw = self.size
        h, w = mask.shape
        ph, pw = max(h, ch), max(w, cw)
        if (ph, pw) != (h, w):
            oy, ox = _randint(generator, ph - h), _randint(generator, pw - w)
            fill = torch.tensor(self.fill, dtype=image.dtype).reshape(-1, 1, 1)
            canvas = fill.expand(image.shape[0], ph, pw).clone()
            canvas[:, oy : oy + h, ox : ox + w] = image
            mcanvas = torch.full((ph, pw), self.ignore_index, dtype=mask.dtype)
            mcanvas[oy : oy + h, ox : ox + w] = mask
            if weights is not None:
                wcanvas = torch.zeros((ph, pw), dtype=weights.dtype)
                wcanvas[oy : oy + h, ox : ox + w] = weights
                weights = wcanvas
            image, mask, h, w = canvas, mcanvas, ph, pw
        y, x = _randint(generator, h - ch), _randint(generator, w - cw)
        if weights is not None:
            weights = weights[y : y + ch, x : x + cw]
        return image[:, y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw], weights


@dataclass
class RandomHFlip:
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        weights: Weights = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Weights]:
        if float(torch.rand((), generator=generator)) < self.p:
            return image.flip(-1), mask.flip(-1), None if weights is None else weights.flip(-1)
        return image, mask, weights


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
    ):
        raise ConfigError(f"crop size must be a positive int or (height, width), got {size!r}")
    return (size[0], size[1])


def _nonnegative(value: float, option: str, limit: float = math.inf) -> float:
    v = float(value)
    if not math.isfinite(v) or not 0 <= v <= limit:
        raise ConfigError(f"--{option}: must be between 0 and {limit:g}, got {value!r}")
    return v


class TrainTransform:
    """Training augmentation: random scale -> colour jitter -> rotation + elastic warp ->
    ``extra_ops`` -> random crop (padding when the image is smaller) -> horizontal flip ->
    normalise. Steps whose option is off (``color_jitter=0``, ``rotate=0``, ``elastic=0``,
    ``scale=(1, 1)``, ``hflip=False``) are left out and draw no random numbers. Without
    ``extra_ops`` the warp does the crop itself (:class:`RandomWarp` ``crop=``, same result).

    ``__call__(image uint8 (H, W, C), mask uint8 (H, W), generator, weights=None)`` returns
    image float32 (C, crop_h, crop_w) and mask int64 (crop_h, crop_w), plus the weight map
    float32 (crop_h, crop_w) when ``weights`` (H, W) is given. Padding is 0 in the image (the
    mean colour), ``ignore_index`` in the mask and 0 in the weights. ``extra_ops`` are
    :class:`JointOp`s run on the [0, 1] image before cropping; ``self.ops`` is the full list.
    ``interpolation="nearest"`` resamples the image like the mask (tests of alignment).
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.75, 1.25),
        hflip: bool = True,
        ignore_index: int = 255,
        extra_ops: Sequence[JointOp] = (),
        rotate: float = 0.0,
        elastic: float = 0.0,
        color_jitter: float = 0.0,
        interpolation: str = "bilinear",
    ) -> None:
        self.crop_size = _pair(crop_size)
        self.mean, self.std = _stats(mean, std)
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale range must satisfy 0 < low <= high, got {scale!r}")
        if not 0 <= ignore_index <= 255:
            raise ConfigError(f"ignore_index must be in 0..255, got {ignore_index!r}")
        rotate = _nonnegative(rotate, "rotate", 180.0)
        elastic = _nonnegative(elastic, "elastic")
        color_jitter = _nonnegative(color_jitter, "color-jitter", 1.0)
        mode = _check_mode(interpolation)
        self.ignore_index = ignore_index
        fill = tuple(self.mean.tolist())
        ops: list[JointOp] = []
        if (lo, hi) != (1.0, 1.0):
            ops.append(RandomScale((lo, hi), mode))
        if color_jitter > 0:
            ops.append(ColorJitter(color_jitter))
        warping = rotate > 0 or elastic > 0
        fused = warping and not extra_ops  # warp + crop in one resampling of the crop only
        if warping:
            crop = self.crop_size if fused else None
            ops.append(RandomWarp(rotate, elastic, fill, ignore_index, image_mode=mode, crop=crop))
        ops.extend(extra_ops)
        if not fused:
            ops.append(RandomCrop(self.crop_size, fill, ignore_index))
        if hflip:
            ops.append(RandomHFlip())
        self.ops = ops

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        generator: torch.Generator,
        weights: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        img, m = _image01(image), mask_to_tensor(mask)
        if img.shape[1:] != m.shape:
            raise ConfigError(f"image {tuple(img.shape[1:])} and mask {tuple(m.shape)} differ")
        w = _weights_tensor(weights, tuple(m.shape))
        for op in self.ops:
            img, m, w = op(img, m, generator, w)
        x = _normalize(img, self.mean, self.std).contiguous()
        if w is None:
            return x, m.contiguous()
        return x, m.contiguous(), w.contiguous()


class EvalTransform:
    """No augmentation: ``(to_tensor(image, mean, std), mask_to_tensor(mask))`` (plus the
    weight map as float32 when given); the generator argument is accepted and ignored."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = _stats(mean, std)

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        generator: torch.Generator | None = None,
        weights: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        x, m = _normalize(_image01(image), self.mean, self.std), mask_to_tensor(mask)
        w = _weights_tensor(weights, tuple(m.shape))
        return (x, m) if w is None else (x, m, w)


WeightFn = Callable[[int, np.ndarray], np.ndarray]


class TransformedDataset(torch.utils.data.Dataset):
    """``dataset`` with ``transform`` applied; item ``i`` returns (image float32 (C, H, W),
    mask int64 (H, W)), plus the weight map float32 (H, W) when ``weights`` is given:
    ``weights(i, mask uint8 (H, W)) -> float32 (H, W)`` is called on the untransformed mask of
    item ``i`` (e.g. :class:`pixelwise.data.weights.BorderWeights`, which caches per index) and
    the map is transformed jointly with image and mask.

    Item ``i`` in epoch ``e`` uses a ``torch.Generator`` seeded from ``(seed, e, i)``, so the
    augmentation is the same whatever the worker count or access order. Call
    :meth:`set_epoch` before each epoch; the epoch lives in shared memory, so DataLoader workers
    (also ``persistent_workers=True`` ones) see the new value.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        transform: Callable[..., tuple[torch.Tensor, ...]],
        seed: int = 0,
        weights: WeightFn | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.weights = weights
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def classes(self) -> ClassInfo:
        return self.dataset.classes

    @property
    def channels(self) -> int:
        return self.dataset.channels

    @property
    def names(self) -> list[str]:
        return self.dataset.names

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def generator(self, i: int) -> torch.Generator:
        """The generator item ``i`` uses in the current epoch."""
        state = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(2)
        g = torch.Generator()
        g.manual_seed((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))
        return g

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if i < 0:
            i += len(self)
        sample = self.dataset[i]
        with one_thread():
            if self.weights is None:
                return self.transform(sample.image, sample.mask, self.generator(i))
            w = self.weights(i, sample.mask)
            return self.transform(sample.image, sample.mask, self.generator(i), weights=w)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread (restored after). Per-sample ops are too small to
    gain from intra-op threads, and on a busy machine those threads cost far more than they
    save (bench/loader.py); DataLoader workers run with one thread anyway, so the samples are
    also computed the same way with and without workers."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

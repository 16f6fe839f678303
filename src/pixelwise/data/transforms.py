"""Joint image/mask transforms (torch-native) and the dataset wrapper that applies them.

Inside :class:`TrainTransform` the image is a float tensor ``(C, H, W)`` in [0, 1] and the mask a
long tensor ``(H, W)``; each step is a *joint op* ``op(image, mask, generator) -> (image, mask)``
drawing all randomness from ``generator``. Geometric ops resample the image (bilinear) and the
mask with nearest neighbour only, so no new label value can appear. Normalisation
``(x - mean) / std`` comes last, so padding with the mean colour becomes 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


class JointOp(Protocol):
    """``op(image (C, H, W) float in [0, 1], mask (H, W) long, generator) -> (image, mask)``."""

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, n: int) -> int:
    """Uniform integer in [0, n]."""
    return int(torch.randint(0, n + 1, (), generator=generator))


def resize_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of (H, W) to ``size``, pixel-centre aligned (matches bilinear with
    ``align_corners=False``): every output value is an input value."""
    h, w = mask.shape
    oh, ow = size
    iy = ((torch.arange(oh, dtype=torch.float64) + 0.5) * (h / oh)).floor().long().clamp_(0, h - 1)
    ix = ((torch.arange(ow, dtype=torch.float64) + 0.5) * (w / ow)).floor().long().clamp_(0, w - 1)
    return mask[iy][:, ix]


@dataclass
class RandomScale:
    """Scale both sides by a factor drawn uniformly from ``scale``; image bilinear with
    antialiasing, mask nearest."""

    scale: tuple[float, float] = (0.75, 1.25)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = _uniform(generator, *self.scale)
        h, w = mask.shape
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return image, mask
        image = F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=True
        )[0]
        return image, resize_nearest(mask, size)


@dataclass
class RandomCrop:
    """Crop ``size`` (h, w) at a random place; a smaller image is first placed at a random
    offset on a canvas of ``fill`` (per channel, in [0, 1]) with the mask ``ignore_index``."""

    size: tuple[int, int]
    fill: tuple[float, ...]
    ignore_index: int = 255

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
            image, mask, h, w = canvas, mcanvas, ph, pw
        y, x = _randint(generator, h - ch), _randint(generator, w - cw)
        return image[:, y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]


@dataclass
class RandomHFlip:
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if float(torch.rand((), generator=generator)) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask


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


class TrainTransform:
    """Training augmentation: random scale -> ``extra_ops`` -> random crop (padding when the
    image is smaller) -> horizontal flip -> normalise.

    ``__call__(image uint8 (H, W, C), mask uint8 (H, W), generator)`` returns image float32
    (C, crop_h, crop_w) and mask int64 (crop_h, crop_w); padding is 0 in the image (the mean
    colour) and ``ignore_index`` in the mask. ``extra_ops`` are :class:`JointOp`s (rotation,
    colour jitter, ...) run on the [0, 1] image before cropping; ``self.ops`` is the full list.
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
    ) -> None:
        self.crop_size = _pair(crop_size)
        self.mean, self.std = _stats(mean, std)
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale range must satisfy 0 < low <= high, got {scale!r}")
        if not 0 <= ignore_index <= 255:
            raise ConfigError(f"ignore_index must be in 0..255, got {ignore_index!r}")
        self.ignore_index = ignore_index
        ops: list[JointOp] = []
        if (lo, hi) != (1.0, 1.0):
            ops.append(RandomScale((lo, hi)))
        ops.extend(extra_ops)
        ops.append(RandomCrop(self.crop_size, tuple(self.mean.tolist()), ignore_index))
        if hflip:
            ops.append(RandomHFlip())
        self.ops = ops

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img, m = _image01(image), mask_to_tensor(mask)
        if img.shape[1:] != m.shape:
            raise ConfigError(f"image {tuple(img.shape[1:])} and mask {tuple(m.shape)} differ")
        for op in self.ops:
            img, m = op(img, m, generator)
        return _normalize(img, self.mean, self.std).contiguous(), m.contiguous()


class EvalTransform:
    """No augmentation: ``(to_tensor(image, mean, std), mask_to_tensor(mask))``; the generator
    argument is accepted and ignored."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = _stats(mean, std)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _normalize(_image01(image), self.mean, self.std), mask_to_tensor(mask)


class TransformedDataset(torch.utils.data.Dataset):
    """``dataset`` with ``transform`` applied; item ``i`` returns (image float32 (C, H, W),
    mask int64 (H, W)).

    Item ``i`` in epoch ``e`` uses a ``torch.Generator`` seeded from ``(seed, e, i)``, so the
    augmentation is the same whatever the worker count or access order. Call
    :meth:`set_epoch` before each epoch; with ``persistent_workers=True`` the workers keep the
    epoch they started with, so leave persistent workers off (or rebuild the loader).
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        transform: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    @property
    def classes(self) -> ClassInfo:
        return self.dataset.classes

    @property
    def channels(self) -> int:
        return self.dataset.channels

    @property
    def names(self) -> list[str]:
        return self.dataset.names

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def generator(self, i: int) -> torch.Generator:
        """The generator item ``i`` uses in the current epoch."""
        state = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(2)
        g = torch.Generator()
        g.manual_seed((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))
        return g

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i < 0:
            i += len(self)
        sample = self.dataset[i]
        return self.transform(sample.image, sample.mask, self.generator(i))

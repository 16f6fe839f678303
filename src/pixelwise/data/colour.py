"""Colour for colourization: CIE Lab in torch, and the colour images of a folder (no masks).

``rgb_to_lab`` / ``lab_to_rgb``: sRGB (IEC 61966-2-1 companding) <-> linear RGB <-> XYZ <-> CIE
Lab, D65 white (2 degree observer), the conversion of skimage's ``rgb2lab`` and of Bruce
Lindbloom's tables. :func:`open_colour_images` lists the images of any dataset layout (masks are
never read) or of a plain folder (recursively) and keeps the colour ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixelwise.data.base import Sample, SegmentationDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import image_channels, read_image
from pixelwise.data.layout_base import IMAGE_SUFFIXES, seeded_split
from pixelwise.errors import ConfigError, DataError

__all__ = ["AB_CLASSES", "ColourImages", "lab_to_rgb", "open_colour_images", "rgb_to_lab"]

#: a colourization run's two outputs (the "classes" of its run directory): Lab a and b
AB_CLASSES = ClassInfo(names=("a", "b"), colors=((220, 40, 120), (40, 120, 220)))

_M = torch.tensor(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=torch.float64,
)
_M_INV = torch.linalg.inv(_M)
_WHITE = (0.95047, 1.0, 1.08883)  # D65, Y = 1
_D = 6.0 / 29.0


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], ``(..., 3, H, W)`` -> Lab ``(..., 3, H, W)`` (L 0..100, a, b about
    -110..110), in the input's dtype (computed in float32 at least)."""
    x = rgb.float() if rgb.dtype not in (torch.float32, torch.float64) else rgb
    lin = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,...jhw->...ihw", _M.to(lin), lin)
    white = torch.tensor(_WHITE, dtype=lin.dtype, device=lin.device).view(3, 1, 1)
    t = xyz / white
    f = torch.where(t > _D**3, t.clamp(min=_D**3) ** (1 / 3), t / (3 * _D**2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    lab = torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), -3)
    return lab.to(rgb.dtype) if rgb.is_floating_point() else lab


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``(..., 3, H, W)`` -> sRGB in [0, 1] (out-of-gamut colours clipped)."""
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16) / 116
    f = torch.stack((fy + a / 500, fy, fy - b / 200), -3)
    t = torch.where(f > _D, f**3, 3 * _D**2 * (f - 4 / 29))
    white = torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    lin = torch.einsum("ij,...jhw->...ihw", _M_INV.to(lab), t * white).clamp(0, 1)
    gamma = 1.055 * lin.clamp(min=1e-12) ** (1 / 2.4) - 0.055
    return torch.where(lin <= 0.0031308, 12.92 * lin, gamma).clamp(0, 1)


def has_colour(image: np.ndarray, tolerance: int = 2, share: float = 0.001) -> bool:
    """Does ``image`` uint8 (H, W, 3) hold colour: more than ``share`` of its pixels with
    channels that differ by more than ``tolerance``? (Grey stored as RGB has none.)"""
    if image.ndim != 3 or image.shape[2] < 3:
        return False
    x = image[..., :3].astype(np.int16)
    spread = x.max(2) - x.min(2)
    return bool((spread > tolerance).mean() > share)


class ColourImages(SegmentationDataset):
    """Colour images for colourization: each sample is the RGB image and an all-zero mask
    (nothing is labelled: the target is the image's own colour)."""

    def __init__(self, files: list[Path], root: Path, layout: str, notes: list[str]) -> None:
        self.files = list(files)
        self.names = [p.stem for p in self.files]
        self.classes = AB_CLASSES
        self.channels = 3
        self.root = root
        self.layout = layout
        self.notes = notes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        path = self.files[self._index(i)]
        image = read_image(path, 3)
        return Sample(image, np.zeros(image.shape[:2], np.uint8), self.names[self._index(i)])


def _layout_images(root: Path, split: str, format: str, val_fraction: float) -> tuple:
    """(images of ``split`` of ``root``'s layout, the layout's name), or None when ``root`` is
    in no layout (or its masks are incomplete: the images are all colourization needs)."""
    from pixelwise.data.layouts import make_layout

    try:
        layout = make_layout(root, format, val_fraction=val_fraction)
        return [p.image for p in layout.pairs(split)], layout.name
    except DataError:
        if format not in (None, "auto"):
            raise
        return None


def _plain_images(root: Path, split: str, val_fraction: float) -> list[Path]:
    """Every image file under ``root`` (recursively, hidden ones and masks/ folders skipped),
    split into train/val by the layouts' seeded split (seed 0)."""
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and "masks" not in p.relative_to(root).parts[:-1]
        and p.is_file()
    )
    if split == "all" or len(files) < 2:
        return files
    train, val = seeded_split(len(files), val_fraction, 0)
    return [files[i] for i in (train if split == "train" else val)]


def open_colour_images(
    root: str | Path,
    split: str,
    format: str = "auto",
    val_fraction: float = 0.1,
    limit: int | None = None,
) -> ColourImages:
    """The colour images of ``split`` ("train", "val", "all") of ``root``: the images of its
    dataset layout when it has one (CamVid's train/, VOC's JPEGImages, ...; masks never read),
    else every image under it with a seeded ``val_fraction`` held out. Greyscale files (judged
    from their headers, then by decoding a few) are skipped; none in colour -> DataError."""
    if str(root) == "digits":
        raise ConfigError(
            "--task colorize: the embedded digits are not photographs; give --data DIR, a "
            "folder of colour images"
        )
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--data {root}: no such folder; give a folder of colour images")
    found = _layout_images(root, split, format, val_fraction)
    files, layout = found if found is not None else (_plain_images(root, split, val_fraction), "")
    if limit is not None:
        files = files[:limit]
    colour = [p for p in files if image_channels(p) == 3]
    step = max(1, len(colour) // 8)
    if not colour or not any(has_colour(read_image(p, 3)) for p in colour[::step][:8]):
        raise DataError(
            root,
            f"no colour images in the '{split}' split ({len(files)} image(s), all greyscale): "
            "colourization learns colour from colour images; give a folder of RGB photographs",
        )
    notes = []
    if len(colour) < len(files):
        notes.append(f"{root}: skipped {len(files) - len(colour)} greyscale image(s)")
    return ColourImages(colour, root, layout, notes)

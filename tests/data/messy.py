"""Messy dataset folders as users have them, built as real files: JPEG-noisy binary masks
(saved through PIL JPEG, then PNG), ``.jpg`` masks, images at 3x their masks' size,
byte-identical duplicate images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32


def clean_mask(seed: int, size: int = SIZE) -> np.ndarray:
    """A clean 0/255 mask of a few discs."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.integers(4, size - 4, 2)
        r = int(rng.integers(size // 8, size // 4))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(img)


def jpeg_noisy(mask: np.ndarray, quality: int = 75) -> np.ndarray:
    """``mask`` after a round trip through JPEG (what a photo editor's export does)."""
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def image_for(mask: np.ndarray, seed: int, scale: int = 1) -> np.ndarray:
    """An RGB image whose foreground (mask 255) is bright and background dark, with noise;
    ``scale`` times the mask's size."""
    rng = np.random.default_rng(1000 + seed)
    big = np.kron(mask >= 128, np.ones((scale, scale), dtype=bool))
    base = np.where(big, 190, 60).astype(np.int16)[..., None] + rng.integers(
        -25, 26, (*big.shape, 3)
    )
    return np.clip(base, 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def noisy_flat(root: Path, n: int = 12, jpeg_masks: bool = False) -> Path:
    """``root/images/*.png`` + ``root/masks/*`` whose 0/255 masks went through JPEG: saved as
    PNG (the values 0..255 of JPEG noise kept), or as ``.jpg`` files."""
    for i in range(n):
        mask = clean_mask(i)
        save(root / "images" / f"s{i:02d}.png", image_for(mask, i))
        if jpeg_masks:
            save(root / "masks" / f"s{i:02d}.jpg", mask, format="JPEG", quality=75)
        else:
            save(root / "masks" / f"s{i:02d}.png", jpeg_noisy(mask))
    return root


def big_images(root: Path, n: int = 6, scale: int = 3) -> Path:
    """A flat folder whose images are ``scale`` times their (clean 0/255) masks' size."""
    for i in range(n):
        mask = clean_mask(i)
        save(root / "images" / f"b{i}.png", image_for(mask, i, scale))
        save(root / "masks" / f"b{i}.png", mask)
    return root


def with_duplicate(root: Path, name: str = "s00", copy: str = "zz_copy") -> Path:
    """A byte-identical copy of ``images/NAME.png`` (and its mask) under another name."""
    (root / "images" / f"{copy}.png").write_bytes((root / "images" / f"{name}.png").read_bytes())
    masks = root / "masks"
    src = next(p for p in masks.iterdir() if p.stem == name)
    (masks / f"{copy}{src.suffix}").write_bytes(src.read_bytes())
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root``: (size, mtime_ns, content) by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, p.read_bytes())
    return out

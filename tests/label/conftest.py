"""Folders of small images for the labeling tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pixelwise.data.io import write_image


def write_images(folder: Path, n: int = 3, size: tuple[int, int] = (40, 56), gray=False) -> Path:
    """``n`` random-texture images ``img0.png ..`` of ``size`` (H, W) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = size if gray else (*size, 3)
        write_image(folder / f"img{i}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return folder


@pytest.fixture
def images(tmp_path) -> Path:
    return write_images(tmp_path / "in")

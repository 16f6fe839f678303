"""Lossy mask values are recognised from a histogram; label masks never are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pixelwise.data.maskvalues import (
    class_count_problem,
    lossy_values,
    value_histogram,
)
from tests.data.messy import clean_mask, jpeg_noisy


def hist(*masks: np.ndarray) -> np.ndarray:
    return sum(value_histogram(m) for m in masks)


def regions(values: list[int], size: int = 96) -> np.ndarray:
    """Large regions of the gray ``values`` (bands and a disc, edges off the JPEG blocks)."""
    img = Image.new("L", (size, size), values[0])
    draw = ImageDraw.Draw(img)
    for i, v in enumerate(values[1:], 1):
        draw.rectangle([size * i // len(values) + 3, 0, size, size], fill=v)
    draw.ellipse([20, 30, 70, 75], fill=values[-1])
    return np.asarray(img)


@pytest.mark.parametrize("quality", [30, 50, 75, 90])
def test_jpeg_binary_masks_are_binary_with_threshold_128(quality):
    lossy = lossy_values(hist(*(jpeg_noisy(clean_mask(i, 64), quality) for i in range(4))))
    assert lossy is not None and lossy.kind == "binary"
    assert lossy.class_values == (0, 255) and lossy.threshold == 128
    assert lossy.option == "--mask-threshold 128" and lossy.near > 0.9
    assert lossy.describe().endswith("near 0 or 255")


def test_anti_aliased_binary_masks_are_binary():
    big = [clean_mask(i, 256) for i in range(3)]
    small = [
        np.asarray(Image.fromarray(m).resize((100, 100), Image.Resampling.BILINEAR)) for m in big
    ]
    lossy = lossy_values(hist(*small))
    assert lossy is not None and lossy.kind == "binary"
    assert "anti-aliased" in lossy.what(jpeg=False) and "anti" not in lossy.what(jpeg=True)


@pytest.mark.parametrize("values", [[0, 128, 255], [0, 85, 170, 255]])
def test_jpeg_gray_palette_rounds(values):
    lossy = lossy_values(value_histogram(jpeg_noisy(regions(values), 75)))
    assert lossy is not None and lossy.kind == "palette"
    assert list(lossy.class_values) == values and lossy.option == "--label-map round"
    assert lossy.describe().endswith(f"near {', '.join(map(str, values))}")


@pytest.mark.parametrize(
    "values",
    [
        np.array([0, 255]),
        np.array([0, 1]),
        np.arange(12),  # CamVid-like indices
        np.array([*range(20), 255]),  # indices + ignore
        np.array([0, 7, 11, 17, 21, 24, 26, 33]),  # Cityscapes label ids
        np.array([0, 60, 120, 180, 240]),  # a clean gray palette
        np.arange(150),  # ADE20K-like
    ],
)
def test_label_masks_are_never_lossy(values):
    rng = np.random.default_rng(0)
    weights = rng.random(len(values)) ** 3 + 0.001  # some classes rare
    mask = rng.choice(values, size=(80, 80), p=weights / weights.sum()).astype(np.uint8)
    mask[:40] = values[0]  # a big background
    assert lossy_values(value_histogram(mask)) is None


def test_value_histogram_only_for_8_bit_single_channel():
    assert value_histogram(np.zeros((2, 2, 3), np.uint8)) is None
    assert value_histogram(np.zeros((2, 2), np.int64)) is None
    assert value_histogram(np.zeros((2, 2), np.uint8))[0] == 4


def test_class_count_problem():
    assert class_count_problem(12, None) is None
    pixels = [10_000] * 3 + [1] * 200
    assert class_count_problem(203, pixels).startswith("203 classes inferred")
    assert "200 of them rare" in class_count_problem(203, pixels)
    assert class_count_problem(40, [1000] * 40) is None  # many classes, none rare: plausible

import numpy as np
import pytest

from pixelwise.data.balance import class_pixel_counts, median_frequency_weights
from pixelwise.data.base import Sample, SegmentationDataset
from pixelwise.data.classes import ClassInfo


class Masks(SegmentationDataset):
    def __init__(self, masks, n):
        self.masks = masks
        self.classes = ClassInfo.default(n)
        self.channels = 3
        self.names = [str(i) for i in range(len(masks))]

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        m = np.asarray(self.masks[i], dtype=np.uint8)
        return Sample(np.zeros((*m.shape, 3), np.uint8), m, self.names[i])


def test_median_frequency_by_hand():
    # image A: 3 px of class 0, 1 px of class 1; image B: 2 px class 0, 1 px class 2, 1 ignored
    ds = Masks([[[0, 0], [0, 1]], [[0, 0], [2, 255]]], 4)
    counts, image_pixels = class_pixel_counts(ds)
    assert counts.tolist() == [5, 1, 1, 0]
    assert image_pixels.tolist() == [7, 4, 3, 0]
    w = median_frequency_weights(counts, image_pixels)
    freq = [5 / 7, 1 / 4, 1 / 3]
    median = sorted(freq)[1]
    assert w[:3] == pytest.approx([median / f for f in freq])
    assert w[3] == 0.0  # never seen: nothing to balance


def test_digits_background_is_down_weighted():
    from pixelwise.data import DigitsScenes

    w = median_frequency_weights(*class_pixel_counts(DigitsScenes("train", num_images=40)))
    assert w[0] < 0.2
    assert all(0.3 < v < 3 for v in w[1:])

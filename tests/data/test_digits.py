import numpy as np
import pytest

from pixelwise.data import DIGITS_CLASSES, DigitsScenes, FolderDataset, write_digits_folder
from pixelwise.data.digits import NUM_DIGITS, digit_split, load_digit_images
from pixelwise.errors import ConfigError


def test_digit_images():
    images, labels = load_digit_images()
    assert images.shape == (NUM_DIGITS, 8, 8) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))


def test_split_is_by_digit_sample_and_disjoint():
    split = digit_split()
    train, val = split["train"], split["val"]
    assert len(train) == 1438 and len(val) == 359
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).tolist() == list(range(NUM_DIGITS))
    _, labels = load_digit_images()
    assert set(labels[val].tolist()) == set(range(10))
    ds = DigitsScenes("val", seed=5, num_images=10)
    used = [k for i in range(10) for k in ds.compose(i)[2]]
    assert used and set(used) <= set(val.tolist())
    assert DigitsScenes("train", seed=123).pool.tolist() == train.tolist()  # seed-independent


def test_deterministic_and_order_independent():
    a = DigitsScenes("train", seed=1, num_images=6)
    b = DigitsScenes("train", seed=1, num_images=6)
    later = b[5]
    first = [a[i] for i in range(6)]
    np.testing.assert_array_equal(first[5].image, later.image)
    np.testing.assert_array_equal(first[5].mask, later.mask)
    np.testing.assert_array_equal(a[-1].image, later.image)
    c = DigitsScenes("train", seed=2, num_images=6)
    assert not np.array_equal(c[0].image, first[0].image)
    assert not np.array_equal(DigitsScenes("val", seed=1)[0].image, first[0].image)


def test_samples_shapes_classes_and_sizes():
    ds = DigitsScenes("train", num_images=40)
    assert len(ds) == 40 and len(DigitsScenes("train")) == 400 and len(DigitsScenes("val")) == 80
    assert ds.classes == DIGITS_CLASSES and DIGITS_CLASSES.num_classes == 11
    assert DIGITS_CLASSES.names == ("background", *map(str, range(10)))
    assert len(set(DIGITS_CLASSES.colors)) == 11
    seen, sizes = set(), set()
    for s in ds:
        h, w, c = s.image.shape
        assert c == 3 and s.image.dtype == np.uint8 and s.mask.dtype == np.uint8
        assert s.mask.shape == (h, w) and 64 <= h <= 128 and 64 <= w <= 128
        assert s.mask.max() <= 10
        seen |= set(np.unique(s.mask).tolist())
        sizes.add((h, w))
    assert seen == set(range(11))
    assert len(sizes) > 20 and len({h for h, _ in sizes}) > 10
    assert ds.names[3] == ds[3].name


def dilate(m, r):
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1)
    return out


def test_each_digit_contrasts_with_its_surroundings():
    ds = DigitsScenes("train", num_images=30, digits_per_image=(1, 1))
    for s in ds:
        lum = s.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        fg = s.mask > 0
        ring = dilate(fg, 3) & ~dilate(fg, 1)
        assert abs(lum[fg].mean() - lum[ring].mean()) > 50  # designed: >= 0.4 * 255 on average


def test_one_channel_and_options():
    ds = DigitsScenes("val", num_images=3, channels=1, min_size=32, max_size=40, digit_size=(9, 12))
    s = ds[0]
    assert s.image.shape[2] == 1 and 32 <= s.image.shape[0] <= 40
    square = DigitsScenes("train", num_images=2, min_size=50, max_size=50)
    assert square[1].image.shape == (50, 50, 3)


@pytest.mark.parametrize(
    "kw",
    [
        {"split": "test"},
        {"num_images": 0},
        {"min_size": 100, "max_size": 50},
        {"digits_per_image": (3, 2)},
        {"digit_size": (1, 2)},
        {"channels": 2},
        {"seed": -1},
    ],
)
def test_bad_options(kw):
    with pytest.raises(ConfigError):
        DigitsScenes(**kw)


def test_scenes_are_generated_once_and_the_cache_changes_nothing():
    """A scene is generated once and then served from the cache (epochs after the first cost
    nothing); generating it again without the cache gives the same pixels. (How fast scenes
    are generated is for a benchmark in bench/ to measure, never for a test.)"""
    cached = DigitsScenes("train", num_images=60, min_size=128, max_size=128)
    fresh = DigitsScenes("train", num_images=60, min_size=128, max_size=128, cache=False)
    calls = []
    compose = cached.compose
    cached.compose = lambda i: calls.append(i) or compose(i)
    for i in range(60):
        s = cached[i]
        assert cached[i] is s and cached[i - 60] is s
        a, b = fresh[i], fresh[i]
        assert a is not b
        assert s.image.shape == (128, 128, 3) and s.mask.shape == (128, 128)
        for t in (a, b):
            np.testing.assert_array_equal(t.image, s.image)
            np.testing.assert_array_equal(t.mask, s.mask)
            assert t.name == s.name
    assert calls == list(range(60))  # each scene composed once, however often it was read


def test_write_digits_folder_round_trip(tmp_path):
    root = write_digits_folder(tmp_path / "digits", num_train=6, num_val=3, seed=4)
    assert (root / "classes.txt").is_file()
    assert len(list((root / "train" / "images").glob("*.png"))) == 6
    for split, n in (("train", 6), ("val", 3)):
        folder = FolderDataset(root, split)
        scenes = DigitsScenes(split, seed=4, num_images=n)
        assert folder.classes == DIGITS_CLASSES and folder.channels == 3
        assert folder.names == scenes.names
        for a, b in zip(folder, scenes, strict=True):
            np.testing.assert_array_equal(a.image, b.image)
            np.testing.assert_array_equal(a.mask, b.mask)

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import DigitsScenes, FolderDataset, detect_layout, open_dataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.folders import split_indices
from pixelwise.errors import ConfigError, DataError


def put(path: Path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def sample_arrays(i, size=(6, 8), num_classes=3, gray=False):
    rng = np.random.default_rng(i)
    shape = size if gray else (*size, 3)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = rng.integers(0, num_classes, size, dtype=np.uint8)
    return image, mask


def make_split(root, split, n, **kw):
    for i in range(n):
        image, mask = sample_arrays(100 * len(split) + i, **kw)
        put(root / split / "images" / f"{split}{i}.png", image)
        put(root / split / "masks" / f"{split}{i}.png", mask)


def make_flat(root, n, **kw):
    for i in range(n):
        image, mask = sample_arrays(i, **kw)
        suffix = ".jpg" if i % 2 else ".png"
        put(root / "images" / f"s{i:02d}{suffix}", image)
        put(root / "masks" / f"s{i:02d}.png", mask)


def test_split_layout(tmp_path):
    make_split(tmp_path, "train", 3)
    make_split(tmp_path, "val", 2)
    assert detect_layout(tmp_path) == "split"
    ds = FolderDataset(tmp_path, "train")
    assert len(ds) == 3 and ds.names == ["train0", "train1", "train2"] and ds.channels == 3
    image, mask = sample_arrays(500)
    s = ds[0]
    np.testing.assert_array_equal(s.image, image)
    np.testing.assert_array_equal(s.mask, mask)
    assert s.name == "train0" and ds[-1].name == "train2"
    assert ds.classes == ClassInfo.default(3)  # inferred over all splits
    assert len(FolderDataset(tmp_path, "val")) == 2
    with pytest.raises(IndexError):
        ds[3]


def test_flat_layout_seeded_split(tmp_path):
    make_flat(tmp_path, 20)
    assert detect_layout(tmp_path) == "flat"
    train = FolderDataset(tmp_path, "train", val_fraction=0.25, seed=3)
    val = FolderDataset(tmp_path, "val", val_fraction=0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert set(train.names).isdisjoint(val.names)
    assert set(train.names) | set(val.names) == {f"s{i:02d}" for i in range(20)}
    again = FolderDataset(tmp_path, "val", val_fraction=0.25, seed=3)
    assert again.names == val.names
    other = FolderDataset(tmp_path, "val", val_fraction=0.25, seed=4)
    assert other.names != val.names
    with pytest.raises(DataError, match="no 'test' split"):
        FolderDataset(tmp_path, "test")
    with pytest.raises(ConfigError):
        FolderDataset(tmp_path, "train", val_fraction=1.0)


def test_split_indices_partition():
    for n in (2, 3, 10, 101):
        tr, va = split_indices(n, 0.1, 0)
        assert sorted(tr + va) == list(range(n)) and va and tr


def test_classes_file_and_argument(tmp_path):
    make_split(tmp_path, "train", 2)
    (tmp_path / "classes.txt").write_text("bg 0 0 0\nfg 255 0 0\nother 0 255 0\nextra\n")
    ds = FolderDataset(tmp_path, "train")
    assert ds.classes.names == ("bg", "fg", "other", "extra")
    given = ClassInfo.default(5)
    assert FolderDataset(tmp_path, "train", classes=given).classes == given


def test_inferred_classes_and_binary_masks(tmp_path):
    for i in range(3):
        put(tmp_path / "images" / f"{i}.png", np.zeros((4, 4), np.uint8))
        m = np.zeros((4, 4), np.uint8)
        m[0, 0] = 255
        m[1, 1] = 255 if i < 2 else 0
        put(tmp_path / "masks" / f"{i}.png", m)
    auto = FolderDataset(tmp_path, "train")  # 0/255 only: binary, and a note says so
    assert auto.classes.num_classes == 2 and auto.label_map == {255: 1}
    assert any("255 -> class 1" in n for n in auto.notes)
    ds = FolderDataset(tmp_path, "train", label_map={255: 1})
    assert ds.classes.num_classes == 2 and ds.channels == 1
    assert set(np.unique(ds[0].mask)) <= {0, 1}
    m = np.zeros((4, 4), np.uint8)
    m[2, 2] = 6
    put(tmp_path / "masks" / "2.png", m)
    assert FolderDataset(tmp_path, "train").classes.num_classes == 7


def test_channels_and_cache(tmp_path):
    for i in range(3):
        image, mask = sample_arrays(i, gray=True)
        put(tmp_path / "images" / f"{i}.png", image)
        put(tmp_path / "masks" / f"{i}.png", mask)
    assert FolderDataset(tmp_path, "train").channels == 1
    ds = FolderDataset(tmp_path, "train", channels=3, cache=True)
    assert ds[0].image.shape == (6, 8, 3)
    assert ds[0] is ds[0]
    put(tmp_path / "images" / "3.png", sample_arrays(3)[0])
    put(tmp_path / "masks" / "3.png", sample_arrays(3)[1])
    assert FolderDataset(tmp_path, "train", val_fraction=0.5).channels == 3


def test_suffixes_case_insensitive_and_other_files_ignored(tmp_path):
    make_split(tmp_path, "train", 2)
    Image.fromarray(sample_arrays(9)[0]).save(tmp_path / "train" / "images" / "up.JPG", "JPEG")
    put(tmp_path / "train" / "masks" / "up.png", sample_arrays(9)[1])
    (tmp_path / "train" / "images" / "notes.txt").write_text("hi")
    (tmp_path / "train" / "images" / ".DS_Store").write_text("x")
    assert FolderDataset(tmp_path, "all").names == ["train0", "train1", "up"]


# ---- errors -------------------------------------------------------------------------------


def test_root_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such folder"):
        FolderDataset(tmp_path / "nowhere", "train")
    (tmp_path / "somefile").write_text("x")
    with pytest.raises(DataError, match="somefile: not a folder"):
        detect_layout(tmp_path / "somefile")
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="junk: no recognisable dataset layout: expected images/"):
        FolderDataset(tmp_path / "junk", "train")


def test_empty_folder_and_missing_split(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=r"images: no image files"):
        FolderDataset(tmp_path, "train")
    root = tmp_path / "split"
    make_split(root, "train", 2)
    with pytest.raises(DataError, match="no 'test' split.*found train"):
        FolderDataset(root, "test")
    one = tmp_path / "one"
    make_split(one, "train", 1)
    assert FolderDataset(one, "train").names == ["train0"]  # nothing to carve: all of train/
    with pytest.raises(DataError, match="no val/ folder, and train/ has 1 image.*add a val"):
        FolderDataset(one, "val")


def test_missing_masks_listed(tmp_path):
    make_split(tmp_path, "train", 2)
    for i in range(8):
        put(tmp_path / "train" / "images" / f"lonely{i}.png", sample_arrays(i)[0])
    with pytest.raises(DataError) as e:
        FolderDataset(tmp_path, "train")
    msg = str(e.value)
    assert "no mask for 8 image(s)" in msg and "lonely0.png" in msg and "and 3 more" in msg
    assert "lonely7.png" not in msg


def test_mask_without_image(tmp_path):
    make_split(tmp_path, "train", 2)
    put(tmp_path / "train" / "masks" / "orphan.png", sample_arrays(0)[1])
    with pytest.raises(DataError, match="no image for 1 mask.*orphan.png"):
        FolderDataset(tmp_path, "train")


def test_duplicate_stems(tmp_path):
    make_split(tmp_path, "train", 2)
    Image.fromarray(sample_arrays(0)[0]).save(tmp_path / "train" / "images" / "train0.jpg")
    with pytest.raises(DataError, match="share the name 'train0': train0.jpg, train0.png"):
        FolderDataset(tmp_path, "train")


def test_size_mismatch_names_both_files(tmp_path):
    make_split(tmp_path, "train", 2)
    put(tmp_path / "train" / "masks" / "train1.png", np.zeros((5, 8), np.uint8))
    ds = FolderDataset(tmp_path, "all", classes=ClassInfo.default(3))
    ds[0]
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert str(tmp_path / "train" / "images" / "train1.png") in msg
    assert str(tmp_path / "train" / "masks" / "train1.png") in msg
    assert "8x6" in msg and "8x5" in msg and "resize" not in msg  # not one picture rescaled


def test_label_outside_classes_names_the_mask(tmp_path):
    make_split(tmp_path, "train", 2)
    m = np.zeros((6, 8), np.uint8)
    m[1, 1] = 17
    put(tmp_path / "train" / "masks" / "train1.png", m)
    ds = FolderDataset(tmp_path, "all", classes=ClassInfo.default(11))
    with pytest.raises(DataError, match=r"masks/train1.png: label value 17 outside the 11 classes"):
        ds[1]


def test_rgb_mask_unknown_color_through_dataset(tmp_path):
    make_split(tmp_path, "train", 1)
    (tmp_path / "classes.txt").write_text("a 0 0 0\nb 255 0 0\n")
    m = np.zeros((6, 8, 3), np.uint8)
    m[0, 0] = (12, 200, 7)
    put(tmp_path / "train" / "masks" / "train0.png", m)
    with pytest.raises(DataError, match=r"train0.png: colour \(12, 200, 7\) \(1 pixels\)"):
        FolderDataset(tmp_path, "train")[0]


# ---- open_dataset -------------------------------------------------------------------------


def test_open_dataset(tmp_path):
    ds = open_dataset("digits", "val", num_images=3)
    assert isinstance(ds, DigitsScenes) and len(ds) == 3 and ds.channels == 3
    assert open_dataset("digits", "train", channels=1, num_images=2)[0].image.shape[2] == 1
    make_split(tmp_path, "train", 2)
    assert isinstance(open_dataset(tmp_path, "train"), FolderDataset)
    assert isinstance(open_dataset(str(tmp_path), "train", cache=True), FolderDataset)
    with pytest.raises(ConfigError, match="--data nope: no such folder; give a dataset folder"):
        open_dataset("nope", "train")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        open_dataset(tmp_path / "f.txt", "train")

"""Folders as users have them: train/ + test/ and no val/ (issue 20). "val" is carved out of
train/ by a seeded split, with a note; test/ is never touched; the split "all"; an images
folder with a masks folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import PairedFolders, open_dataset
from pixelwise.data.check import check_dataset
from pixelwise.data.layouts import make_layout
from pixelwise.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA


def put(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def train_test_folder(root: Path, n_train: int = 20, n_test: int = 5) -> Path:
    """root/train/{images,masks} and root/test/{images,masks}: real PNG files, no val/."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            put(
                root / split / "images" / f"{split}_{i:02d}.png",
                rng.integers(0, 256, (8, 10, 3), np.uint8),
            )
            put(
                root / split / "masks" / f"{split}_{i:02d}.png",
                rng.integers(0, 3, (8, 10), np.uint8),
            )
    return root


def test_val_is_carved_out_of_train_seeded_disjoint_and_test_untouched(tmp_path):
    root = train_test_folder(tmp_path / "d")
    train = open_dataset(root, "train", val_fraction=0.2)
    val = open_dataset(root, "val", val_fraction=0.2)
    test = open_dataset(root, "test", val_fraction=0.2)
    everything = {f"train_{i:02d}" for i in range(20)}
    assert len(val) == 4 and len(train) == 16
    assert set(train.names).isdisjoint(val.names)
    assert set(train.names) | set(val.names) == everything  # together: all of train/
    assert test.names == [f"test_{i:02d}" for i in range(5)]  # test/ as it is
    assert not set(test.names) & (set(train.names) | set(val.names))
    again = open_dataset(root, "val", val_fraction=0.2)
    assert again.names == val.names  # seeded: the same every time
    # the seed is the layout's (fixed), not a training seed; another one gives another split
    other = open_dataset(root, "val", val_fraction=0.2, seed=5)
    assert other.names != val.names and set(other.names) <= everything
    note = (
        "no val/ folder: 4 of 20 train/ images held out for validation (--val-fraction 0.2, seeded)"
    )
    assert note in train.notes and note in val.notes
    assert not any("held out" in n for n in test.notes)
    assert make_layout(root).splits() == ["train", "val", "test"]


def test_carving_is_listed_by_check_and_every_split_is_checked(tmp_path):
    root = train_test_folder(tmp_path / "d")
    report = check_dataset(root)
    assert report.ok and report.splits == {"train": 18, "val": 2, "test": 5}
    assert report.pairs == 25
    assert any(n.startswith("no val/ folder: 2 of 20 train/ images held out") for n in report.notes)


def test_a_real_val_folder_is_used_as_it_is(tmp_path):
    root = train_test_folder(tmp_path / "d")
    put(root / "val" / "images" / "v.png", np.zeros((8, 10, 3), np.uint8))
    put(root / "val" / "masks" / "v.png", np.zeros((8, 10), np.uint8))
    assert open_dataset(root, "val").names == ["v"]
    train = open_dataset(root, "train")
    assert len(train) == 20 and not any("held out" in n for n in train.notes)


def test_split_all_of_split_and_flat_folders(tmp_path):
    root = train_test_folder(tmp_path / "d", n_train=3, n_test=2)
    every = open_dataset(root, "all")
    assert every.names == ["test_00", "test_01", "train_00", "train_01", "train_02"]
    assert check_dataset(root, splits=["all"]).splits == {"all": 5}
    flat = tmp_path / "flat"
    for i in (10, 2, 1):
        put(flat / "images" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
        put(flat / "masks" / f"{i}.png", np.zeros((4, 4), np.uint8))
    assert open_dataset(flat, "all").names == ["1", "2", "10"]  # every pair, natural order
    with pytest.raises(DataError, match="has only 'train' and 'val'.*'all'"):
        open_dataset(flat, "test")


def test_same_names_in_two_splits_stay_apart_in_all(tmp_path):
    for split in ("train", "test"):
        put(tmp_path / split / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
        put(tmp_path / split / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    assert open_dataset(tmp_path, "all").names == ["test/images/a", "train/images/a"]


def test_images_folder_with_a_masks_folder(tmp_path):
    images, masks = tmp_path / "held_out" / "pictures", tmp_path / "labels_elsewhere"
    for i in range(4):
        put(images / f"p{i}.jpg", np.full((6, 6, 3), 40 * i, np.uint8))
        put(masks / f"p{i}.png", np.eye(6, dtype=np.uint8) * 255)
    ds = open_dataset(images, "all", masks=masks)
    assert isinstance(ds, PairedFolders) and ds.layout == "paired"
    assert ds.names == ["p0", "p1", "p2", "p3"] and ds.classes.num_classes == 2
    assert set(np.unique(ds[0].mask)) == {0, 1}  # 0/255 read as binary, as for any folder
    same = PairedFolders(images, masks)
    assert same.names == ds.names
    report = check_dataset(images, masks=masks)
    assert report.ok and report.layout == "paired" and report.splits == {"all": 4}
    assert len(open_dataset(images, "train", masks=masks)) == 3
    with pytest.raises(ConfigError, match="--masks"):
        open_dataset(images, "all", masks=masks, format="camvid")
    with pytest.raises(ConfigError, match="--masks"):
        open_dataset("digits", "val", masks=masks)
    with pytest.raises(DataError, match="nowhere: no such folder"):
        open_dataset(images, "all", masks=tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["stare", "ph2"])
def test_real_train_test_folders_open_train_and_val(name):
    root = SHARED_DATA / name
    if not (root / "train" / "images").is_dir():
        pytest.skip(f"{root} not here")
    train = open_dataset(root, "train", limit=3)
    val = open_dataset(root, "val")
    assert train.classes.num_classes == 2 and val.classes.num_classes == 2
    assert set(train.names).isdisjoint(val.names)
    n_train = len(make_layout(root).find_fixed("train"))
    assert len(open_dataset(root, "train")) + len(val) == n_train
    assert any(n.startswith("no val/ folder:") for n in val.notes)
    sample = val[0]
    assert sample.image.shape[:2] == sample.mask.shape


def test_other_layouts_without_val_carve_it_too(tmp_path):
    """CamVid with train/ + test/ only; ISBI, whose only labelled split is train/."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 10), ("test", 3)):
        for i in range(n):
            put(
                tmp_path / "camvid" / split / f"{split}{i}.png",
                rng.integers(0, 256, (6, 8, 3), np.uint8),
            )
            put(
                tmp_path / "camvid" / f"{split}annot" / f"{split}{i}.png",
                rng.integers(0, 11, (6, 8), np.uint8),
            )
        for i in range(n if split == "train" else 0):
            put(tmp_path / "isbi" / "train" / "image" / f"{i}.png", np.zeros((6, 8), np.uint8))
            put(
                tmp_path / "isbi" / "train" / "label" / f"{i}.png",
                np.eye(6, 8, dtype=np.uint8) * 255,
            )
    train = open_dataset(tmp_path / "camvid", "train", val_fraction=0.3)
    val = open_dataset(tmp_path / "camvid", "val", val_fraction=0.3)
    assert len(train) == 7 and len(val) == 3 and set(train.names).isdisjoint(val.names)
    assert len(open_dataset(tmp_path / "camvid", "test")) == 3
    assert (
        "no val/ + valannot/ folders: 3 of 10 train/ images held out for validation "
        "(--val-fraction 0.3, seeded)" in val.notes
    )
    isbi = open_dataset(tmp_path / "isbi", "val")
    assert "no val split: 1 of 10 train/ images held out for validation" in isbi.notes[-1]
    folds = open_dataset(tmp_path / "isbi", "val", folds=5, fold=1)
    assert folds.notes[-1].endswith("(fold 1 of 5: --data-arg folds=5 --data-arg fold=1)")


def test_training_records_the_carved_split_and_evaluate_scores_the_same_images(tmp_path, capsys):
    """Through the CLI: train/ + test/ trains with no other option, says how val was carved,
    records it in the run, and 'evaluate --split val' scores exactly the carved images."""
    import json

    from pixelwise.cli import main

    root = train_test_folder(tmp_path / "data", n_train=20, n_test=5)
    stripes = (np.arange(32)[None, :] // 11).repeat(32, 0).astype(np.uint8)
    for k, p in enumerate(sorted(root.glob("*/images/*.png"))):  # bigger, distinct images
        put(p, np.random.default_rng(k).integers(0, 256, (32, 32, 3), np.uint8))
        put(p.parent.parent / "masks" / p.name, stripes)
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--out", str(run), "--model", "unet_same"]
    args += ["--width", "0.125", "--model-arg", "depth=2", "--epochs", "1", "--crop-size", "32"]
    assert main([*args, "--device", "cpu", "--overlays", "0"]) == 0
    err = capsys.readouterr().err
    assert "no val/ folder: 2 of 20 train/ images held out for validation" in err, err
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == {"train_images": 18, "val_images": 2}
    assert config["train"]["val_fraction"] == 0.1
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(run), "--data", str(root), "--out", str(out)]) == 0
    assert json.loads((out / "eval_val.json").read_text())["images"] == 2
    val = open_dataset(root, "val", val_fraction=0.1)
    assert all(name.startswith("train_") for name in val.names)  # test/ is never used

"""Dataset layouts: detection, splits, classes, label mappings; generated VOC / Cityscapes /
ISBI / DRIVE / CamVid folders, and the real data in ../shared/data when it is there."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import DATA_FORMATS, main
from pixelwise.data import FORMATS, LayoutDataset, detect, open_dataset
from pixelwise.data.camvid import CAMVID_CLASSES
from pixelwise.data.cityscapes import CITYSCAPES_CLASSES, LABEL_TO_TRAIN_ID
from pixelwise.data.voc import VOC_CLASSES
from pixelwise.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA

H, W = 40, 56
TINY_TRAIN = [
    "--model",
    "unet_same",
    "--model-arg",
    "base_width=4",
    "--model-arg",
    "depth=2",
    "--epochs",
    "1",
    "--crop-size",
    "32",
    "--batch-size",
    "2",
    "--device",
    "cpu",
]


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, palette: list[int] | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
    img.save(path, **kw)
    return path


def labels(seed: int, values, h: int = H, w: int = W) -> np.ndarray:
    """Blocks of the given values (every value present), so any crop sees several."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=np.uint8)
    m = values[rng.integers(0, len(values), (h // 8 + 1, w // 8 + 1))]
    m = np.kron(m, np.ones((8, 8), np.uint8))[:h, :w]
    m.ravel()[: len(values)] = values
    return m


def make_voc(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    ids = {"train": [f"2007_{i:06d}" for i in range(n_train)]}
    ids["val"] = [f"2008_{i:06d}" for i in range(n_val)]
    palette = VOC_CLASSES.palette()
    for split, names in ids.items():
        for k, name in enumerate(names):
            save(voc / "JPEGImages" / f"{name}.jpg", rgb(k + 100 * len(split)), quality=95)
            m = labels(k, [0, 15, 12, 255])  # background, person, dog, border
            save(voc / "SegmentationClass" / f"{name}.png", m, palette)
        sets = voc / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{split}.txt").write_text("\n".join(names) + "\n")
    (voc / "ImageSets" / "Segmentation" / "trainval.txt").write_text(
        "\n".join(ids["train"] + ids["val"]) + "\n"
    )
    save(voc / "JPEGImages" / "2009_999999.jpg", rgb(99))  # detection-only image: no mask
    return root / "VOCdevkit"


def make_cityscapes(root: Path) -> Path:
    for split, cities, n in (("train", ("aachen", "bremen"), 3), ("val", ("frankfurt",), 2)):
        for c, city in enumerate(cities):
            for i in range(n):
                stem = f"{city}_000000_{i:06d}"
                image = rgb(10 * c + i + 100 * len(split))
                save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
                m = labels(i, [7, 26, 23, 0, 1, 24])  # road car sky unlabeled ego-vehicle person
                gt = root / "gtFine" / split / city
                save(gt / f"{stem}_gtFine_labelIds.png", m)
                save(gt / f"{stem}_gtFine_color.png", rgb(5))  # not used
    return root


def make_isbi(root: Path, n: int = 10) -> Path:
    for i in range(n):
        save(root / "train" / "image" / f"{i}.png", rgb(i)[..., 0])
        save(root / "train" / "label" / f"{i}.png", labels(i, [0, 255]))
    save(root / "test" / "0.png", rgb(50)[..., 0])
    return root


def make_drive(root: Path) -> Path:
    for part, numbers, tag in (("training", range(21, 25), "training"), ("test", (1, 2), "test")):
        for k in numbers:
            base = root / part
            save(base / "images" / f"{k:02d}_{tag}.tif", rgb(k))
            save(base / "1st_manual" / f"{k:02d}_manual1.gif", labels(k, [0, 255]))
            fov = np.zeros((H, W), np.uint8)
            fov[5:-5, 5:-5] = 255
            save(base / "mask" / f"{k:02d}_{tag}_mask.gif", fov)
    return root


# ---- detection ------------------------------------------------------------------------------


def test_formats_listed_in_cli_match_the_library():
    assert tuple(DATA_FORMATS) == tuple(FORMATS)


def test_detection_of_each_generated_layout(tmp_path, digits_folder):
    assert detect(make_voc(tmp_path / "voc")) == "voc"
    assert detect(tmp_path / "voc" / "VOCdevkit" / "VOC2012") == "voc"
    assert detect(make_cityscapes(tmp_path / "cs")) == "cityscapes"
    assert detect(make_isbi(tmp_path / "isbi")) == "isbi"
    assert detect(make_drive(tmp_path / "drive")) == "drive"
    assert detect(digits_folder) == "generic"
    camvid = tmp_path / "camvid"
    save(camvid / "train" / "a.png", rgb(0))
    save(camvid / "trainannot" / "a.png", labels(0, [0, 3, 11]))
    assert detect(camvid) == "camvid"


def test_no_layout_lists_what_each_expects(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "junk", "train")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "junk"))
    for name, clue in (
        ("generic", "images/ + masks/"),
        ("voc", "JPEGImages/"),
        ("camvid", "trainannot/"),
        ("isbi", "train/image/"),
        ("drive", "1st_manual/"),
        ("cityscapes", "leftImg8bit/"),
    ):
        assert f"{name}: " in msg and clue in msg, msg
    assert "\n" not in msg


def test_ambiguous_folder_asks_for_format_and_format_forces(tmp_path):
    root = make_isbi(tmp_path)
    save(root / "images" / "a.png", rgb(0))
    save(root / "masks" / "a.png", labels(0, [0, 1]))
    save(root / "images" / "b.png", rgb(1))
    save(root / "masks" / "b.png", labels(1, [0, 1]))
    with pytest.raises(DataError, match=r"several layouts \(generic, isbi\); pass --format"):
        open_dataset(root, "train")
    assert open_dataset(root, "train", format="isbi").layout == "isbi"
    assert open_dataset(root, "train", format="generic").layout == "generic"
    with pytest.raises(DataError, match="not a voc dataset: expected JPEGImages/"):
        open_dataset(root, "train", format="voc")
    with pytest.raises(ConfigError, match="--format nope: unknown"):
        open_dataset(root, "train", format="nope")


def test_unknown_data_arg_names_the_layout_options(tmp_path):
    root = make_isbi(tmp_path)
    with pytest.raises(ConfigError, match="--data-arg colour: not an option of the isbi layout"):
        open_dataset(root, "train", colour=1)
    with pytest.raises(ConfigError, match="limit=0"):
        open_dataset(root, "train", limit=0)
    assert len(open_dataset(root, "train", limit=3)) == 3


# ---- VOC and Cityscapes (generated) ---------------------------------------------------------


def test_voc_splits_classes_and_border(tmp_path):
    root = make_voc(tmp_path)
    ds = open_dataset(root, "train")
    assert isinstance(ds, LayoutDataset) and ds.layout == "voc"
    assert ds.root == root / "VOC2012"
    assert len(ds) == 6 and len(open_dataset(root, "val")) == 2
    assert len(open_dataset(root, "trainval")) == 8
    assert ds.classes == VOC_CLASSES and ds.classes.num_classes == 21
    assert ds.classes.colors[15] == (192, 128, 128)  # person, VOC's colour map
    assert ds.names[0] == "2007_000000" and ds.channels == 3
    s = ds[0]
    assert s.image.shape == (H, W, 3)
    assert set(np.unique(s.mask)) == {0, 12, 15, 255}  # 255 border stays "ignore"
    with pytest.raises(DataError, match="no 'test' split in this voc dataset"):
        open_dataset(root, "test")
    (root / "VOC2012" / "JPEGImages" / "2007_000003.jpg").unlink()
    with pytest.raises(DataError, match=r"2007_000003.jpg: listed in .*train.txt but missing"):
        open_dataset(root, "train")


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    root = make_cityscapes(tmp_path)
    ds = open_dataset(root, "train")
    assert ds.layout == "cityscapes" and len(ds) == 6 and len(open_dataset(root, "val")) == 2
    assert ds.names[0] == "aachen_000000_000000" and ds.names[-1] == "bremen_000000_000002"
    assert ds.classes == CITYSCAPES_CLASSES and ds.classes.num_classes == 19
    assert ds.classes.names[13] == "car" and ds.classes.colors[0] == (128, 64, 128)
    raw = np.asarray(Image.open(ds.pairs[0][1]))
    mask = ds[0].mask
    for label_id, train_id in ((7, 0), (26, 13), (23, 10), (24, 11), (0, 255), (1, 255)):
        assert (mask[raw == label_id] == train_id).all()
        assert LABEL_TO_TRAIN_ID[label_id] == train_id
    # a user map replaces the layout's entry for that value only
    ds = open_dataset(root, "train", label_map="26:ignore")
    assert (ds[0].mask[raw == 26] == 255).all() and (ds[0].mask[raw == 7] == 0).all()


@pytest.mark.parametrize("make", [make_voc, make_cityscapes])
def test_generated_layouts_check_and_train(make, tmp_path, capsys):
    root = make(tmp_path / "data")
    assert main(["-q", "data", "check", str(root)]) == 0
    assert "no problems found" in capsys.readouterr().out
    out = tmp_path / "run"
    code = main(["-q", "train", "--data", str(root), "--out", str(out), *TINY_TRAIN])
    assert code == 0, capsys.readouterr().err
    assert (out / "best.safetensors").is_file()


# ---- ISBI, DRIVE, CamVid (generated) --------------------------------------------------------


def test_isbi_binary_labels_seeded_split_and_folds(tmp_path):
    root = make_isbi(tmp_path, n=12)
    train, val = open_dataset(root, "train"), open_dataset(root, "val")
    assert len(train) + len(val) == 12 and len(val) == 1
    assert set(train.names).isdisjoint(val.names)
    assert train.classes.names == ("membrane", "cell") and train.channels == 1
    raw = np.asarray(Image.open(train.pairs[0][1]))
    assert (train[0].mask == (raw == 255)).all()  # 255 = cell interior -> 1, 0 -> membrane
    assert len(open_dataset(root, "trainval")) == 12
    folds = [open_dataset(root, "val", folds=5, fold=i).names for i in range(5)]
    assert folds[0] == ["0", "5", "10"] and folds[4] == ["4", "9"]  # slice order, not "1","10"
    assert sorted(sum(folds, []), key=int) == [str(i) for i in range(12)]
    rest = open_dataset(root, "train", folds=5, fold=0).names
    assert set(rest) == {str(i) for i in range(12)} - set(folds[0])
    with pytest.raises(ConfigError, match="fold=5: must be in 0..4"):
        open_dataset(root, "val", folds=5, fold=5)
    with pytest.raises(ConfigError, match="give folds=K too"):
        open_dataset(root, "val", fold=1)
    with pytest.raises(DataError, match="no 'test' split"):
        open_dataset(root, "test")


def test_drive_field_of_view_becomes_ignore(tmp_path):
    root = make_drive(tmp_path)
    assert len(open_dataset(root, "trainval")) == 4 and len(open_dataset(root, "test")) == 2
    train, val = open_dataset(root, "train", val_fraction=0.25), open_dataset(root, "val")
    assert len(train) == 3 and len(val) == 1
    ds = open_dataset(root, "test")
    assert ds.names == ["01_test", "02_test"] and ds.classes.names == ("background", "vessel")
    mask = ds[0].mask
    vessels = labels(1, [0, 255])  # what make_drive wrote for 01
    assert (mask[:5] == 255).all() and (mask[:, -5:] == 255).all()  # outside the FOV
    inside = mask[5:-5, 5:-5]
    assert (inside == (vessels[5:-5, 5:-5] == 255)).all()  # vessel 255 -> 1
    assert set(np.unique(inside)) == {0, 1}
    (root / "test" / "mask" / "02_test_mask.gif").unlink()
    with pytest.raises(DataError, match="02_test.tif: no field-of-view mask"):
        open_dataset(root, "test")


def test_camvid_void_is_ignored_and_rgb_masks_decode(tmp_path):
    root = tmp_path / "camvid"
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            save(root / split / f"{split}{i}.png", rgb(i))
            save(root / f"{split}annot" / f"{split}{i}.png", labels(i, [0, 3, 8, 11]))
    ds = open_dataset(root, "train")
    assert ds.layout == "camvid" and ds.classes == CAMVID_CLASSES and len(ds) == 3
    assert set(np.unique(ds[0].mask)) == {0, 3, 8, 255}
    # colour-coded masks: class colours -> indices, black (Unlabelled) -> ignore
    m = labels(7, [0, 3, 11])
    colours = np.array(list(CAMVID_CLASSES.colors) + [(0, 0, 0)], np.uint8)
    save(root / "trainannot" / "train0.png", colours[m])
    expected = np.where(m == 11, 255, m)
    assert (open_dataset(root, "train")[0].mask == expected).all()
    bad = colours[m].copy()
    bad[0, 0] = (1, 2, 3)
    save(root / "trainannot" / "train0.png", bad)
    with pytest.raises(DataError, match=r"trainannot/train0.png: colour \(1, 2, 3\)"):
        open_dataset(root, "train")[0]


# ---- the real datasets ----------------------------------------------------------------------


def real(name: str) -> Path:
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} is not here (real data lives outside the project)")
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, layout, sizes, num_classes, channels",
    [
        ("isbi2012", "isbi", {"train": 27, "val": 3, "trainval": 30}, 2, 1),
        ("drive", "drive", {"train": 18, "val": 2, "trainval": 20, "test": 20}, 2, 3),
        ("camvid", "camvid", {"train": 367, "val": 101}, 11, 3),
    ],
)
def test_real_dataset(name, layout, sizes, num_classes, channels, tmp_path, capsys):
    root = real(name)
    assert detect(root) == layout
    for split, n in sizes.items():
        ds = open_dataset(root, split)
        assert len(ds) == n, split
    assert ds.classes.num_classes == num_classes and ds.channels == channels
    s = ds[0]
    values = set(np.unique(s.mask).tolist())
    assert values <= set(range(num_classes)) | {255} and len(values - {255}) >= 2
    assert main(["-q", "data", "check", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "no problems found" in printed and f"({layout} layout)" in printed
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pixelwise", "-q", "train", "--data", str(root)]
    command += ["--data-arg", "limit=4", "--out", str(out), "--threads", "1", *TINY_TRAIN]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "best.safetensors").is_file()
    trained = json.loads((out / "config.json").read_text())
    assert trained["data"] == {"train_images": 4, "val_images": min(4, sizes["val"])}


def test_evaluate_reuses_the_runs_data_options(tmp_path, capsys):
    root = make_isbi(tmp_path / "isbi", n=10)
    out = tmp_path / "run"
    fold = ["--data-arg", "folds=5", "--data-arg", "fold=1", "--data-arg", "limit=1"]
    assert main(["-q", "train", "--data", str(root), "--out", str(out), *fold, *TINY_TRAIN]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["val_images"] == 1
    assert (
        main(["-q", "evaluate", str(out), "--data", str(root), "--out", str(tmp_path / "e")]) == 0
    )
    report = json.loads((tmp_path / "e" / "eval_val.json").read_text())
    assert report["images"] == 2  # fold 1 of 5: slices 1 and 6; the training-only limit dropped
    args = ["-q", "evaluate", str(out), "--data", str(root), "--data-arg", "folds=3"]
    assert main([*args, "--out", str(tmp_path / "e0")]) == 0  # given options win
    assert json.loads((tmp_path / "e0" / "eval_val.json").read_text())["images"] == 3  # 1 4 7

"""`pixelwise data check` and the check `pixelwise train` runs first: a corpus with one broken
file of each kind; every problem is named, none hides another, and training refuses to start."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data.camvid import CAMVID_CLASSES
from pixelwise.data.check import CheckReport, check_dataset
from pixelwise.errors import DataError
from pixelwise.training import TrainConfig, train

H, W = 40, 56


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def pair(root: Path, split: str, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    save(root / split / "images" / f"{name}.png", rng.integers(0, 256, (H, W, 3), np.uint8))
    mask = np.kron(rng.integers(0, 11, (5, 7)), np.ones((8, 8), np.int64)).astype(np.uint8)
    save(root / split / "masks" / f"{name}.png", mask)


def good_dataset(root: Path) -> Path:
    for i in range(4):
        pair(root, "train", f"ok{i}", i)
    for i in range(2):
        pair(root, "val", f"v{i}", 10 + i)
    (root / "classes.txt").write_text(CAMVID_CLASSES.to_text())
    return root


# file name -> what the check must say about it
BROKEN = {
    "truncated.png": "truncated",
    "zero.png": "empty file (0 bytes)",
    "text.png": "cannot identify image file",
    "mismatch.png": "image is 56x40 but its mask mismatch.png is 56x30",
    "label17.png": "label value 17 outside the 11 classes",
    "rgbmask.png": "colour (12, 200, 7)",
    "nomask.png": "image without mask",
    "orphan.png": "mask without image",
    "dup.png": "duplicate: same name as dup.jpg",
    "copy.png": "byte-identical",  # to ok0.png: one of the two is named in the path
}


def broken_dataset(root: Path) -> Path:
    good_dataset(root)
    images, masks = root / "train" / "images", root / "train" / "masks"
    for i, name in enumerate(BROKEN):
        if name != "orphan.png":
            pair(root, "train", Path(name).stem, 100 + i)
    data = (images / "truncated.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    (images / "zero.png").write_bytes(b"")
    (images / "text.png").write_text("this is not a picture\n")
    save(masks / "mismatch.png", np.zeros((30, W), np.uint8))
    m = np.zeros((H, W), np.uint8)
    m[3, 4] = 17
    save(masks / "label17.png", m)
    colours = np.zeros((H, W, 3), np.uint8)
    colours[:] = CAMVID_CLASSES.colors[3]
    colours[0, 0] = (12, 200, 7)
    save(masks / "rgbmask.png", colours)
    (masks / "nomask.png").unlink()
    save(masks / "orphan.png", np.zeros((H, W), np.uint8))
    shutil.copy(images / "dup.png", images / "dup.jpg")  # two files with one stem (.jpg first)
    shutil.copy(images / "ok0.png", images / "copy.png")
    return root


def test_clean_dataset_report(tmp_path):
    root = good_dataset(tmp_path / "d")
    seen = []

    def progress(items):
        items = list(items)
        seen.append(len(items))
        return iter(items)

    r = check_dataset(root, progress=progress)
    assert r.ok and r.problems == [] and seen == [6]
    assert r.layout == "generic" and r.splits == {"train": 4, "val": 2} and r.pairs == 6
    assert r.classes == CAMVID_CLASSES
    assert sum(r.class_pixels) == 6 * H * W and r.ignored_pixels == 0
    assert r.image_sizes["most_common"] == f"{W}x{H}" and r.image_sizes["distinct"] == 1
    assert r.image_modes == {"RGB": 6} and r.mask_modes == {"L": 6}
    assert r.image_channels == {"3": 6}
    assert sum(r.frequencies) == pytest.approx(1.0)
    again = CheckReport.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r
    text = r.format()
    assert "Pedestrian" in text and "no problems found" in text


def test_every_problem_is_named(tmp_path):
    root = broken_dataset(tmp_path / "d")
    r = check_dataset(root)
    assert not r.ok
    for name, clue in BROKEN.items():
        assert any(
            (Path(p.path).name == name or name in p.problem) and clue in p.problem
            for p in r.problems
        ), name
    named = {Path(p.path).name for p in r.problems}
    assert not {"ok1.png", "ok2.png", "ok3.png", "v0.png", "v1.png"} & named
    assert all("\n" not in p.problem for p in r.problems)
    # the broken files do not stop the good ones from being counted
    assert r.splits["val"] == 2 and r.pairs >= 10


def test_cli_check_lists_every_problem_and_exits_1(tmp_path, capsys):
    root = broken_dataset(tmp_path / "d")
    out = tmp_path / "report"
    assert main(["-q", "data", "check", str(root), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    lines = [line.strip() for line in printed.splitlines()]
    for name, clue in BROKEN.items():
        assert any(name in line and clue in line for line in lines), name
    saved = json.loads((out / "check.json").read_text())
    assert saved["ok"] is False and len(saved["problems"]) >= len(BROKEN)
    assert Image.open(out / "class_frequencies.png").size[0] > 100


def test_train_refuses_a_broken_dataset_in_one_line(tmp_path, capsys):
    root = broken_dataset(tmp_path / "d")
    out = tmp_path / "run"
    code = main(["-q", "train", "--data", str(root), "--out", str(out), "--model", "unet_same"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert "problem(s) in the data" in err and f"pixelwise data check {root}" in err
    assert any(name in err for name in BROKEN)
    assert not out.exists()


def test_train_with_no_check_skips_it(tmp_path):
    root = good_dataset(tmp_path / "d")
    (root / "train" / "images" / "zero.png").write_bytes(b"")  # unpaired and unreadable
    config = TrainConfig(data=str(root), out=str(tmp_path / "run"), epochs=1)
    with pytest.raises(DataError, match="problem"):
        train(config)
    config.check_data = False  # the dataset's own pairing still refuses the lonely file
    with pytest.raises(DataError, match="no mask for 1 image"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_passing_check_is_cached_until_a_file_changes(tmp_path):
    root = good_dataset(tmp_path / "d")
    assert not check_dataset(root, cache=True).from_cache
    assert check_dataset(root, cache=True).from_cache
    assert not check_dataset(root).from_cache  # cache=False: always reads
    mask = root / "val" / "masks" / "v1.png"
    m = np.asarray(Image.open(mask)).copy()
    m[0, 0] = 17
    save(mask, m)
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = check_dataset(root, cache=True)
    assert not r.from_cache and [Path(p.path).name for p in r.problems] == ["v1.png"]


def test_check_of_a_non_dataset_raises(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known dataset layout"):
        check_dataset(tmp_path / "empty")
    assert main(["data", "check", str(tmp_path / "empty")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_malformed_classes_file_is_one_problem(tmp_path):
    root = good_dataset(tmp_path / "d")
    (root / "classes.txt").write_text("a 1 2\n")
    r = check_dataset(root)
    assert [(Path(p.path).name, "line 1" in p.problem) for p in r.problems] == [
        ("classes.txt", True)
    ]

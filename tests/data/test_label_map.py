"""Label values: 0/255 binary masks become classes 0/1 (with a note), never 'ignore' by
accident; --label-map syntax; maps through the CLI and the check."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import open_dataset
from pixelwise.data.check import check_dataset
from pixelwise.data.layouts import label_map_text, parse_label_map
from pixelwise.errors import ConfigError
from pixelwise.training import TrainConfig, train

H, W = 40, 56


def binary_folder(root: Path, n: int = 6) -> Path:
    """A flat generic folder of 0/255 masks (a foreground square of varying size)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        m = np.zeros((H, W), np.uint8)
        m[5 : 15 + i, 8 : 30 + i] = 255
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "text, expected",
    [
        ("255:1", {255: 1}),
        ("0:0,255:1", {0: 0, 255: 1}),
        (" 0:0 , 255:1 ", {0: 0, 255: 1}),
        ("255:ignore", {255: 255}),
        ("1000:3,7:IGNORE", {1000: 3, 7: 255}),
        ("", None),
        (None, None),
        ({"255": 1, 0: "ignore"}, {255: 1, 0: 255}),
    ],
)
def test_parse_label_map(text, expected):
    assert parse_label_map(text) == expected


@pytest.mark.parametrize(
    "text, clue",
    [
        ("255", "is not FROM:TO"),
        ("a:1", "'a' is not a number"),
        ("1:256", "256 is outside 0..255"),
        ("70000:1", "outside 0..65535"),
        ("1:2,1:3", "mapped twice"),
        ("-1:0", "is not a number"),
    ],
)
def test_parse_label_map_errors_name_the_option(text, clue):
    with pytest.raises(ConfigError, match="--label-map") as e:
        parse_label_map(text)
    assert clue in str(e.value)


def test_label_map_text_round_trips():
    m = {0: 0, 255: 255, 7: 1}
    assert label_map_text(m) == "0:0,7:1,255:ignore"
    assert parse_label_map(label_map_text(m)) == m


def test_binary_masks_become_two_classes_with_a_note(tmp_path):
    root = binary_folder(tmp_path / "b")
    ds = open_dataset(root, "train", val_fraction=0.34)
    assert ds.classes.num_classes == 2 and ds.label_map == {255: 1}
    assert set(np.unique(ds[0].mask)) == {0, 1}
    binary = [n for n in ds.notes if "255 -> class 1" in n]
    assert len(binary) == 1 and "255:ignore" in binary[0]
    assert [n for n in ds.notes if n not in binary] == [
        "flat images/ + masks/ folder: 2 of 6 images held out for validation "
        "(--val-fraction 0.34, seeded)"
    ]
    r = check_dataset(root, val_fraction=0.34)
    assert r.ok and r.notes == ds.notes and r.classes.num_classes == 2
    assert r.class_pixels[1] > 0 and r.ignored_pixels == 0  # counted as class 1, not ignored
    assert r.label_map == "255:1"


def test_label_map_255_ignore_keeps_ignore(tmp_path):
    root = binary_folder(tmp_path / "b")
    ds = open_dataset(root, "train", label_map="255:ignore")
    assert not [n for n in ds.notes if "binary" in n] and ds.classes.num_classes == 2
    assert set(np.unique(ds[0].mask)) == {0, 255}
    r = check_dataset(root, label_map="255:ignore")
    assert r.ok and not [n for n in r.notes if "binary" in n]
    assert r.class_pixels[1] == 0 and r.ignored_pixels > 0


def test_two_class_list_with_0_255_masks_is_binary_too(tmp_path):
    root = binary_folder(tmp_path / "b")
    (root / "classes.txt").write_text("background 0 0 0\nroad 255 0 0\n")
    ds = open_dataset(root, "train")
    assert ds.classes.names == ("background", "road") and ds.label_map == {255: 1}
    assert "'road'" in ds.notes[0]
    (root / "classes.txt").write_text("a\nb\nc\n")  # 3 classes: 255 is ignore, as written
    ds = open_dataset(root, "train")
    assert ds.label_map is None and not [n for n in ds.notes if "binary" in n]
    assert 255 in np.unique(ds[0].mask)


def test_cli_check_prints_the_note_and_honours_the_map(tmp_path, capsys):
    root = binary_folder(tmp_path / "b")
    assert main(["-q", "data", "check", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "note: masks hold only the values 0 and 255" in printed
    assert main(["-q", "data", "check", str(root), "--label-map", "255:ignore"]) == 0
    printed = capsys.readouterr().out
    assert "note: masks hold only" not in printed and "map 255:ignore" in printed
    assert main(["-q", "data", "check", str(root), "--label-map", "255"]) == 2
    assert "--label-map" in capsys.readouterr().err


def test_train_logs_the_note_and_val_uses_the_same_map(tmp_path):
    root = binary_folder(tmp_path / "b")
    said: list[str] = []
    summary = train(
        TrainConfig(
            data=str(root),
            out=str(tmp_path / "run"),
            model="unet_same",
            model_args={"base_width": 4, "depth": 2},
            epochs=1,
            batch_size=2,
            crop_size=32,
            val_fraction=0.34,
            device="cpu",
            overlays=0,
        ),
        log=said.append,
    )
    assert any("255 -> class 1" in line for line in said)
    assert summary["best_epoch"] == 1
    # val was scored on 2 classes with foreground present: its IoU for class 1 is a number
    with open(tmp_path / "run" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert row["val_iou_1"] != ""


def test_train_label_map_option_reaches_the_dataset(tmp_path, capsys):
    root = binary_folder(tmp_path / "b")
    out = tmp_path / "run"
    args = ["-q", "train", "--data", str(root), "--out", str(out), "--label-map", "255:ignore"]
    args += ["--model", "unet_same", "--model-arg", "base_width=4", "--model-arg", "depth=2"]
    args += ["--epochs", "1", "--crop-size", "32", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["label_map"] == "255:ignore"
    assert main(["-q", "train", "--data", str(root), "--out", str(out), "--format", "voc"]) == 2
    assert "not a voc dataset" in capsys.readouterr().err

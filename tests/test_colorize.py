"""--task colorize: Lab conversion, colour image listing, training, resume, predict, and
--init-from a colourization run into a segmenter."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pixelwise.cli import main
from pixelwise.colorize import Colorizer, lightness_filters
from pixelwise.data.colour import lab_to_rgb, open_colour_images, rgb_to_lab
from pixelwise.errors import ConfigError, DataError
from pixelwise.training import TrainConfig, resume_config, train

# sRGB -> CIE Lab (D65, 2 degrees), as skimage.color.rgb2lab and Bruce Lindbloom's calculator
REFERENCE = {
    (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),
    (0.0, 1.0, 0.0): (87.7347, -86.1827, 83.1793),
    (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602),
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
    (0.5, 0.5, 0.5): (53.3889, 0.0, 0.0),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
}

TINY = dict(
    task="colorize", model="unet_same", model_args={"depth": 2, "base_width": 4}, batch_size=4,
    crop_size=32, optimizer="adamw", lr=0.01, hflip=False, device="cpu", threads=1,
    deterministic=True, val_fraction=0.25, overlays=2,
)  # fmt: skip


def test_lab_matches_reference_values():
    rgb = torch.tensor(list(REFERENCE), dtype=torch.float64).T.reshape(3, -1, 1)
    lab = rgb_to_lab(rgb).reshape(3, -1).T
    assert torch.allclose(
        lab, torch.tensor(list(REFERENCE.values()), dtype=torch.float64), atol=2e-3
    )


def test_lab_round_trip():
    rgb = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-4


def _scenes(folder: Path, n: int = 8, seed: int = 0) -> Path:
    """Blue sky over green grass with a red box: colour follows from brightness and place."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.zeros((40, 48, 3), np.uint8)
        img[:20], img[20:] = (80, 130, 220), (60, 160, 60)
        c = int(rng.integers(0, 38))
        img[10:30, c : c + 10] = (200, 40, 40)
        Image.fromarray(img).save(folder / f"im{i}.png")
    return folder


def test_listing_plain_folder_layout_and_greyscale(tmp_path):
    plain = _scenes(tmp_path / "plain", 10)
    train_files = open_colour_images(plain, "train", val_fraction=0.2).files
    val_files = open_colour_images(plain, "val", val_fraction=0.2).files
    assert len(train_files) == 8 and len(val_files) == 2 and not set(train_files) & set(val_files)
    camvid = tmp_path / "camvid"  # a layout: its images, never its annotation PNGs
    _scenes(camvid / "train", 3)
    (camvid / "trainannot").mkdir()
    for p in (camvid / "train").iterdir():
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(camvid / "trainannot" / p.name)
    files = open_colour_images(camvid, "all").files
    assert len(files) == 3 and all(f.parent.name == "train" for f in files)
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(3):  # one stored as L, two as RGB with equal channels
        g = np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)
        Image.fromarray(g if i == 0 else np.stack([g] * 3, 2)).save(grey / f"g{i}.png")
    with pytest.raises(DataError, match="all greyscale"):
        open_colour_images(grey, "all")


def test_cli_refuses_greyscale_and_mask_options(tmp_path, capsys):
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(grey / f"g{i}.png")
    rc = main(["train", "--task", "colorize", "--data", str(grey), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc != 0 and "no colour images" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="--points"):
        TrainConfig(task="colorize", data=str(grey), points=5).validate()


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colorize")
    data = _scenes(root / "scenes", 12)
    out = root / "run"
    train(TrainConfig(data=str(data), out=str(out), epochs=3, **TINY))
    return out


def test_training_writes_scores_pictures_and_predictions(colour_run, tmp_path):
    with open(colour_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {"val_psnr", "val_psnr_grey", "val_ab_error"} <= set(rows[0])
    assert all(np.isfinite(float(r["val_psnr"])) for r in rows)
    strip = Image.open(colour_run / "overlays" / "epoch_003.png")
    assert strip.size[1] == 2 * (160 + 4)  # two validation images: grey | predicted | true
    image = _scenes(tmp_path / "in", 1) / "im0.png"
    assert main(["predict", str(colour_run), str(image), "--out", str(tmp_path / "out")]) == 0
    coloured = np.asarray(Image.open(tmp_path / "out" / "im0_color.png"))
    original = np.asarray(Image.open(image))
    assert coloured.shape == original.shape
    lab_in, lab_out = (
        rgb_to_lab(torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255)
        for a in (original, coloured)
    )
    assert (lab_in[0] - lab_out[0]).abs().mean() < 3  # the image keeps its own lightness


def test_learns_colour(tmp_path):
    data = _scenes(tmp_path / "scenes", 12)
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "r"), epochs=25, **TINY))
    with open(tmp_path / "r" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert summary["best_psnr"] > float(last["val_psnr_grey"]) + 2  # better than grey


def test_resume_continues_bit_for_bit(colour_run, tmp_path):
    """Two epochs, then --resume to three == three at once (a constant schedule: --epochs
    extended on resume keeps it)."""
    data = str(colour_run.parent / "scenes")
    straight, first = tmp_path / "a", tmp_path / "b"
    train(TrainConfig(data=data, out=str(straight), epochs=3, schedule="constant", **TINY))
    train(TrainConfig(data=data, out=str(first), epochs=2, schedule="constant", **TINY))
    train(resume_config(first, {"epochs": 3}))
    a, b = (load_file(str(r / "last.safetensors")) for r in (first, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [
        list(csv.DictReader((r / "metrics.csv").read_text().splitlines()))
        for r in (first, straight)
    ]
    assert [r["val_psnr"] for r in rows[0]] == [r["val_psnr"] for r in rows[1]]


def test_budget_stops_in_time(colour_run, tmp_path):
    data = str(colour_run.parent / "scenes")
    out = tmp_path / "r"
    summary = train(TrainConfig(data=data, out=str(out), epochs=10000, budget=4.0, **TINY))
    assert summary["budget"]["stopped_early"] and (out / "best.safetensors").is_file()


def test_init_from_colorize_run(colour_run, tmp_path, digits_folder):
    seg = dict(TINY, task="segment", deterministic=False)
    seg.pop("val_fraction")
    still = {**seg, "lr": 1e-9, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0}
    out = str(tmp_path / "s")
    note = train(
        TrainConfig(data=str(digits_folder), out=out, epochs=1, init_from=str(colour_run), **still)
    )["init"]
    assert "mapped from L" in note and "not copied" in note and "head.weight" in note
    with pytest.raises(ConfigError, match="not a colourization run"):
        Colorizer(tmp_path / "s")
    source = load_file(str(colour_run / "best.safetensors"))
    config = TrainConfig(data=str(digits_folder), init_from=str(colour_run), **seg)
    from pixelwise.training.setup import build_model, open_training_data

    data = open_training_data(config, None, lambda _m: None)
    model, _kw, _note = build_model(config, data, False, lambda _m: None)
    state = model.state_dict()
    first = "encoder.0.0.weight"
    assert state[first].shape[1] == 3 and source[first].shape[1] == 1
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert torch.allclose(state[first], lightness_filters(source[first], mean, std))
    assert torch.equal(state["encoder.1.0.weight"], source["encoder.1.0.weight"])


def test_init_from_another_architecture(colour_run, digits_folder, tmp_path):
    other = dict(TINY, task="segment", model_args={"depth": 3, "base_width": 4})
    other.pop("val_fraction")
    config = TrainConfig(data=str(digits_folder), init_from=str(colour_run), **other)
    from pixelwise.training.setup import build_model, open_training_data

    data = open_training_data(config, None, lambda _m: None)
    notes: list[str] = []
    _model, _kw, note = build_model(config, data, False, notes.append)
    assert note is not None and "not copied" in note and " of " in note  # some match, some not
    config.model, config.model_args, config.width = "segnet_basic", {}, 0.25
    with pytest.raises(ConfigError, match="--init-from .*no weight"):
        build_model(config, data, False, notes.append)

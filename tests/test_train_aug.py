"""Training with the augmentation, point-label, weight-map and cache options."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pixelwise.cli import main
from pixelwise.errors import ConfigError
from pixelwise.training import TrainConfig, train

TINY = {
    "model": "unet_same",
    "model_args": {"depth": 2, "base_width": 4},
    "batch_size": 4,
    "crop_size": 32,
    "optimizer": "adamw",
    "lr": 1e-2,
    "weight_decay": 0.0,
    "schedule": "constant",
    "overlays": 0,
    "device": "cpu",
    "epochs": 1,
    "check_data": False,  # the digits folder is known good; skip reading every file first
    "data_args": {"limit": 12},  # 3 batches per epoch
}


def run(digits_folder, out, **kw):
    logs = []
    summary = train(
        TrainConfig(data=str(digits_folder), out=str(out), **{**TINY, **kw}), log=logs.append
    )
    return summary, logs


def test_points_train_one_epoch(digits_folder, tmp_path):
    summary, logs = run(digits_folder, tmp_path / "p", points=5)
    assert summary["steps"] > 0
    assert any("point labels: 5 pixel(s) per class" in line for line in logs)
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["train"]["points"] == 5
    dense, _ = run(digits_folder, tmp_path / "d")
    a = load_file(str(tmp_path / "p" / "last.safetensors"))
    b = load_file(str(tmp_path / "d" / "last.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the sparse labels changed training


def test_weighted_ce_with_unet_map_and_augmentation(digits_folder, tmp_path):
    summary, logs = run(
        digits_folder,
        tmp_path / "w",
        loss="weighted-ce",
        weight_map="unet",
        w0=10.0,
        sigma=3.0,
        rotate=10.0,
        elastic=4.0,
        color_jitter=0.2,
        cache="on",
    )
    assert float(summary["last"]["train_loss"]) > 0
    assert any(line.startswith("image cache on (--cache on)") for line in logs)
    config = json.loads((tmp_path / "w" / "config.json").read_text())["train"]
    assert (config["loss"], config["weight_map"], config["sigma"]) == ("weighted-ce", "unet", 3.0)
    plain, _ = run(digits_folder, tmp_path / "p", rotate=10.0, elastic=4.0, color_jitter=0.2)
    assert plain["last"]["train_loss"] != summary["last"]["train_loss"]  # the map was used


def test_same_weights_with_persistent_workers(digits_folder, tmp_path):
    kw = {"rotate": 5.0, "epochs": 2, "hflip": True, "cache": "off"}
    run(digits_folder, tmp_path / "w0", workers=0, **kw)
    _, logs = run(digits_folder, tmp_path / "w2", workers=2, **kw)
    assert any("image cache off (--cache off)" in line for line in logs)
    a = load_file(str(tmp_path / "w0" / "last.safetensors"))
    b = load_file(str(tmp_path / "w2" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_auto_logs_its_choice(digits_folder, tmp_path):
    _, logs = run(digits_folder, tmp_path / "a")
    line = next(line for line in logs if line.startswith("image cache"))
    assert "(auto)" in line and "MiB for 12 images" in line and "available" in line


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"loss": "weighted-ce"}, "--loss: weighted-ce needs a weight map"),
        ({"weight_map": "unet"}, "--weight-map"),
        ({"loss": "weighted-ce", "weight_map": "unet", "points": 3}, "--points"),
        ({"rotate": -5.0}, "--rotate"),
        ({"elastic": float("inf")}, "--elastic"),
        ({"color_jitter": 2.0}, "--color-jitter"),
        ({"cache": "maybe"}, "--cache"),
        ({"loss": "dice"}, "--loss"),
        ({"points": -1}, "--points"),
        ({"loss": "weighted-ce", "weight_map": "unet", "sigma": 0.0}, "--sigma"),
    ],
)
def test_bad_options_refused_before_writing(digits_folder, tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        run(digits_folder, tmp_path / "r", **kw)
    assert not (tmp_path / "r").exists()


def test_cli_options_reach_the_config(digits_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "--quiet",
        "train",
        "--data",
        str(digits_folder),
        "--model",
        "unet_same",
        "--model-arg",
        "depth=2",
        "--model-arg",
        "base_width=4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--crop-size",
        "32",
        "--device",
        "cpu",
        "--rotate",
        "8",
        "--elastic",
        "3",
        "--color-jitter",
        "0.1",
        "--loss",
        "weighted-ce",
        "--weight-map",
        "unet",
        "--w0",
        "5",
        "--sigma",
        "2",
        "--cache",
        "off",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    t = json.loads((out / "config.json").read_text())["train"]
    assert (t["rotate"], t["elastic"], t["color_jitter"]) == (8.0, 3.0, 0.1)
    assert (t["loss"], t["weight_map"], t["w0"], t["sigma"], t["cache"]) == (
        "weighted-ce",
        "unet",
        5.0,
        2.0,
        "off",
    )
    code = main(
        [
            "train",
            "--data",
            str(digits_folder),
            "--loss",
            "weighted-ce",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--loss" in err and len(err.splitlines()) == 1


def test_weight_map_with_the_valid_unet(digits_folder, tmp_path):
    summary, _ = run(
        digits_folder,
        tmp_path / "v",
        model="unet",
        model_args={"depth": 2, "base_width": 4},
        crop_size=64,
        loss="weighted-ce",
        weight_map="unet",
        elastic=3.0,
    )
    assert summary["steps"] > 0 and float(summary["last"]["train_loss"]) > 0

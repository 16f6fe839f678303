import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pixelwise.errors import ConfigError
from pixelwise.models import build
from pixelwise.predict import Segmenter, forward_full
from pixelwise.runs import load_run
from pixelwise.training import TrainConfig, TrainingDiverged, train

TINY = {
    "model": "unet_same",
    "model_args": {"depth": 2, "base_width": 8},
    "batch_size": 4,
    "crop_size": 40,
    "optimizer": "adamw",
    "lr": 1e-2,
    "weight_decay": 0.0,
    "schedule": "constant",
    "hflip": False,
    "overlays": 2,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def trained(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(data=str(digits_folder), out=str(out), epochs=4, **TINY)
    return out, train(cfg)


def test_training_drives_loss_down_and_miou_up(trained):
    out, summary = trained
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    losses = [float(r["train_loss"]) for r in rows]
    mious = [float(r["val_mean_iou"]) for r in rows]
    assert losses[-1] < 0.7 * losses[0]
    assert max(mious[1:]) > mious[0]
    assert summary["best_mean_iou"] == pytest.approx(max(mious), abs=1e-6)


def test_run_directory_contents(trained):
    out, _ = trained
    for name in (
        "config.json",
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
        "resume.json",
        "metrics.csv",
        "curves.png",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "overlays").iterdir())[0] == "epoch_001.png"
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "unet_same"
    assert config["model"]["num_classes"] == 11
    assert len(config["classes"]["names"]) == 11
    assert not list(out.glob("*.tmp*")), "temporary files left behind"


def test_saved_run_reloads_and_predicts_identically(trained, digits_folder):
    out, _ = trained
    run = load_run(out, "last")
    state = load_file(str(out / "last.safetensors"))
    assert run.model.state_dict().keys() == state.keys()
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    # the reference: the saved weights loaded on their own into a freshly built model
    config = json.loads((out / "config.json").read_text())
    spec, norm = config["model"], config["normalization"]
    torch.manual_seed(1234)
    reference = build(spec["name"], spec["num_classes"], **spec["kwargs"]).eval()
    assert getattr(reference, "border", 0) == 0  # output size = input size: no padding to redo
    seg = Segmenter.from_run(out, "last", device="cpu")
    image = seg.read(sorted((digits_folder / "val" / "images").iterdir())[0])
    mean = torch.tensor(norm["mean"])[:, None, None]
    std = torch.tensor(norm["std"])[:, None, None]
    x = ((torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std)[None]
    with torch.no_grad():
        untrained = reference(x)[0]
        reference.load_state_dict(state)  # strict: every tensor of the file, nothing else
        expected = reference(x)[0]
    got = seg.logits(image)
    assert got.shape == expected.shape and got.shape[-2:] == image.shape[:2]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # a load that silently kept the initial weights would be caught: they predict otherwise
    assert (untrained - expected).abs().max() > 0.1
    mask = seg.predict(image)
    assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
    assert (mask == expected.argmax(0).numpy()).mean() > 0.999


def test_training_is_reproducible(digits_folder, tmp_path):
    cfgs = [
        TrainConfig(data=str(digits_folder), out=str(tmp_path / f"r{i}"), epochs=1, **TINY)
        for i in range(2)
    ]
    for c in cfgs:
        train(c)
    a = load_file(str(tmp_path / "r0" / "last.safetensors"))
    b = load_file(str(tmp_path / "r1" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten(trained, digits_folder):
    out, _ = trained
    with pytest.raises(ConfigError, match="already exists"):
        train(TrainConfig(data=str(digits_folder), out=str(out), epochs=1, **TINY))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lr", -1.0, "--lr"),
        ("epochs", 0, "--epochs"),
        ("width", float("nan"), "--width"),
        ("optimizer", "adam", "--optimizer"),
        ("batch_size", 0, "--batch-size"),
    ],
)
def test_nonsense_options_are_refused(tmp_path, option, value, message):
    cfg = TrainConfig(out=str(tmp_path / "r"), **{option: value})
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_unknown_model_is_refused_before_writing(digits_folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'fcn9s'"):
        train(TrainConfig(data=str(digits_folder), model="fcn9s", out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


def test_divergence_stops_with_advice(digits_folder, tmp_path):
    cfg = TrainConfig(
        data=str(digits_folder),
        out=str(tmp_path / "r"),
        epochs=1,
        **{**TINY, "lr": 1e30, "optimizer": "sgd", "log_every": 1},
    )
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train(cfg)


def test_valid_unet_predicts_full_size(digits_folder, tmp_path):
    cfg = TrainConfig(
        data=str(digits_folder),
        out=str(tmp_path / "v"),
        epochs=1,
        **{**TINY, "model": "unet", "model_args": {"depth": 2, "base_width": 4}, "crop_size": 64},
    )
    train(cfg)
    seg = Segmenter.from_run(tmp_path / "v", "last", device="cpu")
    assert seg.model.border > 0
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    assert seg.predict(image).shape == (37, 53)
    x = torch.randn(1, 3, 37, 53)
    assert forward_full(seg.model, x).shape == (1, 11, 37, 53)


def test_staged_training_copies_the_coarser_net(digits_folder, tmp_path):
    from pixelwise.models import build

    common = {**TINY, "model_args": {}, "width": 0.0625, "crop_size": 32, "overlays": 0}
    train(
        TrainConfig(
            data=str(digits_folder),
            out=str(tmp_path / "s32"),
            epochs=1,
            **{**common, "model": "fcn32s"},
        )
    )
    summary = train(
        TrainConfig(
            data=str(digits_folder),
            out=str(tmp_path / "s16"),
            epochs=1,
            init_from=str(tmp_path / "s32"),
            **{**common, "model": "fcn16s"},
        )
    )
    source = load_file(str(tmp_path / "s32" / "best.safetensors"))
    shared = set(build("fcn16s", 11, width=0.0625).state_dict()) & set(source)
    # every tensor fcn16s shares with fcn32s (encoder, fc6, fc7, score_fr) is copied; the
    # 32x upsampling has no counterpart in fcn16s
    assert summary["init"].startswith(f"initialised {len(shared)} tensors")
    assert "upscore.weight" not in shared and "score_fr.weight" in shared


def test_auto_class_weights_are_recorded(digits_folder, tmp_path):
    out = tmp_path / "w"
    train(
        TrainConfig(
            data=str(digits_folder),
            out=str(out),
            epochs=1,
            class_weights="auto",
            **{**TINY, "overlays": 0},
        )
    )
    weights = json.loads((out / "config.json").read_text())["class_weights"]
    assert len(weights) == 11 and weights[0] < 0.5  # background is the frequent class


def test_sync_bn_is_refused_where_it_cannot_act(tmp_path):
    """--sync-bn needs several CUDA processes under torchrun: elsewhere it is a one-line error
    before anything is written, not a silent no-op."""
    out = tmp_path / "run"
    config = TrainConfig(
        data="digits", data_args={"num_images": 8}, model="unet_same", width=0.125, epochs=1,
        crop_size=32, device="cpu", sync_bn=True, out=str(out),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--sync-bn: .*drop it"):
        train(config)
    assert not out.exists()


def test_tensorboard_logs_each_validated_epoch(tmp_path):
    """--tensorboard: the metrics rows as scalars at their steps, and the overlays as images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    summary = train(
        TrainConfig(
            data="digits", data_args={"num_images": 8}, model="unet_same", width=0.125,
            epochs=2, crop_size=32, batch_size=4, device="cpu", overlays=2, tensorboard=True,
            out=str(out),
        )
    )  # fmt: skip
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    miou = events.Scalars("val/mean_iou")
    assert [e.step for e in miou] == [int(r["step"]) for r in rows]
    assert [round(e.value, 5) for e in miou] == [round(float(r["val_mean_iou"]), 5) for r in rows]
    assert {"train_loss", "lr", "val/loss", "val_iou/background"} <= set(events.Tags()["scalars"])
    images = events.Images("val/overlays")
    assert len(images) == 2 and images[-1].width > 32
    assert summary["epochs"] == 2

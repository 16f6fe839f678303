"""--input-scale: a run trained on resized images predicts and is scored at full resolution."""

import dataclasses

import numpy as np
import pytest
import torch

from pixelwise.errors import ConfigError
from pixelwise.evaluate import evaluate_run
from pixelwise.predict import Segmenter, forward_full, resize_image, scale_input
from pixelwise.training import TrainConfig, train

TINY = {
    "model": "unet_same",
    "model_args": {"depth": 2, "base_width": 4},
    "batch_size": 4,
    "crop_size": 32,
    "epochs": 1,
    "optimizer": "adamw",
    "lr": 1e-2,
    "overlays": 0,
    "device": "cpu",
    "amp": "off",
}


@pytest.fixture(scope="module")
def half_run(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "half"
    train(TrainConfig(data=str(digits_folder), out=str(out), input_scale=0.5, **TINY))
    return out


def test_segmenter_takes_the_runs_input_scale_and_answers_at_full_size(half_run, digits_folder):
    seg = Segmenter.from_run(half_run, device="cpu")
    assert seg.input_scale == 0.5
    image = np.random.default_rng(0).integers(0, 256, (57, 83, 3), dtype=np.uint8)
    logits = seg.logits(image)
    assert logits.shape[-2:] == (57, 83)
    # the model itself saw the half-size image: same as resizing by hand
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(seg.mean).view(1, -1, 1, 1)
    std = torch.tensor(seg.std).view(1, -1, 1, 1)
    with torch.inference_mode():
        small = forward_full(seg.model, scale_input((x - mean) / std, 0.5))
    assert small.shape[-2:] == (28, 42)
    assert seg.predict(image).shape == (57, 83)
    tiled = seg.predict(image, tile=32, overlap=0.25)
    assert tiled.shape == (57, 83)
    # tiles run on the resized image, and the mask comes back by nearest-neighbour upsampling
    plain = dataclasses.replace(seg, input_scale=1.0)
    small_mask = plain.predict(resize_image(image, (42, 28)), tile=32, overlap=0.25)
    rows = np.arange(57) * 28 // 57
    cols = np.arange(83) * 42 // 83
    np.testing.assert_array_equal(tiled, small_mask[rows][:, cols])


def test_evaluate_scores_at_the_labels_resolution(half_run, digits_folder, tmp_path):
    report = evaluate_run(half_run, digits_folder, "val", device="cpu", out_dir=tmp_path)
    total = sum(sum(row) for row in report["confusion_matrix"])
    from pixelwise.data import open_dataset

    val = open_dataset(digits_folder, "val")
    labelled = sum(int((s.mask != 255).sum()) for s in val)
    assert total == labelled


def test_input_scale_is_validated(digits_folder, tmp_path):
    with pytest.raises(ConfigError, match="--input-scale"):
        TrainConfig(data=str(digits_folder), out=str(tmp_path / "r"), input_scale=0.0).validate()

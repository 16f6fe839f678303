"""--input-scale: a run trained on resized images predicts and is scored at full resolution."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise.errors import ConfigError
from pixelwise.evaluate import evaluate_run
from pixelwise.predict import Segmenter, resize_image
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


def _by_hand(seg, image: np.ndarray, scale: float) -> torch.Tensor:
    """The model's logits for ``image`` resized by ``scale``, upsampled back bilinearly: written
    out here (normalise, resize with antialiasing, the bare model, resize back) instead of
    calling the prediction code. For models without a border only."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(seg.mean).view(1, -1, 1, 1)) / torch.tensor(seg.std).view(1, -1, 1, 1)
    size = (round(h * scale), round(w * scale))
    small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        logits = seg.model(small)
    assert logits.shape[-2:] == small.shape[-2:]
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0]


def test_segmenter_takes_the_runs_input_scale_and_answers_at_full_size(half_run, digits_folder):
    seg = Segmenter.from_run(half_run, device="cpu")
    assert seg.input_scale == 0.5
    image = np.random.default_rng(0).integers(0, 256, (57, 83, 3), dtype=np.uint8)
    logits = seg.logits(image)
    assert logits.shape == (seg.classes.num_classes, 57, 83)
    # the model saw the half-size image (28 x 42) and its logits came back bilinearly
    torch.testing.assert_close(logits, _by_hand(seg, image, 0.5), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(seg.predict(image), logits.argmax(0).numpy())
    tiled = seg.predict(image, tile=32, overlap=0.25)
    assert tiled.shape == (57, 83)
    # tiles run on the resized image; their (log blended) scores are upsampled bilinearly, then
    # the argmax is taken: F.interpolate of the half-size tiled scores, by hand
    plain = dataclasses.replace(seg, input_scale=1.0)
    small = plain.logits(resize_image(image, (42, 28)), tile=32, overlap=0.25)
    assert small.shape[-2:] == (28, 42)
    up = F.interpolate(small[None], size=(57, 83), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(seg.logits(image, tile=32, overlap=0.25), up, rtol=0, atol=1e-4)
    top2 = up.topk(2, dim=0).values
    differ = tiled != up.argmax(0).numpy()
    assert not (differ & ((top2[0] - top2[1]).numpy() > 1e-4)).any()


def _blocks(h: int, w: int, seed: int = 0, block: int = 8) -> np.ndarray:
    """A piecewise-constant random colour image (blocks of ``block`` px), uint8 (h, w, 3): its
    half-size versions from Pillow (uint8) and torch (floats) differ only at block edges."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // block + 1, w // block + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((block, block, 1), dtype=np.uint8))[:h, :w]


@pytest.mark.parametrize("scale", [0.5, 0.75])
def test_tiled_and_whole_image_agree_under_input_scale(half_run, scale):
    """One behaviour whatever the image size (predict_files switches to tiles by itself for big
    images): the trained run's tiled masks are its whole-image masks, up to the blending of the
    tiles (which a one-epoch model feels most) and Pillow's 8-bit resize. Measured: 0.995-0.996
    (the nearest-neighbour upsampling of masks this replaces: 0.65-0.83 on digit scenes)."""
    seg = dataclasses.replace(Segmenter.from_run(half_run, device="cpu"), input_scale=scale)
    image = _blocks(150, 170)
    whole = seg.predict(image)
    tiled = seg.predict(image, tile=64, overlap=0.5)
    assert tiled.shape == whole.shape == (150, 170)
    assert len(np.unique(whole)) > 2  # a trained model's answer, not a constant
    assert (tiled == whole).mean() >= 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_valid_unet_tiles_equal_whole_image_under_input_scale(seed):
    """Overlap-tiles are exact at the model's resolution, so under input scale 0.5 the tiled and
    whole-image predictions differ only by the resize of the image (Pillow on uint8 for the
    tiles, torch on floats for the whole image). Fixed random weights, 20 tiles; measured
    agreement 0.9985-0.9995."""
    from pixelwise.data.classes import ClassInfo
    from pixelwise.models import build

    torch.manual_seed(seed)
    model = build("unet", 3, depth=2, base_width=4).eval()
    classes = ClassInfo(names=("a", "b", "c"), colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)))
    seg = Segmenter(model, classes, (0.5,) * 3, (0.25,) * 3, 3, input_scale=0.5)
    image = _blocks(150, 170, seed=seed)
    whole, tiled = seg.logits(image), seg.logits(image, tile=16)
    assert tiled.shape == whole.shape == (3, 150, 170)
    mask = whole.argmax(0).numpy()
    assert np.sort(np.bincount(mask.ravel(), minlength=3))[-2] > 0.05 * mask.size  # not constant
    assert (seg.predict(image, tile=16) == mask).mean() >= 0.995
    assert float((tiled - whole).abs().mean()) <= 0.01 * float(whole.abs().mean())


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

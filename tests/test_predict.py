"""Test-time augmentation (``predict.mean_over_views``, ``--tta``) on real models and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pixelwise import models
from pixelwise.cli import main
from pixelwise.data.classes import ClassInfo
from pixelwise.predict import TTA_VIEWS, Segmenter, mean_over_views, tta_unview, tta_view

CLASSES = ClassInfo(names=("a", "b", "c"), colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)))


def test_the_eight_views_are_distinct_and_undone():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    views = [tta_view(x, k, f) for k, f in TTA_VIEWS]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert {v.shape[-2:] for v in views} == {(5, 7), (7, 5)}
    for (k, f), v in zip(TTA_VIEWS, views, strict=True):
        assert torch.equal(tta_unview(v, k, f), x)


def test_a_pointwise_net_is_unchanged_by_tta():
    """A 1x1 convolution commutes with every view: the 8 mapped-back outputs are identical, so
    the averaged log-probabilities equal its own log-softmax (a wrong inverse would misplace
    them: the input is random, not symmetric)."""
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 9, 13)
    with torch.no_grad():
        got = mean_over_views(net, x)
        want = torch.log_softmax(net(x), 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_tta_averages_the_views_of_an_oriented_net():
    """A net with an asymmetric kernel sees each view differently; the result is the mean of the
    eight probability maps, computed here independently with numpy rotations."""
    torch.manual_seed(1)
    net = nn.Conv2d(1, 2, 3, padding=1)
    image = np.random.default_rng(0).random((6, 10)).astype(np.float32)
    probs = []
    with torch.no_grad():
        for k in range(4):
            for flip in (False, True):
                v = np.rot90(image[:, ::-1] if flip else image, k).copy()
                p = torch.softmax(net(torch.from_numpy(v)[None, None]), 1)[0].numpy()
                back = np.rot90(p, -k, axes=(1, 2))
                probs.append(back[:, :, ::-1] if flip else back)
        got = mean_over_views(net, torch.from_numpy(image)[None, None])[0].exp().numpy()
    np.testing.assert_allclose(got, np.mean(probs, 0), atol=1e-6)
    assert got.sum(0) == pytest.approx(np.ones((6, 10)), abs=1e-5)


def _segmenter(name: str, **kwargs) -> Segmenter:
    torch.manual_seed(0)
    model = models.build(name, 3, in_channels=3, **kwargs).eval()
    return Segmenter(model, CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3, tta=True)


@pytest.mark.parametrize(
    "name,kwargs",
    [("unet", {"depth": 2, "base_width": 4}), ("unet_same", {"depth": 2, "base_width": 4})],
)
def test_segmenter_tta_whole_and_tiled_agree(name, kwargs):
    """TTA composes with tiles: each view is tiled, then the views are averaged. For the valid
    U-Net the tiles are exact, so tiled and whole-image TTA give the same probabilities."""
    seg = _segmenter(name, **kwargs)
    image = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    whole = seg.logits(image)
    tiled = seg.logits(image, tile=48, overlap=0.25)
    assert whole.shape == tiled.shape == (3, 70, 90)
    if name == "unet":
        torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=1e-4)
    assert (seg.predict(image) == whole.argmax(0).numpy()).all()
    seg.tta = False
    plain = seg.logits(image)
    assert not torch.allclose(plain.log_softmax(0), whole, atol=1e-3)  # TTA changes something


def test_cli_evaluate_and_predict_with_tta(run_dir, digits_folder, tmp_path):
    assert main(["-q", "evaluate", str(run_dir), "--data", str(digits_folder), "--tta",
                 "--out", str(tmp_path / "e")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "e" / "eval_val.json").read_text())
    assert report["tta"] is True and 0 <= report["mean_iou"] <= 1
    assert main(["-q", "evaluate", str(run_dir), "--data", str(digits_folder),
                 "--out", str(tmp_path / "p")]) == 0  # fmt: skip
    plain = json.loads((tmp_path / "p" / "eval_val.json").read_text())
    assert plain["tta"] is False and plain["confusion_matrix"] != report["confusion_matrix"]
    image = next(p for p in sorted(digits_folder.rglob("*.png")) if "image" in str(p))
    assert main(["-q", "predict", str(run_dir), str(image), "--tta", "--out",
                 str(tmp_path / "m")]) == 0  # fmt: skip
    mask = np.asarray(Image.open(tmp_path / "m" / f"{image.stem}.png"))
    assert mask.shape == np.asarray(Image.open(image)).shape[:2]


def test_tta_uses_only_the_symmetries_the_run_trained_with(run_dir, tmp_path):
    """A street-scene run (horizontal flips only) never averages an upside-down view; a
    microscopy run (flips and any rotation) averages all 8; the run's config decides."""
    import json
    import shutil

    from pixelwise.predict import TTA_VIEWS, trained_views

    assert trained_views({"hflip": True, "rotate": 0.0}) == ((0, False), (0, True))
    assert trained_views({"hflip": True, "rotate": 180.0}) == TTA_VIEWS
    assert trained_views({"hflip": False, "rotate": 180.0}) == tuple((k, False) for k in range(4))
    assert trained_views({"hflip": False, "rotate": 10.0}) == ((0, False),)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    assert Segmenter.from_run(run).views == trained_views(config["train"])
    config["train"].update(hflip=True, rotate=180.0)
    (run / "config.json").write_text(json.dumps(config))
    assert Segmenter.from_run(run).views == TTA_VIEWS

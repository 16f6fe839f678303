"""The patch classifier behind ``pixelwise heatmap``: training, saving/loading, heatmaps, figure,
and the command's API (files written, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelwise.heatmap as hm
from pixelwise.data import DigitsScenes, write_image
from pixelwise.dense import convolutionalize
from pixelwise.errors import ConfigError, DataError

SMALL = {"epochs": 4, "num_scenes": 300}  # about 3 s: enough to learn something, not to be good


def _normalized(image: np.ndarray, meta: dict) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W), (x / 255 - mean) / std as classifier.json says."""
    mean = torch.tensor(meta["normalization"]["mean"])[:, None, None]
    std = torch.tensor(meta["normalization"]["std"])[:, None, None]
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting
    return hm.train_patch_classifier(tmp_path_factory.mktemp("classifier"), **SMALL)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    image = DigitsScenes("val", num_images=1, min_size=90, max_size=100).compose(0)[0]
    return image[:70, :90]


def test_train_writes_safetensors_and_description(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == [hm.META_FILE, hm.CLASSIFIER_FILE]
    header_len = int.from_bytes((run_dir / hm.CLASSIFIER_FILE).read_bytes()[:8], "little")
    header = json.loads((run_dir / hm.CLASSIFIER_FILE).read_bytes()[8 : 8 + header_len])
    assert "conv1.weight" in header and "fc3.bias" in header  # safetensors, not a pickle
    meta = json.loads((run_dir / hm.META_FILE).read_text())
    assert meta["patch_size"] == 32
    assert meta["architecture"] == {
        "name": "lenet",
        "kwargs": {"num_classes": 11, "in_channels": 3, "padding": 0, "input_size": 32},
    }
    assert (
        meta["classes"]["names"][:2] == ["background", "0"] and len(meta["classes"]["names"]) == 11
    )
    assert len(meta["normalization"]["mean"]) == 3
    assert meta["train_patches"] > 1000 and meta["val_patches"] > 500
    # 11 classes, 24% of val patches background: already better than any constant answer
    assert 0.35 < meta["val_accuracy"] <= 1.0


def test_training_is_reproducible_and_reports_progress(tmp_path):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.closed = kwargs, 0, False
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            self.closed = True

    a = hm.train_patch_classifier(tmp_path / "a", epochs=1, num_scenes=20, progress=Bar)
    b = hm.train_patch_classifier(tmp_path / "b", epochs=1, num_scenes=20)
    assert (a / hm.CLASSIFIER_FILE).read_bytes() == (b / hm.CLASSIFIER_FILE).read_bytes()
    meta = json.loads((a / hm.META_FILE).read_text())
    assert len(bars) == 1 and bars[0].closed and bars[0].n == meta["train_patches"]
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        hm.train_patch_classifier(tmp_path / "c", epochs=0)


def test_load_errors_name_the_file(run_dir, tmp_path):
    model, meta = hm.load_patch_classifier(run_dir)
    assert not model.training and meta["patch_size"] == 32
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ConfigError, match=r"bad/classifier\.json: .*missing"):
        hm.load_patch_classifier(bad)
    (bad / hm.META_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad/classifier\.json: not readable JSON"):
        hm.load_patch_classifier(bad)
    (bad / hm.META_FILE).write_text((run_dir / hm.META_FILE).read_text())
    with pytest.raises(
        ConfigError, match=r"bad/classifier\.safetensors: checkpoint file is missing"
    ):
        hm.load_patch_classifier(bad)
    (bad / hm.CLASSIFIER_FILE).write_bytes(b"\x00garbage" * 8)
    with pytest.raises(ConfigError, match=r"bad/classifier\.safetensors: not a readable"):
        hm.load_patch_classifier(bad)
    (bad / hm.CLASSIFIER_FILE).write_bytes((run_dir / hm.CLASSIFIER_FILE).read_bytes())
    meta = json.loads((run_dir / hm.META_FILE).read_text())
    meta["architecture"]["kwargs"]["widths"] = [4, 8]
    (bad / hm.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"classifier\.safetensors: weights do not fit"):
        hm.load_patch_classifier(bad)
    meta["format"] = "something-else"
    (bad / hm.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="format"):
        hm.load_patch_classifier(bad)


def test_heatmap_maps_shapes_and_exactness(run_dir, scene):
    model, meta = hm.load_patch_classifier(run_dir)
    r = hm.heatmap((model, meta), scene)
    assert r["stride"] == (4, 4) and r["window"] == (32, 32)
    assert r["probs"].shape == (11, (70 - 32) // 4 + 1, (90 - 32) // 4 + 1) == (11, 10, 15)
    assert r["probs_full"].shape == (11, 70 - 31, 90 - 31)
    np.testing.assert_allclose(r["probs"].sum(0), 1.0, atol=1e-5)
    # the stride-4 map is every 4th window of the à trous map
    np.testing.assert_allclose(r["probs_full"][:, ::4, ::4], r["probs"], atol=1e-5)
    assert np.array_equal(r["argmax"], r["probs"].argmax(0))
    # a cell is the classifier's softmax on that window
    x = _normalized(scene, meta)
    with torch.no_grad():
        p = model(x[None, :, 8:40, 20:52]).softmax(1)[0].numpy()
    np.testing.assert_allclose(r["probs"][:, 2, 5], p, atol=1e-5)
    # the mask: each window's label on its centre pixel, 255 on the 16-pixel border
    mask = r["mask"]
    assert mask.shape == (70, 90) and mask.dtype == np.uint8
    assert (mask[:16] == 255).all() and (mask[:, :16] == 255).all()
    assert (mask[16 + 39 :] == 255).all() and (mask[:, 16 + 59 :] == 255).all()
    assert np.array_equal(mask[16:55, 16:75], r["argmax_full"])


def test_heatmap_without_full_resolution_and_errors(run_dir, scene):
    r = hm.heatmap(run_dir, scene, full_resolution=False)
    assert r["probs_full"] is None and r["argmax_full"] is None
    # window (i, j) labels its centre (4i + 16, 4j + 16) and the pixels nearest to it
    assert r["mask"][16 + 4 * 3, 16 + 4 * 7] == r["argmax"][3, 7]
    assert r["mask"][16 + 4 * 3 + 1, 16 + 4 * 7 - 1] == r["argmax"][3, 7]
    gray = hm.heatmap(run_dir, scene[:, :, :1])
    assert gray["probs"].shape == (11, 10, 15)
    with pytest.raises(ConfigError, match="smaller than the classifier's 32x32"):
        hm.heatmap(run_dir, scene[:31])
    with pytest.raises(ConfigError, match="uint8"):
        hm.heatmap(run_dir, scene.astype(np.float32))


def test_figure_is_a_small_png(run_dir, scene, tmp_path):
    r = hm.heatmap(run_dir, scene)
    path = hm.write_heatmap_figure(r, scene, tmp_path / "fig.png")
    assert path == tmp_path / "fig.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 400
    assert path.stat().st_size < 300_000
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_command_with_run_and_image(run_dir, scene, tmp_path):
    write_image(tmp_path / "scene.png", scene)
    out = tmp_path / "out"
    written = hm.heatmap_command(str(run_dir), str(tmp_path / "scene.png"), str(out))
    assert written == [out / "heatmap.png", out / "argmax.png"]
    with Image.open(out / "argmax.png") as img:
        assert img.mode == "P" and img.size == (90, 70)
        values = set(np.unique(np.asarray(img)).tolist())
    assert values <= set(range(11)) | {255} and 255 in values


def test_command_trains_when_no_classifier(tmp_path, monkeypatch):
    calls = []
    real = hm.train_patch_classifier

    def small_train(out_dir, **kwargs):  # the real training, on a few scenes
        calls.append(Path(out_dir))
        return real(out_dir, seed=kwargs["seed"], epochs=1, num_scenes=20)

    monkeypatch.setattr(hm, "train_patch_classifier", small_train)
    seg_run = tmp_path / "segmentation_run"  # e.g. a 'pixelwise train' run: no classifier
    seg_run.mkdir()
    out = tmp_path / "out"
    written = hm.heatmap_command(str(seg_run), None, out)
    assert calls == [out]
    assert [p.name for p in written] == [
        hm.CLASSIFIER_FILE,
        hm.META_FILE,
        "heatmap.png",
        "argmax.png",
    ]
    assert all(p.is_file() for p in written)
    assert list(seg_run.iterdir()) == []  # the run is left alone
    with Image.open(out / "argmax.png") as img:
        assert min(img.size) >= 120  # the default image: a val scene larger than the patches
    hm.heatmap_command(None, None, tmp_path / "out2")
    assert calls == [out, tmp_path / "out2"]


def test_command_errors(run_dir, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        hm.heatmap_command(str(run_dir), str(tmp_path / "missing.png"), tmp_path / "o")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot identify image file"):
        hm.heatmap_command(str(run_dir), str(tmp_path / "junk.png"), tmp_path / "o")
    with pytest.raises(ConfigError, match="no such run directory"):
        hm.heatmap_command(str(tmp_path / "nope"), None, tmp_path / "o")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / hm.META_FILE).write_text("{")
    with pytest.raises(ConfigError, match="not readable JSON"):  # never silently retrained
        hm.heatmap_command(str(broken), None, tmp_path / "o")


def test_heatmap_agrees_with_the_convolutionalized_classifier(run_dir, scene):
    """``heatmap`` is a thin layer over pixelwise.dense: same scores as the FCN itself."""
    model, meta = hm.load_patch_classifier(run_dir)
    fcn = convolutionalize(model, 32)
    x = _normalized(scene, meta)
    with torch.no_grad():
        logits = fcn(x[None])[0]
    r = hm.heatmap((model, meta), scene)
    np.testing.assert_allclose(r["probs"], logits.softmax(0).numpy(), atol=1e-5)

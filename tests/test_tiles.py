"""Tiled prediction: the valid U-Net's overlap-tiles reproduce the whole-image prediction exactly
(any image size, tile, overlap); blended tiles agree with it on almost every pixel and are exact
for a context-free net; inputs stay tile-sized; bad options are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from pixelwise import models, tiles
from pixelwise.cli import main
from pixelwise.data.classes import ClassInfo
from pixelwise.errors import ConfigError
from pixelwise.models.base import SegmentationModel
from pixelwise.predict import Segmenter, predict_files
from pixelwise.tiles import check_tiling, gaussian_window, min_tile, predict_tiled, tile_spans
from pixelwise.training import TrainConfig, train

TOL = 1e-4  # max abs logit difference between tiled and whole-image float32 passes
# Blended tiles vs whole image on a random unet_same (depth 2, base_width 8), tiles >= 64 px:
# the lowest agreement measured over 154 random image sizes / tiles / overlaps was 0.988.
BLEND_AGREEMENT = 0.97

CLASSES = ClassInfo(names=("a", "b", "c"), colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)))


def _segmenter(name: str, seed: int = 0, **kwargs) -> Segmenter:
    torch.manual_seed(seed)
    model = models.build(name, 3, **kwargs).eval()
    return Segmenter(model, CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)


def _image(h: int, w: int, seed: int = 0, block: int = 8) -> np.ndarray:
    """A piecewise-constant random colour image (blocks of ``block`` px), uint8 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // block + 1, w // block + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((block, block, 1), dtype=np.uint8))[:h, :w]


def _assert_same_labels(mask: np.ndarray, whole_logits: torch.Tensor) -> None:
    """``mask`` is the whole image's argmax, except (float noise) where its top two logits
    are closer than TOL."""
    top2 = whole_logits.topk(min(2, whole_logits.shape[0]), dim=0).values
    margin = (top2[0] - top2[-1]).numpy()
    differ = mask != whole_logits.argmax(0).numpy()
    assert not (differ & (margin >= TOL)).any()


# ---- the valid U-Net: overlap-tile == whole image -------------------------------------------


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("size", [(37, 91), (100, 64), (67, 5), (129, 33)])
@pytest.mark.parametrize("tile", [16, 37, 64])
def test_valid_unet_tiles_equal_whole_image(depth, size, tile):
    seg = _segmenter("unet", depth=depth, base_width=4)
    img = _image(*size, seed=depth, block=3)
    whole = seg.logits(img)
    tiled = seg.logits(img, tile=tile)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=TOL, rtol=0)
    np.testing.assert_array_equal(seg.predict(img, tile=tile), whole.argmax(0).numpy())


@pytest.mark.parametrize("size", [(1, 70), (70, 1), (1, 1), (2, 3)])
def test_valid_unet_thin_images(size):
    seg = _segmenter("unet", depth=2, base_width=4)
    img = _image(*size, block=1)
    whole = seg.logits(img)
    assert torch.allclose(seg.logits(img, tile=16), whole, atol=TOL, rtol=0)
    assert seg.predict(img, tile=16).shape == size


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    tile=st.integers(16, 80),
    overlap=st.floats(0, 0.9),
    seed=st.integers(0, 3),
)
def test_valid_unet_property_any_size_tile_overlap(h, w, tile, overlap, seed):
    seg = _segmenter("unet", seed=seed, depth=2, base_width=2)
    img = _image(h, w, seed=seed, block=2)
    _assert_same_labels(seg.predict(img, tile=tile, overlap=overlap), seg.logits(img))


def test_valid_unet_inputs_are_tile_sized_and_cover_once():
    """Each call sees one output tile plus its border; the tiles partition the image."""
    seg = _segmenter("unet", depth=2, base_width=2)
    model = seg.model
    shapes = []

    def net(x):
        shapes.append(tuple(x.shape))
        return model(x)

    img = _image(150, 70, block=4)
    tiled = predict_tiled(net, model, img, seg.mean, seg.std, tile=35, logits=True)
    step = 32  # 35 rounded down to a multiple of 2**depth
    biggest = model.valid_input_size(step, step)
    assert len(shapes) == 5 * 3  # ceil(150 / 32) x ceil(70 / 32)
    assert all(s[2] <= biggest[0] and s[3] <= biggest[1] for s in shapes)
    assert torch.allclose(tiled, seg.logits(img), atol=TOL, rtol=0)


# ---- blended tiles --------------------------------------------------------------------------


class PixelNet(SegmentationModel):
    """A context-free net (1x1 conv): any tiling gives exactly the whole-image scores."""

    def __init__(self) -> None:
        super().__init__(num_classes=4, in_channels=3)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return 3 * self.conv(x)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.6])
def test_blending_is_exact_for_a_context_free_net(overlap):
    """No seams from the blending itself: the normalised Gaussian weights give every pixel the
    whole image's probabilities (tile seams included)."""
    torch.manual_seed(0)
    seg = Segmenter(PixelNet().eval(), CLASSES, (0.5,) * 3, (0.25,) * 3, 3)
    img = _image(150, 203, block=1)
    whole = torch.log_softmax(seg.logits(img), dim=0)
    tiled = seg.logits(img, tile=64, overlap=overlap)
    assert torch.allclose(tiled, whole, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(seg.predict(img, tile=64, overlap=overlap), whole.argmax(0))


@pytest.mark.parametrize("seed", [0, 1])
def test_blended_unet_same_agrees_with_whole_image(seed):
    seg = _segmenter("unet_same", seed=seed, depth=2, base_width=8)
    img = _image(160, 224, seed=seed)
    agreement = (seg.predict(img, tile=96, overlap=0.5) == seg.predict(img)).mean()
    assert agreement >= 0.99


def test_blended_fcn_agrees_with_whole_image_with_tiles_beyond_its_receptive_field():
    seg = _segmenter("fcn8s", width=0.0625)
    with torch.no_grad():  # the paper zero-initialises the score layers: make them say something
        for name, p in seg.model.named_parameters():
            if "score" in name and p.ndim == 4:
                p.normal_(0, 0.5)
    img = _image(600, 700, block=16)
    whole = seg.predict(img)
    assert len(np.unique(whole)) > 1
    # FCN's receptive field is ~400 px: tiles need to be larger than that (0.9962 measured;
    # 256 px tiles give 0.92-0.96, 384 px 0.97-0.99)
    assert (seg.predict(img, tile=512, overlap=0.25) == whole).mean() >= 0.99


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    h=st.integers(8, 128),
    w=st.integers(8, 128),
    tile=st.sampled_from([64, 96, 128]),
    overlap=st.floats(0, 0.9),
)
def test_blended_property_agreement(h, w, tile, overlap):
    seg = _segmenter("unet_same", depth=2, base_width=8)
    img = _image(h, w, seed=h * 1000 + w)
    mask = seg.predict(img, tile=tile, overlap=overlap)
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    assert (mask == seg.predict(img)).mean() >= BLEND_AGREEMENT


@pytest.mark.parametrize(
    "name,kwargs", [("unet_same", {"depth": 2, "base_width": 4}), ("fcn8s", {"width": 0.0625})]
)
def test_tile_larger_than_image_predicts_whole(name, kwargs):
    seg = _segmenter(name, **kwargs)
    img = _image(45, 60)
    whole = seg.logits(img)
    tiled = seg.logits(img, tile=128)
    assert torch.allclose(tiled, torch.log_softmax(whole, 0), atol=1e-5, rtol=0)


def test_blended_one_pixel_high_image():
    """A 1-pixel-high image: one row of tiles, each 1 x 64 (the last 1 x 76); the mask is the
    blending written out by hand: per tile softmax x Gaussian window, summed, normalised."""
    seg = _segmenter("fcn8s", width=0.0625)
    with torch.no_grad():  # zero-initialised score layers would make every label 0
        for name, p in seg.model.named_parameters():
            if "score" in name and p.ndim == 4:
                p.normal_(0, 0.5)
    img = _image(1, 300, block=1)
    mask = seg.predict(img, tile=64, overlap=0.25)
    assert mask.shape == (1, 300)
    x = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    total, weight = torch.zeros(3, 1, 300), torch.zeros(1, 300)
    spans = tile_spans(300, 64, 0.25, 32)
    assert len(spans) > 3 and spans[-1] == (224, 76)
    with torch.no_grad():
        for a, w in spans:
            window = gaussian_window(1, w)
            total[:, :, a : a + w] += seg.model(x[None, :, :, a : a + w])[0].softmax(0) * window
            weight[:, a : a + w] += window
    expected = (total / weight).argmax(0).numpy()
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(mask, expected)


def test_blended_one_pixel_high_image_is_exact_for_a_context_free_net():
    seg = Segmenter(PixelNet().eval(), CLASSES, (0.5,) * 3, (0.25,) * 3, 3)
    img = _image(1, 300, block=1)
    np.testing.assert_array_equal(seg.predict(img, tile=64), seg.predict(img))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    src=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    out=st.tuples(st.integers(1, 150), st.integers(1, 150)),
    cuts=st.lists(st.integers(1, 59), max_size=4),
    chunk=st.integers(1, 40),
)
def test_band_by_band_resize_equals_interpolate(src, out, cuts, chunk):
    """Scores arriving in bands of any heights, resized band by band, are F.interpolate of the
    whole map (bilinear, align_corners=False), up- or downsampling; output bands in order."""
    scores = torch.randn(3, *src, generator=torch.Generator().manual_seed(sum(src) + sum(out)))
    edges = sorted({0, src[0], *(c for c in cuts if c < src[0])})
    bands = [(a, scores[:, a:b]) for a, b in zip(edges, edges[1:], strict=False)]
    got = list(tiles._upsampled(iter(bands), src, out, chunk=chunk))
    starts = np.cumsum([0] + [b.shape[1] for _, b in got])
    assert [y for y, _ in got] == starts[:-1].tolist() and starts[-1] == out[0]
    assert max(b.shape[1] for _, b in got) <= chunk
    whole = torch.cat([b for _, b in got], dim=1)
    expected = torch.nn.functional.interpolate(
        scores[None], size=out, mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-4)  # float rounding


def test_blended_inputs_are_tile_sized():
    seg = _segmenter("unet_same", depth=2, base_width=4)
    shapes = []

    def net(x):
        shapes.append(tuple(x.shape[-2:]))
        return seg.model(x)

    predict_tiled(net, seg.model, _image(300, 90), seg.mean, seg.std, tile=64, overlap=0.25)
    assert max(max(s) for s in shapes) < 64 + 4  # the last tile is up to align - 1 longer
    assert len(shapes) > 4


def test_tile_batch_gives_the_same_mask():
    seg = _segmenter("unet_same", depth=2, base_width=4)
    img = _image(100, 150)
    args = (seg.model, seg.model, img, seg.mean, seg.std, 32, 0.5)
    np.testing.assert_array_equal(predict_tiled(*args), predict_tiled(*args, tile_batch=3))
    valid = _segmenter("unet", depth=2, base_width=2)
    args = (valid.model, valid.model, img, valid.mean, valid.std, 32)
    np.testing.assert_array_equal(predict_tiled(*args), predict_tiled(*args, tile_batch=4))


# ---- geometry -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 2000),
    k=st.integers(1, 20),
    overlap=st.floats(0, 0.9),
    align=st.sampled_from([1, 4, 16, 32]),
)
def test_tile_spans_cover_aligned_and_overlap(n, k, overlap, align):
    tile = k * align
    spans = tile_spans(n, tile, overlap, align)
    assert spans[0][0] == 0 and sum(spans[-1]) == n
    covered = np.zeros(n, dtype=int)
    for (a, size), nxt in zip(spans, spans[1:] + [None], strict=True):
        assert a % align == 0
        assert size == tile or nxt is None
        assert tile <= size < tile + align or len(spans) == 1
        covered[a : a + size] += 1
        if nxt is not None:
            assert a < nxt[0] <= a + size  # no gap
            shared = a + size - nxt[0]
            step = max(align, int(tile * (1 - overlap)) // align * align)
            assert shared >= tile - step
    assert covered.min() >= 1


def test_gaussian_window():
    w = gaussian_window(64, 32)
    assert w.shape == (64, 32) and float(w.max()) == pytest.approx(1.0)
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    assert 1e-4 < float(w[0, 16]) < 1e-3  # exp(-8) at the edge: sigma = size / 8


def test_min_tile_and_bad_options():
    unet = models.build("unet", 2, depth=5, base_width=2)
    assert min_tile(unet) == 32
    assert min_tile(models.build("unet_same", 2, depth=2, base_width=2)) == 16
    assert min_tile(models.build("segnet_basic", 2, width=0.125)) == 32
    for tile, needle in [(8, "--tile 8"), (31, "--tile 31"), (64.0, "--tile"), (True, "--tile")]:
        with pytest.raises(ConfigError, match=needle):
            check_tiling(unet, tile, 0.25)
    for overlap in (-0.1, 0.95, 1.0, "a"):
        with pytest.raises(ConfigError, match="--overlap"):
            check_tiling(unet, 64, overlap)
    seg = _segmenter("unet_same", depth=2, base_width=4)
    with pytest.raises(ConfigError, match="channels"):
        seg.predict(np.zeros((40, 40, 1), np.uint8), tile=32)


# ---- predict_files and the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_run(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles") / "run"
    train(
        TrainConfig(
            data=str(digits_folder),
            out=str(out),
            epochs=1,
            model="unet",
            model_args={"depth": 2, "base_width": 4},
            batch_size=4,
            crop_size=48,
            hflip=False,
            overlays=0,
            device="cpu",
        )
    )
    return out


@pytest.fixture
def big_image(tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(_image(150, 170, block=5)).save(path)
    return path


def _mask(path):
    return np.asarray(Image.open(path))


def test_cli_tile_writes_the_same_mask_for_a_valid_unet(valid_run, big_image, tmp_path):
    base = ["-q", "predict", str(valid_run), str(big_image), "--out"]
    assert main([*base, str(tmp_path / "a")]) == 0
    assert main([*base, str(tmp_path / "b"), "--tile", "64", "--overlap", "0.25"]) == 0
    whole, tiled = _mask(tmp_path / "a" / "scene.png"), _mask(tmp_path / "b" / "scene.png")
    assert whole.shape == (150, 170)
    np.testing.assert_array_equal(tiled, whole)


@pytest.mark.parametrize(
    "option,needle",
    [
        (["--tile", "8"], "--tile 8"),
        (["--tile", "12"], "--tile 12"),
        (["--overlap", "0.95"], "--overlap"),
        (["--tile", "64", "--overlap", "-0.1"], "--overlap"),
    ],
)
def test_cli_bad_tile_options_are_one_line_errors(
    valid_run, big_image, tmp_path, capsys, option, needle
):
    code = main(["predict", str(valid_run), str(big_image), "--out", str(tmp_path / "o"), *option])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_predict_files_auto_tiles_big_images(valid_run, big_image, tmp_path, monkeypatch):
    calls = []
    real = tiles.predict_tiled

    def spy(*args, **kwargs):
        calls.append(args[5])  # the tile size
        return real(*args, **kwargs)

    monkeypatch.setattr(tiles, "predict_tiled", spy)
    seg = Segmenter.from_run(valid_run, device="cpu")
    predict_files(seg, [big_image], tmp_path / "never", tile=0)
    assert calls == []
    predict_files(seg, [big_image], tmp_path / "auto")
    assert calls == []  # 150 x 170 is far below the threshold
    monkeypatch.setattr(tiles, "AUTO_TILE_PIXELS", 100 * 100)
    monkeypatch.setattr(tiles, "AUTO_TILE", 32)
    predict_files(seg, [big_image], tmp_path / "tiled")
    assert calls == [32]
    np.testing.assert_array_equal(
        _mask(tmp_path / "tiled" / "scene.png"), _mask(tmp_path / "never" / "scene.png")
    )

"""The dense CRF (pixelwise.crf): the permutohedral mean field against an exact O(N^2) one, its
kernels, its options, and its hooks in predict, evaluate and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelwise import crf as crf_module
from pixelwise.crf import (
    CRFLayer,
    CRFParams,
    GaussianBlur,
    PermutohedralLattice,
    appearance_features,
    dense_crf,
    parse_crf_options,
)
from pixelwise.errors import ConfigError

# --------------------------------------------------------------------------------------------
# the exact reference: every pair of pixels, written independently of pixelwise.crf


def brute_force_crf(
    logits: torch.Tensor, image: np.ndarray, p: CRFParams, kernels=("smooth", "appearance")
) -> torch.Tensor:
    """Mean field with the exact kernels, computed densely (O(N^2)) with ``torch.cdist``:
    ``Q <- softmax(log p + sum_m w_m D^-1/2 G_m D^-1/2 Q)`` (Potts, symmetric normalisation,
    self-pairs included as in Krähenbühl's code). Returns log Q ``(K, H, W)`` in float64."""
    k, h, w = logits.shape
    img = torch.as_tensor(image, dtype=torch.float64).reshape(h * w, -1)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    d_pos = torch.cdist(pos, pos) ** 2
    d_col = torch.cdist(img, img) ** 2
    mats = []
    if "smooth" in kernels and p.smooth_weight > 0:
        g = torch.exp(-d_pos / (2 * p.smooth_xy**2))
        mats.append((p.smooth_weight, g))
    if "appearance" in kernels and p.appearance_weight > 0:
        g = torch.exp(-d_pos / (2 * p.appearance_xy**2) - d_col / (2 * p.appearance_color**2))
        mats.append((p.appearance_weight, g))
    normed = []
    for weight, g in mats:
        r = g.sum(1).rsqrt()
        normed.append((weight, r[:, None] * g * r[None, :]))
    log_p = torch.log_softmax(logits.double(), 0).reshape(k, -1).T
    q = log_p.exp()
    energy = log_p
    for _ in range(p.iterations):
        energy = log_p + sum(weight * (m @ q) for weight, m in normed)
        q = torch.softmax(energy, 1)
    return torch.log_softmax(energy, 1).T.reshape(k, h, w)


def two_region_case(h: int = 6, w: int = 7, seed: int = 0):
    """A tiny image with a dark left part and a bright right part (plus noise) and uncertain
    logits for 3 classes whose boundary is off by two columns: the appearance kernel matters."""
    g = torch.Generator().manual_seed(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (40, 60, 50)
    image[:, w // 2 :] = (200, 180, 190)
    noise = torch.randint(-6, 7, (h, w, 3), generator=g).numpy()
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    logits = 0.8 * torch.randn(3, h, w, generator=g)
    logits[0, :, : w // 2 - 2] += 1.0
    logits[1, :, w // 2 - 2 :] += 1.0
    return logits, image


TINY = CRFParams(
    iterations=5,
    smooth_weight=1.0,
    smooth_xy=1.5,
    appearance_weight=4.0,
    appearance_xy=4.0,
    appearance_color=20.0,
)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_the_fast_mean_field_matches_the_brute_force_one():
    """Same iteration, same kernels: the permutohedral result is close to the exact one (the
    lattice approximates the Gaussian, so a tolerance), with the same labels; and it is much
    closer to it than to the exact mean field with either kernel left out, so a dropped kernel
    or a wrong weight would fail here."""
    for seed in range(3):
        logits, image = two_region_case(seed=seed)
        fast = dense_crf(logits, image, TINY).double()
        exact = brute_force_crf(logits, image, TINY)
        q_fast, q_exact = fast.exp(), exact.exp()
        err = float((q_fast - q_exact).abs().max())
        assert err < 0.08, err
        assert _corr(fast, exact) > 0.995
        agree = float((fast.argmax(0) == exact.argmax(0)).double().mean())
        assert agree >= 0.97, agree
        assert torch.allclose(q_fast.sum(0), torch.ones(6, 7, dtype=torch.float64), atol=1e-5)
        for dropped in ("smooth", "appearance"):
            kept = ("appearance",) if dropped == "smooth" else ("smooth",)
            other = brute_force_crf(logits, image, TINY, kernels=kept).exp()
            assert float((q_fast - other).abs().max()) > 2 * err, dropped
        # and the CRF did something: it is not the network's softmax
        assert float((q_exact - torch.softmax(logits.double(), 0)).abs().max()) > 0.2


def test_exact_when_only_the_smoothness_kernel_is_on():
    """The smoothness kernel is an exact (separable) Gaussian: no approximation at all."""
    logits, image = two_region_case(h=7, w=9, seed=4)
    p = CRFParams(iterations=4, smooth_weight=3.0, smooth_xy=1.2, appearance_weight=0.0)
    fast = dense_crf(logits, image, p).double()
    exact = brute_force_crf(logits, image, p)
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-4)


def test_the_lattice_approximates_a_unit_gaussian():
    """Filtering with the lattice is, up to a scale, ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for the
    features of a small image (5-D: a coarse approximation, as in Krähenbühl's code) and of a
    plain pixel grid (2-D: close); a narrower or wider Gaussian fits worse."""
    _, image = two_region_case(h=12, w=14, seed=1)
    cases = (
        (appearance_features(torch.as_tensor(image), 3.0, 25.0), 0.95),
        (appearance_features(torch.zeros(10, 11, 0), 1.5, 1.0), 0.99),
    )
    for feats, least in cases:
        v = torch.rand(feats.shape[0], 2, generator=torch.Generator().manual_seed(0))
        got = PermutohedralLattice(feats).filter(v)
        d2 = torch.cdist(feats.double(), feats.double()) ** 2
        fit = {s: _corr(got, torch.exp(-d2 / (2 * s * s)) @ v.double()) for s in (0.5, 1, 2)}
        assert fit[1] > least, fit
        assert fit[1] > max(fit[0.5], fit[2]), fit


def test_lattice_basics():
    feats = torch.rand(200, 3, generator=torch.Generator().manual_seed(2)) * 4
    lat = PermutohedralLattice(feats)
    assert lat.weights.shape == (200, 4)
    torch.testing.assert_close(lat.weights.sum(1), torch.ones(200), rtol=0, atol=1e-5)
    assert (lat.weights >= -1e-6).all()
    assert lat.offsets.min() >= 0 and lat.offsets.max() < lat.vertices
    # linear, and the same at a single point as far from everything
    v = torch.rand(200, 2)
    torch.testing.assert_close(lat.filter(2 * v), 2 * lat.filter(v))
    far = PermutohedralLattice(torch.tensor([[0.0, 0, 0], [100.0, 100, 100]]))
    out = far.filter(torch.tensor([[1.0], [0.0]]))
    assert out[1, 0] == 0 and out[0, 0] > 0
    with pytest.raises(ValueError):
        PermutohedralLattice(torch.zeros(0, 3))


def test_gaussian_blur_is_the_exact_separable_gaussian():
    h, w, sigma = 9, 13, 1.7
    x = torch.rand(2, h, w, generator=torch.Generator().manual_seed(3))
    got = crf_module.gaussian_blur(x, sigma)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).double()
    g = torch.exp(-(torch.cdist(pos, pos) ** 2) / (2 * sigma**2))
    want = (g @ x.reshape(2, -1).double().T).T.reshape(2, h, w)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    assert GaussianBlur(h, w, sigma)(x.reshape(2, -1).T).shape == (h * w, 2)


# --------------------------------------------------------------------------------------------
# behaviour


def test_labels_snap_to_the_colour_edge():
    """A 2-class scene split at column 20 by colour; the network's boundary is at column 16 and
    unsure near it. The CRF moves the boundary to the edge; without the appearance kernel it
    does not."""
    logits, image, truth = _edge_scene()
    before = float((logits.argmax(0) == truth).float().mean())
    p = CRFParams(iterations=10, appearance_weight=10.0, appearance_xy=20.0, appearance_color=10.0)
    after = dense_crf(logits, image, p).argmax(0)
    assert before < 0.93 and float((after == truth).float().mean()) > 0.99
    smooth_only = CRFParams(iterations=10, appearance_weight=0.0)
    assert float((dense_crf(logits, image, smooth_only).argmax(0) == truth).float().mean()) < 0.95


def test_zero_weights_give_back_the_softmax():
    logits, image = two_region_case()
    p = CRFParams(smooth_weight=0.0, appearance_weight=0.0)
    torch.testing.assert_close(dense_crf(logits, image, p), torch.log_softmax(logits, 0))


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_any_number_of_channels(channels):
    """Greyscale: the intensity is the appearance feature; 2 or 4 channels: all of them."""
    logits, image = two_region_case(h=8, w=10)
    img = image[..., :1].repeat(channels, -1)
    out = dense_crf(logits, img, TINY)
    assert out.shape == logits.shape and torch.isfinite(out).all()
    if channels == 1:
        torch.testing.assert_close(out, dense_crf(logits, img[..., 0], TINY))  # (H, W) too
        exact = brute_force_crf(logits, img, TINY)
        assert float((out.exp() - exact.exp()).abs().max()) < 0.08


def test_bad_inputs_are_refused_in_one_line(monkeypatch):
    logits, image = two_region_case()
    with pytest.raises(ConfigError, match="the image is"):
        dense_crf(logits, image[:-1], TINY)
    monkeypatch.setattr(crf_module, "MAX_CRF_PIXELS", 40)
    with pytest.raises(ConfigError, match="over the CRF's limit"):
        dense_crf(logits, image, TINY)


def test_a_hopelessly_narrow_kernel_is_refused():
    feats = torch.tensor([[0.0] * 5, [1e5] * 5])
    with pytest.raises(ConfigError, match="too narrow"):
        PermutohedralLattice(feats)


def _edge_scene():
    h, w = 24, 40
    image = np.zeros((h, w, 3), np.uint8)
    image[:, 20:] = 220
    xs = torch.arange(w, dtype=torch.float32)
    margin = (xs - 16) / 6
    logits = torch.stack([-margin, margin]).unsqueeze(1).expand(2, h, w).contiguous()
    return logits, image, (xs >= 20).long().expand(h, w)


def test_the_crf_layer_starts_as_the_crf_and_learns():
    """CRFLayer with its initial parameters is dense_crf; gradients reach the logits, the
    kernel weights and the compatibility; a few steps on the colour-edge scene, starting from a
    weak appearance kernel, lower the loss and fix the boundary."""
    logits, image, truth = _edge_scene()
    p = CRFParams(iterations=5, appearance_weight=0.5, appearance_xy=20.0, appearance_color=10.0)
    layer = CRFLayer(2, p)
    torch.testing.assert_close(layer(logits, image).detach(), dense_crf(logits, image, p))
    x = logits.clone().requires_grad_(True)
    loss = torch.nn.functional.nll_loss(layer(x, image).unsqueeze(0), truth.unsqueeze(0))
    loss.backward()
    for g in (x.grad, layer.log_weights.grad, layer.compat.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    opt = torch.optim.Adam(layer.parameters(), lr=0.2)
    first = float(loss.detach())
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(layer(logits, image).unsqueeze(0), truth.unsqueeze(0))
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first
    assert layer.weights()["appearance"] > 0.5
    accuracy = float((layer(logits, image).argmax(0) == truth).float().mean())
    assert accuracy > 0.99


# --------------------------------------------------------------------------------------------
# options


def test_options_parse_and_default():
    assert parse_crf_options() == CRFParams()
    p = parse_crf_options(8, "2,4", "6, 70, 9")
    assert (p.iterations, p.smooth_weight, p.smooth_xy) == (8, 2.0, 4.0)
    assert (p.appearance_weight, p.appearance_xy, p.appearance_color) == (6.0, 70.0, 9.0)
    assert p.to_dict()["appearance_xy"] == 70.0
    off = parse_crf_options(smooth="0,3")
    assert off.smooth_weight == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": 0}, "--crf-iterations"),
        ({"iterations": 1000}, "--crf-iterations"),
        ({"smooth": "3"}, "--crf-smooth 3: expected 2"),
        ({"smooth": "3,x"}, "--crf-smooth"),
        ({"smooth": "3,0"}, "THETA: must be a positive"),
        ({"smooth": "-1,3"}, "--crf-smooth W"),
        ({"appearance": "5,80"}, "expected 3"),
        ({"appearance": "5,80,nan"}, "THETA_COLOR"),
        ({"appearance": "5,inf,3"}, "THETA_XY"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        parse_crf_options(**kwargs)


def test_params_refuse_wrong_types():
    with pytest.raises(ConfigError):
        CRFParams(iterations=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CRFParams(smooth_weight=True)  # type: ignore[arg-type]


def test_the_cli_help_shows_the_real_defaults():
    from pixelwise.cli.parser import build_parser

    p = CRFParams()
    text = build_parser().parse_args(["predict", "r", "x", "--out", "o"]).command_parser
    help_text = " ".join(text.format_help().split())
    assert f"(default: {p.iterations})" in help_text
    assert f"(default: {p.smooth_weight:g},{p.smooth_xy:g})" in help_text
    want = f"(default: {p.appearance_weight:g},{p.appearance_xy:g},{p.appearance_color:g})"
    assert want in help_text


# --------------------------------------------------------------------------------------------
# hooks: predict, evaluate, CLI, serve


def test_segmenter_applies_the_crf(run_dir):
    from pixelwise.predict import Segmenter

    seg = Segmenter.from_run(run_dir, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 52, seg.in_channels), dtype=np.uint8)
    plain = seg.logits(image)
    seg.crf = CRFParams(iterations=3)
    refined = seg.logits(image)
    torch.testing.assert_close(refined, dense_crf(plain, image, seg.crf))
    assert seg.predict(image).shape == (40, 52)
    assert np.array_equal(seg.predict(image, tile=32), seg.predict(image, tile=32))
    assert math.isclose(float(refined.exp().sum(0).mean()), 1.0, rel_tol=1e-5)
    # serve --batch: the batched call refines each image as the single-image call does
    images = [image, rng.integers(0, 255, image.shape, dtype=np.uint8)]
    batched = seg.predict_batch(images)
    for one, im in zip(batched, images, strict=True):
        assert np.array_equal(one, seg.predict(im))
    seg.crf = None  # and the CRF changed something: without it the masks differ
    plain_masks = [seg.predict(im) for im in images]
    assert not all(np.array_equal(a, b) for a, b in zip(batched, plain_masks, strict=True))


def test_segmenter_with_crf_on_a_greyscale_run():
    """A greyscale model: the CRF's appearance kernel uses the intensity (the image reaches it
    as (H, W, 1)); dense_crf itself takes any channel count (test_any_number_of_channels)."""
    from pixelwise.data.classes import ClassInfo
    from pixelwise.models import build
    from pixelwise.predict import Segmenter

    channels = 1
    torch.manual_seed(0)
    model = build("unet_same", 2, in_channels=channels, depth=2, base_width=4).eval()
    seg = Segmenter(model, ClassInfo.default(2), (0.5,), (0.25,), channels)
    seg.crf = CRFParams(iterations=2)
    image = np.random.default_rng(1).integers(0, 255, (30, 34, channels), dtype=np.uint8)
    mask = seg.predict(image)
    assert mask.shape == (30, 34) and mask.max() <= 1


def test_evaluate_and_predict_with_crf_from_the_cli(run_dir, digits_folder, tmp_path, capsys):
    import json

    from pixelwise.cli import main

    out = tmp_path / "eval"
    code = main(
        ["evaluate", str(run_dir), "--data", str(digits_folder), "--out", str(out), "--crf",
         "--crf-iterations", "2", "--crf-appearance", "4,30,10", "-q"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "eval_val.json").read_text())
    assert report["crf"]["iterations"] == 2 and report["crf"]["appearance_xy"] == 30.0
    images = digits_folder / "val" / "images"
    code = main(["predict", str(run_dir), str(images), "--out", str(tmp_path / "p"),
                 "--crf-smooth", "2,2", "-q"])  # fmt: skip
    assert code == 0
    assert len(list((tmp_path / "p").glob("*_overlay.png"))) == len(list(images.iterdir()))
    capsys.readouterr()
    code = main(["predict", str(run_dir), str(images), "--out", str(tmp_path / "q"),
                 "--crf", "--crf-smooth", "2"])  # fmt: skip
    assert code != 0
    assert "--crf-smooth 2: expected 2" in capsys.readouterr().err


def test_serve_answers_413_for_an_image_over_the_crf_limit(monkeypatch):
    pytest.importorskip("starlette")
    try:
        import httpx2  # noqa: F401  (starlette's TestClient client since 1.x)
    except ImportError:
        pytest.importorskip("httpx")
    import io

    from PIL import Image
    from starlette.testclient import TestClient

    from pixelwise.data.classes import ClassInfo
    from pixelwise.models import build
    from pixelwise.predict import Segmenter
    from pixelwise.serve.app import create_app

    model = build("unet_same", 2, in_channels=3, depth=2, base_width=4).eval()
    seg = Segmenter(
        model, ClassInfo.default(2), (0.5,) * 3, (0.25,) * 3, 3, crf=CRFParams(iterations=1)
    )
    client = TestClient(create_app(seg, tile=None))
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 20, 3), 128, np.uint8)).save(buf, format="PNG")
    assert client.post("/predict", content=buf.getvalue()).status_code == 200
    monkeypatch.setattr(crf_module, "MAX_CRF_PIXELS", 100)
    r = client.post("/predict", content=buf.getvalue())
    assert r.status_code == 413 and "limit" in r.json()["error"]

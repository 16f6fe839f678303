"""Properties of the joint augmentation with rotation, elastic deformation and colour jitter."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelwise.data.transforms import (
    ColorJitter,
    RandomWarp,
    TrainTransform,
    default_normalization,
    warp,
    warp_grid,
)
from pixelwise.errors import ConfigError

MEAN, STD = default_normalization(3)
MEAN_T = torch.tensor(MEAN)[:, None, None]
STD_T = torch.tensor(STD)[:, None, None]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def pixels(x):
    """Normalised (C, H, W) -> the 0..255 values the transform started from."""
    return (x * STD_T + MEAN_T) * 255


params = st.fixed_dictionaries(
    {
        "h": st.integers(2, 40),
        "w": st.integers(2, 40),
        "crop": st.tuples(st.integers(1, 48), st.integers(1, 48)),
        "lo": st.floats(0.5, 1.5),
        "spread": st.floats(0.0, 0.5),
        "hflip": st.booleans(),
        "rotate": st.sampled_from([0.0, 5.0, 15.0, 45.0]),
        "elastic": st.sampled_from([0.0, 1.0, 4.0, 10.0]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def make(p, **kw):
    return TrainTransform(
        p["crop"],
        MEAN,
        STD,
        (p["lo"], p["lo"] + p["spread"]),
        p["hflip"],
        rotate=p["rotate"],
        elastic=p["elastic"],
        **kw,
    )


@settings(max_examples=60, deadline=None)
@given(p=params, jitter=st.sampled_from([0.0, 0.4]), ignore=st.sampled_from([255, 11]))
def test_no_new_labels_shapes_and_weights(p, jitter, ignore):
    rng = np.random.default_rng(p["seed"])
    labels = rng.choice(np.array([0, 1, 4, 9, 10, ignore], np.uint8), rng.integers(1, 5))
    mask = rng.choice(labels, (p["h"], p["w"])).astype(np.uint8)
    img = rng.integers(0, 256, (p["h"], p["w"], 3), dtype=np.uint8)
    weights = rng.uniform(0.5, 3.0, (p["h"], p["w"])).astype(np.float32)
    t = TrainTransform(
        p["crop"],
        MEAN,
        STD,
        (p["lo"], p["lo"] + p["spread"]),
        p["hflip"],
        ignore,
        rotate=p["rotate"],
        elastic=p["elastic"],
        color_jitter=jitter,
    )
    x, y, w = t(img, mask, gen(p["seed"]), weights=weights)
    assert x.shape == (3, *p["crop"]) and x.dtype == torch.float32
    assert y.shape == p["crop"] and y.dtype == torch.int64
    assert w.shape == p["crop"] and w.dtype == torch.float32
    assert set(torch.unique(y).tolist()) <= set(labels.tolist()) | {ignore}
    assert torch.isfinite(x).all()
    assert float(w.min()) >= 0 and float(w.max()) <= 3.0 + 1e-5
    v = pixels(x)
    assert float(v.min()) > -1e-3 and float(v.max()) < 255 + 1e-3
    x2, y2 = t(img, mask, gen(p["seed"]))  # without weights: same draws, same result
    assert torch.equal(x, x2) and torch.equal(y, y2)


LEVEL = np.array([30, 60, 90, 170, 200, 230], np.float32)  # image value encoding each label


@settings(max_examples=60, deadline=None)
@given(p=params, block=st.integers(1, 8))
def test_nearest_resampling_keeps_image_mask_and_weights_aligned(p, block):
    """With nearest resampling for everything, the image and weights still encode exactly the
    mask's label at every pixel after scale, rotation, elastic warp, crop and flip; pixels
    from outside are the fill colour, ignore and weight 0."""
    rng = np.random.default_rng(p["seed"])
    grid = rng.integers(0, len(LEVEL), (p["h"] // block + 1, p["w"] // block + 1))
    mask = np.kron(grid, np.ones((block, block), np.int64))[: p["h"], : p["w"]].astype(np.uint8)
    img = np.repeat(LEVEL[mask][:, :, None], 3, axis=2).astype(np.uint8)
    weights = (mask.astype(np.float32) + 1) * 0.5
    x, y, w = make(p, interpolation="nearest")(img, mask, gen(p["seed"]), weights=weights)
    v = pixels(x)
    labelled = y != 255
    expect = torch.from_numpy(LEVEL)[y.clamp(max=len(LEVEL) - 1)]
    assert torch.allclose(v[:, labelled], expect[labelled].expand(3, -1), atol=1e-3)
    fill = torch.tensor(MEAN) * 255
    assert torch.allclose(v[:, ~labelled], fill[:, None].expand(-1, int((~labelled).sum())))
    assert torch.equal(w[labelled], (y[labelled].float() + 1) * 0.5)
    assert torch.all(w[~labelled] == 0)


@settings(max_examples=60, deadline=None)
@given(p=params)
def test_bilinear_image_and_nearest_mask_use_the_same_grid(p):
    """Image channels 0 and 1 are linear ramps, 6 * column and 6 * row; the mask is the column
    (then, same seed, the row) index. Bilinear resampling of a ramp is exact away from the
    borders, so after any scale, rotation, elastic warp, crop and flip the image's column
    differs from the mask's (its nearest source pixel) by at most half a source pixel, plus
    half a pixel per scaling step: 0.5 / scale + 0.5."""
    h, w = p["h"], p["w"]
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.stack([cols * 6, rows * 6, np.zeros((h, w))], axis=2).astype(np.uint8)
    t = make(p)
    x, col = t(img, cols.astype(np.uint8), gen(p["seed"]))
    x_again, row = t(img, rows.astype(np.uint8), gen(p["seed"]))
    assert torch.equal(x, x_again)  # the mask's content does not change the draws
    margin = int(np.ceil(2 / p["lo"])) + 1  # antialiased downscaling blurs the outer pixels
    inside = (col >= margin) & (col <= w - 1 - margin) & (row >= margin) & (row <= h - 1 - margin)
    tol = 0.5 / min(p["lo"], 1.0) + 0.5 + 0.01
    value = pixels(x) / 6
    assert torch.all((value[0][inside] - col[inside].float()).abs() <= tol)
    assert torch.all((value[1][inside] - row[inside].float()).abs() <= tol)


@settings(max_examples=30, deadline=None)
@given(p=params, jitter=st.sampled_from([0.0, 0.3]))
def test_deterministic_per_generator_seed(p, jitter):
    rng = np.random.default_rng(p["seed"])
    img = rng.integers(0, 256, (p["h"], p["w"], 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (p["h"], p["w"]), dtype=np.uint8)
    weights = rng.uniform(0, 1, (p["h"], p["w"])).astype(np.float32)
    t = make(p, color_jitter=jitter)
    a = t(img, mask, gen(p["seed"]), weights=weights)
    b = t(img, mask, gen(p["seed"]), weights=weights)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_rotation_by_90_degrees_is_rot90():
    img = torch.rand(3, 6, 6)
    mask = torch.randint(0, 5, (6, 6))
    weights = torch.rand(6, 6)
    grid = warp_grid(6, 6, angle=90.0)[None]
    for mode in ("bilinear", "nearest"):
        x, y, w = warp(img, mask, grid, MEAN, 255, weights, mode)
        # positive angles turn the content clockwise on screen (y down)
        torch.testing.assert_close(x, torch.rot90(img, -1, (1, 2)), atol=1e-5, rtol=0)
        assert torch.equal(y, torch.rot90(mask, -1))
        torch.testing.assert_close(w, torch.rot90(weights, -1), atol=1e-5, rtol=0)


def test_identity_grid_changes_nothing_and_outside_is_fill_ignore_zero():
    img = torch.rand(3, 5, 7)
    mask = torch.randint(0, 3, (5, 7))
    x, y, w = warp(img, mask, warp_grid(5, 7)[None], MEAN, 255, torch.ones(5, 7))
    torch.testing.assert_close(x, img, atol=1e-5, rtol=0)
    assert torch.equal(y, mask) and torch.allclose(w, torch.ones(5, 7))
    shifted = warp_grid(5, 7, coarse=torch.full((2, 3, 3), 100.0))[None]  # all from outside
    x, y, w = warp(img, mask, shifted, MEAN, 255, torch.ones(5, 7))
    assert torch.all(y == 255) and torch.all(w == 0)
    torch.testing.assert_close(x, torch.tensor(MEAN)[:, None, None].expand(3, 5, 7))


def test_elastic_field_is_the_coarse_gaussian_grid_interpolated():
    sigma, h, w = 10.0, 33, 41
    op = RandomWarp(elastic=sigma)
    grid = op.sampling_grid(h, w, gen(3))
    coarse = torch.randn((2, 3, 3), generator=gen(3)) * sigma  # the same draw
    ident = warp_grid(h, w)
    d = (grid - ident) * torch.tensor([w / 2, h / 2])  # back to pixels
    for (i, j), (ci, cj) in zip(
        [(0, 0), (0, w - 1), (h - 1, 0), (h // 2, w // 2), (h - 1, w - 1)],
        [(0, 0), (0, 2), (2, 0), (1, 1), (2, 2)],
        strict=True,
    ):
        torch.testing.assert_close(d[i, j], coarse[:, ci, cj], atol=1e-4, rtol=0)
    # smooth: neighbouring displacements differ far less than sigma
    assert float((d[1:] - d[:-1]).abs().max()) < sigma / 2
    # a Gaussian of standard deviation sigma over many draws
    nodes = torch.stack([RandomWarp(elastic=sigma).sampling_grid(3, 3, gen(s)) for s in range(300)])
    spread = ((nodes - warp_grid(3, 3)) * 1.5).std()
    assert 0.85 * sigma < float(spread) < 1.15 * sigma


def test_rotation_angle_stays_within_the_range():
    op = RandomWarp(rotate=10.0)
    for s in range(20):
        g = op.sampling_grid(1, 2, gen(s))  # two pixels left/right of the centre
        dx, dy = (g[0, 1] - g[0, 0]) * torch.tensor([1.0, 0.5])
        angle = float(torch.rad2deg(torch.atan2(-dy, dx)))
        assert abs(angle) <= 10.0 + 1e-4


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_touches_the_image_only(channels):
    img = torch.rand(channels, 8, 9)
    mask = torch.randint(0, 3, (8, 9))
    weights = torch.rand(8, 9)
    out, m, w = ColorJitter(0.5)(img, mask, gen(1), weights)
    assert m is mask and w is weights
    assert out.shape == img.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.allclose(out, img)
    same, _, _ = ColorJitter(0.0)(img, mask, gen(1))
    torch.testing.assert_close(same, img)
    if channels == 3:  # grey stays grey: saturation and contrast only scale around grey
        grey = img[:1].expand(3, -1, -1)
        g, _, _ = ColorJitter(0.5)(grey, mask, gen(2))
        torch.testing.assert_close(g[0], g[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(g[1], g[2], atol=1e-6, rtol=0)


def test_gray_images_get_jitter_rotation_and_elastic():
    img = np.random.default_rng(0).integers(0, 256, (30, 30, 1), dtype=np.uint8)
    mask = np.zeros((30, 30), np.uint8)
    mean, std = default_normalization(1)
    t = TrainTransform(24, mean, std, rotate=10, elastic=3, color_jitter=0.3)
    x, y = t(img, mask, gen(0))
    assert x.shape == (1, 24, 24) and y.shape == (24, 24)


def test_off_options_leave_the_op_list_unchanged():
    base = TrainTransform(16, MEAN, STD)
    same = TrainTransform(16, MEAN, STD, rotate=0, elastic=0, color_jitter=0)
    assert [type(o) for o in base.ops] == [type(o) for o in same.ops]
    full = TrainTransform(16, MEAN, STD, rotate=5, elastic=2, color_jitter=0.1)
    names = [type(o).__name__ for o in full.ops]
    assert names == ["RandomScale", "ColorJitter", "RandomWarp", "RandomHFlip"]  # warp crops


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"rotate": -1}, "--rotate"),
        ({"rotate": 200}, "--rotate"),
        ({"elastic": float("nan")}, "--elastic"),
        ({"color_jitter": 1.5}, "--color-jitter"),
        ({"interpolation": "cubic"}, "interpolation"),
    ],
)
def test_bad_augmentation_options(kw, message):
    with pytest.raises(ConfigError, match=message):
        TrainTransform(16, MEAN, STD, **kw)


def test_weight_map_shape_must_match():
    with pytest.raises(ConfigError, match="weight map"):
        TrainTransform(8, MEAN, STD)(
            np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8), gen(0), np.ones((9, 9))
        )


def keep(image, mask, generator, weights=None):
    return image, mask, weights


@pytest.mark.parametrize("seed", range(8))
def test_fused_warp_and_crop_equals_warp_then_crop(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 70, 2))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 6, (h, w), dtype=np.uint8)
    weights = rng.uniform(0, 2, (h, w)).astype(np.float32)
    crop = (int(rng.integers(16, 80)), int(rng.integers(16, 80)))  # sometimes larger: padding
    kw = {"rotate": 20.0, "elastic": 6.0, "scale": (0.8, 1.2)}
    fused = TrainTransform(crop, MEAN, STD, **kw)
    apart = TrainTransform(crop, MEAN, STD, extra_ops=[keep], **kw)
    assert [type(o).__name__ for o in fused.ops] == ["RandomScale", "RandomWarp", "RandomHFlip"]
    assert "RandomCrop" in [type(o).__name__ for o in apart.ops]
    a = fused(img, mask, gen(seed), weights=weights)
    b = apart(img, mask, gen(seed), weights=weights)
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[2], b[2], atol=1e-5, rtol=0)

"""ilastik's filter bank as a fixed layer: scipy.ndimage's values, exact strips, both paths."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from pixelwise.errors import ConfigError
from pixelwise.models import build, filterbank
from pixelwise.models.filterbank import PER_SCALE, SCALES, FilterBank


def _eig2(a, b, c):
    mean, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
    return mean + root, mean - root


def scipy_features(img: np.ndarray) -> np.ndarray:
    """The bank with scipy.ndimage (borders 'nearest' = replicated), scale-normalised."""
    out = []
    for s in SCALES:

        def g(order, sigma=s, image=img):
            return ndimage.gaussian_filter(image, sigma, order=order, mode="nearest")

        smooth = g((0, 0))
        gx, gy = g((0, 1)) * s, g((1, 0)) * s
        gxx, gxy, gyy = g((0, 2)) * s * s, g((1, 1)) * s * s, g((2, 0)) * s * s
        outer = [g((0, 0), 0.5 * s, v) for v in (gx * gx, gx * gy, gy * gy)]
        dog = smooth - g((0, 0), 0.66 * s)
        out += [smooth, gxx + gyy, np.hypot(gx, gy), dog, *_eig2(*outer), *_eig2(gxx, gxy, gyy)]
    return np.stack(out)


def smooth_noise(shape, seed=0):
    rng = np.random.default_rng(seed)
    return 3 * ndimage.gaussian_filter(rng.normal(size=shape), 1.5)


@pytest.mark.parametrize("traced", [False, True])  # banded products, or the traced convs
@pytest.mark.parametrize("blocks", [(32, 64), (128, 128)])  # ragged last windows, or one
def test_features_are_scipys(traced, blocks, monkeypatch):
    monkeypatch.setattr(filterbank.torch.jit, "is_tracing", lambda: traced)
    monkeypatch.setattr(filterbank, "BLOCK_SHORT", blocks[0])
    monkeypatch.setattr(filterbank, "BLOCK_LONG", blocks[1])
    img = smooth_noise((70, 90))
    got = FilterBank(1)(torch.from_numpy(img).float()[None, None])[0].numpy()
    want = scipy_features(img)
    assert got.shape == (PER_SCALE * len(SCALES), 70, 90)
    scale = np.abs(want).max(axis=(1, 2), keepdims=True)
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(scale.max()))
    assert (scale > 1e-3).all()  # every feature is a real comparison, not zeros against zeros


def test_channels_are_banked_separately_and_strips_are_exact():
    x = torch.from_numpy(np.stack([smooth_noise((150, 60), s) for s in (1, 2)])).float()[None]
    bank = FilterBank(2)
    full = bank(x)
    assert full.shape == (1, 2 * 48, 150, 60)
    alone = bank.__class__(1)(x[:, 1:2])
    torch.testing.assert_close(full[:, 48:], alone, rtol=0, atol=1e-5)
    assert bank.halo == 60  # scale 10: a 40-px derivative, then a 20-px outer smoothing
    torch.testing.assert_close(bank.in_strips(x, rows=32), full, rtol=0, atol=1e-5)
    tall = torch.from_numpy(smooth_noise((2 * filterbank.STRIP_ROWS + 30, 24))).float()[None, None]
    whole = FilterBank(1)._features(tall)  # forward goes strip by strip above 2 strips' rows
    torch.testing.assert_close(FilterBank(1)(tall), whole, rtol=0, atol=1e-5)


def test_flips_and_quarter_turns_commute_with_the_bank():
    """The label trainer flips cached feature crops instead of recomputing them."""
    x = torch.from_numpy(smooth_noise((64, 64))).float()[None, None]
    bank = FilterBank(1)
    f = bank(x)
    torch.testing.assert_close(bank(x.flip(-1)), f.flip(-1), rtol=0, atol=1e-4)
    torch.testing.assert_close(bank(torch.rot90(x, 1, (2, 3))), torch.rot90(f, 1, (2, 3)),
                               rtol=0, atol=1e-4)  # fmt: skip


def test_unet_same_with_a_filter_bank_feeds_it_beside_the_image():
    torch.manual_seed(0)
    model = build("unet_same", 3, in_channels=1, depth=2, base_width=4, filter_bank=True)
    assert model.encoder[0][0].in_channels == 1 + 48
    assert not any("features" in k for k in model.state_dict())  # fixed: not in checkpoints
    x = torch.randn(2, 1, 40, 52)
    with torch.no_grad():
        out = model(x)
        again = model(x, features=model.features(x))
    assert out.shape == (2, 3, 40, 52)
    torch.testing.assert_close(out, again)
    plain = build("unet_same", 3, in_channels=1, depth=2, base_width=4)
    assert plain.features is None and plain.encoder[0][0].in_channels == 1


def test_bank_width_mixes_the_features_per_pixel_first():
    """``bank_width``: a 1x1 conv (+ BatchNorm, ReLU) turns the 48 x C features into that many
    channels before the first 3x3 conv; precomputed features give the same logits."""
    torch.manual_seed(0)
    x = 3 + 2 * torch.randn(2, 1, 32, 32)
    mixed = build("unet_same", 2, in_channels=1, depth=2, base_width=4, filter_bank=True,
                  bank_width=6).eval()  # fmt: skip
    assert mixed.feature_mix[0].kernel_size == (1, 1) and mixed.feature_mix[0].out_channels == 6
    assert mixed.feature_mix[0].in_channels == 48 and mixed.encoder[0][0].in_channels == 1 + 6
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), mixed(x, features=mixed.features(x)))
    assert mixed(x).shape == (2, 2, 32, 32)
    with pytest.raises(ConfigError, match="bank_width must be an integer >= 0"):
        build("unet_same", 2, filter_bank=True, bank_width=-1)
    with pytest.raises(ConfigError, match="set filter_bank=true too"):
        build("unet_same", 2, bank_width=8)

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.models.layers import (
    BilinearUpsample,
    bilinear_kernel,
    center_crop,
    crop,
    init_he,
    scaled,
)


def upsample_filt(size: int) -> torch.Tensor:
    """FCN's surgery.upsample_filt, transcribed."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    f1 = 1 - (og - center).abs() / factor
    return f1[:, None] * f1[None, :]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 16, 32, 64])
def test_bilinear_kernel_matches_fcn_surgery(k):
    w = bilinear_kernel(3, 3, k)
    assert w.shape == (3, 3, k, k)
    for i in range(3):
        for j in range(3):
            expected = upsample_filt(k).float() if i == j else torch.zeros(k, k)
            torch.testing.assert_close(w[i, j], expected, rtol=0, atol=0)


def test_bilinear_kernel_small_values_and_rectangular_channels():
    w = bilinear_kernel(2, 3, 4)
    row = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.equal(w[0, 0], row[:, None] * row[None, :])
    assert w[:, 2].abs().sum() == 0  # only min(in, out) channels are connected


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_bilinear_upsample_equals_interpolate_in_the_interior(factor):
    torch.manual_seed(factor)
    h, w = 6, 5
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    up = BilinearUpsample(3, factor, padding=factor // 2).double()
    y = up(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (2, 3, h * factor, w * factor)
    # Output pixel o samples the input at u = (o + 0.5) / f - 0.5. Where u < 0 or u > size - 1,
    # interpolate clamps to the edge pixel while the transposed conv sees zero padding, so the
    # two differ in a band of f // 2 pixels along every border: compare the interior only.
    b = factor // 2
    interior = (..., slice(b, h * factor - b), slice(b, w * factor - b))
    torch.testing.assert_close(y[interior], ref[interior], rtol=0, atol=1e-6)
    assert not torch.allclose(y[..., 0, :], ref[..., 0, :])  # the border really differs


def test_frozen_upsampling_gets_no_gradient():
    frozen = BilinearUpsample(2, 4, learnable=False)
    learnable = BilinearUpsample(2, 4)
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    (frozen(x).sum() + learnable(x).sum()).backward()
    assert frozen.weight.grad is None and not frozen.weight.requires_grad
    assert learnable.weight.grad is not None
    assert x.grad is not None  # gradients still flow through the frozen layer
    assert torch.equal(frozen.weight, bilinear_kernel(2, 2, 8))


def test_bilinear_upsample_shape_and_reset():
    up = BilinearUpsample(4, 2, bias=True)
    assert (up.kernel_size, up.stride) == ((4, 4), (2, 2))
    assert up(torch.zeros(1, 4, 5, 7)).shape == (1, 4, 12, 16)  # (n - 1) * 2 + 4
    with torch.no_grad():
        up.weight.add_(1.0)
        up.bias.add_(1.0)
    up.reset_parameters()
    assert torch.equal(up.weight, bilinear_kernel(4, 4, 4)) and up.bias.abs().sum() == 0


def test_init_he_leaves_bilinear_layers_alone():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), BilinearUpsample(8, 2), nn.BatchNorm2d(8))
    init_he(net)
    assert torch.equal(net[1].weight, bilinear_kernel(8, 8, 4))
    assert net[0].bias.abs().sum() == 0 and torch.equal(net[2].weight, torch.ones(8))


def test_init_he_std_counts_real_connectivity():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 256, 3)
    up = nn.ConvTranspose2d(256, 128, 2, stride=2)  # each output pixel sees 256 inputs
    init_he(nn.Sequential(conv, up), mode="fan_in")
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.02)
    assert up.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.02)


def test_crop_and_center_crop():
    x = torch.arange(5 * 7).reshape(1, 1, 5, 7)
    assert torch.equal(crop(x, 1, 2, 3, 4), x[..., 1:4, 2:6])
    assert torch.equal(center_crop(x, 3, 3), x[..., 1:4, 2:5])
    assert torch.equal(center_crop(x, 5, 7), x)
    with pytest.raises(ValueError, match="does not fit"):
        crop(x, 3, 0, 3, 7)  # plain slicing would silently return 2 rows


def test_scaled():
    assert [scaled(64, w) for w in (1.0, 0.25, 0.01)] == [64, 16, 1]
    assert scaled(4096, 1 / 16) == 256

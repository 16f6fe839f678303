"""Every registry model keeps the SegmentationModel contract that prediction, tiling, engines and
export rely on: attributes, output and valid input sizes, border, tile grid, a working backward.

New models are picked up from ``pixelwise.models.available()``; give them small arguments in
``SMALL`` if the defaults are slow.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelwise import models
from pixelwise.errors import ConfigError
from pixelwise.models import SegmentationModel, available, build

#: arguments that keep each model small and fast (width 0.125 unless listed)
SMALL: dict[str, dict] = {
    "unet": {"depth": 2, "width": 0.125},
    "unet_same": {"depth": 2, "width": 0.125},
    "fcn8s": {"width": 0.0625},
    "fcn16s": {"width": 0.0625},
    "fcn32s": {"width": 0.0625},
}
WANTED = [(13, 29), (40, 33)]  # logits sizes asked of valid_input_size
K = 4


def _model(name: str, in_channels: int) -> SegmentationModel:
    torch.manual_seed(0)
    model = build(name, K, in_channels=in_channels, **SMALL.get(name, {"width": 0.125}))
    with torch.no_grad():  # FCN's zero-initialised score layers would stop every gradient
        for p in model.parameters():
            if p.ndim == 4 and not p.any():
                p.normal_(0, 0.01)
    return model


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", available())
def test_every_registry_model_keeps_the_contract(name, in_channels):
    model = _model(name, in_channels)
    assert isinstance(model, SegmentationModel)
    assert (model.num_classes, model.in_channels) == (K, in_channels)
    border, grid = model.border, model.tile_grid
    assert isinstance(border, int) and border >= 0
    assert isinstance(grid, int) and grid >= 1
    for pads in (model.pad, model.pad_after):
        assert len(pads) == 2 and all(isinstance(p, int) and p >= 0 for p in pads)
    with pytest.raises(ConfigError):
        model.output_size(0, 8)  # an empty input is refused in one line, not by a crash
    model.eval()
    for h, w in WANTED:
        size = model.valid_input_size(h, w)
        assert size[0] >= h + 2 * border and size[1] >= w + 2 * border
        out = model.output_size(*size)
        assert out == (size[0] - 2 * border, size[1] - 2 * border)  # border per side, exactly
        assert out[0] >= h and out[1] >= w
        assert model.valid_input_size(*out) == size  # the smallest: a fixed point
        x = torch.randn(2, in_channels, *size, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            y = model(x)
        assert y.shape == (2, K, *out) and y.dtype == torch.float32
        assert torch.isfinite(y).all() and float(y.std()) > 0
        if border > 0:  # valid_input_size steps by tile_grid: the overlap-tile period
            assert model.valid_input_size(out[0] + grid, out[1])[0] == size[0] + grid


@pytest.mark.parametrize("name", available())
def test_every_registry_model_trains(name):
    """One backward pass: every trainable parameter gets a finite gradient, and the first and
    last layers get a non-zero one (the whole net is connected to the loss)."""
    model = _model(name, 3).train()
    size = model.valid_input_size(*WANTED[0])
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    logits = model(x)
    target = torch.randint(0, K, (2, *logits.shape[-2:]), generator=torch.Generator())
    nn.functional.cross_entropy(logits, target).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in params), [n for n, p in params if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    for n, p in (params[0], params[-1]):
        assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches {n}"


class _Shrinking(SegmentationModel):
    """The base class's defaults: a model that loses ``border`` pixels per side, any size."""

    def __init__(self) -> None:
        super().__init__(num_classes=2, in_channels=1, border=3)
        self.conv = nn.Conv2d(1, 2, 7)

    def forward(self, x):
        return self.conv(x)


def test_base_class_defaults():
    net = _Shrinking()
    assert (net.tile_grid, net.pad, net.pad_after) == (32, (0, 0), (0, 0))
    assert net.output_size(20, 9) == (14, 3) == tuple(net(torch.zeros(1, 1, 20, 9)).shape[-2:])
    with pytest.raises(ConfigError, match="smallest is 7x7"):
        net.output_size(6, 20)
    assert net.valid_input_size(0, 5) == (7, 11)
    assert net.output_size(*net.valid_input_size(14, 3)) == (14, 3)


def test_build_refuses_a_builder_that_breaks_the_contract():
    models.register("_not_a_segmentation_model")(lambda num_classes: nn.Conv2d(3, num_classes, 1))
    try:
        with pytest.raises(TypeError, match="SegmentationModel"):
            build("_not_a_segmentation_model", 2)
    finally:
        del models._REGISTRY["_not_a_segmentation_model"]

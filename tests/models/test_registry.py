import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models import available, build, register, transfer_weights

NAMES = [
    "convolutionalized",
    "deconvnet",
    "fcn16s",
    "fcn32s",
    "fcn8s",
    "segnet",
    "segnet_basic",
    "unet",
    "unet_same",
]


def test_available_is_sorted_and_complete():
    assert available() == NAMES


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        build("fcn4s", 3)
    assert str(err.value) == (
        "unknown model 'fcn4s' (did you mean 'fcn8s' or 'fcn32s' or 'fcn16s'?); "
        f"choose one of: {', '.join(NAMES)}"
    )


def test_unexpected_argument_names_model_and_argument():
    with pytest.raises(ConfigError, match=r"model 'segnet_basic' has no argument 'depth'"):
        build("segnet_basic", 3, depth=3)
    with pytest.raises(ConfigError, match=r"model 'fcn8s' has no argument 'num_class'"):
        build("fcn8s", 3, num_class=4)


@pytest.mark.parametrize(("name", "kwargs", "argument"), [
    ("fcn8s", {"width": 0}, "width"),
    ("fcn32s", {"width": float("nan")}, "width"),
    ("fcn16s", {"dropout": 1.0}, "dropout"),
    ("fcn16s", {"batch_norm": "yes"}, "batch_norm"),
    ("unet", {"depth": 0}, "depth"),
    ("unet_same", {"base_width": 2.5}, "base_width"),
    ("segnet", {"in_channels": 0}, "in_channels"),
    ("deconvnet", {"num_classes": True}, "num_classes"),
])  # fmt: skip
def test_bad_values_name_model_and_argument(name, kwargs, argument):
    num_classes = kwargs.pop("num_classes", 3)
    with pytest.raises(ConfigError, match=rf"model '{name}': {argument} must be"):
        build(name, num_classes, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_every_model_contract(name):
    torch.manual_seed(0)
    net = build(name, 4, in_channels=1, width=1 / 32).eval()
    assert isinstance(net, nn.Module)
    assert (net.num_classes, net.in_channels) == (4, 1)
    assert net.border == (92 if name == "unet" else 0)
    h, w = (204, 220) if name == "unet" else (45, 33)  # unet: overlap-tile sizes
    with torch.no_grad():
        y = net(torch.randn(2, 1, h, w))
    assert y.shape == (2, 4, *net.output_size(h, w))
    assert net.output_size(h, w) == ((h - 184, w - 184) if name == "unet" else (h, w))


@pytest.mark.parametrize("name", NAMES)
def test_width_scales_every_hidden_layer(name):
    with torch.device("meta"):
        full = build(name, 5)
        quarter = build(name, 5, width=0.25)
    shapes = [p.shape for p in full.parameters()]
    small = [p.shape for p in quarter.parameters()]
    assert len(shapes) == len(small)  # same topology
    ratio = sum(p.numel() for p in quarter.parameters()) / sum(p.numel() for p in full.parameters())
    # about width**2; the tiny LeNet of "convolutionalized" has a larger share of layers whose
    # size depends on the number of classes only (its x4 upsampling), so its ratio is higher
    high = 0.1 if name == "convolutionalized" else 0.08
    assert 0.05 < ratio < high


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register("unet")(lambda num_classes: nn.Identity())


def test_transfer_weights_matches_names_and_shapes():
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    dst = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))
    src[1].running_var.fill_(3.0)
    copied = transfer_weights(dst, src.state_dict())
    assert copied == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                      "1.running_var", "1.num_batches_tracked"]  # fmt: skip
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(
        dst[1].running_var, src[1].running_var
    )
    assert transfer_weights(dst, {"nothing": torch.zeros(1)}) == []

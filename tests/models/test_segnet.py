import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models import build
from pixelwise.models.vgg import load_vgg16_weights

from .test_fcn import VGG16_BN_CONVS, torchvision_vgg16_state_dict

NETS = ["segnet", "segnet_basic", "deconvnet"]


def n_params(name, num_classes, **kwargs):
    with torch.device("meta"):
        net = build(name, num_classes, **kwargs)
    return sum(p.numel() for p in net.parameters())


def test_unpool_puts_values_back_at_the_argmax():
    x = torch.tensor(
        [[1.0, 5.0, 2.0, 0.0, 9.0],
         [3.0, 4.0, 8.0, 1.0, 9.5],
         [0.0, 0.0, 7.0, 6.0, 1.0],
         [2.0, 1.0, 6.5, 0.5, 3.0],
         [4.0, 4.0, 4.0, 4.0, 4.0]]
    ).reshape(1, 1, 5, 5)  # fmt: skip
    pooled, idx = nn.MaxPool2d(2, 2, return_indices=True)(x)
    assert pooled.flatten().tolist() == [5.0, 8.0, 2.0, 7.0]
    out = nn.MaxUnpool2d(2, 2)(pooled, idx, output_size=x.shape[-2:])
    expected = torch.zeros(5, 5)
    expected[0, 1], expected[1, 2], expected[3, 0], expected[2, 2] = 5.0, 8.0, 2.0, 7.0
    assert out.shape == (1, 1, 5, 5) and torch.equal(out[0, 0], expected)


@pytest.mark.parametrize("name", NETS)
def test_output_is_input_size(name):
    net = build(name, 3, width=1 / 32).eval()
    assert (net.num_classes, net.in_channels, net.border) == (3, 3, 0)
    with torch.no_grad():
        for h, w in [(97, 131), (33, 45), (32, 32), (63, 65)]:
            assert net(torch.randn(2, 3, h, w)).shape == (2, 3, h, w)
            assert net.output_size(h, w) == (h, w)


@pytest.mark.parametrize(("name", "smallest"), [("segnet", 32), ("segnet_basic", 16),
                                                ("deconvnet", 32)])  # fmt: skip
def test_too_small_input(name, smallest):
    net = build(name, 2, width=1 / 32)
    net.output_size(smallest, smallest)
    with pytest.raises(ConfigError, match=f"smallest is {smallest}x{smallest}"):
        net.output_size(smallest - 1, 100)


def test_decoder_unpools_to_the_encoder_argmax():
    # Hook the unpool of a whole SegNet-Basic forward: each call restores the encoder's pre-pool
    # size (odd ones included) and fills exactly the positions its indices name.
    torch.manual_seed(0)
    net = build("segnet_basic", 2, width=1 / 8).eval()
    seen = []
    net.unpool.register_forward_hook(lambda m, i, o: seen.append((i[1], o)))
    with torch.no_grad():
        net(torch.randn(1, 3, 37, 50))
    sizes = [tuple(o.shape[-2:]) for _, o in seen]
    assert sizes == [(4, 6), (9, 12), (18, 25), (37, 50)]
    for idx, out in seen:
        flat = out.flatten(2)
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, idx.flatten(2), True)
        assert flat[~mask].abs().sum() == 0  # only the argmax positions are filled


def test_parameter_counts():
    assert n_params("segnet", 11) == 29_449_355  # paper: 29.5M
    assert n_params("segnet_basic", 11) == 1_416_587
    assert n_params("deconvnet", 21) == 251_805_653  # paper: about 252M


def test_segnet_structure():
    net = build("segnet", 11, width=1 / 16)
    pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
    assert all(p.return_indices and not p.ceil_mode for p in pools)
    convs = [[c.out_channels for c in s if isinstance(c, nn.Conv2d)] for s in net.decoder]
    assert convs == [[32, 32, 32], [32, 32, 16], [16, 16, 8], [8, 4], [4]]
    assert net.classifier.kernel_size == (3, 3) and net.classifier.out_channels == 11
    basic = build("segnet_basic", 11)
    assert all(s[0].kernel_size == (7, 7) and s[0].out_channels == 64 for s in basic.encoder)
    assert not any(isinstance(m, nn.ReLU) for m in basic.decoder.modules())
    assert basic.classifier.kernel_size == (1, 1)


def test_deconvnet_structure():
    with torch.device("meta"):
        net = build("deconvnet", 21)
    assert net.fc6.kernel_size == (7, 7) and net.fc6.padding == (3, 3)
    assert isinstance(net.deconv_fc6, nn.ConvTranspose2d) and net.deconv_fc6.out_channels == 512
    layers = [m for s in net.decoder for m in s if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in layers] == [512] * 5 + [256, 256, 256, 128, 128, 64, 64, 64]
    assert net.score.kernel_size == (1, 1)


def test_vgg16_bn_weights_exact_shapes(tmp_path):
    # A full-size vgg16_bn features state dict (14.7M values) with torchvision's exact keys.
    full = torchvision_vgg16_state_dict(batch_norm=True)
    state = {k: v for k, v in full.items() if k.startswith("features.")}
    torch.save(state, tmp_path / "vgg16_bn.pth")
    net = build("segnet", 2, encoder_weights=str(tmp_path / "vgg16_bn.pth"))
    for idx in VGG16_BN_CONVS:
        assert torch.equal(net.features[idx].weight, state[f"features.{idx}.weight"])
        assert torch.equal(
            net.features[idx + 1].running_mean, state[f"features.{idx + 1}.running_mean"]
        )
    assert net.features[idx + 1].num_batches_tracked.item() == 0


def test_deconvnet_loads_fc6_fc7_from_vgg16_bn():
    with torch.device("meta"):
        net = build("deconvnet", 21)
    names = load_vgg16_weights(net, torchvision_vgg16_state_dict(batch_norm=True, device="meta"))
    assert len(names) == 13 * 6 + 4 and "fc6.weight" in names and "fc7.weight" in names
    small = build("deconvnet", 3, width=1 / 16)
    state = torchvision_vgg16_state_dict(batch_norm=True, width=1 / 16)
    load_vgg16_weights(small, state)
    assert torch.equal(small.fc6.weight.flatten(1), state["classifier.0.weight"])


def test_vgg16_weights_into_batch_norm_encoder_rejected():
    with torch.device("meta"):
        net = build("segnet", 2)
    with pytest.raises(ConfigError, match="has no counterpart"):
        load_vgg16_weights(net, torchvision_vgg16_state_dict(device="meta"))

import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models import build
from pixelwise.models.unet import UNet

TINY = 1 / 32  # channels 2, 4, 8, 16, 32


def n_params(name, **kwargs):
    with torch.device("meta"):
        net = build(name, **kwargs)
    return sum(p.numel() for p in net.parameters())


def test_paper_tile_572_gives_388():
    net = build("unet", 2, width=1 / 64).eval()
    assert net.border == 92 and net.output_size(572, 572) == (388, 388)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 572, 572)).shape == (1, 2, 388, 388)


def test_parameter_counts():
    # The paper's net: 1-channel EM images, 2 classes. (The often quoted 31,031,685 is the
    # zhixuhao Keras U-Net: 1 input channel plus an extra 3x3 conv to 2 channels before a 1x1
    # sigmoid with 1 output; 31,030,658 - 130 + 1,154 + 3 = 31,031,685.)
    assert n_params("unet", num_classes=2, in_channels=1) == 31_030_658
    assert n_params("unet", num_classes=2) == 31_031_810
    assert n_params("unet_same", num_classes=2) == 31_043_586  # + BatchNorm
    assert n_params("unet", num_classes=2, depth=3, base_width=32, width=0.5) < 500_000


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_border_and_valid_input_size(depth):
    net = UNet(2, depth=depth, width=TINY)
    assert net.border == 6 * 2**depth - 4
    for out in (1, 5, 100, 388):
        h, w = net.valid_input_size(out, out + 3)
        assert net.output_size(h, w)[0] >= out and net.output_size(h, w)[1] >= out + 3
        for n in (h, w):  # every pooling sees an even size; the border is symmetric
            size = n
            for _ in range(depth):
                size -= 4
                assert size % 2 == 0
                size //= 2
            assert net.output_size(n, n) == (n - 2 * net.border,) * 2
            # the next smaller size of that form does not cover the request
            smaller = n - 2**depth
            assert smaller < 1 or net._extent(smaller) < (out if n == h else out + 3)


def test_odd_sizes_match_output_size():
    net = build("unet", 3, width=TINY).eval()
    with torch.no_grad():
        for h, w in [(188, 188), (189, 190), (221, 237), (255, 197)]:
            assert net(torch.randn(1, 3, h, w)).shape == (1, 3, *net.output_size(h, w))
    assert net.output_size(221, 237) == (36, 52)


def test_skips_stay_aligned_for_any_input_size():
    # Output pixel (i, j) of a valid U-Net only sees input pixels below and right of (i, j)
    # within a fixed window, and floor pooling drops rows at the bottom. So cutting rows off the
    # bottom of the input must leave the top rows of the output unchanged; this holds only if
    # each skip is cropped at its fixed offset (a centre crop would shift when rows are dropped).
    torch.manual_seed(0)
    net = build("unet", 2, depth=3, width=1 / 16).double().eval()
    x = torch.randn(1, 3, 131, 121, dtype=torch.float64)
    with torch.no_grad():
        full = net(x)
        for cut in (1, 2, 3, 7, 10, 17):
            part = net(x[:, :, : 131 - cut, : 121 - cut])
            h, w = part.shape[-2:]
            torch.testing.assert_close(part, full[..., :h, :w])


def test_too_small_input_is_a_config_error():
    net = build("unet", 2, width=TINY)
    with pytest.raises(ConfigError, match="smallest is 188x188"):
        net.output_size(187, 400)
    with pytest.raises(ConfigError):
        net(torch.randn(1, 3, 100, 100))
    same = build("unet_same", 2, width=TINY)
    with pytest.raises(ConfigError, match="smallest is 16x16"):
        same.output_size(15, 40)


def test_unet_same_returns_input_size():
    net = build("unet_same", 4, width=TINY, in_channels=1).eval()
    assert net.border == 0 and net.valid_input_size(33, 45) == (48, 48)
    with torch.no_grad():
        for h, w in [(97, 131), (33, 45), (16, 16), (17, 31), (63, 64)]:
            assert net(torch.randn(2, 1, h, w)).shape == (2, 4, h, w)
            assert net.output_size(h, w) == (h, w)


def test_stem_width_narrows_the_full_resolution_level_only():
    net = build("unet_same", 3, base_width=16, depth=3, stem_width=4).eval()
    assert [m.out_channels for m in net.up] == [64, 32, 4]  # deepest first
    assert net.encoder[0][0].out_channels == 4 and net.encoder[1][0].in_channels == 4
    assert net.head.in_channels == 4 and net.decoder[-1][0].in_channels == 8  # [skip | up]
    with torch.no_grad():
        assert net(torch.randn(1, 3, 40, 48)).shape == (1, 3, 40, 48)
    plain = build("unet_same", 3, base_width=16, depth=3)
    assert n_params("unet_same", num_classes=3, base_width=16, depth=3, stem_width=4) < sum(
        p.numel() for p in plain.parameters()
    )
    with pytest.raises(ConfigError, match="stem_width"):
        build("unet_same", 3, stem_width=0)


def test_structure_options_and_init():
    net = build("unet", 2, width=1.0, base_width=8, depth=3, dropout=0.5)
    assert [(m.in_channels, m.out_channels) for m in net.up] == [(64, 32), (32, 16), (16, 8)]
    assert [m.kernel_size for m in net.up] == [(2, 2)] * 3
    assert all(m.padding == (0, 0) for m in net.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(net.dropout, nn.Dropout) and net.dropout.p == 0.5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in build("unet", 2, batch_norm=True).modules())
    same = build("unet_same", 2, base_width=8, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in same.modules())
    # He init with the paper's N = incoming connections: std sqrt(2 / (9 * in_channels))
    torch.manual_seed(0)
    wide = build("unet", 2, base_width=64, depth=2)
    conv = wide.encoder[1][2]  # 128 -> 128
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 128)) ** 0.5, rel=0.05)


def test_unet_trains_a_step():
    torch.manual_seed(0)
    net = build("unet_same", 2, width=TINY, depth=2, dropout=0.2)
    x, y = torch.randn(2, 3, 20, 18), torch.randint(0, 2, (2, 20, 18))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    # A train-mode BatchNorm subtracts the batch mean, so no gradient reaches the bias of the
    # conv that feeds it; every other parameter (weights, BatchNorm affine, up-conv and head
    # biases) gets a non-zero one.
    before_bn = set()
    for seq in net.modules():
        layers = list(seq.children()) if isinstance(seq, nn.Sequential) else []
        for conv, bn in zip(layers, layers[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                before_bn.add(id(conv.bias))
    assert len(before_bn) == 2 * (2 + 1 + 2)  # two convs per encoder, bottom, decoder block
    for name, p in net.named_parameters():
        if id(p) in before_bn:
            assert float(p.grad.abs().max()) < 1e-6, name
        else:
            assert float(p.grad.abs().max()) > 1e-6, name


def test_unet_gradient_matches_finite_differences():
    """The backward pass is the derivative of the loss: along a random direction of the first
    conv's weight (where the gradient has to cross every skip and pooling), in float64."""
    torch.manual_seed(0)
    net = build("unet", 2, depth=2, base_width=4).double()
    x = torch.randn(2, 3, 52, 60, dtype=torch.float64)
    y = torch.randint(0, 2, (2, *net.output_size(52, 60)))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    weight = net.encoder[0][0].weight
    direction = torch.randn_like(weight)
    analytic = float((weight.grad * direction).sum())
    eps = 1e-8  # float64: rounding ~1e-8 relative; larger steps cross ReLU / pooling kinks
    with torch.no_grad():
        weight.add_(eps * direction)
        up = float(nn.functional.cross_entropy(net(x), y))
        weight.sub_(2 * eps * direction)
        down = float(nn.functional.cross_entropy(net(x), y))
    assert abs(analytic) > 1e-4
    assert (up - down) / (2 * eps) == pytest.approx(analytic, rel=1e-5)


def test_zero_head_starts_uniform_and_one_step_moves_it_towards_the_labelled_class():
    """unet_same(zero_head=True): logits 0 everywhere at the start (He-initialised ones are
    not), and one AdamW step on pixels of class 1 alone makes class 1 the prediction
    everywhere, where the He-initialised model keeps predicting other classes too."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.ones(2, 32, 32, dtype=torch.long)
    predicted = {}
    for zero in (True, False):
        torch.manual_seed(0)
        net = build("unet_same", 3, depth=2, base_width=4, zero_head=zero)
        with torch.no_grad():
            start = float(net(x).abs().max())
        assert start == 0.0 if zero else start > 0.1
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        predicted[zero] = net.eval()(x).argmax(1)
    assert bool((predicted[True] == 1).all())
    assert not bool((predicted[False] == 1).all())


def test_bank_dropout_drops_whole_feature_maps_in_training_only():
    """unet_same(bank_dropout=p): in training each filter-bank map is zeroed per sample (the
    first conv's input shows whole zero maps among the bank's channels, never among the
    image's), in eval the model is the one without it; it needs the bank and a p below 1."""
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = build("unet_same", 2, in_channels=1, depth=2, base_width=4, filter_bank=True,
                bank_dropout=0.5)  # fmt: skip
    plain = build("unet_same", 2, in_channels=1, depth=2, base_width=4, filter_bank=True)
    seen = []
    net.encoder[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    net.train()(x)
    maps = seen[0].flatten(2).abs().amax(-1)  # (N, 1 + 48): is each map all zero?
    assert bool((maps[:, 0] > 0).all())  # the image itself is never dropped
    dropped = (maps[:, 1:] == 0).float().mean()
    assert 0.3 < float(dropped) < 0.7
    plain.load_state_dict(net.state_dict())  # the running statistics of that step too
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), plain.eval()(x))
    for bad in ({"bank_dropout": 0.5}, {"filter_bank": True, "bank_dropout": 1.0}):
        with pytest.raises(ConfigError, match="bank_dropout"):
            build("unet_same", 2, in_channels=1, depth=2, base_width=4, **bad)

import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models import build, transfer_weights
from pixelwise.models.fcn import fcn_extent
from pixelwise.models.layers import BilinearUpsample, bilinear_kernel
from pixelwise.models.vgg import VGG16_BN_URL, VGG16_URL, load_vgg16_weights

TINY = 1 / 64  # conv channels 1, 2, 4, 8, 8; fc6/fc7 64
FCNS = ["fcn32s", "fcn16s", "fcn8s"]
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16().features
VGG16_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]  # vgg16_bn().features
VGG16_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def torchvision_vgg16_state_dict(batch_norm=False, width=1.0, device="cpu", seed=0):
    """Random tensors under torchvision's exact vgg16 / vgg16_bn keys (shapes scaled by width)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=gen)

    def c(n):
        return max(1, round(n * width))

    state = {}
    channels = 3
    for idx, out in zip(VGG16_BN_CONVS if batch_norm else VGG16_CONVS, VGG16_CHANNELS, strict=True):
        state[f"features.{idx}.weight"] = rand(c(out), channels, 3, 3)
        state[f"features.{idx}.bias"] = rand(c(out))
        if batch_norm:  # torchvision's vgg16_bn file has no num_batches_tracked
            for name in ("weight", "bias", "running_mean"):
                state[f"features.{idx + 1}.{name}"] = rand(c(out))
            state[f"features.{idx + 1}.running_var"] = rand(c(out)).abs() + 0.5
        channels = c(out)
    state["classifier.0.weight"] = rand(c(4096), c(512) * 7 * 7)
    state["classifier.0.bias"] = rand(c(4096))
    state["classifier.3.weight"] = rand(c(4096), c(4096))
    state["classifier.3.bias"] = rand(c(4096))
    state["classifier.6.weight"] = rand(1000, c(4096))
    state["classifier.6.bias"] = rand(1000)
    return state


@pytest.mark.parametrize("name", FCNS)
def test_output_is_input_size_for_odd_and_small_inputs(name):
    net = build(name, 3, width=TINY).eval()
    with torch.no_grad():
        for h, w in [(97, 131), (33, 45), (1, 1), (2, 3), (255, 64)]:
            assert net(torch.randn(2, 3, h, w)).shape == (2, 3, h, w)
            assert net.output_size(h, w) == (h, w)
    assert (net.num_classes, net.in_channels, net.border) == (3, 3, 0)


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_every_size_crops_in_bounds_arithmetic(stride):
    # fcn_extent follows one dimension through conv1_1 (pad 100), the ceil pools, fc6 and every
    # crop, raising if any crop leaves its map. H and W never interact, so 1..1024 here covers
    # every H x W up to 1024 x 1024.
    for n in range(1, 1025):
        assert fcn_extent(n, stride) == n
    with pytest.raises(ConfigError):
        fcn_extent(0, stride)


@pytest.mark.parametrize("name", FCNS)
def test_every_size_up_to_80_forward(name):
    # A real forward for every height 1..80 and every width 1..80 (as the pairs (k, 81 - k) and
    # (k, k)); since the layers treat H and W independently, this checks each dimension of every
    # size in 1..80 x 1..80 (the crops raise ValueError if out of bounds).
    net = build(name, 2, width=TINY).eval()
    with torch.no_grad():
        for k in range(1, 81):
            for h, w in ((k, 81 - k), (k, k)):
                assert net(torch.randn(1, 3, h, w)).shape[-2:] == (h, w)
        for h, w in [(81, 97), (113, 255), (301, 127), (159, 1)]:
            assert net(torch.randn(1, 3, h, w)).shape[-2:] == (h, w)


def test_module_names_and_layout():
    net = build("fcn8s", 5, width=TINY)
    names = dict(net.named_children())
    for name in ["features", "fc6", "fc7", "score_fr", "score_pool4", "score_pool3"]:
        assert name in names
    for name, factor in [("upscore2", 2), ("upscore_pool4", 2), ("upscore8", 8)]:
        layer = names[name]
        assert isinstance(layer, BilinearUpsample)
        assert layer.kernel_size == (2 * factor,) * 2 and layer.stride == (factor,) * 2
    assert net.features[0].padding == (100, 100)
    pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.ceil_mode for p in pools)
    assert net.fc6.kernel_size == (7, 7) and net.fc6.padding == (0, 0)
    assert "upscore" in dict(build("fcn32s", 5, width=TINY).named_children())
    assert "upscore16" in dict(build("fcn16s", 5, width=TINY).named_children())


def test_init_scores_zero_upsampling_bilinear_encoder_he():
    net = build("fcn8s", 4, width=1 / 16)
    for layer in (net.score_fr, net.score_pool4, net.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    assert torch.equal(net.upscore8.weight, bilinear_kernel(4, 4, 16))
    conv = net.features[28]  # conv5_3, 32 -> 32 channels; fan_out = 32 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.1)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 20, 20)).abs().sum() == 0  # zero scores -> zero


def test_frozen_upsampling_option():
    net = build("fcn8s", 3, width=TINY, learnable_upsampling=False)
    ups = [m for m in net.modules() if isinstance(m, BilinearUpsample)]
    assert len(ups) == 3 and not any(m.weight.requires_grad for m in ups)
    assert all(p.requires_grad for n, p in net.named_parameters() if "upscore" not in n)


def test_batch_norm_variant_trains():
    torch.manual_seed(0)
    net = build("fcn16s", 3, width=1 / 32, batch_norm=True, dropout=0.1)
    assert isinstance(net.features[1], nn.BatchNorm2d) and isinstance(net.bn6, nn.BatchNorm2d)
    x, y = torch.randn(2, 3, 24, 20), torch.randint(0, 3, (2, 24, 20))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---- staged training: 32s -> 16s -> 8s ----------------------------------------------------------


def trained_like(name, num_classes, seed):
    """An FCN with non-zero score layers, as after training (eval mode: no dropout)."""
    torch.manual_seed(seed)
    net = build(name, num_classes, width=1 / 32).eval()
    for layer in ("score_fr", "score_pool4"):
        if hasattr(net, layer):
            nn.init.normal_(getattr(net, layer).weight, std=1.0)
            nn.init.normal_(getattr(net, layer).bias, std=0.1)
    return net


@pytest.mark.parametrize(("old_name", "new_name", "new_layer"), [
    ("fcn32s", "fcn16s", "score_pool4"), ("fcn16s", "fcn8s", "score_pool3")])  # fmt: skip
def test_transfer_copies_shared_tensors_new_scores_stay_zero(old_name, new_name, new_layer):
    old = trained_like(old_name, 4, seed=1)
    new = build(new_name, 4, width=1 / 32)
    copied = transfer_weights(new, old.state_dict())
    old_state, new_state = old.state_dict(), new.state_dict()
    assert set(copied) == {k for k in old_state if k in new_state}
    final = "upscore.weight" if old_name == "fcn32s" else "upscore16.weight"
    assert set(old_state) - set(copied) == {final}  # the only layer that does not carry over
    for key in copied:
        assert torch.equal(new_state[key], old_state[key])
    layer = getattr(new, new_layer)
    assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0


def test_transfer_copies_buffers_and_skips_shape_mismatch():
    old = build("fcn32s", 4, width=1 / 32, batch_norm=True)
    old.features[1].running_mean.fill_(0.5)
    old.features[1].num_batches_tracked.fill_(7)
    other_classes = build("fcn16s", 5, width=1 / 32, batch_norm=True)
    copied = transfer_weights(other_classes, old.state_dict())
    assert "features.1.running_mean" in copied and "features.1.num_batches_tracked" in copied
    assert other_classes.features[1].num_batches_tracked.item() == 7
    assert "score_fr.weight" not in copied  # 4 vs 5 classes


def test_step0_fused_map_is_upscore2_of_old_score_fr():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 57, 71)
    old = trained_like("fcn32s", 4, seed=2)
    new16 = build("fcn16s", 4, width=1 / 32).eval()
    transfer_weights(new16, old.state_dict())
    with torch.no_grad():
        assert torch.equal(new16.fused_scores(x), new16.upscore2(old.fused_scores(x)))
        nn.init.normal_(new16.score_pool4.weight)  # as if FCN-16s had been trained
        new8 = build("fcn8s", 4, width=1 / 32).eval()
        transfer_weights(new8, new16.state_dict())
        assert torch.equal(new8.fused_scores(x), new8.upscore_pool4(new16.fused_scores(x)))


def logit_stats(a, b):
    rel = ((a - b).abs().max() / (a.max() - a.min())).item()
    agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
    return rel, agree


def step0_random(seed):
    """Step-0 (logit range-relative max difference, argmax agreement) of random nets, end to end.

    Random score layers put class boundaries in every stride-32 cell: the worst case for the
    difference between one-step and two-step bilinear upsampling.
    """
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 192, 256)
    fcn32 = trained_like("fcn32s", 5, seed=seed)
    fcn16 = build("fcn16s", 5, width=1 / 32).eval()
    transfer_weights(fcn16, fcn32.state_dict())
    with torch.no_grad():
        results = {"32->16": logit_stats(fcn32(x), fcn16(x))}
        nn.init.normal_(fcn16.score_pool4.weight)  # as if FCN-16s had been trained
        fcn8 = build("fcn8s", 5, width=1 / 32).eval()
        transfer_weights(fcn8, fcn16.state_dict())
        results["16->8"] = logit_stats(fcn16(x), fcn8(x))
    return results


def step0_trained_looking(seed):
    """Step-0 statistics for nets whose score maps look trained (see the test below)."""
    num_classes, h, w = 21, 384, 512
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 3, h, w)

    def score_map(cells, stride):
        size = [math.ceil((n + 198) / 32) - 6 for n in (h, w)]  # score_fr's size
        size = [2 * s + 2 for s in size] if stride == 16 else size  # upscore2's size
        lab = torch.randint(
            0, num_classes, (1, *[math.ceil(s / cells) for s in size]), generator=gen
        )
        lab = lab.repeat_interleave(cells, 1).repeat_interleave(cells, 2)[:, : size[0], : size[1]]
        onehot = F.one_hot(lab, num_classes).permute(0, 3, 1, 2).float()
        return 4 * onehot + 0.5 * torch.randn(1, num_classes, *size, generator=gen)

    results = {}
    for old_name, new_name, stride in [("fcn32s", "fcn16s", 32), ("fcn16s", "fcn8s", 16)]:
        old = build(old_name, num_classes, width=TINY).eval()
        new = build(new_name, num_classes, width=TINY).eval()
        transfer_weights(new, old.state_dict())
        s = score_map(3 if stride == 32 else 6, stride)  # objects of about 96 pixels
        # 16s -> 8s: both nets' stride-16 fused map is upscore2's output + a zero score_pool4c.
        hooked = [net.score_fr if stride == 32 else net.upscore2 for net in (old, new)]
        hooks = [layer.register_forward_hook(lambda m, i, o, s=s: s) for layer in hooked]
        with torch.no_grad():
            results[f"{old_name[3:5]}->{new_name[3:-1]}"] = logit_stats(old(x), new(x))
        for hook in hooks:
            hook.remove()
    return results


@pytest.mark.parametrize("seed", [4, 5])
def test_step0_logits_random_net(seed):
    for rel, agree in step0_random(seed).values():
        assert rel < 0.25 and agree >= 0.95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step0_logits_trained_looking_net(seed):
    # A trained net's score map is piecewise constant over objects several cells wide, with
    # confident margins. score_fr (32s -> 16s) or the stride-16 fused map (16s -> 8s) is set to
    # such a map with a forward hook; the rest of both forwards (upsampling, crops) is real.
    # FCN-16s at step 0 upsamples in two bilinear steps (x2 then x16) where FCN-32s uses one
    # (x32): the same centres, but a wider, smoother kernel, so logits differ near class edges.
    results = step0_trained_looking(seed)
    for rel, agree in results.values():
        assert agree >= 0.99 and rel < 0.3, results


# ---- ImageNet VGG16 weights ---------------------------------------------------------------------


def test_vgg16_weights_land_in_the_right_parameters(tmp_path):
    width = 1 / 16
    state = torchvision_vgg16_state_dict(width=width)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    net = build("fcn8s", 3, width=width, encoder_weights=str(path)).eval()
    for i, idx in enumerate(VGG16_CONVS):
        assert torch.equal(net.features[idx].weight, state[f"features.{idx}.weight"]), i
        assert torch.equal(net.features[idx].bias, state[f"features.{idx}.bias"])
    assert torch.equal(net.fc7.weight[:, :, 0, 0], state["classifier.3.weight"])
    assert net.score_fr.weight.abs().sum() == 0  # classifier.6 (ImageNet classes) not used
    # Convolutionalization: fc6 (a 7x7 conv) on a 7x7 pool5 map == the Linear on it flattened.
    pool5 = torch.randn(2, 32, 7, 7, dtype=torch.float64)
    w, b = state["classifier.0.weight"].double(), state["classifier.0.bias"].double()
    with torch.no_grad():
        conv = net.fc6.double()(pool5)
    assert conv.shape == (2, 256, 1, 1)
    torch.testing.assert_close(conv[:, :, 0, 0], F.linear(pool5.flatten(1), w, b))


def test_vgg16_bn_weights_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    state = torchvision_vgg16_state_dict(batch_norm=True, width=1 / 16)
    save_file(state, tmp_path / "vgg16_bn.safetensors")
    net = build("fcn32s", 3, width=1 / 16, batch_norm=True,
                encoder_weights=str(tmp_path / "vgg16_bn.safetensors"))  # fmt: skip
    assert torch.equal(net.features[41].running_var, state["features.41.running_var"])
    assert torch.equal(net.fc6.bias, state["classifier.0.bias"])


def test_exact_torchvision_shapes_load_at_width_1():
    # Real sizes (138M parameters) on the meta device: only names and shapes are checked.
    with torch.device("meta"):
        net = build("fcn8s", 21)
        bn_net = build("fcn16s", 21, batch_norm=True)
    loaded = load_vgg16_weights(net, torchvision_vgg16_state_dict(device="meta"))
    assert len(loaded) == 13 * 2 + 4 and {"fc6.weight", "fc7.bias"} <= set(loaded)
    assert net.fc6.weight.shape == (4096, 512, 7, 7) and net.fc7.weight.shape[1:] == (4096, 1, 1)
    state_bn = torchvision_vgg16_state_dict(batch_norm=True, device="meta")
    assert len(load_vgg16_weights(bn_net, state_bn)) == 13 * 6 + 4


@pytest.mark.parametrize("kwargs", [{"width": 0.5}, {"in_channels": 1}])
def test_shape_mismatch_names_key_and_shapes(kwargs):
    with torch.device("meta"):
        net = build("fcn32s", 21, **kwargs)
    with pytest.raises(ConfigError, match=r"'features\.0\.weight' has shape \(64, 3, 3, 3\)"):
        load_vgg16_weights(net, torchvision_vgg16_state_dict(device="meta"))


def test_batch_norm_mismatch_is_reported():
    with torch.device("meta"):
        net = build("fcn32s", 21, batch_norm=True)
    with pytest.raises(ConfigError, match="batch_norm"):
        load_vgg16_weights(net, torchvision_vgg16_state_dict(device="meta"))


def test_imagenet_download_failure_is_a_config_error(monkeypatch):
    urls = []

    def offline(url, **kwargs):
        urls.append((url, kwargs))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="could not download ImageNet VGG16 weights"):
        build("fcn32s", 2, width=TINY, encoder_weights="imagenet")
    with pytest.raises(ConfigError):
        build("fcn32s", 2, width=TINY, batch_norm=True, encoder_weights="imagenet")
    assert [u for u, _ in urls] == [VGG16_URL, VGG16_BN_URL]
    assert urls[0][1] == {"map_location": "cpu", "weights_only": True}


def test_imagenet_download_success_path(monkeypatch):
    state = torchvision_vgg16_state_dict(width=TINY)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: state)
    net = build("fcn16s", 2, width=TINY, encoder_weights="imagenet")
    assert torch.equal(net.features[0].weight, state["features.0.weight"])


def test_missing_or_bad_weights_file(tmp_path):
    with pytest.raises(ConfigError, match="no such weights file"):
        build("fcn32s", 2, width=TINY, encoder_weights=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights"):
        build("fcn32s", 2, width=TINY, encoder_weights=str(tmp_path / "junk.pth"))

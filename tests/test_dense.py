"""Dense prediction from a classifier: sliding window, convolutionalized FCN, shift-and-stitch and
à trous agree exactly without padding (random and trained weights); conv as a matrix W and
transposed conv as W^T reproduce the numbers of the lecture notes (seed 000)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pixelwise.data.digits import digit_split, load_digit_images
from pixelwise.dense import (
    AtrousNet,
    ConvolutionalizedNet,
    atrous,
    conv_matrix,
    convolutionalize,
    lenet,
    shift_and_stitch,
    sliding_window,
    transposed_conv_via_matrix,
)
from pixelwise.errors import ConfigError

TOL = 1e-4  # max abs difference allowed between two routes to the same float32 scores


def _seeded(builder, seed=0):
    torch.manual_seed(seed)
    return builder().eval()


class LeNetModule(nn.Module):
    """A LeNet written as a class whose children run in order (features, then classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 5), nn.ReLU()
        )
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 20), nn.ReLU())
        self.out = nn.Linear(20, 3)

    def forward(self, x):
        return self.out(self.classifier(self.pool(self.features(x))))


def _strided_net() -> nn.Module:
    """Strided conv, overlapping max pool, BatchNorm, avg pool, BatchNorm1d, Dropout, LogSoftmax:
    total stride 8; at 30x34 the last pool drops a column (receptive field < window)."""
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2),  # 30x34 -> 14x16
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),  # -> 6x7
        nn.Conv2d(6, 8, 3),  # -> 4x5
        nn.BatchNorm2d(8),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2),  # -> 2x2 (floor)
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8 * 2 * 2, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 4),
        nn.LogSoftmax(dim=1),
    )
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


# (builder, input_size, channels, image height, image width)
NETS = {
    "lenet-nonsquare": (
        lambda: lenet(num_classes=5, in_channels=2, input_size=(28, 36)),
        (28, 36),
        2,
        45,
        61,
    ),
    "strided-bn-avgpool": (_strided_net, (30, 34), 3, 47, 50),
    "module-children-in-order": (LeNetModule, (28, 28), 1, 40, 37),
}


def _crop(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t[..., : like.shape[-2], : like.shape[-1]]


@pytest.fixture(scope="module", params=list(NETS))
def random_case(request):
    builder, size, channels, h, w = NETS[request.param]
    net = _seeded(builder)
    image = torch.randn(2, channels, h, w, generator=torch.Generator().manual_seed(1))
    return net, size, image


def test_convolutionalized_heatmap_equals_classifier_on_each_window(random_case):
    net, size, image = random_case
    fcn = convolutionalize(net, size)
    with torch.no_grad():
        heat = fcn(image)
    windows = sliding_window(net, image, size, stride=fcn.stride)
    assert heat.shape[:2] == windows.shape[:2]
    assert heat.shape[2] >= windows.shape[2] and heat.shape[3] >= windows.shape[3]
    assert (_crop(heat, windows) - windows).abs().max() <= TOL
    # and by hand: the window at (i * fy, j * fx)
    (fy, fx), (h, w) = fcn.stride, size
    for i, j in [(0, 0), (1, 2), (windows.shape[2] - 1, windows.shape[3] - 1)]:
        with torch.no_grad():
            direct = net(image[:, :, i * fy : i * fy + h, j * fx : j * fx + w])
        assert (heat[:, :, i, j] - direct).abs().max() <= TOL


def test_shift_and_stitch_equals_sliding_window_at_stride_1(random_case):
    net, size, image = random_case
    fcn = convolutionalize(net, size)
    stitched = shift_and_stitch(fcn, image)
    windows = sliding_window(net, image, size, stride=1, batch_size=50)
    h, w = image.shape[-2:]
    assert (
        stitched.shape == windows.shape == (2, windows.shape[1], h - size[0] + 1, w - size[1] + 1)
    )
    assert (stitched - windows).abs().max() <= TOL


def test_atrous_equals_shift_and_stitch_in_one_pass(random_case):
    net, size, image = random_case
    fcn = convolutionalize(net, size)
    dense = atrous(fcn)
    assert isinstance(dense, AtrousNet)
    assert dense.stride == (1, 1) and dense.source_stride == fcn.stride
    with torch.no_grad():
        out = dense(image)
    stitched = shift_and_stitch(fcn, image)
    assert out.shape == stitched.shape
    assert (out - stitched).abs().max() <= TOL
    # no layer of the à trous net downsamples
    for m in dense.modules():
        if isinstance(m, nn.Conv2d):
            assert m.stride == (1, 1)


def test_geometry_attributes():
    fcn = convolutionalize(_seeded(lambda: lenet(input_size=32)), 32)
    assert isinstance(fcn, ConvolutionalizedNet)
    assert fcn.stride == (4, 4) and fcn.window == (32, 32)
    assert fcn.receptive_field == (32, 32) and fcn.offset == (0, 0)
    assert fcn.num_classes == 10
    head_convs = [m for m in fcn.head if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in head_convs] == [(5, 5), (1, 1), (1, 1)]
    strided = convolutionalize(_seeded(_strided_net), (30, 34))
    assert strided.stride == (8, 8)
    assert strided.receptive_field == (27, 27)  # the last 3 rows / 7 columns are never read
    padded = convolutionalize(_seeded(lambda: lenet(padding=2)), 32)
    assert padded.offset == (6, 6) and padded.receptive_field == (44, 44)


def test_first_linear_is_reshaped_in_flatten_order():
    net = _seeded(lambda: lenet(num_classes=3, input_size=32))
    fcn = convolutionalize(net, 32)
    assert torch.equal(fcn.head.fc1.weight, net.fc1.weight.reshape(120, 16, 5, 5))
    assert torch.equal(fcn.head.fc3.weight[:, :, 0, 0], net.fc3.weight)
    # copies: editing the FCN leaves the classifier alone; train/eval mode is kept
    with torch.no_grad():
        fcn.head.fc3.bias.add_(1.0)
    assert not torch.equal(fcn.head.fc3.bias, net.fc3.bias)
    assert not fcn.training
    assert convolutionalize(net.train(), 32).training
    assert all(m.training for m in net.modules())  # the classifier's own modes are restored


def test_lenet_has_lenet5_parameter_count():
    # seed 002's LeNet-5 summary: 156 + 2416 + 48120 + 10164 + 850 = 61,706 parameters
    net = lenet()
    assert sum(p.numel() for p in net.parameters()) == 61_706
    assert net(torch.zeros(3, 1, 32, 32)).shape == (3, 10)
    with pytest.raises(ConfigError, match="too small"):
        lenet(input_size=12)


# ------------------------------------------------------------------ trained classifier


def _upscaled_digits(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits 8x8 -> 20x20 (bilinear), centred on a 28x28 black canvas."""
    images, labels = load_digit_images()
    x = torch.from_numpy(images[idx])[:, None]
    x = F.pad(F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False), (4,) * 4)
    return x, torch.from_numpy(labels[idx])


@pytest.fixture(scope="module")
def trained_lenet():
    """A LeNet trained for 300 steps on the digits at 28x28 (about 2 s on one core)."""
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting
    torch.manual_seed(0)
    net = lenet(num_classes=10, in_channels=1, input_size=28, widths=(6, 16), hidden=(64, 32))
    split = digit_split()
    x, y = _upscaled_digits(split["train"])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        b = torch.randint(len(x), (64,), generator=gen)
        loss = F.cross_entropy(net(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    xv, yv = _upscaled_digits(split["val"])
    with torch.no_grad():
        accuracy = (net(xv).argmax(1) == yv).float().mean().item()
    return net, accuracy


def _digit_canvas() -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """A 1x64x83 canvas with four val digits at (y, x) positions; returns the placements."""
    split = digit_split()["val"]
    x, y = _upscaled_digits(split[:4])
    canvas = torch.zeros(1, 64, 83)
    places = [(0, 0), (0, 52), (33, 9), (36, 55)]
    for k, (py, px) in enumerate(places):
        canvas[:, py : py + 28, px : px + 28] = torch.maximum(
            canvas[:, py : py + 28, px : px + 28], x[k]
        )
    return canvas, [(py, px, int(y[k])) for k, (py, px) in enumerate(places)]


def test_trained_classifier_equivalences(trained_lenet):
    net, accuracy = trained_lenet
    assert accuracy > 0.85  # it really is trained: the equalities below are not about noise
    canvas, places = _digit_canvas()
    fcn = convolutionalize(net, 28)
    with torch.no_grad():
        heat = fcn(canvas[None])
        dense = atrous(fcn)(canvas[None])
    windows = sliding_window(net, canvas, 28, stride=4)
    assert (_crop(heat, windows) - windows).abs().max() <= TOL
    every = sliding_window(net, canvas, 28, stride=1)
    stitched = shift_and_stitch(fcn, canvas)
    assert (stitched - every).abs().max() <= TOL
    assert (dense - stitched).abs().max() <= TOL
    # the windows exactly on a digit are classified by the dense map as the classifier does
    hits = [int(dense[0, :, py, px].argmax()) == label for py, px, label in places]
    assert sum(hits) >= 3


# ------------------------------------------------------------------ padding caveat


def test_padding_single_window_still_exact():
    """With padding, the FCN on an image that *is* the window equals the classifier."""
    vgg = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 5),
    )  # fmt: skip
    for net, size, c in [(_seeded(lambda: vgg), 16, 3), (_seeded(lambda: lenet(padding=2)), 32, 1)]:
        fcn = convolutionalize(net, size)
        x = torch.randn(3, c, size, size)
        with torch.no_grad():
            assert (fcn(x).flatten(1) - net(x)).abs().max() <= TOL


def test_padding_features_equal_inside_window_differ_at_its_border():
    """Padded LeNet (5x5 convs, padding 2) at 28x28: the window's 7x7 feature map equals the
    full image's feature map on the cells whose 16-pixel receptive field (starting 6 pixels
    before 4 * cell) lies inside the window, i.e. cells 2..4; the border cells see the window's
    zero padding instead of the neighbouring pixels."""
    net = _seeded(lambda: lenet(padding=2, input_size=28))
    fcn = convolutionalize(net, 28)
    image = torch.rand(1, 1, 60, 60, generator=torch.Generator().manual_seed(2))
    i, j = 5, 4  # window at (20, 16), away from the image border
    with torch.no_grad():
        full = fcn.features(image)[0, :, i : i + 7, j : j + 7]
        window = fcn.features(image[:, :, 4 * i : 4 * i + 28, 4 * j : 4 * j + 28])[0]
    diff = (full - window).abs().amax(0)
    inside = torch.zeros(7, 7, dtype=torch.bool)
    inside[2:5, 2:5] = True
    assert diff[inside].max() <= TOL
    assert (diff[~inside] > 1e-3).all()


def test_padding_fcn_differs_from_classifier_on_windows():
    """...so the scores differ at every position: the first Linear reads the border cells."""
    net = _seeded(lambda: lenet(padding=2, input_size=28))
    fcn = convolutionalize(net, 28)
    image = torch.rand(1, 1, 52, 60, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        heat = fcn(image)
    windows = sliding_window(net, image, 28, stride=4)
    diff = (_crop(heat, windows) - windows).abs().amax(1)
    assert (diff > 1e-5).all()


def test_padding_atrous_equals_shift_and_stitch_in_the_interior_only():
    """Padded nets: à trous and shift-and-stitch agree at output (y, x) when the receptive field
    (R pixels from P before the window's corner) lies inside the image and inside the shifted
    input: S * (y // S) >= P and y - P + R <= H (same for x). Near the top/left border the
    shifted passes read zero padding where à trous reads real pixels, and they differ."""
    net = _seeded(lambda: lenet(num_classes=4, in_channels=2, padding=2, input_size=(28, 36)))
    fcn = convolutionalize(net, (28, 36))
    (s, _), (r, rw), (p, pw) = fcn.stride, fcn.receptive_field, fcn.offset
    assert (s, r, rw, p, pw) == (4, 40, 48, 6, 6)
    image = torch.randn(1, 2, 70, 81, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        dense = atrous(fcn)(image)
    stitched = shift_and_stitch(fcn, image)
    diff = (dense - stitched).abs().amax((0, 1))
    ys, xs = torch.arange(diff.shape[0]), torch.arange(diff.shape[1])
    in_y = (s * (ys // s) >= p) & (ys - p + r <= 70)
    in_x = (s * (xs // s) >= pw) & (xs - pw + rw <= 81)
    interior = in_y[:, None] & in_x[None, :]
    assert interior.sum() > 100
    assert diff[interior].max() <= TOL
    assert diff[:p, 1:].min(0).values.max() > 1e-3  # top rows: differ
    assert (diff[~interior] > 1e-3).sum() > 100


# ------------------------------------------------------------------ refusals


def test_refuses_adaptive_pooling():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="global/adaptive pooling"):
        convolutionalize(net, 16)


def test_refuses_mismatched_first_linear_with_numbers():
    with pytest.raises(ConfigError, match=r"expects 400 inputs.*28x28 is 16x4x4 = 256"):
        convolutionalize(lenet(input_size=32), 28)


def test_refuses_unknown_layers_and_dynamic_shapes():
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    after = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), Scale(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(ConfigError, match="'2' \\(Scale\\) after Flatten"):
        convolutionalize(after, 8)
    before = nn.Sequential(nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="unknown layer '0' \\(Upsample\\) before Flatten"):
        convolutionalize(before, 1)

    class ViewNet(nn.Module):  # reshapes in forward(): no Flatten to split at
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(self.conv(x).view(x.shape[0], -1))

    with pytest.raises(ConfigError, match="no nn.Flatten"):
        convolutionalize(ViewNet(), 8)
    with pytest.raises(ConfigError, match="no nn.Linear"):
        convolutionalize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), 8)


def test_refuses_a_forward_that_does_not_run_children_in_order():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
            self.fc = nn.Linear(2 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(self.body(x) + self.body(x).mean())  # not a plain chain

    with pytest.raises(ConfigError, match="does not\\s+just run its children in order"):
        convolutionalize(Skip(), 8)


def test_refuses_too_small_input_and_images():
    with pytest.raises(ConfigError, match="feature extractor fails on a 1x8x8 input"):
        convolutionalize(lenet(input_size=32), 8)
    net = _seeded(lambda: lenet(input_size=32))
    fcn = convolutionalize(net, 32)
    small = torch.zeros(1, 1, 31, 40)
    with pytest.raises(ConfigError, match="smaller than the window 32x32"):
        sliding_window(net, small, 32)
    with pytest.raises(ConfigError, match="smaller than the window"):
        shift_and_stitch(fcn, small)
    with pytest.raises(ConfigError, match="convolutionalize"):
        shift_and_stitch(net, torch.zeros(1, 1, 40, 40))


def test_sliding_window_by_hand():
    """The definition: scores of the crop at (i * sy, j * sx), for odd batch sizes too."""
    net = _seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 4, 5)))
    image = torch.randn(2, 10, 13)
    out = sliding_window(net, image, (3, 4), stride=(2, 3), batch_size=2)
    assert out.shape == (1, 5, 4, 4)
    for i in range(4):
        for j in range(4):
            crop = image[None, :, 2 * i : 2 * i + 3, 3 * j : 3 * j + 4]
            with torch.no_grad():
                assert torch.allclose(out[0, :, i, j], net(crop)[0], atol=1e-6)
    assert torch.allclose(sliding_window(net, image, (3, 4), (2, 3), batch_size=1000), out)


# ------------------------------------------------------------------ conv as a matrix (seed 000)

SEED_X = torch.tensor([[1.0, 2, 3], [6, 5, 3], [1, 4, 1]])
SEED_K = torch.tensor([[1.0, 2], [2, 1]])
SEED_W = torch.tensor(
    [
        [1.0, 2, 0, 2, 1, 0, 0, 0, 0],
        [0, 1, 2, 0, 2, 1, 0, 0, 0],
        [0, 0, 0, 1, 2, 0, 2, 1, 0],
        [0, 0, 0, 0, 1, 2, 0, 2, 1],
    ]
)


def test_seed_convolution_as_matrix():
    """Seed 000, "Why is it called transposed convolution?": x * w = z = [[22, 21], [22, 20]],
    and z = W x with the 4x9 matrix W."""
    w = conv_matrix(SEED_K, (3, 3))
    assert torch.equal(w, SEED_W)
    assert torch.equal((w @ SEED_X.flatten()).reshape(2, 2), torch.tensor([[22.0, 21], [22, 20]]))
    assert torch.equal(
        F.conv2d(SEED_X[None, None], SEED_K[None, None])[0, 0], (w @ SEED_X.flatten()).reshape(2, 2)
    )


def test_seed_transposed_convolution_as_w_transposed():
    """Seed 000, same slide: x = [[1, 2], [2, 4]] (the 2x2 input, entries 1 2 2 4) transposed-
    convolved with the same kernel [[1, 2], [2, 1]] is z = [[1, 4, 4], [4, 13, 10], [4, 10, 4]] =
    W^T x, W^T being the 9x4 matrix printed there (the slide's z column drops one of its 4s)."""
    x = torch.tensor([[1.0, 2], [2, 4]])
    expected = torch.tensor([[1.0, 4, 4], [4, 13, 10], [4, 10, 4]])
    assert torch.equal(SEED_W.T, torch.tensor([
        [1.0, 0, 0, 0], [2, 1, 0, 0], [0, 2, 0, 0], [2, 0, 1, 0], [1, 2, 2, 1],
        [0, 1, 0, 2], [0, 0, 2, 0], [0, 0, 1, 2], [0, 0, 0, 1],
    ]))  # fmt: skip
    assert torch.equal((SEED_W.T @ x.flatten()).reshape(3, 3), expected)
    assert torch.equal(transposed_conv_via_matrix(x, SEED_K), expected)
    assert torch.equal(F.conv_transpose2d(x[None, None], SEED_K[None, None])[0, 0], expected)


def test_seed_transposed_convolution_upsampling_example():
    """Seed 000, "Upsampling with Transposed Convolution": input [[0, 1], [2, 3]], kernel
    [[0, 1], [2, 3]], stride 1 -> [[0, 0, 1], [0, 4, 6], [4, 12, 9]] (the sum of the four
    input-weighted kernels)."""
    a = torch.tensor([[0.0, 1], [2, 3]])
    expected = torch.tensor([[0.0, 0, 1], [0, 4, 6], [4, 12, 9]])
    assert torch.equal(transposed_conv_via_matrix(a, a), expected)
    assert torch.equal(F.conv_transpose2d(a[None, None], a[None, None])[0, 0], expected)
    by_hand = torch.zeros(3, 3)
    for i in range(2):
        for j in range(2):
            by_hand[i : i + 2, j : j + 2] += a[i, j] * a
    assert torch.equal(by_hand, expected)


@settings(max_examples=40, deadline=None)
@given(
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    s=st.integers(1, 3),
    p=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_conv_matrix_and_transpose_match_torch(kh, kw, h, w, s, p, seed):
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(kh, kw, generator=gen, dtype=torch.float64)
    # convolution of an (H, W) image: W @ x == F.conv2d
    big_h, big_w = (h - 1) * s - 2 * p + kh, (w - 1) * s - 2 * p + kw
    if big_h >= 1 and big_w >= 1:
        x = torch.randn(big_h, big_w, generator=gen, dtype=torch.float64)
        mat = conv_matrix(kernel, (big_h, big_w), s, p)
        conv = F.conv2d(x[None, None], kernel[None, None], stride=s, padding=p)[0, 0]
        assert mat.shape == (conv.numel(), big_h * big_w) and conv.shape == (h, w)
        assert torch.allclose((mat @ x.flatten()).reshape(conv.shape), conv)
        # transposed convolution of an (h, w) map: W^T @ z == F.conv_transpose2d
        z = torch.randn(h, w, generator=gen, dtype=torch.float64)
        ref = F.conv_transpose2d(z[None, None], kernel[None, None], stride=s, padding=p)[0, 0]
        assert torch.allclose(transposed_conv_via_matrix(z, kernel, s, p), ref)

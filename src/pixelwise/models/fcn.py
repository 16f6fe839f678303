"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, CVPR 2015 / TPAMI 2017).

A faithful port of the reference Caffe nets (and of wkentaro/pytorch-fcn): VGG16 with conv1_1
padded by 100 and ceil-mode pools, fully convolutional fc6 (7x7) and fc7 (1x1), 1x1 class scores,
bilinear-initialised transposed convolutions and the paper's crop offsets (19; 5 and 27; 5, 9
and 31). Every input size from 1x1 up gives logits of exactly the input's size.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor, nn

from pixelwise.errors import ConfigError
from pixelwise.models import register
from pixelwise.models.base import SegmentationModel
from pixelwise.models.layers import BilinearUpsample, check_args, crop, init_he, scaled
from pixelwise.models.vgg import load_encoder_weights, vgg16_features

# (final upsampling layer, its factor, crop offset of the final upsampled map) per output stride.
_FINAL = {32: ("upscore", 32, 19), 16: ("upscore16", 16, 27), 8: ("upscore8", 8, 31)}
_POOL4_OFFSET = 5  # crop of score_pool4 onto upscore2 (stride 16)
_POOL3_OFFSET = 9  # crop of score_pool3 onto upscore_pool4 (stride 8)


class FCN(SegmentationModel):
    """Fully convolutional VGG16 with skip fusion down to ``stride`` 32, 16 or 8.

    ``forward``: ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any H, W >= 1.
    Data flow (FCN-8s; strides relative to the input, before the crops)::

        x -> features (conv1_1 pad 100) -> pool3 (/8) -> pool4 (/16) -> pool5 (/32)
          -> fc6 7x7 -> fc7 1x1 -> score_fr -> upscore2 (x2) + crop(score_pool4(pool4), 5)
          -> upscore_pool4 (x2) + crop(score_pool3(pool3), 9) -> upscore8 (x8) -> crop 31
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = 32,
        in_channels: int = 3,
        width: float = 1.0,
        batch_norm: bool = False,
        learnable_upsampling: bool = True,
        dropout: float = 0.5,
    ) -> None:
        if stride not in _FINAL:
            raise ConfigError(f"FCN stride must be 32, 16 or 8, got {stride!r}")
        super().__init__(num_classes, in_channels)
        self.stride = stride  # output stride of the fused scores (not the tile grid: 32)
        c = num_classes
        fc = scaled(4096, width)
        self.features = vgg16_features(
            in_channels, width, batch_norm, first_padding=100, pool_ceil_mode=True
        )
        self.fc6 = nn.Conv2d(scaled(512, width), fc, 7)
        self.bn6 = nn.BatchNorm2d(fc) if batch_norm else nn.Identity()
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d(dropout)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.bn7 = nn.BatchNorm2d(fc) if batch_norm else nn.Identity()
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(fc, c, 1)
        score_layers = [self.score_fr]
        if stride <= 16:
            self.score_pool4 = nn.Conv2d(scaled(512, width), c, 1)
            self.upscore2 = BilinearUpsample(c, 2, learnable_upsampling)
            score_layers.append(self.score_pool4)
        if stride == 8:
            self.score_pool3 = nn.Conv2d(scaled(256, width), c, 1)
            self.upscore_pool4 = BilinearUpsample(c, 2, learnable_upsampling)
            score_layers.append(self.score_pool3)
        name, factor, _ = _FINAL[stride]
        self.add_module(name, BilinearUpsample(c, factor, learnable_upsampling))

        init_he(self, mode="fan_out")
        for layer in score_layers:  # zero scores: the staged-training init of the paper
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def fused_scores(self, x: Tensor) -> Tensor:
        """Class scores at the net's output stride before the final upsampling.

        FCN-32s: ``score_fr`` (stride 32); FCN-16s: ``upscore2(score_fr) + score_pool4c``
        (stride 16); FCN-8s: ``upscore_pool4(...) + score_pool3c`` (stride 8). Shape
        ``(N, num_classes, h, w)`` with h, w as in the Caffe nets (padded by conv1_1).
        """
        pools = []
        h = x
        for layer in self.features:
            h = layer(h)
            if isinstance(layer, nn.MaxPool2d):
                pools.append(h)
        h = self.drop6(self.relu6(self.bn6(self.fc6(h))))
        h = self.drop7(self.relu7(self.bn7(self.fc7(h))))
        h = self.score_fr(h)
        if self.stride <= 16:
            h = self.upscore2(h)
            o = _POOL4_OFFSET
            h = h + crop(self.score_pool4(pools[3]), o, o, *h.shape[-2:])
        if self.stride == 8:
            h = self.upscore_pool4(h)
            o = _POOL3_OFFSET
            h = h + crop(self.score_pool3(pools[2]), o, o, *h.shape[-2:])
        return h

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W) -> (N, num_classes, H, W)`` logits."""
        height, width = self.output_size(*x.shape[-2:])
        name, _, offset = _FINAL[self.stride]
        h = getattr(self, name)(self.fused_scores(x))
        return crop(h, offset, offset, height, width)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Logits size for an ``h x w`` input: always ``(h, w)`` (checked for every crop)."""
        return fcn_extent(h, self.stride), fcn_extent(w, self.stride)


def fcn_extent(n: int, stride: int) -> int:
    """Follow one spatial dimension through the net; return ``n`` or raise ``ConfigError``.

    Checks that fc6 has a 7x7 window and that every crop (skip and final) lies inside the map it
    is taken from. The pad-100 trick makes this hold for every n >= 1.
    """
    if n < 1:
        raise ConfigError(f"FCN input size must be at least 1 pixel, got {n}")
    size = n + 2 * 100 - 2  # conv1_1: 3x3, padding 100; every other conv keeps the size
    pools = []
    for _ in range(5):
        size = math.ceil(size / 2)
        pools.append(size)
    score = pools[4] - 6  # fc6: 7x7, no padding
    if score < 1:
        raise ConfigError(f"FCN input size {n} leaves no 7x7 window for fc6")
    ok = True
    if stride <= 16:
        score = (score - 1) * 2 + 4  # upscore2
        ok = ok and _POOL4_OFFSET + score <= pools[3]
    if stride == 8:
        score = (score - 1) * 2 + 4  # upscore_pool4
        ok = ok and _POOL3_OFFSET + score <= pools[2]
    _, factor, offset = _FINAL[stride]
    final = (score - 1) * factor + 2 * factor
    if not ok or offset + n > final:
        raise ConfigError(f"FCN-{stride}s cannot crop its output for input size {n}")
    return n


def _build(
    model: str,
    stride: int,
    num_classes: int,
    encoder_weights: str | Path | None = None,
    **options: object,
) -> FCN:
    check_args(model, num_classes=num_classes, **options)
    net = FCN(num_classes, stride, **options)
    load_encoder_weights(net, encoder_weights, bool(options["batch_norm"]))
    return net


@register("fcn32s", paper="Long, Shelhamer & Darrell 2015", use="stage 1 of staged FCN training")
def fcn32s(
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    batch_norm: bool = False,
    learnable_upsampling: bool = True,
    dropout: float = 0.5,
    encoder_weights: str | Path | None = None,
) -> FCN:
    """FCN-32s: score_fr upsampled x32 in one step (kernel 64), crop 19."""
    return _build("fcn32s", 32, **locals())  # locals(): exactly this builder's arguments


@register(
    "fcn16s", paper="Long, Shelhamer & Darrell 2015", use="stage 2: --init-from an fcn32s run"
)
def fcn16s(
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    batch_norm: bool = False,
    learnable_upsampling: bool = True,
    dropout: float = 0.5,
    encoder_weights: str | Path | None = None,
) -> FCN:
    """FCN-16s: x2, + pool4 scores (crop 5), x16 (kernel 32), crop 27."""
    return _build("fcn16s", 16, **locals())


@register(
    "fcn8s",
    paper="Long, Shelhamer & Darrell 2015",
    use="the FCN of the paper; needs a GPU or ImageNet weights",
)
def fcn8s(
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    batch_norm: bool = False,
    learnable_upsampling: bool = True,
    dropout: float = 0.5,
    encoder_weights: str | Path | None = None,
) -> FCN:
    """FCN-8s: x2, + pool4 (crop 5), x2, + pool3 (crop 9), x8 (kernel 16), crop 31."""
    return _build("fcn8s", 8, **locals())


__all__ = ["FCN", "fcn16s", "fcn32s", "fcn8s", "fcn_extent"]

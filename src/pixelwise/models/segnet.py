"""Encoder-decoder nets that upsample with max-pooling indices: SegNet, SegNet-Basic, DeconvNet.

SegNet: Badrinarayanan, Kendall & Cipolla, TPAMI 2017. DeconvNet: Noh, Hong & Han, ICCV 2015.
Each encoder pool stores its argmax indices and its input size; the matching decoder stage
unpools with them (``nn.MaxUnpool2d(..., output_size=...)``), so odd sizes come back exactly and
the logits have the input's size.
"""

from __future__ import annotations

from pathlib import Path

from torch import Size, Tensor, nn

from pixelwise.errors import ConfigError
from pixelwise.models import register
from pixelwise.models.base import SegmentationModel
from pixelwise.models.layers import check_args, conv_bn_relu, init_he, scaled
from pixelwise.models.vgg import VGG16_CFG, load_encoder_weights, vgg16_features


def _vgg16_stage_convs(in_channels: int, width: float) -> list[list[tuple[int, int]]]:
    """(in, out) channels of VGG16's convs, grouped by stage: [[(3, 64), (64, 64)], ...]."""
    stages: list[list[tuple[int, int]]] = [[]]
    channels = in_channels
    for item in VGG16_CFG:
        if item == "M":
            stages.append([])
        else:
            out = scaled(int(item), width)
            stages[-1].append((channels, out))
            channels = out
    return [s for s in stages if s]


def _mirrored_convs(in_channels: int, width: float) -> list[list[tuple[int, int]]]:
    """Decoder (in, out) channels mirroring VGG16's convs stage by stage, deepest stage first.

    The mirror of conv1_1 (64 -> in_channels) is left out: each net ends with its own classifier.
    """
    stages = []
    for convs in reversed(_vgg16_stage_convs(in_channels, width)):
        stages.append([(c_out, c_in) for c_in, c_out in reversed(convs)])
    stages[-1].pop()
    return stages


def _min_size(pools: int, h: int, w: int, model: str) -> tuple[int, int]:
    """``(h, w)``, or ``ConfigError`` when floor pooling would empty a map."""
    smallest = 2**pools
    if h < smallest or w < smallest:
        raise ConfigError(
            f"input {h}x{w} is too small for {model} ({pools} poolings): "
            f"the smallest is {smallest}x{smallest}"
        )
    return h, w


def _encode(features: nn.Sequential, x: Tensor) -> tuple[Tensor, list[Tensor], list[Size]]:
    """Run a VGG encoder whose pools return indices; also return indices and pre-pool sizes."""
    indices, sizes = [], []
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            sizes.append(x.shape[-2:])
            x, idx = layer(x)
            indices.append(idx)
        else:
            x = layer(x)
    return x, indices, sizes


class SegNet(SegmentationModel):
    """SegNet: VGG16-BN encoder, mirrored decoder that unpools with the encoder's indices.

    ``forward``: ``(N, in_channels, H, W) -> (N, num_classes, H, W)``, H, W >= 32.
    Data flow (channels at width 1)::

        x -> [conv-BN-ReLU x2, pool] 64 /2 -> [x2] 128 /4 -> [x3] 256 /8 -> [x3] 512 /16
          -> [x3] 512 /32 -> unpool, [x3] 512 /16 -> unpool, 512, 512, 256 /8
          -> unpool, 256, 256, 128 /4 -> unpool, 128, 64 /2 -> unpool, 64 /1 -> classifier 3x3
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__(num_classes, in_channels)
        self.features = vgg16_features(in_channels, width, batch_norm=True, pool_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.decoder = nn.ModuleList(
            nn.Sequential(*(layer for a, b in convs for layer in conv_bn_relu(a, b)))
            for convs in _mirrored_convs(in_channels, width)
        )
        # In place of conv1_1's mirror: a 3x3 conv to the classes, no BN, no ReLU.
        self.classifier = nn.Conv2d(scaled(64, width), num_classes, 3, padding=1)
        init_he(self, mode="fan_in")  # Caffe "msra" filler, as in the released SegNet nets

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W) -> (N, num_classes, H, W)`` logits."""
        self.output_size(*x.shape[-2:])
        x, indices, sizes = _encode(self.features, x)
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes), strict=True):
            x = stage(self.unpool(x, idx, output_size=size))
        return self.classifier(x)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)``; ``ConfigError`` below 32 x 32 (five floor poolings)."""
        return _min_size(5, h, w, "SegNet")

    def valid_input_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)``, at least 32 x 32: unpooling restores every size exactly."""
        return max(h, 32), max(w, 32)


class SegNetBasic(SegmentationModel):
    """SegNet-Basic: 4 x [7x7 conv 64, BN, ReLU, pool] then 4 x [unpool, 7x7 conv 64, BN].

    ``forward``: ``(N, in_channels, H, W) -> (N, num_classes, H, W)``, H, W >= 16. The decoder
    has no ReLU, as in the paper; a 1x1 conv gives the class scores.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: float = 1.0, stages: int = 4
    ) -> None:
        super().__init__(num_classes, in_channels)
        c = scaled(64, width)
        self.encoder = nn.ModuleList(
            conv_bn_relu(in_channels if i == 0 else c, c, 7, 3) for i in range(stages)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.decoder = nn.ModuleList(conv_bn_relu(c, c, 7, 3, relu=False) for _ in range(stages))
        self.classifier = nn.Conv2d(c, num_classes, 1)
        init_he(self, mode="fan_in")  # Caffe "msra" filler, as in the released SegNet nets

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W) -> (N, num_classes, H, W)`` logits."""
        self.output_size(*x.shape[-2:])
        indices, sizes = [], []
        for block in self.encoder:
            x = block(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        for block, idx, size in zip(self.decoder, reversed(indices), reversed(sizes), strict=True):
            x = block(self.unpool(x, idx, output_size=size))
        return self.classifier(x)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)``; ``ConfigError`` below 16 x 16 (four floor poolings)."""
        return _min_size(len(self.encoder), h, w, "SegNet-Basic")

    def valid_input_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)``, at least ``2**stages`` (16) per side: unpooling restores every size."""
        smallest = 2 ** len(self.encoder)
        return max(h, smallest), max(w, smallest)


class DeconvNet(SegmentationModel):
    """DeconvNet: VGG16-BN encoder, fc6/fc7 as convs, mirrored unpool + deconvolution decoder.

    ``forward``: ``(N, in_channels, H, W) -> (N, num_classes, H, W)``, H, W >= 32.
    Data flow (channels at width 1)::

        x -> VGG16-BN features (5 pools with indices) 512 /32
          -> fc6 7x7 pad 3 (4096) -> fc7 1x1 (4096) -> deconv_fc6 7x7 pad 3 (512)   [+BN+ReLU]
          -> unpool, deconv 512 x3 /16 -> unpool, 512, 512, 256 /8 -> unpool, 256, 256, 128 /4
          -> unpool, 128, 64 /2 -> unpool, 64, 64 /1 -> score 1x1

    Deviation from the paper: its fc6 is a valid 7x7 conv that collapses the 7x7 pool5 map of a
    224x224 input to 1x1, and deconv_fc6 (7x7) expands it back. Here both are padded by 3: the
    same layers and weights, but every input size works.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__(num_classes, in_channels)
        c5, fc = scaled(512, width), scaled(4096, width)
        self.features = vgg16_features(in_channels, width, batch_norm=True, pool_indices=True)
        self.fc6 = nn.Conv2d(c5, fc, 7, padding=3)
        self.bn6 = nn.BatchNorm2d(fc)
        self.relu6 = nn.ReLU(inplace=True)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.bn7 = nn.BatchNorm2d(fc)
        self.relu7 = nn.ReLU(inplace=True)
        self.deconv_fc6 = nn.ConvTranspose2d(fc, c5, 7, padding=3)
        self.bn_deconv_fc6 = nn.BatchNorm2d(c5)
        self.relu_deconv_fc6 = nn.ReLU(inplace=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        c1 = scaled(64, width)
        stages = _mirrored_convs(in_channels, width)
        stages[-1].append((c1, c1))  # deconv1_1 and deconv1_2 both keep 64 channels
        self.decoder = nn.ModuleList(
            nn.Sequential(
                *(layer for a, b in convs for layer in conv_bn_relu(a, b, transposed=True))
            )
            for convs in stages
        )
        self.score = nn.Conv2d(c1, num_classes, 1)
        init_he(self, mode="fan_in")

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W) -> (N, num_classes, H, W)`` logits."""
        self.output_size(*x.shape[-2:])
        x, indices, sizes = _encode(self.features, x)
        x = self.relu6(self.bn6(self.fc6(x)))
        x = self.relu7(self.bn7(self.fc7(x)))
        x = self.relu_deconv_fc6(self.bn_deconv_fc6(self.deconv_fc6(x)))
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes), strict=True):
            x = stage(self.unpool(x, idx, output_size=size))
        return self.score(x)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)``; ``ConfigError`` below 32 x 32 (five floor poolings)."""
        return _min_size(5, h, w, "DeconvNet")

    def valid_input_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)``, at least 32 x 32: unpooling restores every size exactly."""
        return max(h, 32), max(w, 32)


@register(
    "segnet",
    paper="Badrinarayanan, Kendall & Cipolla 2017",
    use="street scenes; memory-light decoder",
)
def segnet(
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    encoder_weights: str | Path | None = None,
) -> SegNet:
    """SegNet with a VGG16-BN encoder (``encoder_weights="imagenet"``: torchvision vgg16_bn)."""
    check_args("segnet", num_classes=num_classes, in_channels=in_channels, width=width)
    net = SegNet(num_classes, in_channels, width)
    load_encoder_weights(net, encoder_weights, batch_norm=True)
    return net


@register(
    "segnet_basic",
    paper="Badrinarayanan, Kendall & Cipolla 2017",
    use="small SegNet, trains on a CPU",
)
def segnet_basic(num_classes: int, in_channels: int = 3, width: float = 1.0) -> SegNetBasic:
    """SegNet-Basic: 4 encoder and 4 decoder stages of 7x7 convs with 64 channels."""
    check_args("segnet_basic", num_classes=num_classes, in_channels=in_channels, width=width)
    return SegNetBasic(num_classes, in_channels, width)


@register("deconvnet", paper="Noh, Hong & Han 2015", use="the mirrored-deconvolution baseline")
def deconvnet(
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    encoder_weights: str | Path | None = None,
) -> DeconvNet:
    """DeconvNet with a VGG16-BN encoder; ImageNet weights also fill fc6 and fc7."""
    check_args("deconvnet", num_classes=num_classes, in_channels=in_channels, width=width)
    net = DeconvNet(num_classes, in_channels, width)
    load_encoder_weights(net, encoder_weights, batch_norm=True)
    return net


__all__ = ["DeconvNet", "SegNet", "SegNetBasic", "deconvnet", "segnet", "segnet_basic"]

"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), valid (the paper) and same-padded.

``unet``: unpadded 3x3 convs, so the logits are smaller than the input (572x572 -> 388x388 at
depth 4); tile large images with ``valid_input_size``. ``unet_same``: padded convs with
BatchNorm, logits exactly the input's size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import ConfigError
from pixelwise.models import register
from pixelwise.models.base import SegmentationModel
from pixelwise.models.filterbank import FilterBank
from pixelwise.models.layers import check_args, conv_bn_relu, crop, init_he, scaled


def double_conv(
    in_channels: int, out_channels: int, padding: int, batch_norm: bool
) -> nn.Sequential:
    """Two 3x3 convs, each followed by [BatchNorm and] ReLU."""
    return nn.Sequential(
        *conv_bn_relu(in_channels, out_channels, 3, padding, batch_norm),
        *conv_bn_relu(out_channels, out_channels, 3, padding, batch_norm),
    )


class UNet(SegmentationModel):
    """U-Net with ``depth`` 2x2 poolings and ``base_width * 2**level`` channels per level.

    ``forward``: ``(N, in_channels, H, W) -> (N, num_classes, *output_size(H, W))``.
    Data flow (depth 4, valid, the paper's 572x572 tile; channels at width 1; "a -> b" is two
    3x3 valid convs, "[skip | up]" concatenates the cropped skip and the 2x2 up-conv output)::

        572 -> 568 (64) ---------- crop 88: [392 | 392] -> 388 (64) -> 1x1 head -> 388x388
          pool 284 -> 280 (128) -- crop 40: [200 | 200] -> 196 (128) --^ up-conv
            pool 140 -> 136 (256)  crop 16: [104 | 104] -> 100 (256) --^
              pool 68 -> 64 (512)  crop 4:  [56 | 56] -> 52 (512) -----^
                pool 32 -> 28 (1024) ----------^ up-conv to 56

    ``padding="same"``: every conv keeps its size; where a level's input had an odd size (floor
    pooling dropped the last row / column), the up-sampled map is zero-padded at the bottom /
    right to the skip's size, which keeps both maps aligned at the top-left.

    ``stem_width``: channels of the full-resolution level alone (default ``base_width``). The
    two convs there and the two after the last concatenation run on the largest maps with the
    fewest channels, where a convolution is closest to memory-bound (docs/performance.md); a
    narrower stem moves the model's time to the wide, small levels.

    ``filter_bank``: the first convolution also sees ilastik's pixel features of the input
    (:class:`~pixelwise.models.filterbank.FilterBank`: 48 fixed Gaussian-derivative features per
    channel at scales 0.7-10 px), which lets the network learn from a few clicks what a random
    forest on those features learns (the labeling page's live model). ``bank_width`` > 0: a 1x1
    conv (+ BatchNorm, ReLU) mixes those features per pixel into that many channels first, which
    makes the first 3x3 conv 48 x C / ``bank_width`` times cheaper. ``bank_dropout``: in
    training, each feature map of the bank is zeroed with this probability, per sample (the
    others scaled up; ``nn.Dropout2d``), so that no prediction leans on a few features, as a
    random forest's trees each see a random subset. ``zero_head``: the 1x1 head starts at zero
    (the logits are 0, the scores uniform, until the first step).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 4,
        base_width: int = 64,
        width: float = 1.0,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.0,
        stem_width: int | None = None,
        filter_bank: bool = False,
        bank_width: int = 0,
        zero_head: bool = False,
        bank_dropout: float = 0.0,
    ) -> None:
        if padding not in ("valid", "same"):
            raise ConfigError(f"U-Net padding must be 'valid' or 'same', got {padding!r}")
        if bank_width and not filter_bank:
            raise ConfigError("U-Net bank_width mixes the filter bank: set filter_bank=true too")
        if bank_dropout and not filter_bank:
            raise ConfigError("U-Net bank_dropout drops filter-bank maps: set filter_bank=true too")
        border = _border(depth) if padding == "valid" else 0
        super().__init__(num_classes, in_channels, border)
        self.depth = depth
        self.tile_grid = 2**depth
        self.padding = padding
        pad = 1 if padding == "same" else 0
        chans = [scaled(base_width * 2**level, width) for level in range(depth + 1)]
        if stem_width is not None:  # the full-resolution level only (SMP's decoder ends at 16)
            chans[0] = scaled(stem_width, width)
        # ilastik's fixed features beside the image (padding "same" only: they need borders)
        self.features = FilterBank(in_channels) if filter_bank else None
        # bank_width > 0: a 1x1 conv mixes them per pixel into that many channels first (what a
        # pixel classifier does; 3x3 convs over 48 x C maps are most of a small net's multiply-adds)
        self.feature_mix = (
            nn.Sequential(*conv_bn_relu(self.features.out_channels, bank_width, 1, 0, True))
            if filter_bank and bank_width > 0
            else nn.Identity()
        )
        self.bank_dropout = nn.Dropout2d(bank_dropout) if bank_dropout > 0 else nn.Identity()
        self.encoder = nn.ModuleList()
        previous = in_channels + (bank_width or self.features.out_channels if filter_bank else 0)
        for level in range(depth):
            self.encoder.append(double_conv(previous, chans[level], pad, batch_norm))
            previous = chans[level]
        self.pool = nn.MaxPool2d(2, 2)
        self.bottom = double_conv(chans[depth - 1], chans[depth], pad, batch_norm)
        # The paper: "Drop-out layers at the end of the contracting path" (its Caffe net drops
        # the deepest encoder level's output and the bottom block's output).
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        levels = list(reversed(range(depth)))  # decoder order: deepest first
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[lv + 1], chans[lv], 2, stride=2) for lv in levels
        )
        self.decoder = nn.ModuleList(
            double_conv(2 * chans[lv], chans[lv], pad, batch_norm) for lv in levels
        )
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        self.skip_offsets = _skip_offsets(depth) if padding == "valid" else [0] * depth
        init_he(self, mode="fan_in")
        if zero_head:  # uniform scores at the start, as FCN's zero-initialised score layers
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``(N, in_channels, H, W) -> (N, num_classes, *output_size(H, W))`` logits.
        ``features``: ``self.features(x)`` computed beforehand (a trainer caches them per
        image), when the model has a filter bank."""
        self.output_size(*x.shape[-2:])  # raises ConfigError for too-small inputs
        if self.features is not None:
            feats = self.features(x) if features is None else features
            x = torch.cat([x, self.feature_mix(self.bank_dropout(feats))], dim=1)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level == self.depth - 1:
                x = self.dropout(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for up, block, skip, offset in zip(
            self.up, self.decoder, reversed(skips), self.skip_offsets, strict=True
        ):
            x = up(x)
            if self.padding == "valid":
                skip = crop(skip, offset, offset, *x.shape[-2:])
            else:
                x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Exact logits size for an ``h x w`` input (floor pooling); ConfigError if too small."""
        out_h, out_w = self._extent(h), self._extent(w)
        if out_h < 1 or out_w < 1:
            smallest = next(n for n in range(1, 2 ** (self.depth + 4)) if self._extent(n) >= 1)
            raise ConfigError(
                f"input {h}x{w} is too small for this U-Net (depth {self.depth}, "
                f"{self.padding}): the smallest is {smallest}x{smallest}"
            )
        return out_h, out_w

    def _extent(self, n: int) -> int:
        """One spatial dimension through the net; 0 if some map would be empty."""
        loss = 4 if self.padding == "valid" else 0  # two 3x3 convs
        size = n
        for _ in range(self.depth):
            n -= loss
            if n < 2:
                return 0
            n //= 2
        n -= loss
        if n < 1:
            return 0
        for _ in range(self.depth):
            n = 2 * n - loss
            if n < 1:
                return 0
        return n if self.padding == "valid" else size  # "same": the skips restore odd sizes

    def valid_input_size(self, out_h: int, out_w: int) -> tuple[int, int]:
        """Smallest input whose logits cover ``out_h x out_w`` with every pooling seeing even sizes.

        That is the overlap-tile condition of the paper: no row or column is dropped by a
        pooling, so the output is centred, ``border`` pixels in from every side of the input.
        """
        return self._valid_input(out_h), self._valid_input(out_w)

    def _valid_input(self, out: int) -> int:
        if self.padding == "same":
            scale = 2**self.depth
            return scale * max(1, math.ceil(out / scale))
        # A bottom output of b pixels gives 2^d * b - 4 * (2^d - 1) output pixels from an input
        # of 2^d * (b + 4) + 4 * (2^d - 1) pixels, every pooling then sees an even size.
        scale = 2**self.depth
        b = max(1, math.ceil((out + 4 * (scale - 1)) / scale))
        while self._extent(scale * (b + 4) + 4 * (scale - 1)) < max(out, 1):
            b += 1
        return scale * (b + 4) + 4 * (scale - 1)


def _skip_offsets(depth: int) -> list[int]:
    """Top/left crop of each skip onto its up-sampled map (valid convs), deepest level first.

    ``a`` is the offset of a level's final map within that level's input (after pooling); the
    up-conv doubles it. For inputs from ``valid_input_size`` this is the centre crop; for other
    inputs it keeps skip and up-sampled map aligned where a centre crop would not.
    """
    offsets = []
    a = 2  # bottom block: two valid convs lose 2 pixels at the top
    for _ in range(depth):
        t = 2 * a
        offsets.append(t)
        a = 2 + t + 2  # encoder convs + crop + decoder convs of this level
    return offsets


def _border(depth: int) -> int:
    """Pixels lost on each side by the valid U-Net: 6 * 2^depth - 4 (92 for depth 4)."""
    return _skip_offsets(depth)[-1] + 4


def _build(model: str, padding: str, num_classes: int, **options: object) -> UNet:
    check_args(model, num_classes=num_classes, **options)
    return UNet(num_classes, padding=padding, **options)


@register(
    "unet",
    paper="Ronneberger, Fischer & Brox 2015",
    use="microscopy as published: overlap-tile, any size",
)
def unet(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 4,
    base_width: int = 64,
    width: float = 1.0,
    batch_norm: bool = False,
    dropout: float = 0.0,
    stem_width: int | None = None,
) -> UNet:
    """The paper's U-Net: valid 3x3 convs, output ``border`` pixels smaller on each side."""
    return _build("unet", "valid", **locals())


@register(
    "unet_same",
    paper="U-Net, padded + BatchNorm",
    use="the planner's default: any data, CPU-trainable",
)
def unet_same(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 4,
    base_width: int = 64,
    width: float = 1.0,
    batch_norm: bool = True,
    dropout: float = 0.0,
    stem_width: int | None = None,
    filter_bank: bool = False,
    bank_width: int = 0,
    zero_head: bool = False,
    bank_dropout: float = 0.0,
) -> UNet:
    """U-Net with padded convs and BatchNorm: logits exactly the input's size.

    ``filter_bank=True``: ilastik's fixed pixel features (48 per input channel) beside the image
    at the input, for learning from a few clicks (the labeling page's default); ``bank_width``:
    mixed per pixel into that many channels first (0: fed as they are); ``bank_dropout``: the
    probability that training drops each of its maps, per sample. ``zero_head=True``: the
    1x1 head starts at zero, so the first predictions are uniform and the first steps move
    them towards the labelled classes (with He-initialised scores a model trained a few steps
    on one class's strokes may still predict another; tried for the labeling page, off there:
    docs/labeling.md)."""
    return _build("unet_same", "same", **locals())


__all__ = ["UNet", "unet", "unet_same"]

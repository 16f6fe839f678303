"""A patch classifier fine-tuned into a segmentation FCN: convolutionalize + learned upsampling.

``build("convolutionalized", num_classes)`` is the LeNet-style classifier that
:func:`pixelwise.heatmap.train_patch_classifier` trains (:func:`~pixelwise.models.classifier.lenet`,
same arguments), rewritten as a fully convolutional net
(:func:`~pixelwise.models.classifier.convolutionalize`,
stride 4) and followed by a transposed convolution initialised to bilinear interpolation, so it
can be fine-tuned end to end on pixel labels (``pixelwise train --model convolutionalized
--init-from CLASSIFIER_RUN``).

Geometry: the input is mirror-padded by half the window on each side (so every output pixel
has a full window), the coarse score ``[i, j]`` is the classifier's score for the window with
top-left corner ``(i * stride - pad, j * stride - pad)`` in input coordinates (its centre is
``i * stride - 0.5`` for the even 32-pixel window), and the upsampled map is cropped so each
score sits at that centre; the output is exactly ``H x W`` for any ``H, W >= 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixelwise.errors import ConfigError
from pixelwise.models import register
from pixelwise.models.base import SegmentationModel
from pixelwise.models.classifier import convolutionalize, lenet
from pixelwise.models.layers import BilinearUpsample, check_args, crop, mirror_pad, scaled

__all__ = ["ConvolutionalizedFCN", "classifier_state", "mirror_pad"]


class ConvolutionalizedFCN(SegmentationModel):
    """``fcn`` (a convolutionalized LeNet) -> ``upscore`` (learned bilinear x stride) -> crop.

    ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W >= 1``. Parameter names
    are the classifier's with a ``fcn.features.`` / ``fcn.head.`` prefix (see
    :func:`classifier_state`); ``upscore.weight`` is the new layer.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: float = 1.0, patch_size: int = 32
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.patch_size = patch_size
        with torch.device("cpu"):  # convolutionalize checks itself with a real forward pass
            classifier = lenet(
                num_classes=num_classes,
                in_channels=in_channels,
                padding=0,
                input_size=patch_size,
                widths=(scaled(6, width), scaled(16, width)),
                hidden=(scaled(120, width), scaled(84, width)),
            )
            self.fcn = convolutionalize(classifier, patch_size, in_channels)
        sy, sx = self.fcn.stride
        if sy != sx:  # LeNet: always 4 x 4
            raise ConfigError(f"non-square stride {self.fcn.stride}")
        self.stride = sy
        self.upscore = BilinearUpsample(num_classes, sy)
        rf, off = self.fcn.receptive_field, self.fcn.offset
        # Pad half the window before (so coarse i has top-left i * s - pad) and the rest of the
        # receptive field after: (H + pad + after - rf) // s + 1 = H // s + 1 coarse scores,
        # enough for bilinear interpolation up to the last pixel.
        self.pad = (patch_size // 2, patch_size // 2)
        self.pad_after = (rf[0] - self.pad[0], rf[1] - self.pad[1])
        # Coarse i's receptive field centre is (in padded coordinates) i*s - off + (rf - 1) / 2;
        # upscore puts it at i*s + s - 0.5: crop by s + off - rf / 2 + pad (an integer for even
        # rf, as LeNet's 32) to place it at its centre in input coordinates.
        self.crop_offset = (
            sy + off[0] - rf[0] // 2 + self.pad[0],
            sx + off[1] - rf[1] // 2 + self.pad[1],
        )

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)``: any input of at least 1 x 1 pixel."""
        if h < 1 or w < 1:
            raise ConfigError(f"input {h}x{w} is empty: the convolutionalized FCN takes 1x1 and up")
        return h, w

    def scores(self, x: Tensor) -> Tensor:
        """Coarse scores ``(N, K, H // s + 1, W // s + 1)`` before upsampling: ``[..., i, j]`` is
        the classifier's score of the (mirror-padded) window with top-left corner
        ``(i * s - pad, j * s - pad)``."""
        (pt, pl), (pb, pr) = self.pad, self.pad_after
        return self.fcn(mirror_pad(x, pt, pb, pl, pr))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        up = self.upscore(self.scores(x))
        return crop(up, self.crop_offset[0], self.crop_offset[1], h, w)


def classifier_state(
    source: dict[str, Tensor],
    target: nn.Module,
    prefixes: tuple[str, ...] = ("fcn.features.", "fcn.head."),
) -> dict[str, Tensor]:
    """Rename (and reshape) a patch classifier's state dict for ``target``.

    Each source tensor ``name`` goes to the first of ``name``, ``fcn.features.name`` and
    ``fcn.head.name`` that ``target`` has with the same number of elements, reshaped to the
    target's shape (a Linear ``(out, C*k*k)`` weight becomes the ``(out, C, k, k)`` conv weight,
    as :func:`~pixelwise.dense.convolutionalize` reshapes it). Others are dropped. Pass the result
    to :func:`pixelwise.models.transfer_weights`.
    """
    shapes = {k: v.shape for k, v in target.state_dict().items()}
    out: dict[str, Tensor] = {}
    for name, tensor in source.items():
        for key in (name, *(p + name for p in prefixes)):
            shape = shapes.get(key)
            if shape is not None and shape.numel() == tensor.numel() and key not in out:
                out[key] = tensor.reshape(shape)
                break
    return out


@register(
    "convolutionalized",
    paper="the lectures' migration to FCN",
    use="teaching: a patch classifier made dense",
)
def build_convolutionalized(
    num_classes: int, in_channels: int = 3, width: float = 1.0, patch_size: int = 32
) -> ConvolutionalizedFCN:
    """The heatmap patch classifier (LeNet, ``patch_size`` windows) as an FCN with learned
    bilinear upsampling; initialise it with ``--init-from`` a patch classifier folder."""
    check_args("convolutionalized", num_classes=num_classes, in_channels=in_channels, width=width)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 16:
        raise ConfigError(
            f"model 'convolutionalized': patch_size must be an integer >= 16, got {patch_size!r}"
        )
    return ConvolutionalizedFCN(num_classes, in_channels, width, patch_size)

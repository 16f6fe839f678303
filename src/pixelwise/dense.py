"""Dense prediction from an image classifier: four ways to get a class score at every window.

A classifier trained on ``h x w`` patches answers "what is in this window?". Applied at every
position of a larger image it gives class heatmaps. There are four ways to do it (see
docs/dense.md, and the seeds: the sliding-window classifier, "migration to FCNN of a pretrained
model", "shift and stitch", à trous):

- :func:`sliding_window`: crop every window and classify it (slow: nothing is shared).
- :func:`convolutionalize`: rewrite the Linear layers as convolutions (the first one a
  ``k x k`` conv over the ``C x k x k`` feature map, the others ``1 x 1``); one pass gives the
  scores of the windows at a stride ``f`` (the product of the conv/pool strides).
- :func:`shift_and_stitch`: ``f^2`` passes of that net over shifted inputs, interleaved, give
  the scores of *every* window (stride 1).
- :func:`atrous`: the same net with stride-1 layers and dilated kernels gives the stride-1 map
  in one pass.

Without padding in the feature extractor the four agree exactly (up to float rounding). Grids:
output ``[..., i, j]`` of the convolutionalized net is the window whose top-left corner is
``(i * f, j * f)``; output ``[..., y, x]`` of the stride-1 methods is the window at ``(y, x)``
(so it labels the window's centre pixel ``(y + h // 2, x + w // 2)``).

Also here: :func:`conv_matrix` (a convolution as a matrix ``W``) and
:func:`transposed_conv_via_matrix` (a transposed convolution is ``W^T``). :func:`lenet` (the
LeNet-5-style reference classifier), :func:`convolutionalize` and :class:`ConvolutionalizedNet`
live in the model layer (:mod:`pixelwise.models.classifier`, which the ``convolutionalized``
registry model builds on) and are re-exported here.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import ConfigError
from pixelwise.models.classifier import (
    SLIDING,
    ConvolutionalizedNet,
    Pair,
    convolutionalize,
    lenet,
    pair,
    sliding_params,
)

__all__ = [
    "AtrousNet",
    "ConvolutionalizedNet",
    "atrous",
    "conv_matrix",
    "convolutionalize",
    "lenet",
    "shift_and_stitch",
    "sliding_window",
    "transposed_conv_via_matrix",
]


class AtrousNet(ConvolutionalizedNet):
    """A :class:`ConvolutionalizedNet` rewritten with stride-1 layers and dilated kernels.

    Input ``(N, C, H, W)``; output ``(N, K, H - window[0] + 1, W - window[1] + 1)``: ``[..., y, x]``
    is the score of the window with top-left corner ``(y, x)``, as :func:`shift_and_stitch`
    computes it with ``f^2`` passes. ``stride`` is ``(1, 1)``; ``source_stride`` is the stride
    of the net it came from.
    """

    def __init__(self, *args: object, source_stride: Pair, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.source_stride = source_stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.features(x))
        oh, ow = x.shape[-2] - self.window[0] + 1, x.shape[-1] - self.window[1] + 1
        return out[..., :oh, :ow]


# --------------------------------------------------------------------------- sliding window


def _batched(image: Tensor) -> Tensor:
    if image.ndim == 3:
        return image[None]
    if image.ndim != 4:
        raise ConfigError(
            f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}"
        )
    return image


def _grid(size: tuple[int, int], window: Pair, stride: Pair) -> Pair:
    if size[0] < window[0] or size[1] < window[1]:
        raise ConfigError(
            f"image {size[0]}x{size[1]} is smaller than the window {window[0]}x{window[1]}"
        )
    return (size[0] - window[0]) // stride[0] + 1, (size[1] - window[1]) // stride[1] + 1


def sliding_window(
    classifier: Callable[[Tensor], Tensor],
    image: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    batch_size: int = 1024,
) -> Tensor:
    """Classify every ``window`` crop of ``image`` (C, H, W) or (N, C, H, W), one batch of crops at
    a time: the naive dense classifier. Returns ``(N, K, oh, ow)`` with
    ``oh = (H - window_h) // stride_h + 1``; ``[..., i, j]`` is the score of the crop with
    top-left corner ``(i * stride_h, j * stride_w)``.

    Crops are strided views (``Tensor.unfold``), copied ``batch_size`` at a time into a
    channels-last batch (about 1.5x faster convolutions on CPU than NCHW; same values). Runs
    under ``torch.inference_mode`` in the classifier's current mode (call ``.eval()`` first).
    """
    x = _batched(image)
    win, st = pair(window, "window"), pair(stride, "stride")
    if min(st) < 1 or batch_size < 1:
        raise ConfigError(f"stride {st} and batch_size {batch_size} must be positive")
    n, c = x.shape[:2]
    oh, ow = _grid((x.shape[2], x.shape[3]), win, st)
    # (N, C, oh, ow, wh, ww) view -> (N, oh, ow, wh, ww, C): window (n, i, j) without copying
    crops = x.unfold(2, win[0], st[0]).unfold(3, win[1], st[1]).permute(0, 2, 3, 4, 5, 1)
    out: Tensor | None = None
    rows = max(1, batch_size // ow)
    cols = min(ow, batch_size)
    with torch.inference_mode():
        for b in range(n):
            for i0 in range(0, oh, rows):
                i1 = min(oh, i0 + rows)
                for j0 in range(0, ow, cols):
                    j1 = min(ow, j0 + cols)
                    # one copy into (B, wh, ww, C), seen as a channels-last (B, C, wh, ww)
                    batch = crops[b, i0:i1, j0:j1].reshape(-1, win[0], win[1], c)
                    batch = batch.permute(0, 3, 1, 2)
                    scores = classifier(batch)
                    if out is None:
                        out = scores.new_empty(n, oh, ow, scores.shape[1])
                    out[b, i0:i1, j0:j1] = scores.reshape(i1 - i0, j1 - j0, -1)
    assert out is not None
    return out.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- shift and stitch


def _fcn_geometry(fcn: nn.Module) -> tuple[Pair, Pair]:
    """``(stride, window)`` of a :func:`convolutionalize` net; ``ConfigError`` for other nets."""
    if not isinstance(fcn, ConvolutionalizedNet):
        raise ConfigError(
            f"{type(fcn).__name__} is not a convolutionalized net (no stride or window); "
            "build it with convolutionalize()"
        )
    return pair(fcn.stride), pair(fcn.window)


def shift_and_stitch(fcn: ConvolutionalizedNet, image: Tensor) -> Tensor:
    """Every window's scores from ``f^2`` passes of a fully convolutional net of stride ``f``.

    ``fcn``: a :func:`convolutionalize` net (uses its ``stride`` ``(fy, fx)`` and ``window``
    ``(h, w)``); ``image``: (C, H, W) or (N, C, H, W). Returns ``(N, K, H - h + 1, W - w + 1)``:
    ``[..., y, x]`` is the score of the window with top-left corner ``(y, x)`` (its centre pixel is
    ``(y + h // 2, x + w // 2)``), the grid of :func:`sliding_window` at stride 1.

    How shifts map to outputs: the pass on the input shifted by ``(dy, dx)`` (its first ``dy``
    rows and ``dx`` columns cut off), ``fcn(x[..., dy:, dx:])``, scores the windows at
    ``(dy + i * fy, dx + j * fx)``; it fills ``out[..., dy::fy, dx::fx]``. The ``fy * fx``
    shifts ``0 <= dy < fy``, ``0 <= dx < fx`` cover every position exactly once.
    """
    x = _batched(image)
    (fy, fx), win = _fcn_geometry(fcn)
    oh, ow = _grid((x.shape[2], x.shape[3]), win, (1, 1))
    out: Tensor | None = None
    with torch.inference_mode():
        for dy in range(min(fy, oh)):
            ny = len(range(dy, oh, fy))
            for dx in range(min(fx, ow)):
                nx = len(range(dx, ow, fx))
                scores = fcn(x[:, :, dy:, dx:])
                if scores.shape[2] < ny or scores.shape[3] < nx:
                    raise ConfigError(
                        f"shift ({dy}, {dx}) gave a {scores.shape[2]}x{scores.shape[3]} map, "
                        f"expected at least {ny}x{nx}: is fcn.stride right?"
                    )
                if out is None:
                    out = scores.new_empty(x.shape[0], scores.shape[1], oh, ow)
                out[:, :, dy::fy, dx::fx] = scores[:, :, :ny, :nx]
    assert out is not None
    return out


# --------------------------------------------------------------------------- à trous


class _DilatedPool2d(nn.Module):
    """Max or average pooling at stride 1 with a dilated kernel and explicit padding (-inf for
    max, 0 for average, as ``MaxPool2d`` / ``AvgPool2d(count_include_pad=True)`` pad), which
    PyTorch's pooling layers do not allow for dilated average pooling or large padding."""

    def __init__(self, mode: str, kernel: Pair, dilation: Pair, padding: Pair) -> None:
        super().__init__()
        self.mode, self.kernel, self.dilation, self.padding = mode, kernel, dilation, padding

    def extra_repr(self) -> str:
        return (
            f"{self.mode}, kernel={self.kernel}, dilation={self.dilation}, padding={self.padding}"
        )

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (dh, dw), (ph, pw) = self.kernel, self.dilation, self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=-torch.inf if self.mode == "max" else 0.0)
        if self.mode == "max":
            return F.max_pool2d(x, (kh, kw), stride=1, dilation=(dh, dw))
        oh, ow = x.shape[-2] - (kh - 1) * dh, x.shape[-1] - (kw - 1) * dw
        total = x[..., :oh, :ow].clone()
        for a in range(kh):
            for b in range(kw):
                if a or b:
                    total += x[..., a * dh : a * dh + oh, b * dw : b * dw + ow]
        return total / (kh * kw)


def _atrous_layer(layer: nn.Module, dil: list[int]) -> nn.Module:
    """``layer`` at stride 1 with its dilation and padding multiplied by ``dil`` (the stride
    accumulated before it); updates ``dil`` in place with the layer's own stride."""
    if not isinstance(layer, SLIDING):
        return copy.deepcopy(layer)
    k, s, p, d = sliding_params(layer)
    nd = (d[0] * dil[0], d[1] * dil[1])
    npad = (p[0] * dil[0], p[1] * dil[1])
    if isinstance(layer, nn.Conv2d):
        new: nn.Module = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            k,
            stride=1,
            padding=npad,
            dilation=nd,
            groups=layer.groups,
            bias=layer.bias is not None,
        ).to(device=layer.weight.device, dtype=layer.weight.dtype)
        new.load_state_dict(layer.state_dict())
    elif isinstance(layer, nn.MaxPool2d):
        if layer.ceil_mode:
            raise ConfigError("atrous: MaxPool2d with ceil_mode=True is not supported")
        new = _DilatedPool2d("max", k, nd, npad)
    else:  # AvgPool2d
        if layer.ceil_mode or layer.divisor_override is not None:
            raise ConfigError("atrous: AvgPool2d with ceil_mode or divisor_override unsupported")
        if any(p) and not layer.count_include_pad:
            raise ConfigError("atrous: padded AvgPool2d needs count_include_pad=True")
        new = _DilatedPool2d("avg", k, nd, npad)
    dil[0] *= s[0]
    dil[1] *= s[1]
    return new


def atrous(fcn: ConvolutionalizedNet) -> AtrousNet:
    """Rewrite a :func:`convolutionalize` net to give every window's scores in one pass.

    Every conv/pool runs at stride 1; a layer that came after layers of total stride ``d`` gets
    its dilation (and padding) multiplied by ``d``: max pooling ``k``/stride ``s`` becomes
    kernel ``k``, stride 1, dilation ``d`` and the layers after it see ``d *= s``; convs (also the
    ones made from Linear layers) keep their weights (copied) and get dilation ``d``. The result
    maps ``(N, C, H, W)`` to ``(N, K, H - h + 1, W - w + 1)``, equal to :func:`shift_and_stitch`
    without padding (with padding: equal where receptive fields stay inside the image, see
    docs/dense.md).
    """
    if not isinstance(fcn, ConvolutionalizedNet):
        raise ConfigError(f"atrous: expected a convolutionalize() net, got {type(fcn).__name__}")
    dil = [1, 1]
    features = nn.Sequential(
        OrderedDict((n, _atrous_layer(m, dil)) for n, m in fcn.features.named_children())
    )
    head = nn.Sequential(
        OrderedDict((n, _atrous_layer(m, dil)) for n, m in fcn.head.named_children())
    )
    net = AtrousNet(
        features,
        head,
        window=fcn.window,
        stride=(1, 1),
        receptive_field=fcn.receptive_field,
        offset=fcn.offset,
        num_classes=fcn.num_classes,
        source_stride=fcn.stride,
    )
    return net.train(fcn.training)


# --------------------------------------------------------------------------- conv as a matrix


def conv_matrix(
    kernel: Tensor,
    input_shape: tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """The matrix ``W`` (out_h * out_w, H * W) of a single-channel convolution (cross-correlation,
    as ``F.conv2d``) with ``kernel`` (kh, kw) on an ``input_shape`` (H, W) image, zero padding
    ``padding``: ``F.conv2d(x, kernel).flatten() == W @ x.flatten()`` (row-major flattening).
    """
    if kernel.ndim != 2:
        raise ConfigError(f"kernel must be 2-D (kh, kw), got shape {tuple(kernel.shape)}")
    (kh, kw), (h, w) = kernel.shape, pair(input_shape, "input_shape")
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ConfigError(f"kernel {kh}x{kw} does not fit a {h}x{w} input with padding {padding}")
    mat = kernel.new_zeros(oh * ow, h * w)
    r = torch.arange(oh)[:, None].expand(oh, ow)
    c = torch.arange(ow)[None, :].expand(oh, ow)
    row = r * ow + c
    for a in range(kh):
        for b in range(kw):
            iy, ix = r * sh - ph + a, c * sw - pw + b
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            mat.index_put_((row[ok], (iy * w + ix)[ok]), kernel[a, b].expand(int(ok.sum())), True)
    return mat


def transposed_conv_via_matrix(
    x: Tensor,
    kernel: Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """``F.conv_transpose2d`` of ``x`` (h, w) with ``kernel`` (kh, kw) computed as ``W^T @ x``:
    ``W = conv_matrix(kernel, (H, W), stride, padding)`` is the convolution that maps the
    ``(H, W) = ((h - 1) * s - 2 * p + kh, ...)`` output back to ``(h, w)``. Returns (H, W).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel.shape, pair(stride), pair(padding)
    out = ((x.shape[0] - 1) * sh - 2 * ph + kh, (x.shape[1] - 1) * sw - 2 * pw + kw)
    mat = conv_matrix(kernel, out, stride, padding)
    return (mat.T @ x.reshape(-1)).reshape(out)

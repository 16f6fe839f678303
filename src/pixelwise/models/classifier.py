"""Image classifiers as fully convolutional nets: :func:`lenet` and :func:`convolutionalize`.

A classifier of ``h x w`` patches (conv/pool features, ``nn.Flatten``, ``nn.Linear`` layers) is
rewritten with the same weights as a net of convolutions only (:class:`ConvolutionalizedNet`):
one pass over a larger image scores every window at the net's stride. This is the model layer's
half of :mod:`pixelwise.dense` (which adds shift-and-stitch, à trous and the sliding window on
top) so that the ``convolutionalized`` registry model can build on it.

Shapes use N (batch), C (channels), K (classes), H, W (height, width).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from pixelwise.errors import ConfigError

__all__ = [
    "CLASSIFIER_FILE",
    "META_FILE",
    "SLIDING",
    "ConvolutionalizedNet",
    "Pair",
    "convolutionalize",
    "has_patch_classifier",
    "lenet",
    "pair",
    "sliding_params",
]

Pair = tuple[int, int]

# Layers that act on each position independently: valid anywhere, on (N, C) and (N, C, H, W).
_POINTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.AlphaDropout,
)
#: Layers of a feature extractor that slide over the image (position-independent weights).
SLIDING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_FEATURE_OK = (*_POINTWISE, *SLIDING, nn.BatchNorm2d, nn.Dropout2d, nn.LocalResponseNorm)
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_HEAD_OK = (*_POINTWISE, nn.Linear, nn.BatchNorm1d, nn.Softmax, nn.LogSoftmax)


def pair(v: int | tuple[int, ...] | list[int], what: str = "value") -> Pair:
    """``(v, v)`` for an int, ``(a, b)`` for a pair; ``ConfigError`` naming ``what`` otherwise."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, tuple | list) and len(v) == 2 and all(isinstance(a, int) for a in v):
        return (int(v[0]), int(v[1]))
    raise ConfigError(f"{what} must be an int or a pair of ints, got {v!r}")


class ConvolutionalizedNet(nn.Module):
    """A classifier rewritten as a fully convolutional net: ``head(features(x))``.

    Input ``(N, C, H, W)`` with ``H, W >= window``; output ``(N, K, oh, ow)`` of class scores,
    ``[..., i, j]`` being the classifier's scores for the window with top-left corner
    ``(i * stride[0], j * stride[1])``. Without padding ``oh = (H - rf) // stride + 1`` with
    ``rf = receptive_field`` (``== window`` unless the classifier ignores its last rows/columns).

    Attributes: ``window`` (the classifier's input size), ``stride`` (total downsampling),
    ``receptive_field`` (input pixels one output depends on, per axis) and ``offset`` (how far
    above/left of the window's corner that field starts: the accumulated padding; 0 without
    padding), ``num_classes``.
    """

    def __init__(
        self,
        features: nn.Sequential,
        head: nn.Sequential,
        window: Pair,
        stride: Pair,
        receptive_field: Pair,
        offset: Pair,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.window = window
        self.stride = stride
        self.receptive_field = receptive_field
        self.offset = offset
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _leaves(module: nn.Module, name: str, out: list[tuple[str, nn.Module]]) -> None:
    """Flatten ``module`` into the layers it runs, in child order (checked later by a forward)."""
    known = (*_FEATURE_OK, *_HEAD_OK, *_ADAPTIVE, nn.Flatten)
    children = list(module.named_children())
    if isinstance(module, known) or not children:
        out.append((name, module))
        return
    for child_name, child in children:
        _leaves(child, f"{name}.{child_name}" if name else child_name, out)


def _describe(name: str, layer: nn.Module) -> str:
    return f"layer {name!r} ({type(layer).__name__})"


def _check_features(layers: list[tuple[str, nn.Module]]) -> None:
    for name, layer in layers:
        if isinstance(layer, _ADAPTIVE):
            raise ConfigError(
                f"cannot convolutionalize: {_describe(name, layer)} is global/adaptive pooling "
                "before the first Linear; its output size does not depend on the input size, so "
                "the classifier has no sliding-window equivalent (remove it if it is an identity "
                "at input_size, e.g. a VGG's 7x7 pool at 224x224)"
            )
        if not isinstance(layer, _FEATURE_OK):
            raise ConfigError(
                f"cannot convolutionalize: unknown {_describe(name, layer)} before Flatten; "
                "supported: Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d, LocalResponseNorm, "
                "pointwise activations and dropout"
            )
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise ConfigError(
                f"cannot convolutionalize: {_describe(name, layer)} pads with "
                f"{layer.padding_mode!r}; only zero padding is supported"
            )


def _head_layer(name: str, layer: nn.Module, state: dict[str, object]) -> nn.Module:
    """One layer after Flatten, as a layer on ``(N, C, h, w)`` maps."""
    if isinstance(layer, nn.Linear):
        if state["first"]:
            c, kh, kw = state["shape"]
            if layer.in_features != c * kh * kw:
                raise ConfigError(
                    f"cannot convolutionalize: first Linear {name!r} expects "
                    f"{layer.in_features} inputs but the feature map at input_size "
                    f"{state['input_size'][0]}x{state['input_size'][1]} is "
                    f"{c}x{kh}x{kw} = {c * kh * kw}; pass the input size the classifier was "
                    "built for"
                )
            state["first"] = False
        else:
            c, kh, kw = layer.in_features, 1, 1
        conv = nn.Conv2d(c, layer.out_features, (kh, kw), bias=layer.bias is not None)
        conv = conv.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():  # Flatten orders (C, kh, kw) row-major: a plain reshape
            conv.weight.copy_(layer.weight.reshape(layer.out_features, c, kh, kw))
            if layer.bias is not None:
                conv.bias.copy_(layer.bias)
        return conv
    if isinstance(layer, nn.BatchNorm1d):
        bn = nn.BatchNorm2d(
            layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
        )
        bn.load_state_dict(layer.state_dict())
        return bn.to(device=state["device"], dtype=state["dtype"])
    if isinstance(layer, nn.Softmax | nn.LogSoftmax):
        if layer.dim not in (1, -1):
            raise ConfigError(
                f"cannot convolutionalize: {_describe(name, layer)} over dim {layer.dim}"
            )
        return type(layer)(dim=1)
    if isinstance(layer, _POINTWISE):
        return copy.deepcopy(layer)
    raise ConfigError(
        f"cannot convolutionalize: {_describe(name, layer)} after Flatten; only Linear, "
        "BatchNorm1d, pointwise activations, dropout and (log-)softmax can follow Flatten"
    )


def _geometry(layers: list[nn.Module]) -> tuple[Pair, Pair, Pair]:
    """(stride, receptive field, offset) per axis of a chain of layers (no floor effects)."""
    jump, rf, off = [1, 1], [1, 1], [0, 0]
    for layer in layers:
        if not isinstance(layer, SLIDING):
            continue
        k, s, p, d = sliding_params(layer)
        for a in range(2):
            rf[a] += (k[a] - 1) * d[a] * jump[a]
            off[a] += p[a] * jump[a]
            jump[a] *= s[a]
    return (jump[0], jump[1]), (rf[0], rf[1]), (off[0], off[1])


def sliding_params(layer: nn.Module) -> tuple[Pair, Pair, Pair, Pair]:
    """(kernel, stride, padding, dilation) of a Conv2d / MaxPool2d / AvgPool2d."""
    k = pair(layer.kernel_size)
    s = pair(layer.stride if layer.stride is not None else layer.kernel_size)
    d = pair(getattr(layer, "dilation", 1))
    pad = layer.padding
    if pad == "valid":
        p: Pair = (0, 0)
    elif pad == "same":
        if any(kk % 2 == 0 for kk in k):
            raise ConfigError(f"padding='same' with an even kernel {k} is asymmetric; unsupported")
        p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    else:
        p = pair(pad)
    return k, s, p, d


def convolutionalize(
    classifier: nn.Module, input_size: int | tuple[int, int], in_channels: int | None = None
) -> ConvolutionalizedNet:
    """Rewrite an image classifier as a fully convolutional net with the same weights.

    ``classifier``: an ``nn.Sequential`` (or a module whose children run in order, nested
    sequentials and blocks included) of a conv/pool feature extractor, ``nn.Flatten`` and
    ``nn.Linear`` layers (ReLU, Dropout, BatchNorm1d, (log-)softmax between). ``input_size``:
    the ``(h, w)`` it classifies. ``in_channels``: taken from the first Conv2d when omitted.

    The first Linear becomes a ``k x k`` Conv2d over the ``C x k x k`` feature map it sees at
    ``input_size`` (weight ``(out, C*k*k)`` reshaped to ``(out, C, k, k)``, as Flatten ordered
    it); later Linears become ``1 x 1`` convs. Returns a :class:`ConvolutionalizedNet` (new
    tensors, in the classifier's train/eval mode) mapping ``(N, C, H, W)`` to ``(N, K, oh, ow)``.

    Raises ConfigError for what it cannot convert: no Flatten, adaptive/global pooling or an
    unknown layer before it, an unknown layer after it, a first Linear whose ``in_features`` does
    not match the feature map, or a ``forward`` that does not just run the children in order.
    """
    size = pair(input_size, "input_size")
    layers: list[tuple[str, nn.Module]] = []
    _leaves(classifier, "", layers)
    flat = [i for i, (_, layer) in enumerate(layers) if isinstance(layer, nn.Flatten)]
    if not flat:
        raise ConfigError(
            f"cannot convolutionalize {type(classifier).__name__}: no nn.Flatten layer (a forward "
            "that reshapes with view/flatten has a dynamic shape; use nn.Flatten)"
        )
    body, flatten, tail = layers[: flat[0]], layers[flat[0]][1], layers[flat[0] + 1 :]
    if (flatten.start_dim, flatten.end_dim) not in ((1, -1), (1, 3)):
        raise ConfigError("cannot convolutionalize: Flatten must flatten dims 1..-1")
    _check_features(body)
    param = next(iter(classifier.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    if in_channels is None:
        convs = [m for _, m in body if isinstance(m, nn.Conv2d)]
        in_channels = convs[0].in_channels if convs else 3
    features = nn.Sequential(OrderedDict((n.replace(".", "_"), copy.deepcopy(m)) for n, m in body))
    was_training = classifier.training
    modes = [(m, m.training) for m in classifier.modules()]
    classifier.eval()
    features.eval()
    try:
        dummy = torch.randn(2, in_channels, *size, generator=torch.Generator().manual_seed(0))
        dummy = dummy.to(device=device, dtype=dtype)
        with torch.no_grad():
            try:
                fmap = features(dummy)
            except RuntimeError as err:
                raise ConfigError(
                    f"cannot convolutionalize: the feature extractor fails on a "
                    f"{in_channels}x{size[0]}x{size[1]} input ({str(err).splitlines()[0]})"
                ) from None
            if fmap.ndim != 4:
                raise ConfigError(f"cannot convolutionalize: feature map has shape {fmap.shape}")
            state: dict[str, object] = {
                "first": True,
                "shape": tuple(fmap.shape[1:]),
                "input_size": size,
                "device": device,
                "dtype": dtype,
            }
            head = nn.Sequential(
                OrderedDict((n.replace(".", "_"), _head_layer(n, m, state)) for n, m in tail)
            )
            if state["first"]:
                raise ConfigError("cannot convolutionalize: no nn.Linear after Flatten")
            head.eval()
            expected = classifier(dummy)
            got = head(fmap)
            if got.shape[2:] != (1, 1) or not torch.allclose(
                got.flatten(1), expected, rtol=1e-4, atol=1e-5
            ):
                raise ConfigError(
                    f"cannot convolutionalize {type(classifier).__name__}: its forward() does not "
                    "just run its children in order (the rebuilt layer chain gives other scores)"
                )
    finally:
        for m, mode in modes:
            m.training = mode
    stride, rf, off = _geometry([*features, *head])
    fcn = ConvolutionalizedNet(features, head, size, stride, rf, off, int(got.shape[1]))
    return fcn.train(was_training)


def lenet(
    num_classes: int = 10,
    in_channels: int = 1,
    padding: int = 0,
    input_size: int | tuple[int, int] = 32,
    widths: tuple[int, int] = (6, 16),
    hidden: tuple[int, int] = (120, 84),
) -> nn.Sequential:
    """LeNet-5-style classifier for ``input_size`` patches (32 x 32 as LeNet-5): conv 5x5 ->
    ReLU -> maxpool 2 -> conv 5x5 -> ReLU -> maxpool 2 -> Flatten -> Linear -> ReLU -> Linear
    -> ReLU -> Linear. ``padding`` pads both convs. Input (N, C, h, w), output (N, K); stride 4.
    """
    h, w = pair(input_size, "input_size")
    for _ in range(2):
        h, w = (h + 2 * padding - 4) // 2, (w + 2 * padding - 4) // 2
    if h < 1 or w < 1:
        raise ConfigError(
            f"lenet: input_size {input_size} is too small (needs >= {16 - 4 * padding})"
        )
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, widths[0], 5, padding=padding),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(widths[0], widths[1], 5, padding=padding),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(widths[1] * h * w, hidden[0]),
            relu3=nn.ReLU(),
            fc2=nn.Linear(hidden[0], hidden[1]),
            relu4=nn.ReLU(),
            fc3=nn.Linear(hidden[1], num_classes),
        )
    )


#: A patch classifier folder (written by ``pixelwise heatmap``): its weights and description.
CLASSIFIER_FILE = "classifier.safetensors"
META_FILE = "classifier.json"


def has_patch_classifier(folder: str | Path) -> bool:
    """Whether ``folder`` holds a patch classifier (either of its two files)."""
    folder = Path(folder)
    return (folder / META_FILE).exists() or (folder / CLASSIFIER_FILE).exists()

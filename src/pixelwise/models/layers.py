"""Building blocks shared by the model zoo: bilinear upsampling, cropping, mirror padding, init,
argument checks.

Shapes use N (batch), C (channels), H, W (height, width).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import ConfigError


def scaled(channels: int, width: float) -> int:
    """A hidden channel count times the width multiplier: ``max(1, round(channels * width))``."""
    return max(1, round(channels * width))


def check_args(model: str, **values: object) -> None:
    """Raise ``ConfigError`` naming ``model`` and the argument when a common argument is invalid.

    Knows ``num_classes``, ``in_channels``, ``depth``, ``base_width``, ``stem_width`` (integers
    >= 1; ``stem_width`` may be None), ``bank_width`` (an integer >= 0), ``width``
    (a number > 0), ``dropout`` and ``bank_dropout`` (0 <= p < 1) and boolean flags (any
    other name).
    """
    for name, value in values.items():
        if name in ("num_classes", "in_channels", "depth", "base_width", "stem_width"):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            ok = ok or (name == "stem_width" and value is None)  # None: base_width
            need = "an integer >= 1"
        elif name == "bank_width":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            need = "an integer >= 0"
        elif name == "width":
            ok = _is_number(value) and math.isfinite(value) and value > 0
            need = "a number > 0"
        elif name in ("dropout", "bank_dropout"):
            ok = _is_number(value) and 0 <= value < 1
            need = "a number in [0, 1)"
        else:
            ok = isinstance(value, bool)
            need = "True or False"
        if not ok:
            raise ConfigError(f"model '{model}': {name} must be {need}, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> Tensor:
    """Bilinear upsampling weights of shape (in_channels, out_channels, k, k), as FCN's surgery.

    The k x k filter is ``(1 - |x - c| / f) * (1 - |y - c| / f)`` with ``f = (k + 1) // 2`` and
    ``c = f - 1`` for odd k, ``f - 0.5`` for even k. Channel i maps only to channel i (the weight is
    zero off the diagonal); channels beyond ``min(in_channels, out_channels)`` get zeros.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for i in range(min(in_channels, out_channels)):
        weight[i, i] = filt
    return weight


class BilinearUpsample(nn.ConvTranspose2d):
    """Transposed convolution (kernel 2f, stride f) initialised to bilinear interpolation.

    ``(N, channels, H, W) -> (N, channels, (H - 1) * f + 2f - 2 * padding, ...)``; with
    ``padding = f // 2`` and even f that is exactly ``(H * f, W * f)``. ``learnable=False`` sets
    ``requires_grad=False`` on the weight, so it stays bilinear during training.
    """

    def __init__(
        self,
        channels: int,
        factor: int,
        learnable: bool = True,
        padding: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__(channels, channels, 2 * factor, stride=factor, padding=padding, bias=bias)
        self.factor = factor
        self.weight.requires_grad_(learnable)

    def reset_parameters(self) -> None:
        """Reset the weight to bilinear interpolation and the bias (if any) to zero."""
        kernel = bilinear_kernel(self.in_channels, self.out_channels, self.kernel_size[0])
        with torch.no_grad():
            self.weight.copy_(kernel)
            if self.bias is not None:
                self.bias.zero_()


def crop(x: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """``x[..., top:top + height, left:left + width]``; raises ``ValueError`` if out of bounds.

    (Plain slicing would silently return a smaller map.)
    """
    h, w = x.shape[-2:]
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(
            f"crop of {height}x{width} at ({top}, {left}) does not fit in a {h}x{w} map"
        )
    return x[..., top : top + height, left : left + width]


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """The central ``height x width`` window of ``x`` (rounding the offset down)."""
    h, w = x.shape[-2:]
    return crop(x, (h - height) // 2, (w - width) // 2, height, width)


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Reflect-pad ``x (N, C, H, W)`` by any amounts ``>= 0``, one axis after the other.

    Padding larger than the map (which ``F.pad`` refuses) is done by repeated reflections; an
    axis of size 1 has nothing to reflect and is repeated (edge replication). Used by the
    convolutionalized FCN on its input and by prediction to give the valid U-Net its context
    (the overlap-tile strategy of the U-Net paper; :mod:`pixelwise.tiles` computes the same
    indices without padding the image).
    """
    for axis, before, after in ((-2, top, bottom), (-1, left, right)):
        while before or after:
            n = x.shape[axis]
            a, b = (before, after) if n == 1 else (min(before, n - 1), min(after, n - 1))
            pad = (a, b, 0, 0) if axis == -1 else (0, 0, a, b)
            x = F.pad(x, pad, mode="replicate" if n == 1 else "reflect")
            before, after = before - a, after - b
    return x


def init_he(module: nn.Module, mode: str = "fan_out") -> None:
    """He (Kaiming) normal init, std ``sqrt(2 / fan)``, for every conv in ``module``.

    ``mode`` is ``"fan_in"`` (inputs feeding one output unit: the U-Net paper's sqrt(2/N)) or
    ``"fan_out"`` (torchvision's VGG). For transposed convs the fans are counted on the actual
    connectivity: an output pixel sees ``in_channels * ceil(k / stride)^2`` inputs. Biases are set
    to 0, BatchNorm to weight 1, bias 0. ``BilinearUpsample`` layers are left bilinear.
    """
    for m in module.modules():
        if isinstance(m, BilinearUpsample):
            continue
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            kh, kw = m.kernel_size
            if isinstance(m, nn.ConvTranspose2d):
                fan_in = m.in_channels * math.ceil(kh / m.stride[0]) * math.ceil(kw / m.stride[1])
                fan_out = m.out_channels * kh * kw
            else:
                fan_in = m.in_channels // m.groups * kh * kw
                fan_out = m.out_channels // m.groups * kh * kw
            std = math.sqrt(2.0 / (fan_in if mode == "fan_in" else fan_out))
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    padding: int = 1,
    batch_norm: bool = True,
    relu: bool = True,
    transposed: bool = False,
) -> nn.Sequential:
    """``conv -> [BatchNorm] -> [ReLU]`` as one ``nn.Sequential`` (indices 0, 1, 2)."""
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [conv_type(in_channels, out_channels, kernel_size, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)

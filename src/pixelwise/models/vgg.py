"""VGG16 encoder with torchvision's parameter names, and loading of ImageNet VGG16 weights.

``vgg16_features`` builds the same ``nn.Sequential`` as torchvision's ``vgg16().features``
(``vgg16_bn().features`` with ``batch_norm=True``), so its state-dict keys (``features.0.weight``,
``features.28.bias``, ...) match a torchvision checkpoint exactly. torchvision is not needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from pixelwise.errors import ConfigError
from pixelwise.models.layers import scaled

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_BN_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"

# torchvision's configuration "D": channel counts, "M" = 2x2 max pool.
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
VGG16_CFG += [512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_features(
    in_channels: int = 3,
    width: float = 1.0,
    batch_norm: bool = False,
    first_padding: int = 1,
    pool_ceil_mode: bool = False,
    pool_indices: bool = False,
) -> nn.Sequential:
    """The 13 conv layers and 5 max pools of VGG16 in torchvision's order and indices.

    Every conv is 3x3 with padding 1 (``first_padding`` for conv1_1: FCN uses 100), followed by
    ``BatchNorm2d`` when ``batch_norm`` and by ``ReLU``. Pools are 2x2 stride 2; with
    ``pool_indices`` they return ``(output, indices)`` for ``nn.MaxUnpool2d``, so the sequential
    cannot be called directly: iterate over it. Output stride 32, channels ``scaled(512, width)``.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=pool_ceil_mode, return_indices=pool_indices))
            continue
        out = scaled(int(item), width)
        padding = first_padding if not layers else 1
        layers.append(nn.Conv2d(channels, out, 3, padding=padding))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers)


def load_vgg16_weights(
    model: nn.Module, state_dict: dict[str, Tensor], strict_features: bool = True
) -> list[str]:
    """Copy a torchvision ``vgg16`` / ``vgg16_bn`` state dict into ``model``; return loaded names.

    ``features.*`` tensors (BatchNorm running statistics included) are copied by name. If the
    model has ``fc6`` / ``fc7`` convolutions, ``classifier.0`` (Linear 25088 -> 4096) is reshaped
    to ``fc6`` (4096 x 512 x 7 x 7) and ``classifier.3`` (4096 -> 4096) to ``fc7``
    (4096 x 4096 x 1 x 1): a Linear on the flattened (512, 7, 7) pool5 map is the same function
    as that 7x7 convolution ("convolutionalization"). ``classifier.6`` (ImageNet classes) is
    skipped. With ``strict_features``, every ``features.*`` key must exist on both sides (this
    catches a vgg16 file loaded into a batch-norm encoder and vice versa). Shape mismatches
    (width != 1, in_channels != 3) raise ``ConfigError`` naming the key and both shapes.
    """
    target = model.state_dict()
    plan: list[tuple[str, str, Tensor]] = []
    for key, value in state_dict.items():
        if key.startswith("features."):
            if key not in target:
                if strict_features:
                    raise ConfigError(
                        f"VGG16 weights: '{key}' has no counterpart in the model "
                        "(vgg16 weights need batch_norm=False, vgg16_bn weights batch_norm=True)"
                    )
                continue
            plan.append((key, key, value))
        elif key.startswith(("classifier.0.", "classifier.3.")):
            name = ("fc6." if key.startswith("classifier.0.") else "fc7.") + key.split(".")[-1]
            if name in target:
                plan.append((key, name, value))
    if strict_features:
        missing = sorted(
            (
                k
                for k in target
                if k.startswith("features.")
                and k not in state_dict
                # torchvision's vgg16_bn file predates BatchNorm's num_batches_tracked buffer
                and not k.endswith(".num_batches_tracked")
            ),
            key=_natural,
        )
        if missing:
            raise ConfigError(
                f"VGG16 weights: no tensor for model key '{missing[0]}' "
                f"({len(missing)} missing; is this a vgg16 / vgg16_bn state dict?)"
            )
    loaded = []
    with torch.no_grad():
        for key, name, value in plan:
            dest = target[name]
            convolutionalize = name in ("fc6.weight", "fc7.weight") and value.dim() == 2
            if convolutionalize and value.shape[1] == math.prod(dest.shape[1:]):
                value = value.reshape(value.shape[0], *dest.shape[1:])
            if value.shape != dest.shape:
                raise ConfigError(
                    f"VGG16 weights: '{key}' has shape {tuple(value.shape)} but model '{name}' "
                    f"has {tuple(dest.shape)} (ImageNet weights need width=1 and in_channels=3)"
                )
            dest.copy_(value)
            loaded.append(name)
    return loaded


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def pretrained_vgg16_state_dict(batch_norm: bool = False) -> dict[str, Tensor]:
    """Download (or read from torch's hub cache) torchvision's ImageNet VGG16 state dict."""
    url = VGG16_BN_URL if batch_norm else VGG16_URL
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ConfigError(
            f"could not download ImageNet VGG16 weights ({err}); "
            "pass encoder_weights=None or a local file"
        ) from err


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file (tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such weights file (encoder_weights takes 'imagenet' or a path)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling / format errors come in many types
        raise ConfigError(f"{path}: {_load_problem(err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return state


def _load_problem(err: Exception) -> str:
    """One line about why a weights file was not read (torch's own message spans lines and
    suggests ``weights_only=False``, which would run the file's code: never do that)."""
    text = str(err)
    found = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln]
    if found or "Unsupported class" in text:  # a pickle naming code to run: refused
        what = f" ({found[0].rstrip('.')})" if found else ""
        return (
            "refused: the file holds Python objects or code, not only tensors" + what + "; "
            "it is not unpickled. Save the state dict as .safetensors (or tensors only)"
        )
    if "Weights only load failed" in text:  # torch's long text: keep the unpickler's reason
        why = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("Unsupported")]
        detail = why[0] if why else "not a tensor file"
        return f"cannot read weights (not a PyTorch state dict: {detail})"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    return f"cannot read weights ({first})"


def load_encoder_weights(
    model: nn.Module, encoder_weights: str | Path | None, batch_norm: bool
) -> list[str]:
    """Builders' ``encoder_weights``: None (nothing), ``"imagenet"`` (download) or a file path."""
    if encoder_weights is None:
        return []
    if encoder_weights == "imagenet":
        state = pretrained_vgg16_state_dict(batch_norm=batch_norm)
    else:
        state = read_state_dict(encoder_weights)
    return load_vgg16_weights(model, state)

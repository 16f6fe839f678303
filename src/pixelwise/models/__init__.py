"""Model zoo: a registry of segmentation networks built by name.

>>> from pixelwise.models import available, build
>>> model = build("fcn8s", num_classes=21, width=0.25)

Every model is a :class:`~pixelwise.models.base.SegmentationModel`: it maps
``(N, in_channels, H, W)`` images to ``(N, num_classes, *output_size(H, W))`` logits and has
``num_classes``, ``in_channels``, ``border`` (pixels lost on each side: 0 except for the valid
U-Net), ``tile_grid``, ``pad`` / ``pad_after``, ``output_size(h, w)`` and
``valid_input_size(h, w)`` (see that class). Every builder takes ``in_channels`` (default 3) and
``width`` (channel multiplier, default 1.0).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import SegmentationModel

Builder = Callable[..., SegmentationModel]
_REGISTRY: dict[str, Builder] = {}


class ModelInfo(NamedTuple):
    """What ``pixelwise models`` says of a model."""

    paper: str  # "Long, Shelhamer & Darrell 2015", or a note for our own variants
    use: str  # what it is for, in a few words
    summary: str  # the first sentence of the builder's docstring


_INFO: dict[str, ModelInfo] = {}


def register(name: str, paper: str = "", use: str = "") -> Callable[[Builder], Builder]:
    """Decorator: make the builder ``fn(num_classes, **kwargs)`` available as ``build(name)``,
    with the paper it follows and what it is for (``pixelwise models`` prints them)."""

    def decorate(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = fn
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        _INFO[name] = ModelInfo(paper, use, summary.split(". ")[0].rstrip("."))
        return fn

    return decorate


def info(name: str) -> ModelInfo:
    """The paper, purpose and one-line summary of a registered model."""
    if name not in _INFO:
        raise ConfigError(unknown_model(name))
    return _INFO[name]


def available() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(_REGISTRY)


def unknown_model(name: str) -> str:
    """The message for a model name that is not registered: close matches first, then all."""
    import difflib

    close = difflib.get_close_matches(str(name).replace("-", "_"), available(), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown model '{name}'{hint}; choose one of: {', '.join(available())}"


def build(name: str, num_classes: int, **kwargs: object) -> SegmentationModel:
    """Build the model registered as ``name``; bad names or arguments raise ``ConfigError``.

    A builder that returns anything but a :class:`SegmentationModel` is a programming error
    (``TypeError``): prediction, tiling and export rely on that contract."""
    if name not in _REGISTRY:
        raise ConfigError(unknown_model(name))
    builder = _REGISTRY[name]
    accepted = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"model '{name}' has no argument '{key}'; it accepts: {', '.join(accepted)}"
            )
    model = builder(num_classes, **kwargs)
    if not isinstance(model, SegmentationModel):
        raise TypeError(
            f"model '{name}': its builder returned a {type(model).__name__}, "
            "not a pixelwise.models.base.SegmentationModel"
        )
    return model


def transfer_weights(target: nn.Module, source_state: dict[str, torch.Tensor]) -> list[str]:
    """Staged init: copy every tensor (parameters and buffers) whose name and shape match.

    Used to initialise FCN-16s from a trained FCN-32s and FCN-8s from FCN-16s. Returns the copied
    names in ``target.state_dict()`` order; everything else in ``target`` is left as it was.
    """
    copied = []
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            source = source_state.get(name)
            if source is not None and source.shape == tensor.shape:
                tensor.copy_(source)
                copied.append(name)
    return copied


# The model modules register their builders on import (they import ``register`` from here).
from pixelwise.models import convolutionalized, fcn, segnet, unet  # noqa: E402, F401

__all__ = [
    "ModelInfo",
    "SegmentationModel",
    "available",
    "build",
    "info",
    "register",
    "transfer_weights",
]

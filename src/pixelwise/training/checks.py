"""Checks of a :class:`~pixelwise.training.config.TrainConfig`: types (pydantic, from the field
annotations) and values (the rules below); every failure is a one-line ConfigError naming the
option (``--lr: must be positive, got -1``) or the file it came from."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import fields
from functools import cache
from typing import Any

from pixelwise.errors import ConfigError

TrainConfig = Any  # pixelwise.training.config.TrainConfig (which imports this module)


def field_flag(f: dataclasses.Field) -> str:
    """The command-line flag of a TrainConfig field: its ``flag`` metadata, else ``--name``
    (``--no-name`` for a boolean whose default is True)."""
    if "flag" in f.metadata:
        return f.metadata["flag"]
    flag = "--" + f.name.replace("_", "-")
    return flag.replace("--", "--no-", 1) if f.default is True else flag


def _flag(cls: Any, name: str) -> str:
    by_name = {f.name: f for f in fields(cls)}
    return field_flag(by_name[name]) if name in by_name else name


@cache
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def typed_fields(cls: type, d: dict[str, Any], source: str = "") -> dict[str, Any]:
    """``d`` checked against the annotations of dataclass ``cls`` (ints where ints belong,
    "3" -> 3 from text files, no unknown names); returns the field values."""
    from pydantic import ValidationError

    names = {f.name for f in fields(cls)}
    where = f"{source}: " if source else ""
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}unknown training option(s): {', '.join(unknown)}")
    try:
        obj = _adapter(cls).validate_python(dict(d))
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        label = _flag(cls, name)
        given = first.get("input")
        raise ConfigError(f"{where}{label}: {first['msg'].lower()} (got {given!r})") from None
    return {f.name: getattr(obj, f.name) for f in fields(cls)}


def _needer(c: Any):
    """``need(cond, field, what)``: raise ConfigError naming the field's flag unless ``cond``."""

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{_flag(type(c), name)}: {what}")

    return need


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def check_config(c: TrainConfig) -> None:
    """Raise ConfigError naming the option for any nonsensical value."""
    _check_choices(c)
    _check_optimisation(c)
    _check_augmentation(c)
    _check_data_and_run(c)
    _check_loss(c)
    _check_task(c)


def _check_task(c: TrainConfig) -> None:
    """--task colorize learns from the images alone: the options about masks do not apply."""
    if c.task != "colorize":
        return
    need = _needer(c)
    masks_only = "is about masks; --task colorize reads no masks: drop it"
    need(c.loss == "ce", "loss", masks_only + " (colorize has its own smooth-L1 loss)")
    need(c.class_weights is None, "class_weights", masks_only)
    need(c.points == 0, "points", masks_only)
    need(c.label_map is None, "label_map", masks_only)
    need(c.mask_threshold is None, "mask_threshold", masks_only)
    need(c.channels in (None, 3), "channels", "--task colorize reads colour images: drop it")
    need(str(c.data) != "digits", "data", "--task colorize needs a folder of colour images")


def _check_choices(c: TrainConfig) -> None:
    """Every field with ``choices`` in its metadata holds one of them (or its None default)."""
    need = _needer(c)
    for f in fields(c):
        choices = f.metadata.get("choices")
        value = getattr(c, f.name)
        if choices and not (value is None and f.default is None) and value not in choices:
            shown = ", ".join(repr(x) if not isinstance(x, str) else x for x in choices)
            need(False, f.name, f"choose one of {shown}, got {value!r}")


def _check_optimisation(c: TrainConfig) -> None:
    need = _needer(c)
    need(c.epochs >= 1, "epochs", f"must be at least 1, got {c.epochs}")
    need(c.batch_size >= 1, "batch_size", f"must be at least 1, got {c.batch_size}")
    need(_finite(c.lr) and c.lr > 0, "lr", f"must be positive, got {c.lr}")
    need(0 <= c.momentum < 1, "momentum", f"must be in [0, 1), got {c.momentum}")
    need(c.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(
        c.budget is None or (_finite(c.budget) and c.budget > 0),
        "budget",
        f"must be a positive duration, got {c.budget}",
    )
    need(c.accumulate >= 1, "accumulate", f"must be an integer >= 1, got {c.accumulate!r}")
    need(_finite(c.width) and 0 < c.width <= 4, "width", f"must be in (0, 4], got {c.width}")
    from pixelwise.models import available, unknown_model

    # the model name before the (possibly long) data check; its arguments at build time
    need(c.model in available(), "model", unknown_model(c.model))


def _check_augmentation(c: TrainConfig) -> None:
    need = _needer(c)
    need(c.crop_size >= 8, "crop_size", f"must be at least 8, got {c.crop_size}")
    need(
        0 < c.scale_min <= c.scale_max,
        "scale_min",
        f"need 0 < min <= max, got {c.scale_min}..{c.scale_max}",
    )
    need(
        _finite(c.input_scale) and 0.05 <= c.input_scale <= 4,
        "input_scale",
        f"must be between 0.05 and 4, got {c.input_scale}",
    )
    need(0 <= c.rotate <= 180, "rotate", f"must be 0..180 degrees, got {c.rotate}")
    need(_finite(c.elastic) and c.elastic >= 0, "elastic", f"must be >= 0 pixels, got {c.elastic}")
    need(0 <= c.color_jitter <= 1, "color_jitter", f"must be 0..1, got {c.color_jitter}")
    need(c.points >= 0, "points", f"must be >= 0 (0: dense masks), got {c.points}")


def _check_data_and_run(c: TrainConfig) -> None:
    need = _needer(c)
    from pixelwise.data.layouts import parse_label_map

    need(c.channels in (None, 1, 3), "channels", "must be 1 or 3")
    need(c.workers >= 0, "workers", "must be >= 0")
    need(
        c.mask_threshold is None or 1 <= c.mask_threshold <= 255,
        "mask_threshold",
        f"give a stored value in 1..255, e.g. 128, got {c.mask_threshold}",
    )
    need(c.threads is None or c.threads >= 1, "threads", "must be at least 1")
    need(0 < c.val_fraction < 1, "val_fraction", "must be between 0 and 1")
    parse_label_map(c.label_map)  # ConfigError naming --label-map
    need(c.overlays >= 0, "overlays", "must be >= 0")
    need(c.log_every >= 1, "log_every", "must be >= 1")
    need(c.val_every >= 1, "val_every", f"must be an integer >= 1 (epochs), got {c.val_every!r}")
    need(c.save_every >= 0, "save_every", f"must be >= 0 steps, got {c.save_every}")


def _check_loss(c: TrainConfig) -> None:
    need = _needer(c)
    need(
        c.loss != "weighted-ce" or c.weight_map is not None,
        "loss",
        "weighted-ce needs a weight map; add --weight-map unet",
    )
    need(
        c.weight_map is None or c.loss == "weighted-ce",
        "weight_map",
        "is used by --loss weighted-ce; add it",
    )
    need(_finite(c.w0) and c.w0 >= 0, "w0", f"must be >= 0, got {c.w0}")
    need(_finite(c.sigma) and c.sigma > 0, "sigma", "must be > 0 pixels")
    need(
        not (c.points and c.weight_map),
        "points",
        "border weight maps need dense masks; drop --weight-map or --points",
    )
    if isinstance(c.class_weights, str):
        need(c.class_weights == "auto", "class_weights", "give 'auto', 'none' or numbers")
    elif c.class_weights is not None:
        need(
            all(_finite(w) and w >= 0 for w in c.class_weights),
            "class_weights",
            "must be non-negative numbers",
        )

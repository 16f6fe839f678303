"""Label maps: which label each stored mask value becomes (``--label-map``).

``"255:1"``, ``"0:0,255:1"``, ``"255:ignore"`` (or a mapping) name ``raw value -> label``;
values a map does not name are read as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from pixelwise.errors import ConfigError

IGNORE = 255  # what "ignore" means in a --label-map (the ignore index of every built-in layout)

__all__ = ["IGNORE", "label_map_text", "merge_label_maps", "parse_label_map"]


def parse_label_map(spec: str | Mapping[Any, Any] | None) -> dict[int, int] | None:
    """``"255:1"``, ``"0:0,255:1"``, ``"255:ignore"`` (or a mapping) -> ``{raw value: label}``.

    Raw values are what the mask files store (0..65535); labels are 0..255 or ``ignore``
    (= 255, the ignore index). ``None`` or ``""`` -> ``None``. Bad syntax raises ConfigError.
    """
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        items = list(spec.items())
        text = ",".join(f"{k}:{v}" for k, v in items)
    elif isinstance(spec, str):
        text = spec.strip()
        if not text:
            return None
        items = []
        for part in text.split(","):
            key, sep, value = part.partition(":")
            if not sep:
                raise ConfigError(
                    f"--label-map {spec!r}: {part.strip()!r} is not FROM:TO; "
                    "write e.g. 255:1 or 0:0,255:1 or 255:ignore"
                )
            items.append((key.strip(), value.strip()))
    else:
        raise ConfigError(f"--label-map: expected text like '255:1', got {type(spec).__name__}")
    out: dict[int, int] = {}
    for key, value in items:
        k = _label_int(key, 65535, spec)
        v = IGNORE if str(value).lower() == "ignore" else _label_int(value, 255, spec)
        if k in out and out[k] != v:
            raise ConfigError(f"--label-map {text!r}: value {k} is mapped twice")
        out[k] = v
    return out


def _label_int(x: Any, top: int, spec: Any) -> int:
    if isinstance(x, bool):
        raise ConfigError(f"--label-map {spec!r}: {x!r} is not a label value")
    if isinstance(x, int | np.integer) or isinstance(x, str) and re.fullmatch(r"\d+", x.strip()):
        v = int(x)
    else:
        raise ConfigError(
            f"--label-map {spec!r}: {x!r} is not a number (or 'ignore'); write e.g. 255:1"
        )
    if not 0 <= v <= top:
        raise ConfigError(f"--label-map {spec!r}: {v} is outside 0..{top}")
    return v


def merge_label_maps(base: Mapping[int, int] | None, user: Mapping[int, int] | None):
    """The layout's own map with the user's entries replacing it for the same raw values."""
    if base is None and user is None:
        return None
    return {**(base or {}), **(user or {})}


def label_map_text(label_map: Mapping[int, int] | None) -> str:
    """Inverse of :func:`parse_label_map` (sorted, ``ignore`` spelled out)."""
    if not label_map:
        return ""
    return ",".join(f"{k}:{'ignore' if v == IGNORE else v}" for k, v in sorted(label_map.items()))

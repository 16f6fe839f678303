"""Label maps: which label each stored mask value becomes (``--label-map``).

``"255:1"``, ``"0:0,255:1"``, ``"255:ignore"`` (or a mapping) name ``raw value -> label``;
values a map does not name are read as they are.

Two rules read masks whose values were blurred by lossy saving (JPEG, anti-aliasing; see
:mod:`pixelwise.data.maskvalues`):

- a threshold (``mask_threshold=128``, ``--mask-threshold 128``, or ``"threshold:128"`` in a
  label map): stored values ``>= 128`` become class 1, the others class 0;
- ``"round"`` (``--label-map round``): every stored value becomes the nearest *class value*:
  the values named by the map's own entries (``"round,0:0,128:1,255:2"``), else the class
  values found in the masks. Class values that are not already 0, 1, 2, ... (e.g. 0 and 255,
  or 0, 128 and 255) are renumbered 0, 1, 2, ... in order.

:class:`LabelSpec` holds a parsed ``--label-map`` (+ threshold); entries named explicitly
override what a rule gives the same stored value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixelwise.errors import ConfigError

IGNORE = 255  # what "ignore" means in a --label-map (the ignore index of every built-in layout)

__all__ = [
    "IGNORE",
    "LabelSpec",
    "label_map_text",
    "merge_label_maps",
    "parse_label_map",
    "parse_label_spec",
    "round_map",
    "threshold_map",
]

_RULE_HELP = "write e.g. 255:1 or 0:0,255:1 or 255:ignore, round, or threshold:128"


@dataclass(frozen=True)
class LabelSpec:
    """A parsed label map: explicit ``entries`` (stored value -> label), an optional
    ``threshold`` and the ``round`` rule (see the module docstring)."""

    entries: dict[int, int] | None = None
    threshold: int | None = None
    round: bool = False

    @property
    def rule(self) -> str | None:
        """``"threshold:T"``, ``"round"`` or None."""
        if self.threshold is not None:
            return f"threshold:{self.threshold}"
        return "round" if self.round else None

    def text(self) -> str:
        """The spec as ``--label-map`` text (``parse_label_spec`` reads it back)."""
        parts = [self.rule] if self.rule else []
        if self.entries:
            parts.append(label_map_text(self.entries))
        return ",".join(parts)


def parse_label_spec(
    spec: str | Mapping[Any, Any] | LabelSpec | None, mask_threshold: int | None = None
) -> LabelSpec:
    """A ``--label-map`` (text, mapping or LabelSpec) and ``--mask-threshold`` as one
    :class:`LabelSpec`. Text is comma-separated ``FROM:TO`` entries, ``round`` and
    ``threshold:T``. Bad syntax, a threshold outside 1..255 or both rules raise ConfigError."""
    if isinstance(spec, LabelSpec):
        entries, threshold, rounding = spec.entries, spec.threshold, spec.round
    elif isinstance(spec, str):
        entries, threshold, rounding = _parse_text(spec)
    else:
        entries, threshold, rounding = parse_label_map(spec), None, False
    if mask_threshold is not None:
        t = _threshold(mask_threshold, "--mask-threshold")
        if threshold is not None and threshold != t:
            raise ConfigError(
                f"--mask-threshold {t}: the label map says threshold:{threshold}; give one"
            )
        threshold = t
    if threshold is not None and rounding:
        raise ConfigError(
            "--label-map round and --mask-threshold: give one (a threshold makes masks binary, "
            "round snaps values to the nearest class value)"
        )
    return LabelSpec(entries, threshold, rounding)


def _threshold(value: Any, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= 255:
        raise ConfigError(
            f"{what} {value!r}: give a stored value in 1..255, e.g. 128 (values at or above it "
            "become class 1, the others class 0)"
        )
    return int(value)


def _parse_text(spec: str) -> tuple[dict[int, int] | None, int | None, bool]:
    threshold, rounding, rest = None, False, []
    for part in spec.split(","):
        word = part.strip()
        key = re.split(r"[:=]", word, maxsplit=1)[0].strip().lower()
        if word.lower() == "round":
            rounding = True
        elif key == "threshold":
            value = re.split(r"[:=]", word, maxsplit=1)[1:] or [""]
            threshold = _threshold(value[0], f"--label-map {spec!r}: threshold")
        elif word:
            rest.append(word)
    return parse_label_map(",".join(rest)), threshold, rounding


def parse_label_map(spec: str | Mapping[Any, Any] | None) -> dict[int, int] | None:
    """``"255:1"``, ``"0:0,255:1"``, ``"255:ignore"`` (or a mapping) -> ``{raw value: label}``.

    Raw values are what the mask files store (0..65535); labels are 0..255 or ``ignore``
    (= 255, the ignore index). ``None`` or ``""`` -> ``None``. Bad syntax raises ConfigError.
    The rules ``round`` and ``threshold:T`` are accepted (and checked) but not part of the
    result: :func:`parse_label_spec` keeps them.
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
            word = part.strip()
            head = re.split(r"[:=]", word, maxsplit=1)[0].strip().lower()
            if word.lower() == "round" or head == "threshold":
                _parse_text(word)  # checks the threshold
                continue
            key, sep, value = part.partition(":")
            if not sep:
                raise ConfigError(
                    f"--label-map {spec!r}: {part.strip()!r} is not FROM:TO; {_RULE_HELP}"
                )
            items.append((key.strip(), value.strip()))
        if not items:
            return None
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


def threshold_map(threshold: int) -> dict[int, int]:
    """Every 8-bit value -> 1 if ``>= threshold`` else 0."""
    return {v: int(v >= threshold) for v in range(256)}


def round_labels(values: Iterable[int]) -> dict[int, int]:
    """Class value -> label for nearest-class rounding: themselves when they are already
    0, 1, 2, ... (with 255, if present, kept as it is), else 0, 1, 2, ... in order."""
    vals = sorted(set(int(v) for v in values))
    low = [v for v in vals if v != IGNORE]
    if len(low) >= 2 and low == list(range(len(low))):
        return {v: v for v in vals}
    return {v: i for i, v in enumerate(vals)}


def round_map(values: Iterable[int], labels: Mapping[int, int] | None = None) -> dict[int, int]:
    """Every 8-bit value -> the label of the nearest of ``values`` (ties: the lower one);
    ``labels`` (default :func:`round_labels`) gives each class value's label."""
    targets = np.array(sorted(set(int(v) for v in values)), dtype=np.int64)
    if not len(targets):
        raise ConfigError("--label-map round: no class values to round to")
    names = dict(labels) if labels is not None else round_labels(targets.tolist())
    nearest = targets[np.argmin(np.abs(np.arange(256)[:, None] - targets[None, :]), axis=1)]
    return {v: names.get(int(t), int(t)) for v, t in enumerate(nearest)}

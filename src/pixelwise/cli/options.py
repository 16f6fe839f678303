"""The ``pixelwise train`` and ``pixelwise demo`` options, generated from :class:`TrainConfig`.

Each field whose metadata does not say ``cli=False`` becomes one option (``demo``: only the fields
marked ``demo=True``), read from the field and its metadata:

- flag: :func:`option_flag`; help: ``help`` plus the default (:func:`with_default`);
- a bool: ``store_true``, or ``store_false`` for a True default (``--no-...``);
- a dict: ``KEY=VALUE``, repeatable (:func:`parse_key_values`);
- ``pair``: two values (``--scale MIN MAX`` sets ``scale_min`` and ``scale_max``);
- ``parse``: the text goes through that function of :mod:`pixelwise.training.config`;
- else the annotation's type (``int | None`` -> ``int``), ``choices`` and ``metavar``;
- ``group``: the help section.

Every generated option has ``default=SUPPRESS``: the parsed Namespace holds only what the user
typed, and :func:`given_options` turns it into ``{field: value}``.
"""

from __future__ import annotations

import argparse
import json
import re
import typing
from dataclasses import Field, fields
from functools import cache
from pathlib import Path
from typing import Any

from pixelwise.training import config as config_module
from pixelwise.training.config import (
    TrainConfig,
    field_default,
    option_flag,
    parse_key_values,
    read_config_file,
    resume_free_fields,
)

__all__ = [
    "add_config_options",
    "cli_fields",
    "combine",
    "config_file_options",
    "given_options",
    "resume_free_flags",
    "show_default",
    "with_default",
]


def cli_fields(demo: bool = False) -> list[Field]:
    """The TrainConfig fields that have an option (``demo``: those of ``pixelwise demo``)."""
    return [
        f
        for f in fields(TrainConfig)
        if f.metadata.get("cli", True) is not False and (f.metadata.get("demo") or not demo)
    ]


def show_default(value: Any) -> str:
    """How a default reads in help: ``10``, ``0.0005``, ``none``, ``0.75 1.25``."""
    if value is None or value == {}:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " ".join(show_default(v) for v in value)
    if isinstance(value, list):
        return ",".join(show_default(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={json.dumps(v)}" for k, v in value.items())
    return str(value)


def with_default(help: str, value: Any) -> str:
    """``help`` plus ``(default: VALUE)``, unless the text already has a ``default:`` or the
    option is a flag (a bool: off unless given)."""
    if isinstance(value, bool) or "default:" in help.lower():
        return help
    shown = show_default(value).replace("%", "%%")  # argparse %-formats help texts
    return f"{help} (default: {shown})" if help else f"(default: {shown})"


@cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _value_type(f: Field) -> type:
    """The type an option's text is converted to: ``int | None`` -> ``int``; else ``str``."""
    hint = _hints()[f.name]
    kinds = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float, str) else str


def _argument(f: Field, default: Any) -> dict[str, Any]:
    """``add_argument`` keyword arguments for field ``f`` (``default``: the value shown)."""
    meta = f.metadata
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
    if "pair" in meta:
        default = (default, field_default(meta["pair"]))
    kw["help"] = with_default(meta.get("help", ""), default)
    if _hints()[f.name] is bool:
        kw["action"] = "store_false" if field_default(f.name) is True else "store_true"
        return kw
    if isinstance(field_default(f.name), dict):
        kw.update(action="append", metavar=meta.get("metavar", "KEY=VALUE"))
        return kw
    kw["type"] = str if "parse" in meta else _value_type(f)
    if "pair" in meta:
        kw["nargs"] = 2
    for key in ("choices", "metavar"):
        if key in meta:
            kw[key] = meta[key]
    return kw


def add_config_options(
    parser: argparse.ArgumentParser, demo: bool = False, defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Add one option per field of :func:`cli_fields` to ``parser``, in help sections by the
    fields' ``group``; ``defaults`` overrides the defaults shown (the demo's). Returns the
    sections by name (add further options there)."""
    groups: dict[str, Any] = {}
    for f in cli_fields(demo):
        name = f.metadata.get("group", "options")
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        default = (defaults or {}).get(f.name, field_default(f.name))
        groups[name].add_argument(option_flag(f.name), **_argument(f, default))
    return groups


def _example(f: Field) -> str:
    """A ``KEY=VALUE`` example for error messages, the first one in the field's help."""
    found = re.search(r"\w+=[\w.]+", f.metadata.get("help", ""))
    return found.group(0) if found else "key=value"


def given_options(args: argparse.Namespace, demo: bool = False) -> dict[str, Any]:
    """``{field: value}`` of the generated options present in ``args`` (the ones typed), their
    text parsed (``KEY=VALUE`` pairs, ``parse`` functions): a ConfigError names the option."""
    typed = vars(args)
    out: dict[str, Any] = {}
    for f in cli_fields(demo):
        if f.name not in typed:
            continue
        value, meta = typed[f.name], f.metadata
        if "pair" in meta:
            out[f.name], out[meta["pair"]] = value
        elif isinstance(field_default(f.name), dict):
            pairs: dict[str, Any] = {}
            for text in value:
                pairs.update(parse_key_values(text, option_flag(f.name), _example(f)))
            out[f.name] = pairs
        elif "parse" in meta:
            out[f.name] = getattr(config_module, meta["parse"])(value)
        else:
            out[f.name] = value
    return out


def combine(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; a dict value (``data_args``, ``model_args``) is merged key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def config_file_options(path: str | Path) -> dict[str, Any]:
    """The options of ``train --config FILE`` (:func:`read_config_file`), checked: an unknown
    name or a wrong type is a one-line ConfigError naming the file. From a run's own
    ``config.json``, ``overwrite`` is dropped: reproducing a run never replaces it."""
    options = read_config_file(path)
    if _is_run_config(Path(path)):
        options.pop("overwrite", None)
    checked = TrainConfig.from_dict(options, source=str(path))
    return {name: getattr(checked, name) for name in options}


def _is_run_config(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == "pixelwise-run"


def resume_free_flags() -> list[str]:
    """The flags of the options ``--resume`` accepts (``resume="free"`` fields)."""
    names = {f.name for f in cli_fields()}
    return [option_flag(name) for name in resume_free_fields() if name in names]

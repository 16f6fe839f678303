"""Run directories: everything of one training run in one folder, nothing that runs code.

Layout of ``RUN/``::

    config.json               resolved configuration (model, classes, normalisation, options)
    last.safetensors          model weights after the latest epoch
    last.json                 epoch, step and validation metrics of those weights
    last.state.safetensors    optimizer state and RNG states (for resuming)
    best.safetensors/.json    the weights with the best validation mean IoU so far
    metrics.csv               one row per epoch
    curves.png, overlays/     pictures

Weights are stored with safetensors and read back with ``safetensors.torch.load_file``: a run
shared by someone else can never execute code when loaded (no pickle anywhere). Every file is
written atomically (temporary name, fsync, rename), so a crash leaves the previous checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pixelwise import __version__
from pixelwise.data.classes import ClassInfo
from pixelwise.errors import ConfigError
from pixelwise.files import atomic_path, write_json

__all__ = [
    "RUN_FORMAT",
    "LoadedRun",
    "checkpoint_path",
    "load_run",
    "read_config",
    "load_weights",
    "save_checkpoint",
    "save_training_state",
    "load_training_state",
]

RUN_FORMAT = 1
CONFIG = "config.json"


def checkpoint_path(run: str | Path, which: str = "best") -> Path:
    """``RUN/{which}.safetensors`` (``which`` is ``best`` or ``last``)."""
    if which not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', not {which!r}")
    return Path(run) / f"{which}.safetensors"


def read_config(run: str | Path) -> dict[str, Any]:
    """Read and validate ``RUN/config.json``; raise ConfigError naming the file on any problem."""
    run = Path(run)
    path = run / CONFIG
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run directory; train one with 'pixelwise train'")
    if not path.is_file():
        raise ConfigError(f"{run}: not a pixelwise run (config.json is missing)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable run configuration ({err})") from None
    _validate_config(path, config)
    return config


def _validate_config(path: Path, config: Any) -> None:
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ConfigError(f"{path}: invalid run configuration: {what}")

    need(isinstance(config, dict), "top level must be an object")
    need(config.get("format") == "pixelwise-run", "not a pixelwise run configuration")
    version = config.get("version")
    need(isinstance(version, int), "missing 'version'")
    if version > RUN_FORMAT:
        raise ConfigError(
            f"{path}: run format {version} is newer than this pixelwise ({__version__}) reads; "
            "upgrade pixelwise"
        )
    model = config.get("model")
    need(isinstance(model, dict), "missing 'model'")
    need(isinstance(model.get("name"), str), "'model.name' must be a string")
    need(
        isinstance(model.get("num_classes"), int) and model["num_classes"] >= 1,
        "'model.num_classes' must be a positive integer",
    )
    need(isinstance(model.get("kwargs"), dict), "'model.kwargs' must be an object")
    norm = config.get("normalization")
    need(isinstance(norm, dict), "missing 'normalization'")
    for key in ("mean", "std"):
        values = norm.get(key)
        need(
            isinstance(values, list) and all(isinstance(v, int | float) for v in values),
            f"'normalization.{key}' must be a list of numbers",
        )
    need(isinstance(config.get("classes"), dict), "missing 'classes'")
    try:
        ClassInfo.from_dict(config["classes"])
    except ConfigError as err:
        raise ConfigError(f"{path}: invalid run configuration: {err}") from None


def save_checkpoint(
    run: str | Path, which: str, model: torch.nn.Module, info: dict[str, Any]
) -> Path:
    """Write ``RUN/{which}.safetensors`` (weights) and ``RUN/{which}.json`` (``info``)."""
    path = checkpoint_path(run, which)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"pixelwise": __version__})
    write_json(path.with_suffix(".json"), info)
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict; a corrupt or foreign file gives a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint file is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable safetensors checkpoint ({err})") from None


@dataclass
class LoadedRun:
    """A model restored from a run directory, with what is needed to feed it."""

    model: torch.nn.Module
    config: dict[str, Any]
    classes: ClassInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any]

    @property
    def in_channels(self) -> int:
        return int(self.config["model"]["kwargs"].get("in_channels", 3))


def load_run(run: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of ``RUN`` and load its ``best`` (or ``last``) weights, in eval mode."""
    from pixelwise.models import build

    run = Path(run)
    config = read_config(run)
    path = checkpoint_path(run, which)
    if not path.is_file() and which == "best":
        path = checkpoint_path(run, "last")
    state = load_weights(path)
    spec = config["model"]
    model = build(spec["name"], spec["num_classes"], **spec["kwargs"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise ConfigError(
            f"{path}: weights do not match model '{spec['name']}' "
            f"({len(missing)} missing, {len(unexpected)} unexpected: {names})"
        )
    model.to(device).eval()
    info_path = path.with_suffix(".json")
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{info_path}: unreadable checkpoint information ({err})") from None
    norm = config["normalization"]
    return LoadedRun(
        model=model,
        config=config,
        classes=ClassInfo.from_dict(config["classes"]),
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        info=info,
    )


def save_training_state(
    run: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
) -> None:
    """Store optimizer, scheduler and RNG state as ``RUN/last.state.safetensors`` + JSON.

    Tensors go into safetensors; the small scalar structure (param groups, scheduler counters)
    goes into the JSON file. Nothing is pickled.
    """
    run = Path(run)
    tensors: dict[str, torch.Tensor] = {}
    opt = optimizer.state_dict()
    layout: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt["state"].items():
        layout[str(pid)] = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().to("cpu").contiguous()
                layout[str(pid)][key] = "tensor"
            else:
                layout[str(pid)][key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "param_groups": opt["param_groups"],
        "optimizer_state": layout,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **extra,
    }
    with atomic_path(run / "last.state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(run / "last.state.json", _json_safe(meta))


def load_training_state(
    run: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns its ``extra`` fields."""
    run = Path(run)
    tensors = load_weights(run / "last.state.safetensors")
    meta_path = run / "last.state.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{meta_path}: unreadable training state ({err})") from None
    state: dict[int, dict[str, Any]] = {}
    for pid, keys in meta["optimizer_state"].items():
        state[int(pid)] = {
            k: tensors[f"optim.{pid}.{k}"] if v == "tensor" else v for k, v in keys.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    skip = {"param_groups", "optimizer_state", "scheduler"}
    return {k: v for k, v in meta.items() if k not in skip}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

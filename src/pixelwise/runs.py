"""Run directories: everything of one training run in one folder, nothing that runs code.

Layout of ``RUN/``::

    config.json               resolved configuration (model, classes, normalisation, options)
    last.safetensors          model weights after the latest epoch
    last.json                 epoch, step and validation metrics of those weights
    best.safetensors/.json    the weights with the best validation mean IoU so far
    resume.json               commit marker of the latest resumable checkpoint, naming ...
    resume/                   ... its weights, optimizer/RNG state (safetensors) and loop state
    metrics.csv               one row per epoch
    curves.png, overlays/     pictures

Weights are stored with safetensors and read back with ``safetensors.torch.load_file``: a run
shared by someone else can never execute code when loaded (no pickle anywhere). Every file is
written atomically (temporary name, fsync, rename), and a resumable checkpoint is committed by
writing ``resume.json`` after its files, so a crash (even SIGKILL) leaves the previous checkpoint
whole: ``pixelwise train --resume RUN`` continues from it. Every JSON file read back is checked
against its expected structure and version (a ConfigError names the file).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
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
    "restore_training_state",
    "publish_checkpoint",
    "has_resume_point",
    "read_json",
    "rng_state",
    "set_rng_state",
    "weights_tag",
    "ResumePoint",
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
    except (ConfigError, TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"{path}: invalid run configuration: {err}") from None
    need(version >= 1, "'version' must be a positive integer")
    for key in ("train", "data"):
        need(config.get(key) is None or isinstance(config[key], dict), f"'{key}' must be an object")
    weights = config.get("class_weights")
    need(
        weights is None
        or (isinstance(weights, list) and all(isinstance(w, int | float) for w in weights)),
        "'class_weights' must be null or a list of numbers",
    )


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


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The metrics describing weights file ``path``: ``path.json``, checked.

    Weights written by training also carry this information in their safetensors metadata; when
    the ``.json`` beside them is from another epoch (a crash between the two writes), the
    metadata wins, so weights and description never disagree.
    """
    path = Path(path)
    info_path = path.with_suffix(".json")
    info = read_json(info_path, "checkpoint information") if info_path.is_file() else {}
    epoch = info.get("epoch")
    if epoch is not None and not _is_int(epoch):
        raise ConfigError(
            f"{info_path}: invalid checkpoint information: 'epoch' must be an integer"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            embedded = (f.metadata() or {}).get("info")
        inner = json.loads(embedded) if embedded else None
    except (SafetensorError, OSError, ValueError):
        inner = None
    if isinstance(inner, dict) and inner.get("epoch") != epoch:
        return inner
    return info


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
    info = read_checkpoint_info(path)
    norm = config["normalization"]
    return LoadedRun(
        model=model,
        config=config,
        classes=ClassInfo.from_dict(config["classes"]),
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        info=info,
    )


# ---------------------------------------------------------------------------------------------
# Resumable checkpoints
#
# One resume point = three files in RUN/resume/ named by a tag ``e{epoch:04d}-b{batch:06d}``:
#   TAG.weights.safetensors   model weights
#   TAG.state.safetensors     optimizer tensors, RNG states, running loss sums
#   TAG.state.json            optimizer param groups, scheduler, python/numpy RNG, epoch, step,
#                             best so far, the metrics rows so far
# written first, and only then RUN/resume.json (the commit marker) naming them. A crash at any
# moment leaves the previous marker pointing at the previous, complete set: never a mismatched
# pair. Older sets are deleted after the new marker is written. RUN/last.safetensors and
# RUN/best.safetensors are hard links to (or copies of) committed weight files.
# ---------------------------------------------------------------------------------------------

RESUME_MARKER = "resume.json"
RESUME_DIR = "resume"
STATE_FORMAT = "pixelwise-training-state"
MARKER_FORMAT = "pixelwise-checkpoint"
STATE_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ResumePoint:
    """A committed training checkpoint read back from ``RUN/resume.json``."""

    marker: dict[str, Any]
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    weights_path: Path

    @property
    def epoch(self) -> int:
        return int(self.marker["epoch"])

    @property
    def batch(self) -> int:
        """Batches of :attr:`epoch` already trained (all of them when :attr:`complete`)."""
        return int(self.marker["batch"])

    @property
    def complete(self) -> bool:
        """True when epoch :attr:`epoch` was finished and validated."""
        return bool(self.marker["complete"])


def checkpoint_tag(epoch: int, batch: int, complete: bool) -> str:
    """``e0003-done`` for a finished epoch, ``e0003-b000017`` after 17 batches of epoch 3."""
    return f"e{epoch:04d}-done" if complete else f"e{epoch:04d}-b{batch:06d}"


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG state of this process: tensors (torch CPU, CUDA, numpy key) + JSON parts."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state(legacy=False)
    tensors["rng.numpy.key"] = torch.from_numpy(
        np.asarray(np_state["state"]["key"], dtype=np.int64)
    )
    version, internal, gauss = random.getstate()
    meta = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where the devices exist)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(len(cuda))])
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npm = meta["numpy"]
    np.random.set_state(
        {
            "bit_generator": npm["bit_generator"],
            "state": {"key": tensors["rng.numpy.key"].numpy().astype(np.uint32), "pos": npm["pos"]},
            "has_gauss": npm["has_gauss"],
            "gauss": npm["gauss"],
        }
    )


def _optimizer_parts(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    opt = optimizer.state_dict()
    layout: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt["state"].items():
        layout[str(pid)] = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().to("cpu").contiguous()
                layout[str(pid)][key] = {"tensor": f"optim.{pid}.{key}"}
            else:
                layout[str(pid)][key] = {"value": value}
    return tensors, {"param_groups": opt["param_groups"], "optimizer_state": layout}


def save_training_state(
    run: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    epoch: int,
    batch: int,
    complete: bool,
    step: int,
    extra: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write one resume point and commit it; return the committed weights file.

    ``extra`` (JSON) and ``tensors`` (safetensors) carry the training loop's own state (best
    metric, metrics rows, running sums, per-rank RNG states). ``info`` (epoch metrics) is stored
    in the weights' metadata so that weights and their description are one file. Nothing is
    pickled; every file is written atomically and the marker last.
    """
    run = Path(run)
    folder = run / RESUME_DIR
    tag = checkpoint_tag(epoch, batch, complete)
    weights_path = folder / f"{tag}.weights.safetensors"
    state_path = folder / f"{tag}.state.safetensors"
    meta_path = folder / f"{tag}.state.json"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"pixelwise": __version__, "tag": tag}
    if info is not None:
        metadata["info"] = json.dumps(_json_safe(info), allow_nan=False)
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    opt_tensors, opt_meta = _optimizer_parts(optimizer)
    rng_tensors, rng_meta = rng_state()
    all_tensors = {**opt_tensors, **rng_tensors}
    for key, value in (tensors or {}).items():
        all_tensors[f"loop.{key}"] = value.detach().to("cpu").contiguous()
    with atomic_path(state_path) as tmp:
        save_file(all_tensors, str(tmp), metadata={"pixelwise": __version__, "tag": tag})
    meta = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "pixelwise": __version__,
        **opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_meta,
        "epoch": epoch,
        "batch": batch,
        "complete": complete,
        "step": step,
        "loop": extra,
    }
    write_json(meta_path, _json_safe(meta))
    marker = {
        "format": MARKER_FORMAT,
        "version": STATE_VERSION,
        "pixelwise": __version__,
        "epoch": epoch,
        "batch": batch,
        "complete": complete,
        "step": step,
        "files": {
            "weights": weights_path.name,
            "state": state_path.name,
            "meta": meta_path.name,
        },
        "sizes": {
            "weights": weights_path.stat().st_size,
            "state": state_path.stat().st_size,
            "meta": meta_path.stat().st_size,
        },
    }
    write_json(run / RESUME_MARKER, marker)  # the commit
    _remove_stale(run, keep=set(marker["files"].values()))
    return weights_path


def _remove_stale(run: Path, keep: set[str]) -> None:
    """Delete uncommitted or superseded resume files and temporary files of killed writes."""
    folder = run / RESUME_DIR
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()
    for p in run.glob(".*.tmp*"):  # atomic_path's temporary names, left by a SIGKILL
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()


def has_resume_point(run: str | Path) -> bool:
    """``RUN/resume.json`` exists (some checkpoint was committed)."""
    return (Path(run) / RESUME_MARKER).is_file()


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object; a missing, unreadable or non-object file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable {what} ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: invalid {what}: top level must be an object")
    return data


def _check(path: Path, what: str, cond: bool, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: invalid {what}: {problem}")


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _validate_versioned(path: Path, what: str, data: dict[str, Any], fmt: str) -> None:
    _check(path, what, data.get("format") == fmt, f"'format' must be {fmt!r}")
    version = data.get("version")
    _check(path, what, _is_int(version, 1), "'version' must be a positive integer")
    if version > STATE_VERSION:
        raise ConfigError(
            f"{path}: {what} format {version} is newer than this pixelwise ({__version__}) "
            "reads; upgrade pixelwise"
        )


def _validate_marker(path: Path, m: dict[str, Any]) -> None:
    what = "checkpoint marker"
    _validate_versioned(path, what, m, MARKER_FORMAT)
    _check(path, what, _is_int(m.get("epoch"), 1), "'epoch' must be an integer >= 1")
    _check(path, what, _is_int(m.get("batch")), "'batch' must be an integer >= 0")
    _check(path, what, _is_int(m.get("step")), "'step' must be an integer >= 0")
    _check(path, what, isinstance(m.get("complete"), bool), "'complete' must be true or false")
    files, sizes = m.get("files"), m.get("sizes")
    _check(path, what, isinstance(files, dict) and isinstance(sizes, dict), "missing 'files'")
    for key in ("weights", "state", "meta"):
        name = files.get(key)
        _check(
            path,
            what,
            isinstance(name, str) and bool(_NAME.match(name)) and name not in (".", ".."),
            f"'files.{key}' must be a plain file name",
        )
        _check(path, what, _is_int(sizes.get(key)), f"'sizes.{key}' must be an integer")


def _validate_state(path: Path, s: dict[str, Any]) -> None:
    what = "training state"
    _validate_versioned(path, what, s, STATE_FORMAT)
    for key in ("epoch", "batch", "step"):
        _check(path, what, _is_int(s.get(key)), f"'{key}' must be a non-negative integer")
    groups = s.get("param_groups")
    _check(
        path,
        what,
        isinstance(groups, list)
        and all(
            isinstance(g, dict)
            and isinstance(g.get("params"), list)
            and all(_is_int(p) for p in g["params"])
            for g in groups
        ),
        "'param_groups' must be a list of objects with integer 'params'",
    )
    layout = s.get("optimizer_state")
    _check(path, what, isinstance(layout, dict), "'optimizer_state' must be an object")
    for pid, keys in layout.items():
        _check(path, what, pid.isdigit() and isinstance(keys, dict), f"bad optimizer entry {pid}")
        for key, ref in keys.items():
            _check(
                path,
                what,
                isinstance(ref, dict) and len(ref) == 1 and ("tensor" in ref or "value" in ref),
                f"bad optimizer state '{pid}.{key}'",
            )
    _check(
        path,
        what,
        s.get("scheduler") is None or isinstance(s["scheduler"], dict),
        "'scheduler' must be an object or null",
    )
    rng = s.get("rng")
    ok = (
        isinstance(rng, dict)
        and isinstance(rng.get("python"), dict)
        and _is_int(rng["python"].get("version"))
        and isinstance(rng["python"].get("state"), list)
        and len(rng["python"]["state"]) == 625
        and all(_is_int(v) for v in rng["python"]["state"])
        and (rng["python"].get("gauss") is None or isinstance(rng["python"]["gauss"], float))
        and isinstance(rng.get("numpy"), dict)
        and rng["numpy"].get("bit_generator") == "MT19937"
        and _is_int(rng["numpy"].get("pos"))
        and _is_int(rng["numpy"].get("has_gauss"))
        and isinstance(rng["numpy"].get("gauss"), int | float)
    )
    _check(path, what, ok, "'rng' is malformed")
    _check(path, what, isinstance(s.get("loop"), dict), "'loop' must be an object")


def load_training_state(run: str | Path) -> ResumePoint:
    """Read the committed checkpoint of ``RUN`` (files are checked, nothing is applied yet)."""
    run = Path(run)
    marker_path = run / RESUME_MARKER
    if not marker_path.is_file():
        raise ConfigError(
            f"{run}: nothing to resume (no {RESUME_MARKER}: the run stopped before its first "
            "checkpoint, or was made by an older pixelwise); train it again with --overwrite"
        )
    marker = read_json(marker_path, "checkpoint marker")
    _validate_marker(marker_path, marker)
    folder = run / RESUME_DIR
    paths = {k: folder / v for k, v in marker["files"].items()}
    for key, p in paths.items():
        if not p.is_file():
            raise ConfigError(f"{p}: committed checkpoint file is missing; the run is damaged")
        if p.stat().st_size != marker["sizes"][key]:
            raise ConfigError(
                f"{p}: size {p.stat().st_size} differs from the committed "
                f"{marker['sizes'][key]} bytes; the run is damaged"
            )
    weights = load_weights(paths["weights"])
    tensors = load_weights(paths["state"])
    meta = read_json(paths["meta"], "training state")
    _validate_state(paths["meta"], meta)
    for key in ("epoch", "batch", "step", "complete"):
        if meta.get(key) != marker[key]:
            raise ConfigError(f"{paths['meta']}: '{key}' disagrees with {marker_path}")
    need = {"rng.torch", "rng.numpy.key"}
    for keys in meta["optimizer_state"].values():
        need |= {ref["tensor"] for ref in keys.values() if "tensor" in ref}
    missing = sorted(need - set(tensors))
    if missing:
        raise ConfigError(f"{paths['state']}: missing tensors {', '.join(missing[:3])}")
    return ResumePoint(marker, weights, tensors, meta, paths["weights"])


def restore_training_state(
    point: ResumePoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load ``point`` into model, optimizer, scheduler and the RNGs; return the loop's ``extra``
    fields plus ``tensors`` (the loop tensors, without their ``loop.`` prefix)."""
    path = point.weights_path
    missing, unexpected = model.load_state_dict(point.weights, strict=False)
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise ConfigError(
            f"{path}: weights do not match the run's model "
            f"({len(missing)} missing, {len(unexpected)} unexpected: {names})"
        )
    meta, tensors = point.meta, point.tensors
    state: dict[int, dict[str, Any]] = {}
    for pid, keys in meta["optimizer_state"].items():
        state[int(pid)] = {
            k: tensors[ref["tensor"]] if "tensor" in ref else ref["value"]
            for k, ref in keys.items()
        }
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        if scheduler is not None and meta.get("scheduler") is not None:
            scheduler.load_state_dict(meta["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(
            f"{path.with_name(point.marker['files']['meta'])}: optimizer state does not fit "
            f"this run ({err})"
        ) from None
    if restore_rng:
        set_rng_state(tensors, meta["rng"])
    loop = {k[len("loop.") :]: v for k, v in tensors.items() if k.startswith("loop.")}
    return {**meta["loop"], "tensors": loop}


def publish_checkpoint(
    run: str | Path, which: str, source: str | Path, info: dict[str, Any]
) -> Path:
    """Make ``RUN/{which}.safetensors`` the committed weights ``source`` (a hard link, or a copy
    where links are not possible) and write ``RUN/{which}.json`` (``info``)."""
    path = checkpoint_path(run, which)
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    write_json(path.with_suffix(".json"), info)
    return path


def weights_tag(path: str | Path) -> str | None:
    """The ``tag`` in a weights file's metadata (None if absent or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("tag")
    except (SafetensorError, OSError, ValueError):
        return None


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

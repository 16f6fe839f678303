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
against its format, version and structure (strict pydantic models: :class:`RunConfigFile`,
:class:`CheckpointInfo`, :class:`CheckpointMarker`, :class:`TrainingStateFile`); a problem is
one ConfigError line naming the file and the field, e.g. ``RUN/config.json: invalid run
configuration: 'model.num_classes' must be a positive integer``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pixelwise import __version__
from pixelwise.data.classes import ClassInfo
from pixelwise.errors import ConfigError
from pixelwise.files import atomic_path, link_or_copy, write_json

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
    config = read_json(path, "run configuration")
    _check(path, RunConfigFile, config)
    return config


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
    _check(info_path, CheckpointInfo, info)
    epoch = info.get("epoch")
    try:
        with safe_open(str(path), framework="pt") as f:
            embedded = (f.metadata() or {}).get("info")
        inner = json.loads(embedded) if embedded else None
        CheckpointInfo.model_validate(inner)  # a ValueError unless a dict of the right types
    except (SafetensorError, OSError, ValueError):
        inner = None
    if inner is not None and inner.get("epoch") != epoch:
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


# ---------------------------------------------------------------------------------------------
# What the JSON files hold: pydantic models, strict (an integer is never true or "3"). Free-form
# sections (train, data, loop, scheduler) are plain objects; unknown keys are ignored. Readers
# keep the dicts read from disk: the models only check them.
# ---------------------------------------------------------------------------------------------


def _must(phrase: str) -> WrapValidator:
    """Any problem inside the annotated value is reported as ``'field' must be {phrase}``."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("must", "{phrase}", {"phrase": phrase}) from None

    return WrapValidator(check)


def _class_info(classes: dict[str, Any]) -> dict[str, Any]:
    try:
        ClassInfo.from_dict(classes)
    except (ConfigError, TypeError, ValueError, KeyError) as err:
        raise PydanticCustomError("said", "{text}", {"text": str(err)}) from None
    return classes


Natural = Annotated[int, Field(ge=0), _must("an integer >= 0")]
Positive = Annotated[int, Field(ge=1), _must("a positive integer")]
FileName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"), _must("a plain file name")
]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Spread = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _File(BaseModel):
    model_config = ConfigDict(strict=True)
    WHAT: ClassVar[str] = ""  # in "PATH: invalid WHAT: ..."


class _VersionedFile(_File):
    """Names its format and version; a newer version than pixelwise reads asks to upgrade."""

    FORMAT: ClassVar[str]
    NEWEST: ClassVar[int]
    NAME: ClassVar[str]  # in "PATH: NAME format 2 is newer than this pixelwise reads"
    format: str
    version: Positive


class ModelSpec(_File):
    name: str
    num_classes: Positive
    kwargs: dict[str, Any]


class Normalization(_File):
    mean: Annotated[list[Finite], _must("a list of finite numbers")]
    std: Annotated[list[Spread], _must("a list of positive numbers")]


class RunConfigFile(_VersionedFile):
    """``RUN/config.json``."""

    FORMAT, NEWEST, WHAT, NAME = "pixelwise-run", RUN_FORMAT, "run configuration", "run"
    model: ModelSpec
    classes: Annotated[dict[str, Any], AfterValidator(_class_info)]
    normalization: Normalization
    train: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    class_weights: Annotated[list[float] | None, _must("null or a list of numbers")] = None


class CheckpointInfo(_File):
    """``RUN/{best,last}.json``: metrics of the weights beside it."""

    WHAT = "checkpoint information"
    epoch: Natural | None = None


class CheckpointFiles(_File):
    weights: FileName
    state: FileName
    meta: FileName


class CheckpointSizes(_File):
    weights: Natural
    state: Natural
    meta: Natural


class CheckpointMarker(_VersionedFile):
    """``RUN/resume.json``: the commit marker naming the files of one resume point."""

    FORMAT, NEWEST = MARKER_FORMAT, STATE_VERSION
    WHAT = NAME = "checkpoint marker"
    epoch: Positive
    batch: Natural
    step: Natural
    complete: bool
    files: CheckpointFiles
    sizes: CheckpointSizes


class ParamGroup(_File):
    params: list[Natural]


class TensorRef(_File, extra="forbid"):
    tensor: str


class ValueRef(_File, extra="forbid"):
    value: Any


class PythonRng(_File):
    version: Natural
    state: Annotated[list[Natural], Field(min_length=625, max_length=625)]
    gauss: float | None


class NumpyRng(_File):
    bit_generator: Literal["MT19937"]
    pos: Natural
    has_gauss: Natural
    gauss: float


class RngState(_File):
    python: PythonRng
    numpy: NumpyRng


ParamIndex = Annotated[str, Field(pattern=r"^[0-9]+$"), _must("named by a parameter index")]
OptimizerValue = Annotated[TensorRef | ValueRef, _must('{"tensor": NAME} or {"value": VALUE}')]


class TrainingStateFile(_VersionedFile):
    """``RUN/resume/TAG.state.json``: optimizer, scheduler, RNG and loop state of a resume point."""

    FORMAT, NEWEST = STATE_FORMAT, STATE_VERSION
    WHAT = NAME = "training state"
    epoch: Natural
    batch: Natural
    step: Natural
    complete: bool
    param_groups: list[ParamGroup]
    optimizer_state: dict[ParamIndex, dict[str, OptimizerValue]]
    scheduler: dict[str, Any] | None = None
    rng: Annotated[RngState, _must("the random generator states that pixelwise saves")]
    loop: dict[str, Any]


def _check(path: Path, schema: type[_File], data: dict[str, Any]) -> None:
    """Check ``data`` read from ``path``: format, then version, then structure."""
    what = schema.WHAT
    if issubclass(schema, _VersionedFile):
        if data.get("format") != schema.FORMAT:
            raise ConfigError(
                f"{path}: invalid {what}: 'format' must be {schema.FORMAT!r} "
                f"(not a pixelwise {what})"
            )
        version = data.get("version")
        if type(version) is int and version > schema.NEWEST:
            raise ConfigError(
                f"{path}: {schema.NAME} format {version} is newer than this pixelwise "
                f"({__version__}) reads; upgrade pixelwise"
            )
    try:
        schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid {what}: {_explain(err)}") from None


def check_json(path: Path, schema: type[BaseModel], data: Any, what: str) -> None:
    """Validate ``data`` read from ``path`` against the pydantic ``schema`` (a part of a file
    that another layer owns, e.g. the training loop's state); one-line ConfigError naming the
    file and the field: ``PATH: invalid WHAT: 'rows' must be a list``."""
    try:
        schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid {what}: {_explain(err)}") from None


_SHOULD = {
    "model_type": "an object",
    "dict_type": "an object",
    "int_type": "an integer",
    "bool_type": "true or false",
}


def _explain(err: ValidationError) -> str:
    """The first problem in one line: ``'model.num_classes' must be a positive integer``."""
    first, *rest = err.errors(include_url=False)
    where = ".".join(str(part) for part in first["loc"] if part != "[key]")
    kind, msg = first["type"], first["msg"]
    if kind == "said" or not where:
        text = msg if kind == "said" else "top level must be an object"
    elif kind == "missing":
        text = f"'{where}' is missing"
    else:  # pydantic says "Input should be a valid list"
        should = _SHOULD.get(kind) or msg.removeprefix("Input should be ").replace("valid ", "")
        text = f"'{where}' must be {should}"
    more = f" (and {len(rest)} more problem{'s' * (len(rest) > 1)})" if rest else ""
    return text + more


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
    _check(marker_path, CheckpointMarker, marker)
    folder = run / RESUME_DIR
    paths = {k: folder / marker["files"][k] for k in ("weights", "state", "meta")}
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
    _check(paths["meta"], TrainingStateFile, meta)
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
    path = link_or_copy(source, checkpoint_path(run, which))
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

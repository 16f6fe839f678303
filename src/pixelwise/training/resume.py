"""Resuming a run: which options may change, reading the committed checkpoint back into the
model, optimizer, scheduler and RNGs, and where the loop starts again."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from pixelwise import distributed
from pixelwise.errors import ConfigError
from pixelwise.runs import (
    ResumePoint,
    check_json,
    checkpoint_path,
    load_training_state,
    publish_checkpoint,
    read_config,
    restore_training_state,
    weights_tag,
)
from pixelwise.training.config import TrainConfig, option_flag, resume_free_fields
from pixelwise.training.records import pictures, write_csv

__all__ = [
    "RESUME_FREE_OPTIONS",
    "LoopState",
    "check_resumable_data",
    "restore",
    "resume_config",
    "resume_note",
    "resume_point",
]

#: Options that may differ from the run's own when resuming (metadata ``resume="free"``); when
#: not given they keep the run's recorded values. ``epochs`` extends the run (the learning-rate
#: schedule is re-planned to the new end); another ``threads``, ``device`` or ``amp`` continues
#: the run but changes the order of floating-point sums, so the weights are no longer bit-equal
#: to an uninterrupted run's.
RESUME_FREE_OPTIONS = resume_free_fields()


def _stored_options(run: Path) -> dict[str, Any]:
    config_path = run / "config.json"
    stored = read_config(run).get("train")
    if not isinstance(stored, dict):
        raise ConfigError(f"{config_path}: has no training options; cannot resume this run")
    try:
        return TrainConfig.from_dict(stored, str(config_path)).to_dict()
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{config_path}: invalid training options ({err})") from None


def resume_config(run: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration that continues ``RUN``: its own ``config.json`` options, ``resume``
    set, and ``overrides`` (the options given now). Only :data:`RESUME_FREE_OPTIONS` may
    differ from the run's values; the others not given keep them too. Any other changed
    option is a ConfigError naming it."""
    run = Path(run)
    current = _stored_options(run)
    for key, value in (overrides or {}).items():
        if key in ("resume", "overwrite"):
            continue
        if key == "out":
            if Path(value).resolve() != run.resolve():
                raise ConfigError(
                    f"--out {value}: not used with --resume; the run continues in {run}"
                )
            continue
        if key not in current:
            raise ConfigError(f"unknown training option: {key}")
        if key in RESUME_FREE_OPTIONS:
            current[key] = value
            continue
        if _jsonish(value) != _jsonish(current[key]):
            free = ", ".join(option_flag(k) for k in RESUME_FREE_OPTIONS)
            raise ConfigError(
                f"{option_flag(key)}: cannot change when resuming (the run used "
                f"{current[key]!r}, given {value!r}); only {free} may change, or start a new "
                "run with another --out"
            )
    current.update(out=str(run), resume=True, overwrite=False)
    config = TrainConfig.from_dict(current)
    config.validate()
    return config


def resume_note(config: TrainConfig) -> str:
    """One line: which resume-free options the continued run takes from the run, which were
    changed, and whether the result stays bit-equal to an uninterrupted run."""
    stored = _stored_options(Path(config.out))
    now = config.to_dict()
    kept, changed = [], []
    for key in RESUME_FREE_OPTIONS:
        shown = f"{option_flag(key)} {now[key]}"
        if _jsonish(now[key]) == _jsonish(stored[key]):
            kept.append(shown)
        else:
            changed.append(f"{shown} (was {stored[key]})")
    note = "options from the run: " + ", ".join(kept)
    if changed:
        note += "; changed now: " + ", ".join(changed)
    numeric = [k for k in ("threads", "device", "amp") if _jsonish(now[k]) != _jsonish(stored[k])]
    if numeric:
        flags = ", ".join(option_flag(k) for k in numeric)
        note += f" ({flags} changed: the weights will not be bit-equal to an uninterrupted run)"
    return note


def _jsonish(value: Any) -> Any:
    return json.loads(json.dumps(value))


def resume_point(config: TrainConfig, out: Path) -> ResumePoint:
    """Read the committed checkpoint of ``out`` and check ``--epochs`` leaves work to do."""
    read_config(out)  # a missing or foreign run, or a newer run format: a clear error
    point = load_training_state(out)
    check_loop(point, out)
    done = point.epoch if point.complete else point.epoch - 1
    if config.epochs <= done:
        raise ConfigError(
            f"--epochs {config.epochs}: {out} has already trained {done} epoch(s); pass a larger "
            "--epochs to train longer"
        )
    return point


def check_resumable_data(out: Path, n: int) -> None:
    data = read_config(out).get("data") or {}
    before = data.get("train_images")
    if isinstance(before, int) and before != n:
        raise ConfigError(
            f"--data: the training split now has {n} images but {out} was trained on {before}; "
            "resume with the same data"
        )


@dataclass
class LoopState:
    """Where the training loop starts: epoch ``epoch`` after ``batch`` of its batches."""

    epoch: int = 1
    batch: int = 0
    step: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_miou: float = -1.0
    best_epoch: int = 0
    elapsed: float = 0.0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    window: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    last_info: dict[str, Any] | None = None


def restore(
    point: ResumePoint,
    core: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    dist: distributed.DistInfo,
    batches: int,
    out: Path,
) -> LoopState:
    """Load the committed checkpoint into model, optimizer, scheduler and RNGs."""
    check_loop(point, out)
    extra = restore_training_state(point, core, optimizer, scheduler)
    tensors = extra.pop("tensors")
    if not point.complete and extra["batches"] != batches:
        raise ConfigError(
            f"{out}: the checkpoint was taken inside an epoch of {extra['batches']} batches, now "
            f"there are {batches}; resume with the same data and --batch-size"
        )
    own = tensors.get(f"rng_rank{dist.rank}")
    if dist.enabled and own is not None and extra.get("world_size") == dist.world_size:
        torch.set_rng_state(own)  # each process continues its own random stream
    return LoopState(
        epoch=point.epoch + 1 if point.complete else point.epoch,
        batch=0 if point.complete else point.batch,
        step=point.marker["step"],
        rows=extra["rows"],
        best_miou=float(extra["best_miou"]),
        best_epoch=extra["best_epoch"],
        elapsed=float(extra["elapsed"]),
        loss_sum=tensors["loss_sum"],
        window=tensors["window"],
        last_info=extra.get("last_info"),
    )


class LoopStateFile(BaseModel):
    """The training loop's part of a resumable checkpoint (``TAG.state.json``'s ``loop``)."""

    model_config = ConfigDict(strict=True)
    rows: list[dict[str, Any]]
    best_miou: float
    best_epoch: int
    elapsed: float
    batches: int
    last_info: dict[str, Any] | None = None


def check_loop(point: ResumePoint, out: Path) -> None:
    """Check the training loop's own part of a checkpoint (before anything else is done)."""
    path = out / "resume" / point.marker["files"]["meta"]
    extra, tensors = point.meta["loop"], point.tensors
    check_json(path, LoopStateFile, extra, "training state")
    finished = point.epoch if point.complete else point.epoch - 1
    if len(extra["rows"]) != finished:
        raise ConfigError(
            f"{path}: invalid training state: 'rows' must hold one object per finished epoch"
        )
    if not {"loop.loss_sum", "loop.window"} <= set(tensors):
        raise ConfigError(f"{path}: invalid training state: missing loop tensors")


def republish(out: Path, point: ResumePoint, loop: LoopState, classes, draw=pictures) -> None:
    """Make last/best/metrics.csv agree with the committed checkpoint (a crash may have cut
    their update short after the commit); ``draw``: the task's pictures function."""
    if point.complete and loop.last_info is not None:
        tag = weights_tag(point.weights_path)
        if weights_tag(checkpoint_path(out, "last")) != tag:
            publish_checkpoint(out, "last", point.weights_path, loop.last_info)
        if loop.best_epoch == point.epoch and weights_tag(checkpoint_path(out, "best")) != tag:
            publish_checkpoint(out, "best", point.weights_path, loop.last_info)
    if loop.rows:
        write_csv(out / "metrics.csv", loop.rows)
        draw(out, loop.rows, classes, [], loop.rows[-1].get("epoch", 0))

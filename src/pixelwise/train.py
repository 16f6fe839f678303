"""Training: pixel-wise cross-entropy, SGD or AdamW, per-epoch validation, a run directory.

``train(TrainConfig(...))`` is what ``pixelwise train`` calls. It never prints: progress goes to
the optional ``progress`` factory (the CLI passes tqdm bars) and messages to ``log``.
"""

from __future__ import annotations

import csv
import io
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from pixelwise import __version__
from pixelwise.data import open_dataset
from pixelwise.data.balance import class_pixel_counts, median_frequency_weights
from pixelwise.data.transforms import TrainTransform, TransformedDataset, default_normalization
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.evaluate import evaluate_dataset
from pixelwise.files import atomic_open, write_json
from pixelwise.losses import pixel_cross_entropy
from pixelwise.models import build, transfer_weights
from pixelwise.predict import resolve_device
from pixelwise.runs import (
    RUN_FORMAT,
    checkpoint_path,
    load_weights,
    read_config,
    save_checkpoint,
    save_training_state,
)

__all__ = ["TrainConfig", "TrainingDiverged", "train"]


class TrainingDiverged(PixelwiseError):
    """The loss became NaN or infinite."""


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: dict | None = None, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Bar]


@dataclass
class TrainConfig:
    """Every option of a training run (the resolved copy is saved as ``RUN/config.json``)."""

    data: str = "digits"
    data_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_images": 2000} for digits
    model: str = "fcn8s"
    out: str = "runs/latest"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "poly"  # poly | cosine | constant
    width: float = 1.0
    model_args: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 256
    scale_min: float = 0.75
    scale_max: float = 1.25
    hflip: bool = True
    class_weights: list[float] | str | None = None  # None, "auto" (median frequency) or a list
    channels: int | None = None
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    init_from: str | None = None
    encoder_weights: str | None = None
    val_fraction: float = 0.1
    overlays: int = 4
    log_every: int = 10
    deterministic: bool = False
    channels_last: bool = True  # NHWC activations: faster CPU training steps (bench/models.py)
    overwrite: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the option for any nonsensical value."""

        def need(cond: bool, option: str, what: str) -> None:
            if not cond:
                raise ConfigError(f"--{option.replace('_', '-')}: {what}")

        need(self.epochs >= 1, "epochs", f"must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be positive, got {self.lr}")
        need(self.optimizer in ("sgd", "adamw"), "optimizer", "choose 'sgd' or 'adamw'")
        need(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(
            self.schedule in ("poly", "cosine", "constant"),
            "schedule",
            "choose 'poly', 'cosine' or 'constant'",
        )
        need(
            math.isfinite(self.width) and 0 < self.width <= 4,
            "width",
            f"must be in (0, 4], got {self.width}",
        )
        need(self.crop_size >= 8, "crop_size", f"must be at least 8, got {self.crop_size}")
        need(
            0 < self.scale_min <= self.scale_max,
            "scale",
            f"need 0 < min <= max, got {self.scale_min}..{self.scale_max}",
        )
        need(self.channels in (None, 1, 3), "channels", "must be 1 or 3")
        need(self.workers >= 0, "workers", "must be >= 0")
        need(0 < self.val_fraction < 1, "val_fraction", "must be between 0 and 1")
        need(self.overlays >= 0, "overlays", "must be >= 0")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        if isinstance(self.class_weights, str):
            need(self.class_weights == "auto", "class_weights", "give 'auto', 'none' or numbers")
        elif self.class_weights is not None:
            need(
                all(math.isfinite(w) and w >= 0 for w in self.class_weights),
                "class_weights",
                "must be non-negative numbers",
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d)


def _open_data(config: TrainConfig, split: str, channels: int | None, classes=None):
    """Open a split. The train/val split of a flat folder uses a fixed seed (0), not the
    training seed, so runs with different seeds are scored on the same images; the val split
    takes the train split's classes."""
    args = dict(config.data_args)
    if str(config.data) == "digits":
        if split != "train":  # the validation scenes stay the defaults whatever the training set
            args = {}
        return open_dataset("digits", split, channels=channels, **args)
    return open_dataset(
        config.data,
        split,
        channels=channels,
        val_fraction=config.val_fraction,
        classes=classes,
        **args,
    )


def _init_from(model: torch.nn.Module, source: str) -> str:
    """Copy every matching weight from a run directory (staged training) or from a patch
    classifier folder written by ``pixelwise heatmap`` (its Linear layers reshaped onto the
    convolutionalized model's convs); return a one-line note."""
    from pixelwise.heatmap import CLASSIFIER_FILE, has_patch_classifier

    if has_patch_classifier(source):
        from pixelwise.models.convolutionalized import classifier_state

        state = load_weights(Path(source) / CLASSIFIER_FILE)
        copied = transfer_weights(model, classifier_state(state, model))
        return f"initialised {len(copied)} tensors from {source} (patch classifier)"
    config = read_config(source)
    copied = transfer_weights(model, load_weights(checkpoint_path(source, "best")))
    return f"initialised {len(copied)} tensors from {source} ({config['model']['name']})"


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int):
    if kind == "poly":  # the FCN/DeepLab "poly" policy, per iteration
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: max(0.0, 1 - s / total_steps) ** 0.9
        )
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path) as f:
        f.write(buf.getvalue())


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "config.json").is_file():
            raise ConfigError(
                f"--out {out}: folder exists and is not a pixelwise run; choose another"
            )
        if not overwrite:
            raise ConfigError(
                f"--out {out}: a run already exists there; choose another --out or pass --overwrite"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def train(
    config: TrainConfig,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a model as ``config`` says; return a summary (best/last metrics, paths, time).

    Raises ConfigError / DataError for bad options or data (before anything is written) and
    TrainingDiverged when the loss stops being finite (the last good checkpoint is kept).
    """
    say = log or (lambda _msg: None)
    config.validate()
    _seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)

    # Data first: a broken dataset stops here, before a run directory exists.
    train_ds = _open_data(config, "train", config.channels)
    channels = train_ds.channels
    val_ds = _open_data(config, "val", channels, classes=train_ds.classes)
    classes = train_ds.classes
    if len(train_ds) == 0:
        raise ConfigError(f"--data {config.data}: the train split is empty")
    weights = config.class_weights
    if weights == "auto":
        weights = median_frequency_weights(*class_pixel_counts(train_ds))
        say("median-frequency class weights: " + ", ".join(f"{w:.3f}" for w in weights))
    if weights is not None and len(weights) != classes.num_classes:
        raise ConfigError(
            f"--class-weights: {len(weights)} values given for {classes.num_classes} classes"
        )

    kwargs = {"in_channels": channels, "width": config.width, **config.model_args}
    if config.encoder_weights:
        kwargs["encoder_weights"] = config.encoder_weights
    model = build(config.model, classes.num_classes, **kwargs)
    kwargs.pop("encoder_weights", None)  # weights are in the checkpoint from now on
    init_note = _init_from(model, config.init_from) if config.init_from else None
    if init_note:
        say(init_note)
    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)

    mean, std = default_normalization(channels)
    out = Path(config.out)
    _prepare_out(out, config.overwrite)
    run_config = {
        "format": "pixelwise-run",
        "version": RUN_FORMAT,
        "pixelwise": __version__,
        "model": {"name": config.model, "num_classes": classes.num_classes, "kwargs": kwargs},
        "classes": classes.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "train": asdict(config),
        "data": {"train_images": len(train_ds), "val_images": len(val_ds)},
        "class_weights": weights,
    }
    write_json(out / "config.json", run_config)

    crop_size = config.crop_size
    border = int(getattr(model, "border", 0))
    if border:  # valid U-Net: train on overlap tiles whose poolings all see even sizes
        crop_size = model.valid_input_size(*(2 * [max(1, crop_size - 2 * border)]))[0]
    transform = TrainTransform(
        crop_size,
        mean,
        std,
        scale=(config.scale_min, config.scale_max),
        hflip=config.hflip,
        ignore_index=classes.ignore_index,
    )
    train_set = TransformedDataset(train_ds, transform, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) >= config.batch_size,
        num_workers=config.workers,
        generator=generator,
        pin_memory=device.type == "cuda",
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(loader)
    scheduler = _scheduler(optimizer, config.schedule, total_steps)
    class_weights = (
        torch.tensor(weights, dtype=torch.float32, device=device) if weights is not None else None
    )

    rows: list[dict[str, Any]] = []
    best_miou, best_epoch, step = -1.0, 0, 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        train_set.set_epoch(epoch)
        model.train()
        bar = (
            progress(total=len(loader), desc=f"epoch {epoch}/{config.epochs}", unit="batch")
            if progress
            else None
        )
        loss_sum = torch.zeros((), device=device)
        window = torch.zeros((), device=device)
        seen = 0
        for i, (x, y) in enumerate(loader, 1):
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            logits = model(x)
            loss = pixel_cross_entropy(
                logits, y, class_weights, ignore_index=classes.ignore_index, border=border or None
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            detached = loss.detach()
            loss_sum += detached
            window += detached
            seen += 1
            if i % config.log_every == 0 or i == len(loader):
                n = config.log_every if i % config.log_every == 0 else i % config.log_every
                value = float(window) / n  # one host sync per logging interval
                window.zero_()
                if not math.isfinite(value):
                    if bar:
                        bar.close()
                    raise TrainingDiverged(
                        f"loss became {value} at epoch {epoch}, step {step}; "
                        f"lower --lr (now {config.lr}) and train again"
                        + (f"; the last good checkpoint is kept in {out}" if rows else "")
                    )
                if bar:
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        train_loss = float(loss_sum) / max(1, seen)

        val = evaluate_dataset(
            model, val_ds, mean, std, device, class_weights, keep_examples=config.overlays
        )
        s = val.scores
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "lr": f"{scheduler.get_last_lr()[0]:.6g}",
            "train_loss": f"{train_loss:.6f}",
            "val_loss": f"{val.loss:.6f}",
            "val_pixel_accuracy": f"{s['pixel_accuracy']:.6f}",
            "val_mean_accuracy": f"{s['mean_accuracy']:.6f}",
            "val_mean_iou": f"{s['mean_iou']:.6f}",
            "val_fw_iou": f"{s['fw_iou']:.6f}",
            **{
                f"val_iou_{c}": ("" if math.isnan(v) else f"{v:.6f}")
                for c, v in enumerate(s["iou"])
            },
            "time_s": f"{time.perf_counter() - start:.1f}",
        }
        rows.append(row)
        info = {"epoch": epoch, "step": step, "val": s, "train_loss": train_loss}
        save_checkpoint(out, "last", model, info)
        save_training_state(
            out,
            optimizer,
            scheduler,
            {"epoch": epoch, "step": step, "best_miou": max(best_miou, s["mean_iou"])},
        )
        miou = s["mean_iou"] if not math.isnan(s["mean_iou"]) else 0.0
        if miou > best_miou:
            best_miou, best_epoch = miou, epoch
            save_checkpoint(out, "best", model, info)
        _write_csv(out / "metrics.csv", rows)
        _pictures(out, rows, classes, val.examples, epoch)
        say(
            f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}, val loss {val.loss:.4f}, "
            f"pixel acc {s['pixel_accuracy']:.4f}, mean IoU {s['mean_iou']:.4f}"
        )

    summary = {
        "run": str(out),
        "epochs": config.epochs,
        "steps": step,
        "seconds": round(time.perf_counter() - start, 1),
        "best_epoch": best_epoch,
        "best_mean_iou": best_miou,
        "last": {k: rows[-1][k] for k in ("val_mean_iou", "val_pixel_accuracy", "train_loss")},
        "device": str(device),
    }
    if init_note:
        summary["init"] = init_note
    write_json(out / "summary.json", summary)
    return summary


def _pictures(out: Path, rows, classes, examples, epoch: int) -> None:
    from pixelwise.plots import plot_curves, plot_examples

    plot_curves(rows, classes.names, out / "curves.png")
    if examples:
        images, truths, preds = zip(*examples, strict=True)
        plot_examples(
            images,
            truths,
            preds,
            classes,
            out / "overlays" / f"epoch_{epoch:03d}.png",
            title=f"validation, epoch {epoch}",
        )

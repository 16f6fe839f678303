"""Training: pixel-wise cross-entropy, SGD or AdamW, per-epoch validation, a run directory.

``train(TrainConfig(...))`` is what ``pixelwise train`` calls. It never prints: progress goes to
the optional ``progress`` factory (the CLI passes tqdm bars) and messages to ``log``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from pixelwise import __version__, distributed
from pixelwise.data import open_dataset
from pixelwise.data.balance import cached_class_pixel_counts, median_frequency_weights
from pixelwise.data.pipeline import training_set
from pixelwise.data.transforms import TrainTransform, default_normalization
from pixelwise.errors import ConfigError, DataError, PixelwiseError
from pixelwise.evaluate import evaluate_dataset
from pixelwise.files import atomic_open, write_json
from pixelwise.losses import pixel_cross_entropy
from pixelwise.models import build, transfer_weights
from pixelwise.runs import (
    RUN_FORMAT,
    ResumePoint,
    checkpoint_path,
    load_training_state,
    load_weights,
    publish_checkpoint,
    read_config,
    restore_training_state,
    save_training_state,
    weights_tag,
)
from pixelwise.training.config import TrainConfig, resume_free_fields

__all__ = [
    "RESUME_FREE_OPTIONS",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "resume_config",
    "train",
]


class TrainingDiverged(PixelwiseError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training after a resumable checkpoint was saved.

    ``str(err)`` is the one-line message (with the ``--resume`` command); ``signum`` the signal.
    """

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: dict | None = None, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Bar]


def _open_data(config: TrainConfig, split: str, channels: int | None, classes=None, label_map=None):
    """Open a split. The train/val split of a flat folder uses a fixed seed (0), not the
    training seed, so runs with different seeds are scored on the same images; the val split
    takes the train split's classes and label map (``classes``, ``label_map``)."""
    args = dict(config.data_args)
    if str(config.data) == "digits":
        if split != "train":  # the validation scenes stay the defaults whatever the training set
            args = {}
        return open_dataset("digits", split, channels=channels, **args)
    return open_dataset(
        config.data,
        split,
        channels=channels,
        format=config.data_format,
        label_map=label_map if label_map is not None else config.label_map,
        val_fraction=config.val_fraction,
        classes=classes,
        **args,
    )


def _bar_iter(progress: ProgressFactory | None, desc: str, unit: str, **bar_args: Any):
    """Adapt a bar factory to ``progress(iterable) -> iterator`` (what data functions take)."""
    if progress is None:
        return None

    def wrap(items):
        items = list(items)
        bar = progress(total=len(items), desc=desc, unit=unit, **bar_args)
        try:
            for item in items:
                yield item
                bar.update(1)
        finally:
            bar.close()

    return wrap


def _check_data(config: TrainConfig, progress: ProgressFactory | None) -> None:
    """``pixelwise data check`` on the splits training reads (a passing result is cached per
    dataset); problems -> one-line DataError with the first three. Silent when all is well
    (its bar, a tqdm ``delay``, only shows when the check takes a while)."""
    from pixelwise.data.check import check_dataset

    if str(config.data) == "digits" or not Path(config.data).is_dir():
        return  # nothing to check / open_dataset reports the missing folder
    args = {k: v for k, v in config.data_args.items() if k != "cache"}
    report = check_dataset(
        config.data,
        config.data_format,
        config.label_map,
        progress=_bar_iter(progress, "check data", "pair", delay=0.5),
        splits=("train", "val"),
        cache=True,
        val_fraction=config.val_fraction,
        **args,
    )
    if not report.ok:
        raise DataError(report.root, report.summary())


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


def _cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 autocast made training
    steps 1.5-2x faster with the same losses (bench/speed.py, docs/performance.md); elsewhere
    bf16 is emulated and slower than fp32."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        try:
            if getattr(torch.cpu, probe)():
                return True
        except Exception:  # private torch probes: absent or failing means no
            continue
    return False


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: fp32). ``auto``: bf16 on CUDA GPUs
    that support it, else fp16 (with a GradScaler); bf16 on CPUs with native bf16, else fp32."""
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None


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
    Ctrl-C (SIGINT) or SIGTERM in the main thread commits a resumable checkpoint at the next
    step boundary and raises :class:`TrainingInterrupted` (a second Ctrl-C stops at once).
    ``config.resume`` continues the run in ``config.out`` (see :func:`resume_config`).
    Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains data-parallel; rank 0 writes the files.
    """
    config.validate()
    dist, device, created = distributed.init(config.device)
    made: list[Path] = []  # the run directory, once this call has created it
    try:
        with _stop_on_signals() as stop:
            return _train(config, progress, log, dist, device, stop, made)
    except (PixelwiseError, KeyboardInterrupt):
        # bad data found while training (e.g. with the data check off), or Ctrl-C, before
        # anything was committed: leave no half-made run directory behind
        if made and dist.is_main and not (made[0] / "resume.json").exists():
            shutil.rmtree(made[0], ignore_errors=True)
        raise
    finally:
        distributed.destroy(created)


def _train(
    config: TrainConfig,
    progress: ProgressFactory | None,
    log: Callable[[str], None] | None,
    dist: distributed.DistInfo,
    device: torch.device,
    stop: _StopFlag,
    made: list[Path],
) -> dict[str, Any]:
    main = dist.is_main
    say = (log or (lambda _msg: None)) if main else (lambda _msg: None)
    progress = progress if main else None
    out = Path(config.out)
    point = _resume_point(config, out) if config.resume else None
    _seed_everything(config.seed, config.deterministic)

    # Data first: a broken dataset stops here, before a run directory exists.
    if config.check_data:
        _check_data(config, progress)
    train_ds = _open_data(config, "train", config.channels)
    for note in getattr(train_ds, "notes", ()):
        say(note)
    channels = train_ds.channels
    val_ds = _open_data(
        config,
        "val",
        channels,
        classes=train_ds.classes,
        label_map=getattr(train_ds, "label_map", None),
    )
    classes = train_ds.classes
    if len(train_ds) == 0:
        raise ConfigError(f"--data {config.data}: the train split is empty")
    weights = config.class_weights
    if weights == "auto" and config.points:
        # what a point annotator's labels say, not the dense masks they never drew (clicking
        # N points of each present class already balances the classes: weights near 1)
        from pixelwise.data.balance import class_pixel_counts
        from pixelwise.data.points import PointLabels

        clicked = PointLabels(train_ds, config.points, config.seed)
        counts, image_pixels = class_pixel_counts(
            clicked, _bar_iter(progress, "class points", "img")
        )
        weights = median_frequency_weights(counts, image_pixels)
        say(
            "median-frequency class weights of the clicked points: "
            + ", ".join(f"{w:.3f}" for w in weights)
        )
    elif weights == "auto":
        pc = cached_class_pixel_counts(train_ds, _bar_iter(progress, "class pixels", "img"))
        weights = median_frequency_weights(pc.counts, pc.image_pixels)
        origin = f" (pixel counts cached in {pc.path})" if pc.cached else ""
        say("median-frequency class weights: " + ", ".join(f"{w:.3f}" for w in weights) + origin)
    if weights is not None and len(weights) != classes.num_classes:
        raise ConfigError(
            f"--class-weights: {len(weights)} values given for {classes.num_classes} classes"
        )

    if point is not None:
        _check_resumable_data(out, len(train_ds))
    kwargs = {"in_channels": channels, "width": config.width, **config.model_args}
    if config.encoder_weights and point is None:  # resuming: the weights are in the checkpoint
        kwargs["encoder_weights"] = config.encoder_weights
    model = build(config.model, classes.num_classes, **kwargs)
    kwargs.pop("encoder_weights", None)  # weights are in the checkpoint from now on
    init_note = _init_from(model, config.init_from) if config.init_from and not point else None
    if init_note:
        say(init_note)
    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)

    if config.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise ConfigError("--sync-bn: SyncBatchNorm needs CUDA devices; drop it on the CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    mean, std = default_normalization(channels)
    if point is None:
        _prepare_out_everywhere(out, config.overwrite, dist, device)
        made.append(out)
    run_config = {
        "format": "pixelwise-run",
        "version": RUN_FORMAT,
        "pixelwise": __version__,
        "model": {"name": config.model, "num_classes": classes.num_classes, "kwargs": kwargs},
        "classes": classes.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "train": {k: v for k, v in asdict(config).items() if k != "resume"},
        "data": {"train_images": len(train_ds), "val_images": len(val_ds)},
        "class_weights": weights,
    }
    if main:
        write_json(out / "config.json", run_config)

    crop_size = config.crop_size
    border = int(getattr(model, "border", 0))
    if border:  # valid U-Net: train on overlap tiles whose poolings all see even sizes
        crop_size = model.valid_input_size(*(2 * [max(1, crop_size - 2 * border)]))[0]
    transform = TrainTransform(
        crop_size,
        mean,
        std,
        scale=(config.scale_min * config.input_scale, config.scale_max * config.input_scale),
        hflip=config.hflip,
        ignore_index=classes.ignore_index,
        rotate=config.rotate,
        elastic=config.elastic,
        color_jitter=config.color_jitter,
    )
    train_set = training_set(  # cache, point labels, weight maps: pixelwise/data/pipeline.py
        train_ds,
        transform,
        seed=config.seed,
        points=config.points,
        cache=config.cache,
        weight_map=config.weight_map,
        w0=config.w0,
        sigma=config.sigma,
        class_weights=weights if config.weight_map else None,
        log=say,
        progress=progress,
    )
    # The order of epoch e is a pure function of (seed, e), split over the processes; the
    # loader's own generator (workers' base seed) is re-seeded per epoch too.
    sampler = distributed.EpochSampler(
        len(train_set),
        config.batch_size,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        drop_last=len(train_set) >= config.batch_size,
    )
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        train_set,
        batch_size=sampler.local_batch_size,
        sampler=sampler,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
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
    batches = sampler.num_batches  # global batches per epoch
    total_steps = config.epochs * math.ceil(batches / config.accumulate)  # optimizer steps
    amp_dtype = _amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if amp_dtype is not None:
        say(f"mixed precision: {str(amp_dtype)[6:]} autocast (--amp {config.amp}; off: fp32)")
    scheduler = _scheduler(optimizer, config.schedule, total_steps)
    class_weights = (
        torch.tensor(weights, dtype=torch.float32, device=device) if weights is not None else None
    )

    core = model  # the module itself (saved, evaluated); ``model`` wraps it under torchrun
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    loop = _LoopState()
    if point is not None:
        loop = _restore(point, core, optimizer, scheduler, dist, batches, out)
        if scaler.is_enabled() and isinstance(point.meta["loop"].get("scaler"), dict):
            scaler.load_state_dict(point.meta["loop"]["scaler"])  # fp16 loss scale continues
        if hasattr(scheduler, "T_max"):  # --epochs extended: the cosine ends at the new end
            scheduler.T_max = total_steps
        if main:
            _republish(out, point, loop, classes)
        say(f"resuming {out} at epoch {loop.epoch}, batch {loop.batch} of {batches}")
    rows, best_miou, best_epoch, step = loop.rows, loop.best_miou, loop.best_epoch, loop.step
    start = time.perf_counter() - loop.elapsed
    committed = point is not None

    def commit(
        epoch: int, batch: int, window: torch.Tensor, loss_sum: torch.Tensor, info=None
    ) -> Path | None:
        """Commit a resumable checkpoint (rank 0 writes; every rank must call)."""
        nonlocal committed
        if not _all_finite(core, window):
            raise _diverged(float("nan"), epoch, step, config, out, committed)
        per_rank = distributed.gather_tensors(torch.get_rng_state())
        if not main:
            return None
        extra = {
            "rows": rows,
            "best_miou": best_miou,
            "best_epoch": best_epoch,
            "elapsed": time.perf_counter() - start,
            "batches": batches,
            "world_size": dist.world_size,
            "last_info": info,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        }
        tensors = {"loss_sum": loss_sum, "window": window}
        tensors.update({f"rng_rank{r}": t for r, t in enumerate(per_rank)})
        path = save_training_state(
            out,
            core,
            optimizer,
            scheduler,
            epoch=epoch,
            batch=batch,
            complete=info is not None,
            step=step,
            extra=extra,
            tensors=tensors,
            info=info,
        )
        committed = True
        return path

    def interrupted(epoch: int, batch: int) -> TrainingInterrupted:
        distributed.barrier()  # rank 0 has written the checkpoint before anyone exits
        where = f"epoch {epoch} done" if batch >= batches else f"epoch {epoch}, batch {batch}"
        return TrainingInterrupted(
            f"interrupted; resume with: pixelwise train --resume {out} (saved at {where})",
            stop.signum or signal.SIGINT,
        )

    stop.armed = True
    for epoch in range(loop.epoch, config.epochs + 1):
        first = loop.batch if epoch == loop.epoch else 0
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, first)
        generator.manual_seed(distributed.mix_seed(config.seed, epoch))
        model.train()
        bar = (
            progress(
                total=batches,
                desc=f"epoch {epoch}/{config.epochs}",
                unit="batch",
                **({"initial": first} if first else {}),
            )
            if progress
            else None
        )
        loss_sum = torch.zeros((), device=device)
        window = torch.zeros((), device=device)
        seen = first
        if first:  # resuming inside an epoch: the running sums continue
            loss_sum += loop.loss_sum.to(device)
            window += loop.window.to(device)
        i = first
        for i, (x, y, *pw) in enumerate(_batches(loader, stop), first + 1):
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            pw = pw[0].to(device, non_blocking=True) if pw else None  # weight map, w_c inside
            acc = config.accumulate
            group = min(acc, batches - (i - 1) // acc * acc)  # micro-batches in this update
            with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
                logits = model(x).float()  # the loss in fp32
            loss = pixel_cross_entropy(
                logits,
                y,
                class_weights if pw is None else None,
                pixel_weights=pw,
                ignore_index=classes.ignore_index,
                border=border or None,
            )
            if (i - 1) % acc == 0 or i == first + 1:  # a new accumulation group
                optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss / group if group > 1 else loss).backward()
            if i % acc == 0 or i == batches:  # one optimizer step per group
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
            detached = loss.detach()
            loss_sum += detached
            window += detached
            seen += 1
            if i % config.log_every == 0 or i == batches:
                n = config.log_every if i % config.log_every == 0 else i % config.log_every
                value = _mean_over_ranks(window, dist) / n  # one host sync per logging interval
                window.zero_()
                if not math.isfinite(value):
                    if bar:
                        bar.close()
                    raise _diverged(value, epoch, step, config, out, committed)
                if bar:
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if bar:
                bar.update(1)
            boundary = i % acc == 0  # no gradient half-accumulated: a checkpoint may go here
            stopping = boundary and distributed.any_true(stop.requested, device)
            at_save = config.save_every and boundary and step % config.save_every == 0
            if i < batches and (stopping or at_save):
                commit(epoch, i, window, loss_sum)
            if stopping:
                if bar:
                    bar.close()
                raise interrupted(epoch, i)
        if bar:
            bar.close()
        if i < batches:  # the loader stopped early: its workers died of the same Ctrl-C
            if i % config.accumulate:  # inside an accumulation group: keep the last commit
                raise KeyboardInterrupt(
                    f"interrupted; resume with: pixelwise train --resume {out} (from the last "
                    "checkpoint)"
                )
            commit(epoch, i, window, loss_sum)
            raise interrupted(epoch, i)
        train_loss = _mean_over_ranks(loss_sum, dist) / max(1, seen)
        if epoch % config.val_every and epoch < config.epochs:
            # no validation this epoch: commit the finished batches (resuming validates nothing
            # twice), and go on unless a stop was requested
            commit(epoch, batches, window, loss_sum)
            if distributed.any_true(stop.requested, device):
                raise interrupted(epoch, batches)
            continue

        val = evaluate_dataset(
            core,
            val_ds,
            mean,
            std,
            device,
            class_weights,
            keep_examples=config.overlays if main else 0,
            shard=(dist.rank, dist.world_size),
            input_scale=config.input_scale,
        )
        if not math.isfinite(val.loss):
            raise _diverged(val.loss, epoch, step, config, out, committed)
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
        miou = s["mean_iou"] if not math.isnan(s["mean_iou"]) else 0.0
        improved = miou > best_miou
        if improved:
            best_miou, best_epoch = miou, epoch
        weights_file = commit(epoch, batches, window, loss_sum, info=info)
        if main and weights_file is not None:
            publish_checkpoint(out, "last", weights_file, info)
            if improved:
                publish_checkpoint(out, "best", weights_file, info)
            _write_csv(out / "metrics.csv", rows)
            _pictures(out, rows, classes, val.examples, epoch)
        say(
            f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}, val loss {val.loss:.4f}, "
            f"pixel acc {s['pixel_accuracy']:.4f}, mean IoU {s['mean_iou']:.4f}"
        )
        if epoch < config.epochs and distributed.any_true(stop.requested, device):
            raise interrupted(epoch, batches)

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
    if main:
        write_json(out / "summary.json", summary)
    return summary


def _pictures(out: Path, rows, classes, examples, epoch: int) -> None:
    from pixelwise.plots import plot_curves, plot_examples

    plot_curves(rows, classes, out / "curves.png")  # class colours, as in the overlays
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


# ---------------------------------------------------------------------------------------------
# Resume, interruption, several processes
# ---------------------------------------------------------------------------------------------

#: Options that may differ from the run's own when resuming: they do not change the result
#: (``epochs`` extends the run; the learning-rate schedule is re-planned to the new end).
RESUME_FREE_OPTIONS = resume_free_fields()


def resume_config(run: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration that continues ``RUN``: its own ``config.json`` options, ``resume``
    set, and ``overrides`` (only :data:`RESUME_FREE_OPTIONS` may differ from the run's values;
    any other changed option is a ConfigError naming it)."""
    run = Path(run)
    config_path = run / "config.json"
    stored = read_config(run).get("train")
    if not isinstance(stored, dict):
        raise ConfigError(f"{config_path}: has no training options; cannot resume this run")
    try:
        base = TrainConfig.from_dict(stored)
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{config_path}: invalid training options ({err})") from None
    current = asdict(base)
    for key, value in (overrides or {}).items():
        option = "--" + key.replace("_", "-")
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
            names = {"check_data": "no_check"}  # the option that sets the field
            free = ", ".join("--" + names.get(k, k).replace("_", "-") for k in RESUME_FREE_OPTIONS)
            raise ConfigError(
                f"{option}: cannot change when resuming (the run used {current[key]!r}, given "
                f"{value!r}); only {free} may change, or start a new run with another --out"
            )
    current.update(out=str(run), resume=True, overwrite=False)
    config = TrainConfig.from_dict(current)
    config.validate()
    return config


def _jsonish(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _resume_point(config: TrainConfig, out: Path) -> ResumePoint:
    """Read the committed checkpoint of ``out`` and check ``--epochs`` leaves work to do."""
    read_config(out)  # a missing or foreign run, or a newer run format: a clear error
    point = load_training_state(out)
    _check_loop(point, out)
    done = point.epoch if point.complete else point.epoch - 1
    if config.epochs <= done:
        raise ConfigError(
            f"--epochs {config.epochs}: {out} has already trained {done} epoch(s); pass a larger "
            "--epochs to train longer"
        )
    return point


def _check_resumable_data(out: Path, n: int) -> None:
    data = read_config(out).get("data") or {}
    before = data.get("train_images")
    if isinstance(before, int) and before != n:
        raise ConfigError(
            f"--data: the training split now has {n} images but {out} was trained on {before}; "
            "resume with the same data"
        )


def _prepare_out_everywhere(
    out: Path, overwrite: bool, dist: distributed.DistInfo, device: torch.device
) -> None:
    """Rank 0 prepares ``out``; every process raises if that failed (nobody waits forever)."""
    error: ConfigError | None = None
    if dist.is_main:
        try:
            _prepare_out(out, overwrite)
        except ConfigError as err:
            error = err
    if distributed.any_true(error is not None, device):
        raise error or ConfigError(f"--out {out}: rank 0 could not prepare the run directory")


@dataclass
class _LoopState:
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


def _restore(
    point: ResumePoint,
    core: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    dist: distributed.DistInfo,
    batches: int,
    out: Path,
) -> _LoopState:
    """Load the committed checkpoint into model, optimizer, scheduler and RNGs."""
    _check_loop(point, out)
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
    return _LoopState(
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


def _check_loop(point: ResumePoint, out: Path) -> None:
    """Check the training loop's own part of a checkpoint (before anything else is done)."""
    path = out / "resume" / point.marker["files"]["meta"]
    extra, tensors = point.meta["loop"], point.tensors

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ConfigError(f"{path}: invalid training state: {what}")

    rows = extra.get("rows")
    need(
        isinstance(rows, list)
        and all(isinstance(r, dict) for r in rows)
        and len(rows) == (point.epoch if point.complete else point.epoch - 1),
        "'rows' must hold one object per finished epoch",
    )
    need(isinstance(extra.get("best_miou"), int | float), "'best_miou' must be a number")
    need(isinstance(extra.get("best_epoch"), int), "'best_epoch' must be an integer")
    need(isinstance(extra.get("elapsed"), int | float), "'elapsed' must be a number")
    need(isinstance(extra.get("batches"), int), "'batches' must be an integer")
    need(extra.get("last_info") is None or isinstance(extra["last_info"], dict), "'last_info'")
    need({"loop.loss_sum", "loop.window"} <= set(tensors), "missing loop tensors")


def _republish(out: Path, point: ResumePoint, loop: _LoopState, classes) -> None:
    """Make last/best/metrics.csv agree with the committed checkpoint (a crash may have cut
    their update short after the commit)."""
    if point.complete and loop.last_info is not None:
        tag = weights_tag(point.weights_path)
        if weights_tag(checkpoint_path(out, "last")) != tag:
            publish_checkpoint(out, "last", point.weights_path, loop.last_info)
        if loop.best_epoch == point.epoch and weights_tag(checkpoint_path(out, "best")) != tag:
            publish_checkpoint(out, "best", point.weights_path, loop.last_info)
    if loop.rows:
        _write_csv(out / "metrics.csv", loop.rows)
        _pictures(out, loop.rows, classes, [], loop.rows[-1].get("epoch", 0))


@dataclass
class _StopFlag:
    """Set by SIGINT / SIGTERM: the loop saves and stops at the next step boundary."""

    signum: int = 0
    at: float = 0.0
    armed: bool = False  # False until the training loop runs: a signal stops at once

    @property
    def requested(self) -> bool:
        return self.signum != 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """Turn the first SIGINT/SIGTERM into a request to stop cleanly; a second Ctrl-C more than
    two seconds later raises KeyboardInterrupt at once (the previous commit stays). Outside
    the main thread signals cannot be caught: nothing changes there."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if not flag.armed:  # nothing trained yet: nothing to save
            raise KeyboardInterrupt("interrupted before training started; nothing was saved")
        if not flag.signum:
            flag.signum, flag.at = signum, now
        elif now - flag.at > 2.0:  # a repeat within 2 s is the same request (torchrun relays it)
            raise KeyboardInterrupt("interrupted twice; the last committed checkpoint is kept")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _batches(loader: DataLoader, stop: _StopFlag) -> Iterator[Any]:
    """Iterate ``loader``; if its worker processes died because of a Ctrl-C, just end."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if stop.requested:
                return
            raise
        yield batch


def _mean_over_ranks(t: torch.Tensor, dist: distributed.DistInfo) -> float:
    """``float(t)``, averaged over the processes (one host sync)."""
    if not dist.enabled:
        return float(t)
    return float(distributed.all_reduce_sum(t.detach().clone())) / dist.world_size


def _all_finite(core: torch.nn.Module, window: torch.Tensor) -> bool:
    """Every weight (and the running loss window) of every process is finite."""
    ok = bool(torch.isfinite(window).all()) and all(
        bool(torch.isfinite(p).all()) for p in core.parameters()
    )
    return not distributed.any_true(not ok, window.device)


def _diverged(
    value: float, epoch: int, step: int, config: TrainConfig, out: Path, committed: bool
) -> TrainingDiverged:
    kept = f"; the last good checkpoint is kept in {out}" if committed else ""
    return TrainingDiverged(
        f"loss became {value} at epoch {epoch}, step {step}; lower --lr (now {config.lr}) "
        f"and train again{kept}"
    )

"""The training loop: pixel-wise cross-entropy, SGD or AdamW, validation, a run directory.

``train(TrainConfig(...))`` is what ``pixelwise train`` calls. It never prints: progress goes to
the optional ``progress`` factory (the CLI passes bars) and messages to ``log``. Read
:func:`_train` top to bottom: set up (:mod:`.setup`), then for each epoch, for each batch a
step; then validate, record and commit a resumable checkpoint (:mod:`.resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelwise import distributed
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.files import write_json
from pixelwise.runs import has_resume_point, publish_checkpoint, save_training_state
from pixelwise.training.amp import amp_dtype
from pixelwise.training.budget import Budget
from pixelwise.training.config import TrainConfig
from pixelwise.training.records import TensorBoardLog, write_csv
from pixelwise.training.resume import (
    LoopState,
    check_resumable_data,
    republish,
    restore,
    resume_note,
    resume_point,
)
from pixelwise.training.setup import (
    ProgressFactory,
    TrainingData,
    build_model,
    make_batches,
    make_optimizer,
    open_training_data,
    prepare_out_everywhere,
    run_config,
    seed_everything,
    training_crop,
    write_run_config,
)
from pixelwise.training.signals import StopFlag, TrainingInterrupted, batches, stop_on_signals
from pixelwise.training.tasks import Segment, task_for

__all__ = ["TrainingDiverged", "TrainingInterrupted", "train"]


class TrainingDiverged(PixelwiseError):
    """The loss became NaN or infinite."""


def train(
    config: TrainConfig,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
    attachments: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train a model as ``config`` says; return a summary (best/last metrics, paths, time).

    ``attachments``: JSON files written into a new run directory beside ``config.json``
    (``{"plan.json": ...}``: the plan the options came from).

    Raises ConfigError / DataError for bad options or data (before anything is written) and
    TrainingDiverged when the loss stops being finite (the last good checkpoint is kept).
    Ctrl-C (SIGINT) or SIGTERM in the main thread commits a resumable checkpoint at the next
    step boundary and raises :class:`TrainingInterrupted` (a second Ctrl-C stops at once).
    ``config.resume`` continues the run in ``config.out`` (see :func:`resume_config`).
    Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains data-parallel; rank 0 writes the files.
    """
    config.validate()
    started = time.perf_counter()
    dist, device, created = distributed.init(config.device)
    made: list[Path] = []  # the run directory, once this call has created it
    try:
        if config.sync_bn and not (dist.enabled and device.type == "cuda"):
            raise ConfigError(
                "--sync-bn: synchronises BatchNorm across several CUDA processes under torchrun; "
                "here there is nothing to synchronise, drop it"
            )
        with stop_on_signals() as stop, torch_threads(config.threads):
            return _train(config, progress, log, dist, device, stop, made, started, attachments)
    except (PixelwiseError, KeyboardInterrupt):
        # bad data found while training (e.g. with the data check off), or Ctrl-C, before
        # anything was committed: leave no half-made run directory behind
        if made and dist.is_main and not has_resume_point(made[0]):
            shutil.rmtree(made[0], ignore_errors=True)
        raise
    finally:
        distributed.destroy(created)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the duration (None: leave it as it is)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Trainer:
    """What the loop works with, made once by :func:`_set_up` (``model`` wraps ``core`` in
    DistributedDataParallel under torchrun; ``core`` is what is saved and evaluated)."""

    config: TrainConfig
    out: Path
    dist: distributed.DistInfo
    device: torch.device
    say: Callable[[str], None]
    progress: ProgressFactory | None
    stop: StopFlag
    data: TrainingData
    core: torch.nn.Module
    model: torch.nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_set: Any
    sampler: Any
    loader: Any
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    class_weights: torch.Tensor | None
    memory_format: torch.memory_format
    state: LoopState
    task: Segment  # what is learnt (--task): data, loss, scores, pictures (training/tasks.py)
    start: float = 0.0
    committed: bool = False
    init_note: str | None = None
    tensorboard: TensorBoardLog | None = None
    budget: Budget | None = None

    @property
    def batches(self) -> int:
        """Global batches per epoch."""
        return self.sampler.num_batches


def _train(
    config: TrainConfig,
    progress: ProgressFactory | None,
    log: Callable[[str], None] | None,
    dist: distributed.DistInfo,
    device: torch.device,
    stop: StopFlag,
    made: list[Path],
    started: float,
    attachments: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if config.threads is None:  # record the count used: --resume keeps it (bit-equal sums)
        config = dataclasses.replace(config, threads=torch.get_num_threads())
    t = _set_up(config, progress, log, dist, device, stop, made, started)
    if dist.is_main and not config.resume:
        for name, content in (attachments or {}).items():
            write_json(t.out / name, content)
    s = t.state
    stop.armed = True
    for epoch in range(s.epoch, config.epochs + 1):
        first = s.batch if epoch == s.epoch else 0
        t.train_set.set_epoch(epoch)
        t.sampler.set_epoch(epoch, first)
        t.generator.manual_seed(distributed.mix_seed(config.seed, epoch))
        loss_sum, window, seen = _train_epoch(t, epoch, first)
        train_loss = _mean_over_ranks(loss_sum, dist) / max(1, seen)
        out_of_time = t.budget is not None and t.budget.stopped

        if epoch % config.val_every and epoch < config.epochs and not out_of_time:
            # no validation this epoch: commit the finished batches (resuming validates nothing
            # twice), and go on unless a stop was requested
            _commit(t, epoch, t.batches, window, loss_sum)
            if distributed.any_true(stop.requested, device):
                raise _interrupted(t, epoch, t.batches)
            continue

        _validate_and_commit(t, epoch, train_loss, window, loss_sum)
        if out_of_time:
            t.say(f"budget: stopped after epoch {epoch} to finish within {config.budget:.0f} s")
            break
        if epoch < config.epochs and distributed.any_true(stop.requested, device):
            raise _interrupted(t, epoch, t.batches)
    return _summary(t)


def _validate_and_commit(
    t: Trainer, epoch: int, train_loss: float, window: torch.Tensor, loss_sum: torch.Tensor
) -> None:
    """Score the epoch, add its metrics row, commit it and publish last/best and pictures."""
    s = t.state
    began = time.perf_counter()
    val = _validate(t, epoch)
    validated = time.perf_counter()
    lr = t.scheduler.get_last_lr()[0]
    s.rows.append(t.task.row(epoch, s.step, lr, train_loss, val, validated - t.start))
    score = t.task.score(val)  # mean IoU (colorize: PSNR) picks the best checkpoint
    improved = score > s.best_miou
    if improved:
        s.best_miou, s.best_epoch = score, epoch
    info = {"epoch": epoch, "step": s.step, "val": val.scores, "train_loss": train_loss}
    weights_file = _commit(t, epoch, t.batches, window, loss_sum, info=info)
    if t.dist.is_main and weights_file is not None:
        _publish(t, weights_file, info, improved, val.examples, epoch)
    if t.budget is not None:
        t.budget.measured_validation(validated - began)
        t.budget.measured_checkpoint(time.perf_counter() - validated)
        t.budget.pause()
    t.say(
        f"epoch {epoch}/{t.config.epochs}: train loss {train_loss:.4f}, val loss "
        f"{val.loss:.4f}, {t.task.report(val)}"
    )


def _set_up(
    config: TrainConfig,
    progress: ProgressFactory | None,
    log: Callable[[str], None] | None,
    dist: distributed.DistInfo,
    device: torch.device,
    stop: StopFlag,
    made: list[Path],
    started: float,
) -> Trainer:
    """Data, model, run directory, batches, optimizer, and the resumed state if resuming (in
    this order: it fixes which random numbers each part draws)."""
    main = dist.is_main
    say = (log or _silent) if main else _silent
    progress = progress if main else None
    out = Path(config.out)
    point = resume_point(config, out) if config.resume else None
    seed_everything(config.seed, config.deterministic)

    data = open_training_data(config, progress, say)  # a broken dataset stops here
    if point is not None:
        check_resumable_data(out, len(data.train))
        say(resume_note(config))
    model, model_kwargs, init_note = build_model(config, data, point is not None, say)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device)
    model.to(memory_format=memory_format)
    if config.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    mean, std = task_for(config.task).normalization(data.channels)
    if point is None:
        prepare_out_everywhere(out, config.overwrite, dist, device)
        made.append(out)
    if main:
        write_run_config(out, run_config(config, data, model_kwargs, mean, std))

    crop = training_crop(config, model)
    train_set, sampler, loader, generator = make_batches(
        config, data, crop, mean, std, dist, device, say, progress
    )
    budget = Budget(config.budget, started) if config.budget is not None else None
    clock = budget.fraction if budget is not None else None
    optimizer, scheduler = make_optimizer(config, model, sampler.num_batches, clock)
    amp = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if amp is not None:
        say(f"mixed precision: {str(amp)[6:]} autocast (--amp {config.amp}; off: fp32)")
    weights = data.class_weights
    class_weights = (
        torch.tensor(weights, dtype=torch.float32, device=device) if weights is not None else None
    )
    core = model
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    t = Trainer(
        config, out, dist, device, say, progress, stop, data, core, model, mean, std,
        train_set, sampler, loader, generator, optimizer, scheduler, scaler, amp,
        class_weights, memory_format, LoopState(), task_for(config.task),
    )  # fmt: skip
    if point is not None:
        _resume(t, point)
    t.start = time.perf_counter() - t.state.elapsed
    t.committed = point is not None
    t.init_note = init_note
    t.tensorboard = TensorBoardLog(out) if config.tensorboard and main else None
    if budget is not None:
        budget.spent = t.state.elapsed  # a resumed run's earlier sessions
        t.budget = _start_budget(t, budget)
    return t


def _start_budget(t: Trainer, budget: Budget) -> Budget:
    """The budget's clock (from the start of :func:`train`, less what earlier sessions of a
    resumed run spent) and first estimates: one validation image timed now, times the split;
    a checkpoint at 50 MB/s of weights and optimizer state."""
    began = time.perf_counter()
    t.task.evaluate(t, progress=lambda indices: list(indices)[:1])
    images = max(1, len(t.data.val) // t.dist.world_size)
    budget.measured_validation((time.perf_counter() - began) * images)
    state_bytes = 3 * sum(p.numel() * p.element_size() for p in t.core.parameters())
    budget.measured_checkpoint(state_bytes / 50e6 + 0.5)
    t.say(
        f"budget {t.config.budget:.0f} s: {budget.left():.0f} s left after setting up; "
        f"reserving ~{budget.reserve():.0f} s for the last validation and checkpoint"
    )
    return budget


def _resume(t: Trainer, point: Any) -> None:
    """Load the committed checkpoint into the trainer and put the run's files in step."""
    t.state = restore(point, t.core, t.optimizer, t.scheduler, t.dist, t.batches, t.out)
    if t.scaler.is_enabled() and isinstance(point.meta["loop"].get("scaler"), dict):
        t.scaler.load_state_dict(point.meta["loop"]["scaler"])  # fp16 loss scale continues
    if hasattr(t.scheduler, "T_max"):  # --epochs extended: the cosine ends at the new end
        t.scheduler.T_max = t.config.epochs * math.ceil(t.batches / t.config.accumulate)
    if t.dist.is_main:
        republish(t.out, point, t.state, t.data.classes, t.task.pictures)
    t.say(f"resuming {t.out} at epoch {t.state.epoch}, batch {t.state.batch} of {t.batches}")


def _train_epoch(t: Trainer, epoch: int, first: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Train batches ``first + 1 ..`` of ``epoch``; return the loss sum, the loss window since
    the last log line and the batches seen. Stops (committing first) on a requested stop."""
    config, s, acc = t.config, t.state, t.config.accumulate
    t.model.train()
    bar = _epoch_bar(t, epoch, first)
    loss_sum = torch.zeros((), device=t.device)
    window = torch.zeros((), device=t.device)
    if first:  # resuming inside an epoch: the running sums continue
        loss_sum += s.loss_sum.to(t.device)
        window += s.window.to(t.device)
    i = seen = first
    for i, (x, y, *pw) in enumerate(batches(t.loader, t.stop), first + 1):
        x, y = t.task.batch(x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True))
        x = x.contiguous(memory_format=t.memory_format)  # (model input, target) of the task
        pixel_weights = pw[0].to(t.device, non_blocking=True) if pw else None  # w_c inside
        group = min(acc, t.batches - (i - 1) // acc * acc)  # micro-batches in this update
        with torch.autocast(t.device.type, t.amp, enabled=t.amp is not None):
            logits = t.model(x).float()  # the loss in fp32
        loss = t.task.loss(t, logits, y, pixel_weights)  # cross-entropy (+ Dice); colorize L1
        if (i - 1) % acc == 0 or i == first + 1:  # a new accumulation group
            t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss / group if group > 1 else loss).backward()
        if i % acc == 0 or i == t.batches:  # one optimizer step per group
            t.scaler.step(t.optimizer)
            t.scaler.update()
            t.scheduler.step()
            s.step += 1
        loss_sum += loss.detach()
        window += loss.detach()
        seen += 1
        if i % config.log_every == 0 or i == t.batches:
            _log_loss(t, bar, window, i, epoch)
        bar.update(1)
        boundary = i % acc == 0  # no gradient half-accumulated: a checkpoint may go here
        budgeted = (boundary or i == t.batches) and t.budget is not None
        if budgeted and distributed.any_true(t.budget.must_stop(), t.device):
            break  # out of time: this epoch ends here, validated and committed
        stopping = boundary and distributed.any_true(t.stop.requested, t.device)
        at_save = config.save_every and boundary and s.step % config.save_every == 0
        if i < t.batches and (stopping or at_save):
            _commit(t, epoch, i, window, loss_sum)
        if stopping:
            bar.close()
            raise _interrupted(t, epoch, i)
    bar.close()
    out_of_time = t.budget is not None and t.budget.stopped
    if i < t.batches and not out_of_time:  # the loader stopped early: workers died of Ctrl-C
        if i % acc:  # inside an accumulation group: keep the last commit
            raise KeyboardInterrupt(
                f"interrupted; resume with: pixelwise train --resume {t.out} (from the last "
                "checkpoint)"
            )
        _commit(t, epoch, i, window, loss_sum)
        raise _interrupted(t, epoch, i)
    return loss_sum, window, seen


def _log_loss(t: Trainer, bar: Any, window: torch.Tensor, i: int, epoch: int) -> None:
    """The mean loss since the last log line on the bar (one host sync per interval)."""
    every = t.config.log_every
    value = _mean_over_ranks(window, t.dist) / (every if i % every == 0 else i % every)
    window.zero_()
    if not math.isfinite(value):
        bar.close()
        raise _diverged(t, value, epoch)
    left = {"left": t.budget.postfix()} if t.budget is not None else {}
    bar.set_postfix(loss=f"{value:.4f}", lr=f"{t.scheduler.get_last_lr()[0]:.2e}", **left)


def _validate(t: Trainer, epoch: int) -> Any:
    """Scores on the validation split (shared over the processes); a non-finite loss stops."""
    val = t.task.evaluate(t, keep=t.config.overlays if t.dist.is_main else 0)
    if not math.isfinite(val.loss):
        raise _diverged(t, val.loss, epoch)
    return val


def _commit(
    t: Trainer,
    epoch: int,
    batch: int,
    window: torch.Tensor,
    loss_sum: torch.Tensor,
    info: dict[str, Any] | None = None,
) -> Path | None:
    """Commit a resumable checkpoint (every rank must call; rank 0 writes and gets the
    weights file). ``info`` (the epoch's scores) marks a finished, validated epoch."""
    s = t.state
    if not _all_finite(t.core, window):
        raise _diverged(t, float("nan"), epoch)
    per_rank = distributed.gather_tensors(torch.get_rng_state())
    if not t.dist.is_main:
        return None
    extra = {
        "rows": s.rows,
        "best_miou": s.best_miou,
        "best_epoch": s.best_epoch,
        "elapsed": time.perf_counter() - t.start,
        "batches": t.batches,
        "world_size": t.dist.world_size,
        "last_info": info,
        "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else None,
    }
    tensors = {"loss_sum": loss_sum, "window": window}
    tensors.update({f"rng_rank{r}": rng for r, rng in enumerate(per_rank)})
    path = save_training_state(
        t.out,
        t.core,
        t.optimizer,
        t.scheduler,
        epoch=epoch,
        batch=batch,
        complete=info is not None,
        step=s.step,
        extra=extra,
        tensors=tensors,
        info=info,
    )
    t.committed = True
    return path


def _publish(
    t: Trainer, weights_file: Path, info: dict, improved: bool, examples: Any, epoch: int
) -> None:
    """last (and best) checkpoints, metrics.csv, curves and overlays of a validated epoch."""
    publish_checkpoint(t.out, "last", weights_file, info)
    if improved:
        publish_checkpoint(t.out, "best", weights_file, info)
    write_csv(t.out / "metrics.csv", t.state.rows)
    t.task.pictures(t.out, t.state.rows, t.data.classes, examples, epoch)
    if t.tensorboard is not None:
        overlay = t.out / "overlays" / f"epoch_{epoch:03d}.png" if examples else None
        t.tensorboard.epoch(t.state.rows[-1], t.data.classes, overlay)


def _summary(t: Trainer) -> dict[str, Any]:
    s = t.state
    summary = {
        "run": str(t.out),
        "epochs": s.rows[-1]["epoch"] if s.rows else t.config.epochs,  # trained (budget)
        "steps": s.step,
        "seconds": round(time.perf_counter() - t.start, 1),
        "best_epoch": s.best_epoch,
        **t.task.summary(s.rows, s.best_miou),  # best_mean_iou (colorize: best_psnr), last
        "device": str(t.device),
    }
    if t.init_note:
        summary["init"] = t.init_note
    if t.budget is not None:
        summary["budget"] = {
            "seconds": t.config.budget,
            "stopped_early": t.budget.stopped,
            "left_s": round(t.budget.left(), 1),
        }
    if t.dist.is_main:
        write_json(t.out / "summary.json", summary)
    if t.tensorboard is not None:
        t.tensorboard.close()
    return summary


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _epoch_bar(t: Trainer, epoch: int, first: int) -> Any:
    if t.progress is None:
        return _NoBar()
    desc = f"epoch {epoch}/{t.config.epochs}"
    return t.progress(
        total=t.batches, desc=desc, unit="batch", **({"initial": first} if first else {})
    )


def _silent(_message: str) -> None:
    return None


def _interrupted(t: Trainer, epoch: int, batch: int) -> TrainingInterrupted:
    distributed.barrier()  # rank 0 has written the checkpoint before anyone exits
    where = f"epoch {epoch} done" if batch >= t.batches else f"epoch {epoch}, batch {batch}"
    return TrainingInterrupted(
        f"interrupted; resume with: pixelwise train --resume {t.out} (saved at {where}; the "
        "run's own options continue it bit for bit, another --threads, --device or --amp does "
        "not)",
        t.stop.signum or signal.SIGINT,
    )


def _mean_over_ranks(x: torch.Tensor, dist: distributed.DistInfo) -> float:
    """``float(x)``, averaged over the processes (one host sync)."""
    if not dist.enabled:
        return float(x)
    return float(distributed.all_reduce_sum(x.detach().clone())) / dist.world_size


def _all_finite(core: torch.nn.Module, window: torch.Tensor) -> bool:
    """Every weight (and the running loss window) of every process is finite."""
    ok = bool(torch.isfinite(window).all()) and all(
        bool(torch.isfinite(p).all()) for p in core.parameters()
    )
    return not distributed.any_true(not ok, window.device)


def _diverged(t: Trainer, value: float, epoch: int) -> TrainingDiverged:
    kept = f"; the last good checkpoint is kept in {t.out}" if t.committed else ""
    return TrainingDiverged(
        f"loss became {value} at epoch {epoch}, step {t.state.step}; lower --lr (now "
        f"{t.config.lr}) and train again{kept}"
    )

"""Everything the training loop needs before its first step, in the order it is made: the data
(checked), the class weights, the model, the run directory, the batches, the optimizer."""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from pixelwise import __version__, distributed
from pixelwise.data import open_dataset
from pixelwise.data.balance import cached_class_pixel_counts, median_frequency_weights
from pixelwise.data.classes import ClassInfo
from pixelwise.data.maskvalues import check_class_count
from pixelwise.data.pipeline import bar_iter, training_set
from pixelwise.data.transforms import TrainTransform, default_normalization
from pixelwise.errors import ConfigError, DataError
from pixelwise.files import write_json
from pixelwise.models import build, transfer_weights
from pixelwise.runs import RUN_FORMAT, checkpoint_path, load_weights, read_config
from pixelwise.training.config import TrainConfig

Log = Callable[[str], None]


class Bar(Protocol):
    """A progress bar as the CLI hands them in (tqdm's interface)."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: dict | None = None, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Bar]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# -- data ------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The two splits training reads, their classes and the loss's class weights."""

    train: Any
    val: Any
    classes: ClassInfo
    channels: int
    class_weights: list[float] | None


def open_split(config: TrainConfig, split: str, channels: int | None, classes=None, label_map=None):
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
        **({"mask_threshold": config.mask_threshold} if label_map is None else {}),
        **args,
    )


def check_data(config: TrainConfig, progress: ProgressFactory | None) -> None:
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
        progress=bar_iter(progress, "check data", "pair", delay=0.5),
        splits=("train", "val"),
        cache=True,
        val_fraction=config.val_fraction,
        mask_threshold=config.mask_threshold,
        **args,
    )
    if not report.ok:
        raise DataError(report.root, report.summary())


def open_training_data(
    config: TrainConfig, progress: ProgressFactory | None, say: Log
) -> TrainingData:
    """Check and open the train and val splits; say what they hold; the class weights."""
    if config.task == "colorize":
        return open_colour_data(config, say)
    if config.check_data:
        check_data(config, progress)
    train_ds = open_split(config, "train", config.channels)
    for note in train_ds.notes:
        say(note)
    check_class_count(train_ds, force=config.force_classes)  # lossy masks read as 255 classes
    val_ds = open_split(
        config, "val", train_ds.channels, classes=train_ds.classes, label_map=train_ds.label_map
    )
    if len(train_ds) == 0:
        raise ConfigError(f"--data {config.data}: the train split is empty")
    classes = train_ds.classes
    layout = f" ({train_ds.layout} layout)" if train_ds.layout else ""
    say(
        f"data: {config.data}{layout}: {len(train_ds)} train / {len(val_ds)} val images"
        f"{_sizes(train_ds)}, {train_ds.channels} channel(s), {classes.num_classes} classes "
        f"({', '.join(classes.names[:12])}{', ...' if classes.num_classes > 12 else ''})"
    )
    weights = class_weights(config, train_ds, progress, say)
    return TrainingData(train_ds, val_ds, classes, train_ds.channels, weights)


def open_colour_data(config: TrainConfig, say: Log) -> TrainingData:
    """``--task colorize``: the colour images of the train and val splits (masks never read);
    the model reads 1 channel (L) and writes 2 (a, b)."""
    from pixelwise.data.colour import open_colour_images

    args = dict(config.data_args)
    limit = args.pop("limit", None)
    if args:
        raise ConfigError(
            f"--data-arg {next(iter(args))}: --task colorize takes only limit=N of the data args"
        )
    splits = [
        open_colour_images(config.data, split, config.data_format, config.val_fraction, limit)
        for split in ("train", "val")
    ]
    for note in splits[0].notes + splits[1].notes:
        say(note)
    layout = f" ({splits[0].layout} layout, images only)" if splits[0].layout else ""
    say(
        f"data: {config.data}{layout}: {len(splits[0])} train / {len(splits[1])} val colour "
        "images; colorize: L in, Lab a and b out"
    )
    return TrainingData(splits[0], splits[1], splits[0].classes, 1, None)


def _sizes(dataset: Any, sample: int = 25) -> str:
    """ ", 382x286 px" (the median of the first ``sample`` images' headers; no pixel decoded),
    or "" for datasets not read from files."""
    from PIL import Image

    pairs = getattr(dataset, "pairs", None)
    if not pairs:
        return ""
    sizes = []
    for image, _mask in pairs[:sample]:
        try:
            with Image.open(image) as im:
                sizes.append(im.size)
        except OSError:
            return ""
    w, h = sorted(sizes)[len(sizes) // 2]
    spread = "" if len({*sizes}) == 1 else " (median)"
    return f", {w}x{h} px{spread}"


def class_weights(
    config: TrainConfig, train_ds: Any, progress: ProgressFactory | None, say: Log
) -> list[float] | None:
    """``--class-weights``: as given, or ``auto``: median frequency of the labelled pixels."""
    weights = config.class_weights
    if weights == "auto" and config.points:
        # what a point annotator's labels say, not the dense masks they never drew (clicking
        # N points of each present class already balances the classes: weights near 1)
        from pixelwise.data.balance import class_pixel_counts
        from pixelwise.data.points import PointLabels

        clicked = PointLabels(train_ds, config.points, config.seed)
        counts, pixels = class_pixel_counts(clicked, bar_iter(progress, "class points", "img"))
        weights = median_frequency_weights(counts, pixels)
        say(
            "median-frequency class weights of the clicked points: "
            + ", ".join(f"{w:.3f}" for w in weights)
        )
    elif weights == "auto":
        pc = cached_class_pixel_counts(train_ds, bar_iter(progress, "class pixels", "img"))
        weights = median_frequency_weights(pc.counts, pc.image_pixels)
        origin = f" (pixel counts cached in {pc.path})" if pc.cached else ""
        say("median-frequency class weights: " + ", ".join(f"{w:.3f}" for w in weights) + origin)
    n = train_ds.classes.num_classes
    if weights is not None and len(weights) != n:
        raise ConfigError(f"--class-weights: {len(weights)} values given for {n} classes")
    return weights


# -- model -----------------------------------------------------------------------------------


def init_from(model: torch.nn.Module, source: str) -> str:
    """Copy every matching weight from a run directory (staged training; a ``--task colorize``
    run: pre-training without labels) or from a patch classifier folder written by ``pixelwise
    heatmap`` (its Linear layers reshaped onto the convolutionalized model's convs); return a
    one-line note naming what was copied and what was not. Nothing matching -> ConfigError."""
    from pixelwise.models.classifier import CLASSIFIER_FILE, has_patch_classifier
    from pixelwise.models.convolutionalized import classifier_state

    if has_patch_classifier(source):
        state = load_weights(Path(source) / CLASSIFIER_FILE)
        copied = transfer_weights(model, classifier_state(state, model))
        return f"initialised {len(copied)} tensors from {source} (patch classifier)"
    config = read_config(source)
    state = load_weights(checkpoint_path(source, "best"))
    origin = config["model"]["name"]
    mapped: list[str] = []
    if config.get("train", {}).get("task") == "colorize":
        origin += ", colorize"
        state, mapped = lightness_inputs(model, state)
    copied = transfer_weights(model, state)
    return transfer_note(source, origin, model, copied, mapped)


def lightness_inputs(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A colourizer's input convs read one channel, ``(L - 50) / 50``: each ``(O, 1, k, k)``
    filter whose name holds ``(O, C, k, k)`` in ``model`` (C = 1 or 3: the segmenter's input)
    becomes the filter that computes the same feature of the luma of the normalised image
    (:func:`pixelwise.colorize.lightness_filters`); returns the new state and their names."""
    from pixelwise.colorize import lightness_filters

    target = model.state_dict()
    state, mapped = dict(state), []
    for name, tensor in state.items():
        want = target.get(name)
        if want is None or tensor.ndim != 4 or tensor.shape[1] != 1 or want.ndim != 4:
            continue
        if want.shape[1] in (1, 3) and want.shape[0] == tensor.shape[0]:
            mean, std = default_normalization(want.shape[1])
            state[name] = lightness_filters(tensor, mean, std)
            mapped.append(name)
    return state, mapped


def transfer_note(
    source: str, origin: str, model: torch.nn.Module, copied: list[str], mapped: list[str]
) -> str:
    """One line: how many tensors were copied, the input convs mapped from L, and the
    count and first names of those not copied (ConfigError when none was)."""
    names = list(model.state_dict())
    left = [n for n in names if n not in set(copied)]
    if not [n for n in copied if not n.endswith("num_batches_tracked")]:  # counters only
        raise ConfigError(
            f"--init-from {source}: no weight of its model ({origin}) matches this model "
            f"({len(names)} tensors, e.g. {', '.join(names[:3])}); give a run of the same "
            "architecture (same --model and --model-arg)"
        )
    note = f"initialised {len(copied)} tensors of {len(names)} from {source} ({origin})"
    if mapped:
        note += f"; input conv {', '.join(mapped)} mapped from L to the luma of the input"
    if left:
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        note += f"; not copied (no match in name and shape): {', '.join(left[:3])}{more}"
    return note


def build_model(
    config: TrainConfig, data: TrainingData, resuming: bool, say: Log
) -> tuple[torch.nn.Module, dict[str, Any], str | None]:
    """The model of ``config`` (initialised from ``--init-from``/``--encoder-weights`` unless
    resuming: then the weights come from the checkpoint), its builder's keyword arguments and
    the one-line note of ``--init-from`` (None without it)."""
    kwargs = {"in_channels": data.channels, "width": config.width, **config.model_args}
    if config.encoder_weights and not resuming:
        kwargs["encoder_weights"] = config.encoder_weights
    model = build(config.model, data.classes.num_classes, **kwargs)
    kwargs.pop("encoder_weights", None)  # weights are in the checkpoint from now on
    note = init_from(model, config.init_from) if config.init_from and not resuming else None
    if note:
        say(note)
    return model, kwargs, note


# -- run directory ---------------------------------------------------------------------------


def prepare_out(out: Path, overwrite: bool) -> None:
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


def prepare_out_everywhere(
    out: Path, overwrite: bool, dist: distributed.DistInfo, device: torch.device
) -> None:
    """Rank 0 prepares ``out``; every process raises if that failed (nobody waits forever)."""
    error: ConfigError | None = None
    if dist.is_main:
        try:
            prepare_out(out, overwrite)
        except ConfigError as err:
            error = err
    if distributed.any_true(error is not None, device):
        raise error or ConfigError(f"--out {out}: rank 0 could not prepare the run directory")


def run_config(
    config: TrainConfig, data: TrainingData, model_kwargs: dict[str, Any], mean, std
) -> dict[str, Any]:
    """What ``RUN/config.json`` holds: enough to rebuild, feed and continue the model."""
    return {
        "format": "pixelwise-run",
        "version": RUN_FORMAT,
        "pixelwise": __version__,
        "model": {
            "name": config.model,
            "num_classes": data.classes.num_classes,
            "kwargs": model_kwargs,
        },
        "classes": data.classes.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "train": config.to_dict(),
        "data": {"train_images": len(data.train), "val_images": len(data.val)},
        "class_weights": data.class_weights,
    }


def write_run_config(out: Path, contents: dict[str, Any]) -> None:
    write_json(out / "config.json", contents)


# -- batches and optimizer -------------------------------------------------------------------


def training_crop(config: TrainConfig, model: torch.nn.Module) -> int:
    """The crop side: ``--crop-size``, for the valid U-Net the overlap tile whose poolings all
    see even sizes and whose output is about ``--crop-size`` minus the border."""
    if not model.border:
        return config.crop_size
    inner = max(1, config.crop_size - 2 * model.border)
    return model.valid_input_size(inner, inner)[0]


def train_transform(config: TrainConfig, crop: int, mean, std, ignore_index: int) -> TrainTransform:
    """The training augmentation of ``config`` (crops of ``crop`` px, normalised by ``mean`` and
    ``std``): what every step applies, and what the planner times (planning/pipeline.py)."""
    return TrainTransform(
        crop,
        mean,
        std,
        scale=(config.scale_min * config.input_scale, config.scale_max * config.input_scale),
        hflip=config.hflip,
        ignore_index=ignore_index,
        rotate=config.rotate,
        elastic=config.elastic,
        color_jitter=config.color_jitter,
    )


def make_batches(
    config: TrainConfig,
    data: TrainingData,
    crop: int,
    mean,
    std,
    dist: distributed.DistInfo,
    device: torch.device,
    say: Log,
    progress: ProgressFactory | None,
):
    """The augmented training set, the epoch sampler (the order of epoch e is a pure function
    of (seed, e), split over the processes), its loader and the loader's generator."""
    transform = train_transform(config, crop, mean, std, data.classes.ignore_index)
    train_set = training_set(  # cache, point labels, weight maps: pixelwise/data/pipeline.py
        data.train,
        transform,
        seed=config.seed,
        points=config.points,
        cache=config.cache,
        weight_map=config.weight_map,
        w0=config.w0,
        sigma=config.sigma,
        class_weights=data.class_weights if config.weight_map else None,
        log=say,
        progress=progress,
    )
    sampler = distributed.EpochSampler(
        len(train_set),
        config.batch_size,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        drop_last=len(train_set) >= config.batch_size,
    )
    generator = torch.Generator().manual_seed(config.seed)  # workers' base seed, per epoch
    loader = DataLoader(
        train_set,
        batch_size=sampler.local_batch_size,
        sampler=sampler,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        generator=generator,
        pin_memory=device.type == "cuda",
    )
    return train_set, sampler, loader, generator


def make_optimizer(
    config: TrainConfig, model: torch.nn.Module, batches: int, clock: Callable[[], float] | None
):
    """SGD or AdamW over the trainable parameters, and the per-step learning-rate schedule
    over ``epochs * ceil(batches / accumulate)`` optimizer steps; with a budget, ``clock()``
    (the share of its time used, 0..1) moves the schedule on when time runs faster than steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * math.ceil(batches / config.accumulate)
    return optimizer, scheduler(optimizer, config.schedule, total, clock)


def scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    clock: Callable[[], float] | None = None,
):
    """poly (the FCN/DeepLab policy), cosine or constant, per optimizer step. With ``clock``,
    the schedule's position is the larger of the steps done and the budget's time used."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if clock is None and kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    def position(s: int) -> float:
        return min(1.0, max(s / total_steps, clock() if clock is not None else 0.0))

    if kind == "poly":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: max(0.0, 1 - position(s)) ** 0.9
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * position(s)))
    )

"""``pixelwise train`` and ``pixelwise demo``: the typed options (and ``--config FILE``) become a
TrainConfig, then :func:`pixelwise.training.train` runs it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from pixelwise.cli.options import combine, config_file_options, given_options
from pixelwise.cli.progress import iter_progress, log, progress_factory

__all__ = ["DEMO", "DEMO_DEFAULTS", "cmd_demo", "cmd_train", "train_config"]

# Tuned on the embedded digits scenes (docs/quickstart.md has the runs that led here): more digits
# per training scene and median-frequency weights give the net enough signal about *which* digit
# a blob is to learn it within the CPU budget; flips are off because mirrored digits are not digits.
DEMO: dict[str, Any] = {
    "data": "digits",
    "data_args": {"num_images": 2000, "digits_per_image": [4, 8]},
    "model": "unet_same",
    "model_args": {"base_width": 16, "depth": 3},
    "epochs": 10,
    "batch_size": 8,
    "lr": 5e-3,
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "crop_size": 64,
    "scale_min": 1.0,
    "scale_max": 1.0,
    "class_weights": "auto",
    "hflip": False,
}
#: what ``pixelwise demo`` starts from (its --help shows these defaults)
DEMO_DEFAULTS: dict[str, Any] = {**DEMO, "out": "runs/demo"}


def train_config(args: argparse.Namespace, demo: bool = False):
    """The TrainConfig of ``train`` / ``demo``: defaults (the demo's), then ``--config FILE``,
    then the options typed. With ``--resume RUN``: the run's own options, and only the ones
    given here passed on (the training side checks which may change)."""
    from pixelwise.training import TrainConfig, resume_config

    given = given_options(args, demo)
    path = getattr(args, "config", None)
    from_file = config_file_options(path) if path else {}
    if getattr(args, "resume", None):
        return resume_config(args.resume, combine(from_file, given))
    return TrainConfig.from_dict(combine(DEMO_DEFAULTS if demo else {}, from_file, given))


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"run: {summary['run']}  ({summary['epochs']} epochs, {summary['seconds']} s, "
        f"{summary['device']})"
    )
    print(f"best val mean IoU {summary['best_mean_iou']:.4f} at epoch {summary['best_epoch']}")


def cmd_train(args: argparse.Namespace) -> int:
    from pixelwise.distributed import env_info
    from pixelwise.training import train

    config = train_config(args)
    summary = train(config, progress=progress_factory(args.quiet), log=None if args.quiet else log)
    if env_info().is_main:  # under torchrun, rank 0 speaks for all
        _print_summary(summary)
        print(f"next: pixelwise evaluate {summary['run']} --data {config.data}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pixelwise.evaluate import evaluate_run
    from pixelwise.training import train

    config = train_config(args, demo=True)
    t0 = time.perf_counter()
    if not args.quiet:
        log(
            f"pixelwise demo: training {config.model} on the embedded digits scenes "
            f"(11 classes: background + digits 0-9) for {config.epochs} epochs on "
            f"{config.device if config.device != 'auto' else 'the default device'}"
        )
    summary = train(config, progress=progress_factory(args.quiet), log=None if args.quiet else log)
    report = evaluate_run(
        summary["run"], "digits", "val", progress=iter_progress(args.quiet, "evaluate", "img")
    )
    print(report["table"])
    print()
    print(
        f"val mean IoU {report['mean_iou']:.4f}, pixel accuracy {report['pixel_accuracy']:.4f} "
        f"({time.perf_counter() - t0:.0f} s in all)"
    )
    run = summary["run"]
    print(f"run directory: {run} (curves.png, overlays/, confusion_val.png, eval_val.json)")
    print(f"next: pixelwise predict {run} IMAGE --out predictions")
    return 0

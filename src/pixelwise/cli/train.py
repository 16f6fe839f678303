"""``pixelwise train`` and ``pixelwise demo``: the typed options (and ``--config FILE``) become a
TrainConfig, then :func:`pixelwise.training.train` runs it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from pixelwise.cli.options import combine, config_file_options, given_options
from pixelwise.cli.progress import iter_progress, log, progress_factory, seconds_since_start

__all__ = [
    "DEMO",
    "DEMO_DEFAULTS",
    "cmd_demo",
    "cmd_plan",
    "cmd_train",
    "planned_config",
    "train_config",
]

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


def user_options(args: argparse.Namespace, demo: bool = False) -> dict[str, Any]:
    """The options the user set: ``--config FILE``'s, then the ones typed."""
    path = getattr(args, "config", None)
    from_file = config_file_options(path) if path else {}
    return combine(from_file, given_options(args, demo))


def train_config(args: argparse.Namespace, demo: bool = False):
    """The TrainConfig of ``train`` / ``demo``: defaults (the demo's), then ``--config FILE``,
    then the options typed. With ``--resume RUN``: the run's own options, and only the ones
    given here passed on (the training side checks which may change)."""
    from pixelwise.training import TrainConfig, resume_config

    given = user_options(args, demo)
    if getattr(args, "resume", None):
        return resume_config(args.resume, given)
    return TrainConfig.from_dict(combine(DEMO_DEFAULTS if demo else {}, given))


#: the budget of ``pixelwise train`` when it plans (no --model) and no --budget is given
DEFAULT_BUDGET = 20 * 60.0
#: seconds kept for what follows training (the summary, the interpreter's exit)
EXIT_MARGIN = 2.0


def planned_config(args: argparse.Namespace):
    """``pixelwise train`` without ``--model``: the planner's options for the data, the device
    and the budget (default 20 minutes), each option the user gave overriding its entry.
    Returns the TrainConfig and the plan (None when the user chose the model)."""

    from pixelwise.planning import plan_training
    from pixelwise.training import TrainConfig

    given = user_options(args)
    if given.get("task") == "colorize" and "model" not in given:  # no masks to plan from
        args.model = given["model"] = "unet_same"
    if getattr(args, "resume", None) or "model" in given:
        return _budget_left(train_config(args)), None
    budget = float(given.get("budget") or DEFAULT_BUDGET)
    base = TrainConfig.from_dict(given)
    base.validate()  # a bad option, or a broken dataset, is reported before any measuring
    if base.check_data:
        from pixelwise.training.setup import check_data

        check_data(base, None)  # a passing check is cached: training does not read twice
    plan, _fp = plan_training(base, budget, given)
    if not args.quiet:
        log(f"no --model: the plan for {base.data} within {budget:.0f} s ('pixelwise plan'):")
    return _budget_left(TrainConfig.from_dict(plan.options)), plan


def _budget_left(config):
    """``config`` with the time this process has already spent (imports, planning) and an
    exit margin taken off its budget: ``--budget`` is the wall time of the whole command."""
    import dataclasses

    config.validate()  # the budget as given, before any time is taken off it
    if config.budget is None or config.resume:
        return config
    spent = seconds_since_start() + EXIT_MARGIN
    return dataclasses.replace(config, budget=max(1.0, config.budget - spent))


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"run: {summary['run']}  ({summary['epochs']} epochs, {summary['seconds']} s, "
        f"{summary['device']})"
    )
    if "best_psnr" in summary:  # --task colorize
        print(f"best val PSNR {summary['best_psnr']:.2f} dB at epoch {summary['best_epoch']}")
        return
    print(f"best val mean IoU {summary['best_mean_iou']:.4f} at epoch {summary['best_epoch']}")


def cmd_train(args: argparse.Namespace) -> int:
    from pixelwise.distributed import env_info
    from pixelwise.training import train

    config, plan = planned_config(args)
    if plan is not None and not args.quiet:
        for line in plan.table():
            log("  " + line)
    attachments = {"plan.json": plan.to_dict()} if plan is not None else None
    summary = train(
        config,
        progress=progress_factory(args.quiet),
        log=None if args.quiet else log,
        attachments=attachments,
    )
    if env_info().is_main:  # under torchrun, rank 0 speaks for all
        _print_summary(summary)
        if config.task == "colorize":
            print(f"next: pixelwise predict {summary['run']} IMAGES --out DIR (colourized)")
        else:
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


def cmd_plan(args: argparse.Namespace) -> int:
    """``pixelwise plan DIR``: the fingerprint, then the plan, one reason per option."""
    from pixelwise.files import write_json
    from pixelwise.planning import describe, plan_training
    from pixelwise.training import TrainConfig
    from pixelwise.training.config import parse_duration

    budget = parse_duration(args.budget) or DEFAULT_BUDGET
    options: dict[str, Any] = {"data": args.dir, "device": args.device}
    for key in ("data_format", "label_map", "mask_threshold", "val_fraction", "threads"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    base = TrainConfig.from_dict(options)
    base.validate()
    plan, fp = plan_training(base, budget)
    print(f"dataset {args.dir}")
    for line in describe(fp):
        print("  " + line)
    print(f"\nplan for {budget:.0f} s on {plan.device}:")
    for line in plan.table():
        print("  " + line)
    e = plan.estimates
    print(
        f"\nestimate: {e['epochs']} epochs x {e['steps_per_epoch']} steps of {e['step_s']:.3f} s,"
        f" validation ~{e['validation_s']:.1f} s every {e['val_every']} epoch(s)"
    )
    if "data_s_per_sample" in e:
        print(
            f"the step includes the data: {1000 * e['data_s_per_sample']:.0f} ms to crop and"
            " augment each sample, measured on the dataset's own images"
        )
    if args.out:
        write_json(args.out, {**plan.to_dict(), "fingerprint": fp.to_dict()})
        print(f"wrote {args.out}")
    print(f"next: pixelwise train --data {args.dir} --budget {args.budget}")
    return 0

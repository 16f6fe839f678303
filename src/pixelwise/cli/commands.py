"""The ``pixelwise`` command: parses options, calls the API, prints results.

Errors a user can fix (bad files, bad options, missing runs) are printed as one line on stderr
with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixelwise import __version__
from pixelwise.errors import ConfigError, PixelwiseError

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


def _progress_factory(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    def make(**kwargs: Any):
        return tqdm(dynamic_ncols=True, file=sys.stderr, leave=False, **kwargs)

    return make


def _iter_progress(quiet: bool, desc: str, unit: str):
    if quiet:
        return None
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit=unit, file=sys.stderr, leave=False)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_args(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-arg {pair!r}: expected KEY=VALUE, e.g. depth=3")
        out[key.replace("-", "_")] = _parse_value(value)
    return out


def _class_weights(text: str | None) -> list[float] | str | None:
    if text is None or text.lower() == "none":
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--class-weights {text!r}: give 'none', 'auto' or comma-separated numbers"
        ) from None


# pixelwise.data.layouts.FORMATS, spelled out so that building the parser imports no torch
DATA_FORMATS = ("auto", "generic", "voc", "camvid", "isbi", "drive", "cityscapes")


def _add_data_options(g: Any) -> None:
    """--format, --label-map, --data-arg: how a dataset folder is read (train, evaluate, data)."""
    g.add_argument(
        "--format",
        choices=DATA_FORMATS,
        default=None,
        help="dataset layout (default auto: detected from the folder names)",
    )
    g.add_argument(
        "--label-map",
        metavar="FROM:TO,...",
        help="renumber mask values, e.g. 255:1 (binary 0/255 masks), 0:0,255:1, 255:ignore",
    )
    g.add_argument(
        "--data-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, repeatable: limit=N (first N samples of each split), folds=K "
        "fold=I (isbi cross-validation), num_images=N (digits)",
    )


def _data_args(pairs: Sequence[str] | None) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--data-arg {pair!r}: expected KEY=VALUE, e.g. limit=20")
        out[key.replace("-", "_")] = _parse_value(value)
    return out


def _data_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``open_dataset`` keyword arguments from --format, --label-map and --data-arg."""
    d: dict[str, Any] = dict(_data_args(getattr(args, "data_arg", None)))
    if getattr(args, "format", None) not in (None, "auto"):
        d["format"] = args.format
    if getattr(args, "label_map", None) is not None:
        d["label_map"] = args.label_map
    return d


def _add_train_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
    g = p.add_argument_group("data")
    if not demo:
        g.add_argument(
            "--data",
            default="digits",
            help="dataset folder (images/ + masks/, train/ and val/ with images/ + masks/ "
            "inside, or VOC, CamVid, ISBI 2012, DRIVE, Cityscapes: see --format) or 'digits', "
            "the embedded default (default: digits)",
        )
        g.add_argument(
            "--val-fraction",
            type=float,
            default=0.1,
            help="fraction held out for validation when the folder has no val split",
        )
        g.add_argument(
            "--channels",
            type=int,
            choices=(1, 3),
            help="image channels fed to the model (default: the data's own)",
        )
        _add_data_options(g)
        g.add_argument(
            "--no-check",
            action="store_true",
            help="skip reading every file of the dataset before training "
            "('pixelwise data check' does the same checks)",
        )
    g = p.add_argument_group("model")
    if not demo:
        g.add_argument(
            "--model", default="fcn8s", help="model name; see 'pixelwise models' (default: fcn8s)"
        )
        g.add_argument(
            "--width",
            type=float,
            default=1.0,
            help="channel multiplier: 0.25 gives a CPU-trainable variant (default: 1)",
        )
        g.add_argument(
            "--model-arg",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra model option, repeatable (e.g. depth=3, batch_norm=true)",
        )
        g.add_argument(
            "--init-from",
            metavar="RUN",
            help="copy every matching weight from a trained run (staged training: "
            "fcn32s -> fcn16s -> fcn8s) or from a patch classifier folder written by "
            "'pixelwise heatmap' (with --model convolutionalized)",
        )
        g.add_argument(
            "--encoder-weights",
            metavar="FILE|imagenet",
            help="VGG16 encoder weights: a local torchvision-format state dict or "
            "'imagenet' (downloads; needs internet)",
        )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="passes over the training set")
    g.add_argument("--batch-size", type=int, help="images per step")
    g.add_argument("--lr", type=float, help="peak learning rate")
    if not demo:
        g.add_argument("--optimizer", choices=("sgd", "adamw"), help="default: sgd")
        g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
        g.add_argument("--weight-decay", type=float, help="default 5e-4")
        g.add_argument("--schedule", choices=("poly", "cosine", "constant"), help="default: poly")
        g.add_argument("--crop-size", type=int, help="training crop side in pixels (default 256)")
        g.add_argument(
            "--scale",
            type=float,
            nargs=2,
            metavar=("MIN", "MAX"),
            help="random scale range (default 0.75 1.25)",
        )
        g.add_argument(
            "--input-scale",
            type=float,
            help="resize every image by this factor for the model (0.5: train and predict at "
            "half resolution, scored at the labels' full resolution; saved in the run, so "
            "predict/evaluate/serve do the same; default 1)",
        )
        g.add_argument("--no-hflip", action="store_true", help="no horizontal flips")
        g.add_argument(
            "--class-weights",
            metavar="auto|none|W0,W1,...",
            help="per-class loss weights: auto = median-frequency balancing from the training "
            "masks (pixel counts cached per dataset), or one number per class (default none)",
        )
        _add_augment_options(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="RUN", help="run directory to create")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="auto, cpu or cuda (default auto)")
    g.add_argument("--workers", type=int, help="data loader worker processes (default 0)")
    g.add_argument(
        "--cache",
        choices=("on", "off", "auto"),
        help="keep the decoded training images in memory (default auto: when they take less "
        "than 25%% of the available memory; the choice is logged)",
    )
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    g.add_argument(
        "--amp",
        choices=("auto", "off", "bf16", "fp16"),
        help="mixed precision autocast (default auto: bf16 or fp16 on CUDA; bf16 on CPUs that "
        "have it natively (AVX512-BF16, AMX), else off; docs/performance.md)",
    )
    g.add_argument(
        "--accumulate",
        type=int,
        metavar="N",
        help="accumulate gradients over N batches per optimizer step (default 1)",
    )
    g.add_argument(
        "--no-channels-last",
        action="store_true",
        help="train with NCHW tensors instead of channels-last (channels-last is faster on CPUs)",
    )
    if not demo:
        g.add_argument(
            "--deterministic",
            action="store_true",
            help="use deterministic algorithms (reproducible, maybe slower)",
        )
        g.add_argument(
            "--resume",
            metavar="RUN",
            help="continue RUN from its last committed checkpoint with its own options; only "
            "--epochs (to train longer), --workers, --device, --save-every, --val-every may change",
        )
        g.add_argument(
            "--val-every",
            type=int,
            metavar="EPOCHS",
            help="validate every EPOCHS epochs and after the last (default 1); for small datasets "
            "trained for hundreds of epochs, where validation would cost more than training",
        )
        g.add_argument(
            "--save-every",
            type=int,
            metavar="STEPS",
            help="also save a resumable checkpoint every STEPS steps (default: epoch ends only)",
        )
        g.add_argument(
            "--sync-bn",
            action="store_true",
            help="under torchrun: synchronise BatchNorm statistics across GPUs (small per-GPU "
            "batches)",
        )
    _add_max_image_pixels(g)


def _add_augment_options(p: argparse.ArgumentParser) -> None:
    """Augmentation, sparse labels and the weighted loss (train only; all off by default)."""
    g = p.add_argument_group("augmentation and labels (default off)")
    g.add_argument(
        "--rotate", type=float, metavar="DEG", help="random rotation within +-DEG degrees"
    )
    g.add_argument(
        "--elastic",
        type=float,
        metavar="SIGMA_PX",
        help="U-Net elastic deformation: random displacements on a 3x3 grid with SIGMA_PX "
        "pixels standard deviation, bicubically interpolated (the paper uses 10)",
    )
    g.add_argument(
        "--color-jitter",
        type=float,
        metavar="F",
        help="brightness, contrast and saturation factors drawn from [1-F, 1+F] (image only)",
    )
    g.add_argument(
        "--points",
        type=int,
        metavar="N",
        help="train on N labelled pixels per class per image (simulated clicks, fixed for the "
        "run); every other pixel is ignored",
    )
    g.add_argument(
        "--loss",
        choices=("ce", "weighted-ce"),
        help="ce (default) or weighted-ce: cross-entropy times a per-pixel weight map",
    )
    g.add_argument(
        "--weight-map",
        choices=("unet",),
        help="with --loss weighted-ce: the U-Net border weight map (class balance w_c plus a "
        "term that peaks in narrow gaps between objects; w_c = --class-weights if given, else "
        "per-image inverse class frequency); see 'pixelwise data weights'",
    )
    g.add_argument("--w0", type=float, help="weight map: separation term height (default 10)")
    g.add_argument("--sigma", type=float, help="weight map: separation term width, px (default 5)")


def _add_max_image_pixels(p: Any) -> None:
    p.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="refuse images of more than N pixels (decompression-bomb guard; default "
        "89,478,485, Pillow's); 0 removes the limit: only for trusted files",
    )


def _train_config(args: argparse.Namespace, base: dict[str, Any]):
    from pixelwise.training import TrainConfig

    d = dict(base)
    simple = (
        "data",
        "val_fraction",
        "channels",
        "model",
        "width",
        "init_from",
        "encoder_weights",
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "momentum",
        "weight_decay",
        "schedule",
        "crop_size",
        "input_scale",
        "out",
        "seed",
        "device",
        "workers",
        "amp",
        "accumulate",
        "cache",
        "rotate",
        "elastic",
        "color_jitter",
        "points",
        "loss",
        "weight_map",
        "w0",
        "sigma",
    )
    for name in simple:
        value = getattr(args, name, None)
        if value is not None:
            d[name] = value
    if getattr(args, "model_arg", None):
        d["model_args"] = {**d.get("model_args", {}), **_model_args(args.model_arg)}
    if getattr(args, "scale", None):
        d["scale_min"], d["scale_max"] = args.scale
    if getattr(args, "no_hflip", False):
        d["hflip"] = False
    if getattr(args, "class_weights", None) is not None:
        d["class_weights"] = _class_weights(args.class_weights)
    if getattr(args, "format", None) is not None:
        d["data_format"] = args.format
    if getattr(args, "label_map", None) is not None:
        d["label_map"] = args.label_map
    if getattr(args, "data_arg", None):
        d["data_args"] = {**d.get("data_args", {}), **_data_args(args.data_arg)}
    if getattr(args, "no_check", False):
        d["check_data"] = False
    if args.overwrite:
        d["overwrite"] = True
    if getattr(args, "deterministic", False):
        d["deterministic"] = True
    if getattr(args, "no_channels_last", False):
        d["channels_last"] = False
    if getattr(args, "save_every", None) is not None:
        d["save_every"] = args.save_every
    if getattr(args, "val_every", None) is not None:
        d["val_every"] = args.val_every
    if getattr(args, "sync_bn", False):
        d["sync_bn"] = True
    return TrainConfig.from_dict(d)


class _Given(argparse.Namespace):
    """A namespace holding only the options given on the command line (others read as None)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _given_options(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` again with every default suppressed: only what the user typed is set."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        current._defaults.clear()  # set_defaults(func=...) too
        for action in current._actions:
            action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return _Given(**vars(parser.parse_args(list(argv))))


def _resume_train_config(args: argparse.Namespace):
    """``--resume RUN``: the run's own options plus the ones given now (checked)."""
    from pixelwise.training import resume_config

    given = _given_options(getattr(args, "argv", None) or [])
    return resume_config(args.resume, _train_config_dict(given))


def _train_config_dict(given: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields set by the options in ``given`` (no defaults filled in)."""
    from dataclasses import fields

    from pixelwise.training import TrainConfig

    config = _train_config(given, {"resume": True})
    defaults = TrainConfig()
    out: dict[str, Any] = {}
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        explicit = _option_given(given, f.name)
        if explicit or value != getattr(defaults, f.name):
            out[f.name] = value
    out.pop("resume", None)
    return out


def _option_given(given: argparse.Namespace, name: str) -> bool:
    aliases = {
        "scale_min": "scale",
        "scale_max": "scale",
        "hflip": "no_hflip",
        "model_args": "model_arg",
        "channels_last": "no_channels_last",
        "data_format": "format",
        "data_args": "data_arg",
        "check_data": "no_check",
    }
    return name in vars(given) or aliases.get(name) in vars(given)


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"run: {summary['run']}  ({summary['epochs']} epochs, {summary['seconds']} s, "
        f"{summary['device']})"
    )
    print(f"best val mean IoU {summary['best_mean_iou']:.4f} at epoch {summary['best_epoch']}")


def cmd_train(args: argparse.Namespace) -> int:
    from pixelwise.training import train

    config = _resume_train_config(args) if args.resume else _train_config(args, {})
    summary = train(
        config, progress=_progress_factory(args.quiet), log=None if args.quiet else _log
    )
    from pixelwise.distributed import env_info

    if env_info().is_main:  # under torchrun, rank 0 speaks for all
        _print_summary(summary)
        print(f"next: pixelwise evaluate {summary['run']} --data {config.data}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pixelwise.evaluate import evaluate_run
    from pixelwise.training import train

    base = {**DEMO, "out": "runs/demo"}
    config = _train_config(args, base)
    t0 = time.perf_counter()
    say = (lambda _m: None) if args.quiet else _log
    say(
        f"pixelwise demo: training {config.model} on the embedded digits scenes "
        f"(11 classes: background + digits 0-9) for {config.epochs} epochs on "
        f"{config.device if config.device != 'auto' else 'the default device'}"
    )
    summary = train(
        config, progress=_progress_factory(args.quiet), log=None if args.quiet else _log
    )
    report = evaluate_run(
        summary["run"], "digits", "val", progress=_iter_progress(args.quiet, "evaluate", "img")
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


def _evaluate_data_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """--format/--label-map/--data-arg; on the run's own --data, what it was trained with
    (layout, label map, data args but ``limit``, --val-fraction) fills in the ones not given."""
    from pixelwise.runs import read_config

    given = _data_kwargs(args)
    if str(args.data) == "digits":
        return given
    try:
        trained = read_config(args.run).get("train", {})
    except PixelwiseError:
        return given  # evaluate_run reports the broken run itself
    if str(trained.get("data")) != str(args.data):
        return given
    d: dict[str, Any] = dict(trained.get("data_args") or {})
    d.pop("limit", None)  # a quick-training knob: score the whole split unless asked
    if isinstance(trained.get("val_fraction"), int | float):  # the same seeded val split
        d["val_fraction"] = trained["val_fraction"]
    if trained.get("data_format") not in (None, "auto"):
        d["format"] = trained["data_format"]
    if trained.get("label_map") is not None:
        d["label_map"] = trained["label_map"]
    return {**d, **given}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pixelwise.evaluate import evaluate_run

    report = evaluate_run(
        args.run,
        args.data,
        args.split,
        args.checkpoint,
        args.device or "auto",
        out_dir=args.out,
        progress=_iter_progress(args.quiet, "evaluate", "img"),
        engine=args.engine,
        compile=args.compile,
        threads=args.threads,
        tta=args.tta,
        **_evaluate_data_kwargs(args),
    )
    print(report["table"])
    out = Path(args.out) if args.out else Path(args.run)
    print(f"\nwrote {out / f'eval_{args.split}.json'} and {out / f'confusion_{args.split}.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pixelwise.predict import Segmenter, list_images, predict_files

    files = list_images(args.inputs)
    if not files:
        raise ConfigError(f"{' '.join(args.inputs)}: no image files found")
    if not 0 <= args.alpha <= 1:
        raise ConfigError(f"--alpha: must be between 0 and 1, got {args.alpha}")
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{f}: no such image file")
    shard = _predict_shard(args.shard)
    device = args.device or "auto"
    if shard is not None and device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():  # one GPU per torchrun process
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    seg = Segmenter.from_run(
        args.run, args.checkpoint, device, args.engine, args.compile, args.threads
    )
    seg.tta = args.tta
    written = predict_files(
        seg,
        files,
        args.out,
        args.alpha,
        progress=_iter_progress(args.quiet or len(files) < 2, "predict", "img"),
        tile=args.tile,
        overlap=args.overlap,
        shard=shard,
    )
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.out}")
    return 0


def _predict_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N``, else torchrun's ``RANK/WORLD_SIZE`` when several processes run."""
    from pixelwise import distributed

    if text is not None:
        return distributed.parse_shard(text)
    info = distributed.env_info()
    return (info.rank, info.world_size) if info.enabled else None


def cmd_heatmap(args: argparse.Namespace) -> int:
    from pixelwise.heatmap import heatmap_command

    if args.epochs < 1:
        raise ConfigError(f"--epochs: must be at least 1, got {args.epochs}")
    run, image = args.run, args.image
    for target in args.targets:  # positionals: a folder is the RUN, anything else the IMAGE
        if Path(target).is_dir():
            if run is not None:
                raise ConfigError(f"{target}: a second RUN folder; give one RUN and one IMAGE")
            run = target
        else:
            if image is not None:
                raise ConfigError(f"{target}: a second IMAGE; give one RUN and one IMAGE")
            image = target
    written = heatmap_command(
        run,
        image,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        progress=_progress_factory(args.quiet),
        full_resolution=not args.no_full,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pixelwise.export import export_run

    report = export_run(args.run, args.out, args.format, args.checkpoint)
    for line in report.lines():
        print(line)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from pixelwise.serve.app import run_server
    except ImportError as err:
        raise ConfigError(
            f"pixelwise serve needs starlette and uvicorn ({err}); "
            "install them with: pip install 'pixelwise[serve]'"
        ) from None
    run_server(
        args.run,
        host=args.host,
        port=args.port,
        max_mb=args.max_mb,
        tile=args.tile or None,
        checkpoint=args.checkpoint,
        device=args.device or "auto",
        log=_log,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pixelwise.models import available

    for name in available():
        print(name)
    return 0


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference engine (docs/performance.md)")
    g.add_argument(
        "--engine",
        choices=("torch", "onnxruntime"),
        help="torch (default: BatchNorm folded, channels-last) or onnxruntime (exports "
        "RUN/best.onnx once; needs pip install 'pixelwise[export]')",
    )
    g.add_argument(
        "--compile", action="store_true", help="torch.compile the model (torch engine; slow start)"
    )
    g.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    g.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the probabilities of the 8 flips and quarter "
        "turns of each image (8x the time; usually a little more accurate)",
    )


def cmd_data_check(args: argparse.Namespace) -> int:
    from pixelwise.data.check import check_dataset

    report = check_dataset(
        args.dir,
        progress=_iter_progress(args.quiet, "check", "pair"),
        **_data_kwargs(args),
    )
    print(report.format())
    if args.out:
        from pixelwise.files import write_json
        from pixelwise.plots import plot_class_frequencies

        out = Path(args.out)
        write_json(out / "check.json", report.to_dict())
        written = [out / "check.json"]
        if report.classes is not None:
            title = f"{Path(report.root).name}: class pixel frequencies ({report.layout})"
            written.append(
                plot_class_frequencies(
                    report.class_pixels, report.classes, out / "class_frequencies.png", title
                )
            )
        print(f"wrote {' and '.join(str(w) for w in written)}")
    return 0 if report.ok else 1


def _add_data_commands(sub: Any) -> Any:
    """The ``pixelwise data`` command group; returns its sub-subparsers (add commands there)."""
    group = sub.add_parser(
        "data",
        help="inspect a dataset folder: 'data check DIR' reads every file and lists problems",
        description="Dataset tools. Each has its own --help.",
    )
    data_sub = group.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    group.set_defaults(func=lambda _args: (group.print_help(), 2)[1])
    c = data_sub.add_parser(
        "check",
        help="read every image and mask of every split; list every problem (exit 1 if any)",
        description="Read every (image, mask) pair of every split and report: samples per "
        "split, image sizes, image and mask modes, class pixel frequencies, and every problem "
        "with its file (unreadable, empty or truncated files, non-images, size mismatches, "
        "labels outside the classes, unknown mask colours, unpaired files, duplicates). "
        "Exit status 1 when there are problems.",
    )
    c.add_argument("dir", metavar="DIR", help="dataset folder")
    _add_data_options(c)
    c.add_argument(
        "--out",
        metavar="DIR",
        help="also write DIR/check.json and DIR/class_frequencies.png (a bar chart)",
    )
    _add_max_image_pixels(c)
    c.set_defaults(func=cmd_data_check)
    _add_data_weights_command(data_sub)
    return data_sub


def cmd_data_weights(args: argparse.Namespace) -> int:
    from pixelwise.data import open_dataset
    from pixelwise.data.weights import write_weight_maps

    dataset = open_dataset(args.dir, args.split, **_data_kwargs(args))
    written = write_weight_maps(
        dataset,
        args.out,
        w0=args.w0,
        sigma=args.sigma,
        limit=args.limit,
        progress=_iter_progress(args.quiet, "weights", "img"),
    )
    print(f"wrote {len(written)} weight map(s) to {args.out}")
    return 0


def _add_data_weights_command(data_sub: Any) -> None:
    w = data_sub.add_parser(
        "weights",
        help="render the U-Net border weight map of each image as a PNG heatmap",
        description="Compute the U-Net paper's weight map (eq. 2: class balancing plus "
        "w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels between objects) for the "
        "images of one split and write OUT/<name>_weights.png (image | labels | weights), as "
        "'pixelwise train --loss weighted-ce --weight-map unet' uses it.",
    )
    w.add_argument("dir", metavar="DIR", help="dataset folder (or 'digits')")
    w.add_argument("--out", required=True, metavar="OUT", help="folder for the PNG files")
    w.add_argument("--split", default="train", help="split to render (default train)")
    w.add_argument("--w0", type=float, default=10.0, help="separation term height (default 10)")
    w.add_argument(
        "--sigma", type=float, default=5.0, help="separation term width in pixels (default 5)"
    )
    w.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    _add_data_options(w)
    _add_max_image_pixels(w)
    w.set_defaults(func=cmd_data_weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pixelwise",
        description="Pixel labeling with fully convolutional networks: train, evaluate, predict.",
        epilog="Start with 'pixelwise demo'. Each command has its own --help.",
    )
    p.add_argument("--version", action="version", version=f"pixelwise {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="train and evaluate on the embedded digits scenes (CPU, a few minutes)",
        description="Train a small U-Net on the embedded digits scenes (no "
        "download), then evaluate it on unseen digits.",
    )
    _add_train_options(d, demo=True)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser(
        "train",
        help="train a model; writes a run directory",
        description="Train a segmentation model. The run directory gets "
        "config.json, best/last checkpoints (safetensors), "
        "metrics.csv, curves.png and validation overlays.",
    )
    _add_train_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="score a run on a dataset split",
        description="Pixel accuracy, mean accuracy, per-class and mean IoU, "
        "frequency-weighted IoU and Dice from one confusion matrix.",
    )
    e.add_argument("run", metavar="RUN", help="run directory written by 'pixelwise train'")
    e.add_argument("--data", default="digits", help="dataset folder or 'digits'")
    e.add_argument("--split", default="val", help="split to score (default val)")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best")
    e.add_argument("--device", help="auto, cpu or cuda")
    e.add_argument("--out", help="folder for eval JSON and confusion PNG (default: RUN)")
    _add_data_options(e)
    _add_max_image_pixels(e)
    _add_engine_options(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser(
        "predict",
        help="label images of any size",
        description="Write a palette mask PNG and an overlay PNG per image.",
    )
    r.add_argument("run", metavar="RUN", help="run directory written by 'pixelwise train'")
    r.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files or folders")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--checkpoint", choices=("best", "last"), default="best")
    r.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    r.add_argument("--device", help="auto, cpu or cuda")
    r.add_argument(
        "--tile",
        type=int,
        metavar="N",
        help="predict in N x N tiles, memory bounded by N and the image width (valid U-Net: "
        "overlap-tile, identical to the whole image; others: Gaussian-blended tiles; see "
        "docs/tiles.md). Default: images over 2048x2048 pixels use 512; 0: never tile",
    )
    r.add_argument(
        "--overlap",
        type=float,
        default=0.25,
        metavar="F",
        help="fraction of a tile shared with its neighbours, 0 to 0.9 (default 0.25; "
        "ignored by the valid U-Net)",
    )
    r.add_argument(
        "--shard",
        metavar="I/N",
        help="only files I, I+N, I+2N, ... of the sorted inputs (0 <= I < N): split one folder "
        "over N separate processes; under torchrun each rank takes its share by itself",
    )
    _add_max_image_pixels(r)
    _add_engine_options(r)
    r.set_defaults(func=cmd_predict)

    h = sub.add_parser(
        "heatmap",
        help="classifier -> dense prediction: per-class heatmaps of a convolutionalized net",
        description="Convolutionalize a patch classifier (its fully connected layers become "
        "convolutions, same weights) and run it on a whole image: one class-score map per "
        "class, plus the full-resolution a-trous maps. Without --run a digits patch classifier "
        "is trained first (about half a minute on a CPU) and kept in --out.",
    )
    h.add_argument(
        "targets",
        nargs="*",
        metavar="RUN|IMAGE",
        help="a folder with classifier.safetensors (default: train one into --out) and/or an "
        "image file (default: a digits validation scene)",
    )
    h.add_argument("--run", help="same as a RUN positional")
    h.add_argument("--image", help="same as an IMAGE positional")
    h.add_argument("--out", required=True, help="output folder")
    h.add_argument("--epochs", type=int, default=6, help="epochs when training the classifier")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--no-full", action="store_true", help="skip the full-resolution a-trous maps")
    h.set_defaults(func=cmd_heatmap)

    x = sub.add_parser(
        "export",
        help="export a run's model to ONNX or TorchScript (metadata embedded, verified)",
        description="Write the model as one file with dynamic batch, height and width and "
        "the classes, colours and normalisation embedded; the file is checked against the "
        "torch model on two image sizes before it is kept. See docs/export.md.",
    )
    x.add_argument("run", metavar="RUN", help="run directory written by 'pixelwise train'")
    x.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    x.add_argument("--out", required=True, metavar="FILE", help="file to write")
    x.add_argument("--checkpoint", choices=("best", "last"), default="best")
    x.set_defaults(func=cmd_export)

    v = sub.add_parser(
        "serve",
        help="web page + HTTP API: upload an image, see its segmentation",
        description="Serve a run on a local web page (drop an image, see the overlay, the "
        "classes' shares, download the mask) and an HTTP API (POST /predict, GET /api/info; "
        "see the README). Needs pip install 'pixelwise[serve]'.",
    )
    v.add_argument("run", metavar="RUN", help="run directory written by 'pixelwise train'")
    v.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; the server has no "
        "authentication)",
    )
    v.add_argument("--port", type=int, default=8000, help="default 8000")
    v.add_argument("--max-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    v.add_argument(
        "--tile",
        type=int,
        default=512,
        help="predict images larger than this (pixels per side) tile by tile; 0: never "
        "(default 512)",
    )
    v.add_argument("--checkpoint", choices=("best", "last"), default="best")
    v.add_argument("--device", help="auto, cpu or cuda")
    v.set_defaults(func=cmd_serve)

    _add_data_commands(sub)

    m = sub.add_parser("models", help="list the available models")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "threads", None) is not None:
        import torch

        if args.threads < 1:
            print("pixelwise: error: --threads: must be at least 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if getattr(args, "max_image_pixels", None) is not None:
        from pixelwise.data.io import set_max_image_pixels

        if args.max_image_pixels < 0:
            print("pixelwise: error: --max-image-pixels: must be >= 0", file=sys.stderr)
            return 2
        set_max_image_pixels(args.max_image_pixels or None)
    try:
        return args.func(args)
    except PixelwiseError as err:
        if args.debug:
            raise
        print(f"pixelwise: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # TrainingInterrupted says how to resume
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(f"pixelwise: {err or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)
    except Exception as err:  # an unexpected failure: one line, traceback with --debug
        if args.debug:
            raise
        print(
            f"pixelwise: internal error: {type(err).__name__}: {err} "
            "(run again with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``pixelwise`` command: parses options, calls the API, prints results.

Errors a user can fix (bad files, bad options, missing runs) are printed as one line on stderr
with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
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


def _add_train_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
    g = p.add_argument_group("data")
    if not demo:
        g.add_argument(
            "--data",
            default="digits",
            help="dataset folder (images/ + masks/, or train/ and val/ with images/ + "
            "masks/ inside) or 'digits', the embedded default (default: digits)",
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
        g.add_argument("--no-hflip", action="store_true", help="no horizontal flips")
        g.add_argument(
            "--class-weights",
            metavar="none|W0,W1,...",
            help="per-class loss weights (default none)",
        )
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="RUN", help="run directory to create")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="auto, cpu or cuda (default auto)")
    g.add_argument("--workers", type=int, help="data loader worker processes (default 0)")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
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


def _train_config(args: argparse.Namespace, base: dict[str, Any]):
    from pixelwise.train import TrainConfig

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
        "out",
        "seed",
        "device",
        "workers",
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
    if args.overwrite:
        d["overwrite"] = True
    if getattr(args, "deterministic", False):
        d["deterministic"] = True
    if getattr(args, "no_channels_last", False):
        d["channels_last"] = False
    return TrainConfig.from_dict(d)


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"run: {summary['run']}  ({summary['epochs']} epochs, {summary['seconds']} s, "
        f"{summary['device']})"
    )
    print(f"best val mean IoU {summary['best_mean_iou']:.4f} at epoch {summary['best_epoch']}")


def cmd_train(args: argparse.Namespace) -> int:
    from pixelwise.train import train

    config = _train_config(args, {})
    summary = train(
        config, progress=_progress_factory(args.quiet), log=None if args.quiet else _log
    )
    _print_summary(summary)
    print(f"next: pixelwise evaluate {summary['run']} --data {config.data}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pixelwise.evaluate import evaluate_run
    from pixelwise.train import train

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
    seg = Segmenter.from_run(args.run, args.checkpoint, args.device or "auto")
    written = predict_files(
        seg,
        files,
        args.out,
        args.alpha,
        progress=_iter_progress(args.quiet or len(files) < 2, "predict", "img"),
    )
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.out}")
    return 0


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


def cmd_models(args: argparse.Namespace) -> int:
    from pixelwise.models import available

    for name in available():
        print(name)
    return 0


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

    m = sub.add_parser("models", help="list the available models")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "threads", None):
        import torch

        if args.threads < 1:
            print("pixelwise: error: --threads: must be at least 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except PixelwiseError as err:
        if args.debug:
            raise
        print(f"pixelwise: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pixelwise: interrupted", file=sys.stderr)
        return 130
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

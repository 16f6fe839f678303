"""The ``pixelwise`` argument parser: one subparser per command. ``train`` and ``demo`` get their
options generated from TrainConfig (:mod:`pixelwise.cli.options`); every option's help shows its
default. ``--debug`` and ``--quiet`` work before or after the command; every subparser records
itself as ``command_parser`` so that :func:`pixelwise.cli.main` reports unknown options with
the command's own usage."""

from __future__ import annotations

import argparse
from typing import Any

from pixelwise import __version__
from pixelwise.cli import commands
from pixelwise.cli.options import add_config_options, resume_free_flags, with_default
from pixelwise.cli.train import DEMO_DEFAULTS, cmd_demo, cmd_plan, cmd_train
from pixelwise.training.config import DATA_FORMATS

# engines.ENGINES / DEFAULT_ENGINE, kept apart so that --help imports no torch (a test checks)
ENGINES = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
DEFAULT_ENGINE = "auto"

__all__ = ["build_parser"]

RUN_HELP = "run directory written by 'pixelwise train'"
CHECKPOINT_HELP = "which checkpoint: best (highest validation mean IoU) or last"
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def _add(g: Any, *flags: str, help: str, **kw: Any) -> None:
    """``add_argument`` with the default (when there is one) appended to the help text."""
    if "default" in kw and not kw.get("required"):
        help = with_default(help, kw["default"])
    g.add_argument(*flags, help=help, **kw)


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """--debug and --quiet: on the top-level parser (defaults False) and, with suppressed
    defaults, on every subparser, so that they may come before or after the command."""
    p = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else False
    p.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks on errors"
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", default=default, help="no progress bars or messages"
    )
    return p


def _command(sub: Any, name: str, func: Any, **kw: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, parents=[_global_options(True)], **kw)
    p.set_defaults(func=func, command_parser=p)
    return p


def _add_data_options(g: Any) -> None:
    """--format, --label-map, --mask-threshold, --masks, --data-arg: how a dataset folder is
    read (evaluate, data check, data weights, data fix)."""
    _add(
        g,
        "--format",
        choices=DATA_FORMATS,
        default="auto",
        help="dataset layout (auto: detected from the folder names)",
    )
    _add(
        g,
        "--label-map",
        metavar="FROM:TO,...",
        default=None,
        help="renumber mask values, e.g. 255:1 (binary 0/255 masks), 0:0,255:1, 255:ignore",
    )
    g.add_argument(
        "--mask-threshold",
        type=int,
        metavar="T",
        help="binary masks saved lossily (JPEG, anti-aliased): stored values >= T are class 1, "
        "the others class 0 (e.g. 128; default: read the values as they are)",
    )
    g.add_argument(
        "--masks",
        metavar="DIR",
        help="the masks folder of an images folder given as the dataset: pairs are matched by "
        "file name, and --split all scores every pair (default: the dataset's own layout)",
    )
    _add(
        g,
        "--data-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, repeatable: limit=N (first N samples of each split), folds=K "
        "fold=I (isbi cross-validation), num_images=N (digits)",
    )


def _add_max_image_pixels(g: Any) -> None:
    g.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="refuse images of more than N pixels (decompression-bomb guard; default: "
        "89,478,485, Pillow's); 0 removes the limit: only for trusted files",
    )


def _add_threads(g: Any) -> None:
    g.add_argument(
        "--threads",
        type=int,
        dest="engine_threads",
        metavar="N",
        help="CPU threads for torch (default: all cores)",
    )


def _add_engine(g: Any) -> None:
    _add(
        g,
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="auto: time the engines available on the first image and keep the fastest "
        "(recorded in RUN/engine.json); torch (BatchNorm folded, channels-last); onnxruntime "
        "(exports RUN/best.onnx once; needs pip install 'pixelwise[export]'); onnxruntime-int8 "
        "(the run's checked int8 file: pixelwise export RUN --int8)",
    )


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference engine (docs/performance.md)")
    _add_engine(g)
    g.add_argument(
        "--compile", action="store_true", help="torch.compile the model (torch engine; slow start)"
    )
    _add_threads(g)
    g.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the probabilities over the flips and quarter "
        "turns the run was trained with (its --no-hflip/--rotate: a street scene is never "
        "turned upside down; up to 8 views, each one pass)",
    )


def _add_crf_options(p: argparse.ArgumentParser) -> None:
    """--crf and its kernels (predict, evaluate, serve). The defaults are pixelwise.crf's
    CRFParams (a test keeps the help in step); any --crf-* option turns the CRF on."""
    g = p.add_argument_group("dense CRF (docs/crf.md)")
    g.add_argument(
        "--crf",
        action="store_true",
        help="refine the softmax with a fully connected CRF (Krähenbühl & Koltun 2011, as in "
        "DeepLab): labels snap to the image's edges; about 0.7 s per 480x360 RGB image on a "
        "CPU thread, images up to 2048x2048",
    )
    g.add_argument(
        "--crf-iterations",
        type=int,
        metavar="N",
        help="mean-field iterations (default: 5)",
    )
    g.add_argument(
        "--crf-smooth",
        metavar="W,THETA",
        help="smoothness kernel: weight (0: off) and width in pixels (default: 3,3)",
    )
    g.add_argument(
        "--crf-appearance",
        metavar="W,THETA_XY,THETA_COLOR",
        help="appearance (bilateral) kernel: weight (0: off), width in pixels and in intensity "
        "levels 0-255 over all the image's channels (default: 5,80,5)",
    )


def _add_run_options(p: argparse.ArgumentParser, *, device: bool = True) -> None:
    """RUN positional, --checkpoint and (``device``) --device: how a trained run is loaded."""
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    _add(p, "--checkpoint", choices=("best", "last"), default="best", help=CHECKPOINT_HELP)
    if device:
        _add(p, "--device", default="auto", help=DEVICE_HELP)


def _add_train(sub: Any) -> None:
    t = _command(
        sub,
        "train",
        cmd_train,
        usage="%(prog)s [--config FILE] [--resume RUN] [OPTION ...]",
        help="train a model (without --model: planned for the data, this machine and --budget); "
        "writes a run directory",
        description="Train a segmentation model. The run directory gets config.json, best/last "
        "checkpoints (safetensors), metrics.csv, curves.png and validation overlays. Without "
        "--model, the options are planned from the data, this machine and --budget (default "
        "20m; see 'pixelwise plan' and docs/planning.md) and kept in RUN/plan.json; every "
        "option given overrides its plan entry. Options come from the defaults (or the plan), "
        "then --config FILE, then the command line.",
    )
    g = t.add_argument_group("configuration")
    g.add_argument(
        "--config",
        metavar="FILE",
        help="training options from a .toml or .json file: the option names with _ for - "
        "(lr = 0.01, batch_size = 4, data_args = {limit = 20}; [sections] are ignored), or a "
        "run's own config.json to repeat it; options on the command line win",
    )
    g.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its last committed checkpoint with the options recorded in it; "
        f"only {', '.join(resume_free_flags())} may differ from the run's (a larger --epochs "
        "trains longer)",
    )
    groups = add_config_options(t)
    _add_max_image_pixels(groups["run"])


def _add_demo(sub: Any) -> None:
    d = _command(
        sub,
        "demo",
        cmd_demo,
        usage="%(prog)s [OPTION ...]",
        help="train and evaluate on the embedded digits scenes (CPU, a few minutes)",
        description="Train a small U-Net on the embedded digits scenes (no download), then "
        "evaluate it on unseen digits. Its settings: pixelwise.cli.DEMO.",
    )
    groups = add_config_options(d, demo=True, defaults=DEMO_DEFAULTS)
    _add_max_image_pixels(groups["run"])


def _add_evaluate(sub: Any) -> None:
    e = _command(
        sub,
        "evaluate",
        commands.cmd_evaluate,
        help="score a run on a dataset split",
        description="Pixel accuracy, mean accuracy, per-class and mean IoU, "
        "frequency-weighted IoU and Dice from one confusion matrix.",
    )
    _add_run_options(e)
    _add(e, "--data", default="digits", help="dataset folder or 'digits'")
    _add(
        e,
        "--split",
        default="val",
        help="split to score: train, val, test, or all (every pair of the folder, e.g. a "
        "held-out folder of images/ + masks/, or --data IMAGES --masks MASKS)",
    )
    e.add_argument("--out", help="folder for eval JSON and confusion PNG (default: RUN)")
    _add_data_options(e)
    _add_max_image_pixels(e)
    _add_engine_options(e)
    _add_crf_options(e)


def _add_predict(sub: Any) -> None:
    r = _command(
        sub,
        "predict",
        commands.cmd_predict,
        help="label images of any size",
        description="Write a palette mask PNG and an overlay PNG per image.",
    )
    _add_run_options(r)
    r.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files or folders")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add(r, "--alpha", type=float, default=0.5, help="overlay opacity, 0 to 1")
    r.add_argument(
        "--tile",
        type=int,
        metavar="N",
        help="predict in N x N tiles, memory bounded by N and the image width (valid U-Net: "
        "overlap-tile, identical to the whole image; others: Gaussian-blended tiles; see "
        "docs/tiles.md); 0: never tile (default: images over 2048x2048 pixels use 512)",
    )
    _add(
        r,
        "--overlap",
        type=float,
        default=0.25,
        metavar="F",
        help="fraction of a tile shared with its neighbours, 0 to 0.9 (ignored by the valid U-Net)",
    )
    r.add_argument(
        "--shard",
        metavar="I/N",
        help="only files I, I+N, I+2N, ... of the sorted inputs (0 <= I < N): split one folder "
        "over N separate processes; under torchrun each rank takes its share by itself "
        "(default: all files)",
    )
    _add_max_image_pixels(r)
    _add_engine_options(r)
    _add_crf_options(r)


def _add_heatmap(sub: Any) -> None:
    h = _command(
        sub,
        "heatmap",
        commands.cmd_heatmap,
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
    h.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add(h, "--epochs", type=int, default=6, help="epochs when training the classifier")
    _add(h, "--seed", type=int, default=0, help="random seed when training the classifier")
    h.add_argument("--no-full", action="store_true", help="skip the full-resolution a-trous maps")


def _add_export(sub: Any) -> None:
    x = _command(
        sub,
        "export",
        commands.cmd_export,
        help="export a run's model to ONNX or TorchScript (metadata embedded, verified)",
        description="Write the model as one file with dynamic batch, height and width and "
        "the classes, colours and normalisation embedded; the file is checked against the "
        "torch model on two image sizes before it is kept. See docs/export.md.",
    )
    _add_run_options(x, device=False)
    _add(x, "--format", choices=("onnx", "torchscript"), default="onnx", help="file format")
    x.add_argument("--out", required=True, metavar="FILE", help="file to write")
    q = x.add_argument_group("int8 (docs/export.md)")
    q.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantization (ONNX Runtime, QDQ, per-channel weights), calibrated on "
        "the run's training images and checked on its validation split; also kept as "
        "RUN/best.int8.onnx for --engine onnxruntime-int8",
    )
    _add(q, "--calibration-images", type=int, default=32, metavar="N",
         help="training images that set the int8 ranges")  # fmt: skip
    _add(q, "--int8-tolerance", type=float, default=0.01, metavar="D",
         help="refuse the int8 file when it loses more than D of mean IoU (0.01 = 1 point) "
         "against the float model on the validation split")  # fmt: skip
    _add(q, "--check-images", type=int, default=0, metavar="N",
         help="validation images for the int8 check (0: all)")  # fmt: skip


def _add_serve(sub: Any) -> None:
    v = _command(
        sub,
        "serve",
        commands.cmd_serve,
        help="web page + HTTP API: upload an image, see its segmentation",
        description="Serve a run on a local web page (drop an image, see the overlay, the "
        "classes' shares, download the mask) and an HTTP API (POST /predict, GET /api/info; "
        "see the README). Needs pip install 'pixelwise[serve]'.",
    )
    _add_run_options(v)
    _add(
        v,
        "--host",
        default="127.0.0.1",
        help="address to bind (127.0.0.1: this machine only; the server has no authentication)",
    )
    _add(v, "--port", type=int, default=8000, help="port to listen on")
    _add(v, "--max-mb", type=float, default=20.0, help="largest upload in MB")
    _add(
        v,
        "--tile",
        type=int,
        default=512,
        metavar="N",
        help="predict images larger than N pixels per side tile by tile; 0: never",
    )
    _add_serve_limits(v)
    _add_threads(v)
    _add_engine(v)
    _add_crf_options(v)


def _add_serve_limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("under load (docs/performance.md, 'Serving under load')")
    _add(g, "--max-queue", type=int, default=16, metavar="N",
         help="prediction requests in the server at once (uploading, waiting, running); one more "
         "gets 503 + Retry-After at once; memory is bounded by about N uploads")  # fmt: skip
    _add(g, "--timeout", type=float, default=30.0, metavar="SECONDS",
         help="a request unanswered after this long gets 503; its work is dropped")  # fmt: skip
    _add(g, "--batch", type=int, default=1, metavar="N",
         help="run up to N queued same-size images as one batch (1: one at a time)")  # fmt: skip
    _add(g, "--batch-wait-ms", type=float, default=2.0, metavar="MS",
         help="with --batch: how long the model waits for more images to join a batch")  # fmt: skip


def _add_models(sub: Any) -> None:
    _command(
        sub,
        "models",
        commands.cmd_models,
        help="list the available models",
        description="One line per model: its name, its parameters at width 1 (21 classes) and "
        "what it is.",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pixelwise",
        description="Pixel labeling with fully convolutional networks: train, evaluate, predict.",
        epilog="Start with 'pixelwise demo'. Each command has its own --help.",
        parents=[_global_options(False)],
    )
    p.add_argument("--version", action="version", version=f"pixelwise {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_train, _add_evaluate, _add_predict, _add_heatmap, _add_export):
        add(sub)
    _add_serve(sub)
    _add_plan(sub)
    _add_label(sub)
    _add_data_commands(sub)
    _add_models(sub)
    return p


def _add_data_commands(sub: Any) -> None:
    """The ``pixelwise data`` command group."""
    group = _command(
        sub,
        "data",
        lambda _args: 2,
        help="dataset tools: 'data check DIR' lists every problem, 'data fix DIR --out CLEAN' "
        "writes a cleaned copy, 'data weights' draws U-Net weight maps",
        description="Dataset tools. Each has its own --help.",
    )
    group.set_defaults(func=lambda _args: (group.print_help(), 2)[1])
    data_sub = group.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    c = _command(
        data_sub,
        "check",
        commands.cmd_data_check,
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
    _add_data_weights(data_sub)
    _add_data_fix(data_sub)


def _add_data_weights(data_sub: Any) -> None:
    w = _command(
        data_sub,
        "weights",
        commands.cmd_data_weights,
        help="render the U-Net border weight map of each image as a PNG heatmap",
        description="Compute the U-Net paper's weight map (eq. 2: class balancing plus "
        "w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels between objects) for the "
        "images of one split and write OUT/<name>_weights.png (image | labels | weights), as "
        "'pixelwise train --loss weighted-ce --weight-map unet' uses it.",
    )
    w.add_argument("dir", metavar="DIR", help="dataset folder (or 'digits')")
    w.add_argument("--out", required=True, metavar="OUT", help="folder for the PNG files")
    _add(w, "--split", default="train", help="split to render")
    _add(w, "--w0", type=float, default=10.0, help="separation term height")
    _add(w, "--sigma", type=float, default=5.0, help="separation term width in pixels")
    w.add_argument("--limit", type=int, metavar="N", help="only the first N images (default: all)")
    _add_data_options(w)
    _add_max_image_pixels(w)


def _add_data_fix(data_sub: Any) -> None:
    f = _command(
        data_sub,
        "fix",
        commands.cmd_data_fix,
        help="write a cleaned copy of a dataset (masks binarised or rounded, sizes matched, "
        "duplicates dropped, PNG masks, classes.txt) and a report of every change",
        description="Write a cleaned generic-layout copy of DIR to --out (images/, masks/ as "
        "PNG, classes.txt, fix_report.txt and .json listing every change). DIR is never "
        "changed. Lossy masks (JPEG, anti-aliased) are binarised or rounded to the classes; "
        "images and masks of different sizes but the same aspect ratio are resized to match "
        "(--resize); byte-identical duplicate images are dropped.",
    )
    f.add_argument("dir", metavar="DIR", help="dataset folder (any layout)")
    f.add_argument("--out", required=True, metavar="CLEAN", help="new folder for the copy")
    _add(
        f,
        "--mask-values",
        choices=("auto", "binarize", "round", "keep"),
        default="auto",
        help="auto: binarise masks that look binary, round the rest to their classes' values; "
        "binarize (at --mask-threshold, default halfway); round; keep",
    )
    f.add_argument(
        "--resize",
        choices=("images", "masks"),
        help="when an image and its mask differ in size with the same aspect ratio: resize the "
        "images to their masks, or the masks (nearest neighbour) to their images (default: "
        "report and skip such pairs)",
    )
    f.add_argument(
        "--keep-duplicates", action="store_true", help="keep byte-identical duplicate images"
    )
    _add_data_options(f)
    _add_max_image_pixels(f)


def _add_plan(sub: Any) -> None:
    p = _command(
        sub,
        "plan",
        cmd_plan,
        help="plan the training of a dataset for a time budget on this machine (prints why)",
        description="Measure the dataset (sizes, classes, objects, orientation; cached) and "
        "this machine (a few timed training steps), then print the training options that fit "
        "the budget, one reason per option. 'pixelwise train --data DIR --budget B' trains "
        "this plan; any option you give overrides its plan entry. docs/planning.md has the "
        "rules and the runs behind them.",
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder (or 'digits')")
    _add(p, "--budget", default="20m", metavar="TIME", help="training time: 20m, 1.5h, 600")
    _add(p, "--device", default="auto", help=DEVICE_HELP)
    _add(
        p,
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of train/ held out for validation when the folder has no val split",
    )
    p.add_argument("--out", metavar="FILE", help="also write the plan and fingerprint as JSON")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="time the steps with the CPU threads training will use (default: all cores)",
    )
    g = p.add_argument_group("data")
    _add(g, "--format", dest="data_format", choices=DATA_FORMATS, default="auto",
         help="dataset layout (auto: detected from the folder names)")  # fmt: skip
    g.add_argument("--label-map", metavar="FROM:TO,...", help="renumber mask values")
    g.add_argument("--mask-threshold", type=int, metavar="T", help="binarise lossy masks at T")


def _add_label(sub: Any) -> None:
    p = _command(
        sub,
        "label",
        commands.cmd_label,
        help="a labeling page: strokes train a model live, uncertain images first",
        description="Start a local labeling page for the images of IMAGES (docs/labeling.md): "
        "brush strokes per class are saved at once to OUT/masks/ (255 = unlabelled), a model "
        "trains on the labelled pixels in the background and shows its prediction and its "
        "uncertainty, 'next' opens the most uncertain image. OUT is a dataset (images/, "
        "masks/, classes.txt) that train, evaluate and data check take as it is, and OUT/run "
        "is a run directory. Needs pip install 'pixelwise[serve]'.",
    )
    p.add_argument("images", metavar="IMAGES", help="folder of images to label")
    p.add_argument(
        "--classes",
        metavar="NAME,NAME,...",
        help="class names, background first (default: the project's classes.txt, or the "
        "--run's classes)",
    )
    p.add_argument("--out", required=True, metavar="PROJECT", help="the project folder")
    p.add_argument("--run", metavar="RUN", help="fine-tune this run (same classes)")
    _add(p, "--host", default="127.0.0.1", help="address to bind (this machine only)")
    _add(p, "--port", type=int, default=8000, help="port")
    _add(p, "--device", default="auto", help=DEVICE_HELP)
    _add_threads(p)
    p.add_argument(
        "--trainer",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the live model's training, repeatable, VALUE as JSON: e.g. "
        "rotate90=true (orientation-free images), crop=96, lr=1e-3, pseudo_weight=0.2; "
        "docs/labeling.md lists them all with their defaults",
    )

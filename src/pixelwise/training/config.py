"""Every option of a training run, in one place: :class:`TrainConfig`.

Each field carries its own metadata, and everything else is generated from it:

- the ``pixelwise train`` / ``pixelwise demo`` options (flag, help, default, group, choices);
- ``train --config FILE.toml|FILE.json`` (the same field names; command-line options win);
- the resume rules: fields marked ``resume="free"`` may change on ``--resume`` and default to
  the run's own values; every other field must stay as the run has it;
- ``RUN/config.json``'s ``train`` section (``asdict``), read back through :meth:`from_dict`.

Field metadata keys (all optional): ``help``; ``flag`` (default ``--field-name``; a boolean
whose default is True gets ``--no-...``); ``group`` (help section); ``metavar``; ``choices``;
``resume`` (``"free"`` or ``"fixed"``, the default); ``demo`` (True: ``pixelwise demo`` has it
too); ``cli`` (False: no command-line option); ``pair`` (the field that takes the second value
of a two-value option such as ``--scale MIN MAX``); ``parse`` (name of a function of
``pixelwise.training.config`` turning the option's text into the value).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError
from pixelwise.training.budget import parse_duration
from pixelwise.training.checks import check_config, field_flag, typed_fields

__all__ = [
    "AMP_MODES",
    "parse_class_weights",
    "parse_duration",
    "TrainConfig",
    "option_flag",
    "read_config_file",
    "resume_free_fields",
]

AMP_MODES = ("auto", "off", "bf16", "fp16")
#: pixelwise.data.layouts.FORMATS (kept here too so that building the CLI imports no torch;
#: tests/test_training_config.py checks the two agree)
DATA_FORMATS = ("auto", "generic", "voc", "camvid", "isbi", "drive", "cityscapes")


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A TrainConfig field: its default, its help text and the metadata described above."""
    meta["help"] = help
    if isinstance(default, dict | list):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def parse_class_weights(text: str) -> list[float] | str | None:
    """``auto`` | ``none`` | ``W0,W1,...`` -> the ``class_weights`` value."""
    if text.lower() == "none":
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--class-weights {text!r}: give 'none', 'auto' or comma-separated numbers"
        ) from None


def parse_key_values(text: str, flag: str, example: str) -> dict[str, Any]:
    """``KEY=VALUE`` (VALUE read as JSON when it is JSON: 3, true, [4, 8]) -> ``{key: value}``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {example}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return {key.replace("-", "_"): parsed}


@dataclass
class TrainConfig:
    """Every option of a training run (the resolved copy is saved in ``RUN/config.json``)."""

    # -- data ------------------------------------------------------------------------------
    data: str = opt(
        "digits",
        "dataset folder (images/ + masks/; train/ and val/ with images/ + masks/ inside; or VOC, "
        "CamVid, ISBI 2012, DRIVE, Cityscapes: see --format) or 'digits', the embedded default",
        group="data",
        metavar="DIR",
    )
    data_format: str = opt(
        "auto",
        "dataset layout (auto: detected from the folder names)",
        group="data",
        flag="--format",
        choices=DATA_FORMATS,
    )
    data_args: dict[str, Any] = opt(
        {},
        "dataset option, repeatable: limit=N (first N samples of each split), folds=K fold=I "
        "(isbi cross-validation), num_images=N (digits)",
        group="data",
        flag="--data-arg",
        metavar="KEY=VALUE",
    )
    label_map: str | None = opt(
        None,
        "renumber mask values, e.g. 255:1 (binary 0/255 masks), 0:0,255:1, 255:ignore",
        group="data",
        metavar="FROM:TO,...",
    )
    mask_threshold: int | None = opt(
        None,
        "read binary masks saved lossily (JPEG, anti-aliased): stored values >= T are class 1, "
        "the others class 0 (e.g. 128); 'pixelwise data check' says when a folder needs it",
        group="data",
        metavar="T",
    )
    force_classes: bool = opt(
        False,
        "train even when the classes inferred from the mask values look like noise (dozens of "
        "rare values: lossy masks); the fixes are --mask-threshold, --label-map round or "
        "'pixelwise data fix'",
        group="data",
    )
    val_fraction: float = opt(
        0.1, "fraction held out for validation when the folder has no val split", group="data"
    )
    channels: int | None = opt(
        None,
        "image channels fed to the model (default: the data's own)",
        group="data",
        choices=(1, 3),
    )
    check_data: bool = opt(
        True,
        "read every file of the dataset before training ('pixelwise data check' does the same "
        "checks); --no-check skips it",
        group="data",
        flag="--no-check",
        resume="free",
    )
    # -- model -----------------------------------------------------------------------------
    task: str = opt(
        "segment",
        "segment: learn the masks; colorize: learn the colour (Lab a, b) of the images from "
        "their lightness, no masks read (--data: any folder of colour images or dataset "
        "layout); a colorize run pre-trains a segmenter through --init-from",
        group="model",
        choices=("segment", "colorize"),
    )
    model: str = opt("fcn8s", "model name; see 'pixelwise models'", group="model")
    width: float = opt(1.0, "channel multiplier: 0.25 gives a CPU-trainable variant", group="model")
    model_args: dict[str, Any] = opt(
        {},
        "extra model option, repeatable (e.g. depth=3, batch_norm=true)",
        group="model",
        flag="--model-arg",
        metavar="KEY=VALUE",
    )
    init_from: str | None = opt(
        None,
        "copy every matching weight from a trained run (staged training: fcn32s -> fcn16s -> "
        "fcn8s; a --task colorize run: pre-training without labels) or from a patch classifier "
        "folder written by 'pixelwise heatmap' (with --model convolutionalized)",
        group="model",
        metavar="RUN",
    )
    encoder_weights: str | None = opt(
        None,
        "VGG16 encoder weights: a local torchvision-format state dict or 'imagenet' (downloads; "
        "needs internet)",
        group="model",
        metavar="FILE|imagenet",
    )
    # -- optimisation ----------------------------------------------------------------------
    epochs: int = opt(
        10,
        "passes over the training set (on --resume: a larger number trains longer)",
        group="optimisation",
        resume="free",
        demo=True,
    )
    budget: float | None = opt(
        None,
        "wall-clock budget of the run, the last validation and checkpoint included: 20m, 1.5h, "
        "90s or seconds; training ends early, validated and saved, rather than run over",
        group="optimisation",
        metavar="TIME",
        parse="parse_duration",
        resume="free",
    )
    batch_size: int = opt(8, "images per step", group="optimisation", demo=True)
    lr: float = opt(0.01, "peak learning rate", group="optimisation", demo=True)
    optimizer: str = opt("sgd", "optimizer", group="optimisation", choices=("sgd", "adamw"))
    momentum: float = opt(0.9, "SGD momentum", group="optimisation")
    weight_decay: float = opt(5e-4, "weight decay", group="optimisation")
    schedule: str = opt(
        "poly",
        "learning-rate schedule per step (poly: the FCN/DeepLab (1 - t)^0.9)",
        group="optimisation",
        choices=("poly", "cosine", "constant"),
    )
    accumulate: int = opt(
        1,
        "accumulate gradients over N batches per optimizer step",
        group="optimisation",
        metavar="N",
        demo=True,
    )
    class_weights: list[float] | str | None = opt(
        None,
        "per-class loss weights: auto = median-frequency balancing from the training masks "
        "(pixel counts cached per dataset), none, or one number per class",
        group="optimisation",
        metavar="auto|none|W0,W1,...",
        parse="parse_class_weights",
    )
    loss: str = opt(
        "ce",
        "ce; weighted-ce: cross-entropy times a per-pixel weight map (--weight-map); dice-ce: "
        "cross-entropy plus soft Dice over the batch (nnU-Net's default; good for thin or small "
        "structures)",
        group="optimisation",
        choices=("ce", "weighted-ce", "dice-ce"),
    )
    weight_map: str | None = opt(
        None,
        "with --loss weighted-ce: the U-Net border weight map (class balance w_c plus a term "
        "that peaks in narrow gaps between objects; w_c = --class-weights if given, else "
        "per-image inverse class frequency); see 'pixelwise data weights'",
        group="optimisation",
        choices=("unet",),
    )
    w0: float = opt(10.0, "weight map: separation term height", group="optimisation")
    sigma: float = opt(5.0, "weight map: separation term width in pixels", group="optimisation")
    # -- augmentation and labels -----------------------------------------------------------
    crop_size: int = opt(256, "training crop side in pixels", group="augmentation")
    scale_min: float = opt(
        0.75,
        "random scale range",
        group="augmentation",
        flag="--scale",
        metavar=("MIN", "MAX"),
        pair="scale_max",
    )
    scale_max: float = opt(1.25, "upper end of --scale", group="augmentation", cli=False)
    input_scale: float = opt(
        1.0,
        "resize every image by this factor for the model (0.5: train and predict at half "
        "resolution, scored at the labels' full resolution; saved in the run, so "
        "predict/evaluate/serve do the same)",
        group="augmentation",
    )
    hflip: bool = opt(True, "random horizontal flips (--no-hflip: none)", group="augmentation")
    rotate: float = opt(
        0.0, "random rotation within +-DEG degrees (0: off)", group="augmentation", metavar="DEG"
    )
    elastic: float = opt(
        0.0,
        "U-Net elastic deformation: random displacements on a 3x3 grid with SIGMA_PX pixels "
        "standard deviation, bicubically interpolated (the paper uses 10; 0: off)",
        group="augmentation",
        metavar="SIGMA_PX",
    )
    color_jitter: float = opt(
        0.0,
        "brightness, contrast and saturation factors drawn from [1-F, 1+F] (image only; 0: off)",
        group="augmentation",
        metavar="F",
    )
    points: int = opt(
        0,
        "train on N labelled pixels per class per image (simulated clicks, fixed for the run); "
        "every other pixel is ignored (0: dense masks)",
        group="augmentation",
        metavar="N",
    )
    # -- run -------------------------------------------------------------------------------
    out: str = opt("runs/latest", "run directory to create", group="run", metavar="RUN", demo=True)
    overwrite: bool = opt(False, "replace an existing run directory", group="run", demo=True)
    seed: int = opt(0, "random seed", group="run", demo=True)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", group="run", resume="free", demo=True)
    threads: int | None = opt(
        None,
        "CPU threads for torch (default: all cores); recorded, and kept by --resume: another "
        "count changes the order of floating-point sums, so the weights are no longer bit-equal",
        group="run",
        resume="free",
        demo=True,
    )
    workers: int = opt(0, "data loader worker processes", group="run", resume="free", demo=True)
    cache: str = opt(
        "auto",
        "keep the decoded training images in memory (auto: when they take less than 25%% of the "
        "available memory; the choice is logged)",
        group="run",
        choices=("on", "off", "auto"),
        resume="free",
        demo=True,
    )
    amp: str = opt(
        "auto",
        "mixed precision autocast (auto: bf16 or fp16 on CUDA; bf16 on CPUs that have it "
        "natively (AVX512-BF16, AMX), else off; docs/performance.md)",
        group="run",
        choices=AMP_MODES,
        resume="free",
        demo=True,
    )
    channels_last: bool = opt(
        True,
        "channels-last (NHWC) activations, faster on CPUs (--no-channels-last: NCHW)",
        group="run",
        demo=True,
    )
    deterministic: bool = opt(
        False, "use deterministic algorithms (reproducible, maybe slower)", group="run"
    )
    val_every: int = opt(
        1,
        "validate (and plot, keep best/last) every EPOCHS epochs and after the last; for small "
        "datasets trained for hundreds of epochs, where validation costs more than training",
        group="run",
        metavar="EPOCHS",
        resume="free",
    )
    save_every: int = opt(
        0,
        "also commit a resumable checkpoint every STEPS optimizer steps (0: epoch ends only)",
        group="run",
        metavar="STEPS",
        resume="free",
    )
    log_every: int = opt(
        10, "update the running loss every N batches", group="run", metavar="N", resume="free"
    )
    overlays: int = opt(
        4, "validation images drawn in RUN/overlays/ per epoch", group="run", resume="free"
    )
    tensorboard: bool = opt(
        False,
        "also log the metrics, learning rate and validation overlays of each validated epoch "
        "to RUN/tensorboard/ (watch with: tensorboard --logdir RUN; needs pip install "
        "'pixelwise[tensorboard]')",
        group="run",
        resume="free",
    )
    sync_bn: bool = opt(
        False,
        "under torchrun on CUDA devices: synchronise BatchNorm statistics across GPUs",
        group="run",
    )
    resume: bool = opt(
        False, "continue the run in --out from its last committed checkpoint", cli=False
    )

    # ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the option for any nonsensical value."""
        check_config(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> TrainConfig:
        """Build from plain data (a TOML file, ``config.json``): unknown names and wrong types
        are one-line ConfigErrors naming ``source`` (a file) or the option."""
        return cls(**typed_fields(cls, d, source))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved in ``RUN/config.json`` (without ``resume``)."""
        d = asdict(self)
        d.pop("resume")
        return d


def option_flag(name: str) -> str:
    """The command-line flag that sets field ``name`` (``data_format`` -> ``--format``)."""
    return field_flag({f.name: f for f in fields(TrainConfig)}[name])


def field_default(name: str) -> Any:
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def resume_free_fields() -> tuple[str, ...]:
    """The fields that may change on ``--resume`` (metadata ``resume="free"``)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata.get("resume") == "free")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The training options of a ``.toml`` or ``.json`` file: TOML tables are flattened away
    (``[optimisation] lr = 0.01`` is ``lr``); a run's ``config.json`` gives its ``train``
    section. Unknown names are reported by :meth:`TrainConfig.from_dict`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"--config {path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a table of options")
    if data.get("format") == "pixelwise-run" and isinstance(data.get("train"), dict):
        data = data["train"]
    flat: dict[str, Any] = {}
    names = {f.name for f in fields(TrainConfig)}
    for key, value in data.items():
        if isinstance(value, dict) and key not in names:  # a section such as [optimisation]
            flat.update(value)
        else:
            flat[key] = value
    flat.pop("resume", None)
    for f in fields(TrainConfig):  # text values of options the CLI parses ("20m", "auto")
        if "parse" in f.metadata and isinstance(flat.get(f.name), str):
            flat[f.name] = globals()[f.metadata["parse"]](flat[f.name])
    return flat


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

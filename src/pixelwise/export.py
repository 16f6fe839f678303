"""Export a trained model to ONNX or TorchScript, with everything needed to use it embedded.

The exported graph is the raw model: input ``"image"``, float32 ``(N, in_channels, H, W)``
normalised with the run's mean/std; output ``"logits"``, ``(N, num_classes, H', W')`` with
``H' = H`` for every model except the valid U-Net, whose logits are ``border`` pixels smaller on
each side (mirror-pad the image first: see docs/export.md). Batch, height and width are dynamic.

The writers, the ``ScatterUnpool`` rewrite and the check of a written file are in
:mod:`pixelwise.export_formats` (the prediction layer, which the ONNX Runtime engine shares);
this module adds a run's metadata and the all-or-nothing :func:`export_run`. Its public names
stay importable from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelwise import __version__
from pixelwise.errors import ConfigError
from pixelwise.export_formats import (
    ARGMAX_AGREEMENT,
    EXTRA_FILE,
    LOGIT_TOLERANCE,
    ScatterUnpool,
    export_onnx,
    export_torchscript,
    exportable,
    min_input_size,
    read_onnx_metadata,
    read_torchscript_metadata,
    verify_export,
)
from pixelwise.files import atomic_path

__all__ = [
    "ARGMAX_AGREEMENT",
    "EXTRA_FILE",
    "LOGIT_TOLERANCE",
    "ExportReport",
    "Int8Report",
    "ScatterUnpool",
    "export_onnx",
    "calibration_inputs",
    "export_int8",
    "export_run",
    "int8_check",
    "export_torchscript",
    "exportable",
    "min_input_size",
    "read_onnx_metadata",
    "read_torchscript_metadata",
    "run_metadata",
    "verify_export",
]

FORMATS = ("onnx", "torchscript")


@dataclass
class ExportReport:
    """What :func:`export_run` wrote and how closely the file matches the torch model."""

    path: Path
    format: str
    model: str
    bytes: int
    checks: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per check."""
        out = [f"wrote {self.path} ({self.format}, model {self.model}, {self.bytes / 1e6:.2f} MB)"]
        for c in self.checks:
            line = (
                f"  check {c['batch']}x{c['height']}x{c['width']}: logits {c['logits_shape']}, "
                f"argmax agreement {100 * c['argmax_agreement']:.3f}%, max |diff| "
                f"{c['max_abs_diff']:.2e} ({c['relative_diff']:.2e} of the logit range)"
            )
            if c.get("reference") == "float64":
                line += (
                    " against the model in float64 (torch float32 itself: "
                    f"{100 * c['float32_argmax_agreement']:.3f}%, "
                    f"{c['float32_relative_diff']:.2e})"
                )
            out.append(line)
        return out


def run_metadata(loaded: Any, checkpoint: str, min_size: int) -> dict[str, Any]:
    """Everything needed to use an exported file without pixelwise (see docs/export.md).

    ``loaded``: a :class:`pixelwise.runs.LoadedRun`. Keys: ``format``, ``pixelwise_version``,
    ``model``, ``model_kwargs``, ``num_classes``, ``in_channels``, ``class_names``,
    ``class_colors``, ``ignore_index``, ``mean``, ``std`` (the image is scaled to [0, 1], then
    ``(x - mean) / std`` per channel), ``border``, ``min_size`` and ``input_rule`` (for the valid
    U-Net: mirror-pad ``border`` before and up to a size ``P`` with ``(P + offset) % multiple ==
    0`` after; logits ``P - 2 * border``, keep the first ``H x W``).
    """
    model = loaded.model
    spec = loaded.config["model"]
    border = model.border
    meta: dict[str, Any] = {
        "format": "pixelwise-export",
        "pixelwise_version": __version__,
        "model": spec["name"],
        "model_kwargs": spec["kwargs"],
        "num_classes": loaded.classes.num_classes,
        "in_channels": loaded.in_channels,
        "class_names": list(loaded.classes.names),
        "class_colors": [list(c) for c in loaded.classes.colors],
        "ignore_index": loaded.classes.ignore_index,
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "border": border,
        "min_size": min_size,
        "checkpoint": checkpoint,
        "epoch": loaded.info.get("epoch"),
    }
    if border:  # the valid U-Net: its valid_input_size steps by tile_grid = 2**depth
        multiple = model.tile_grid
        valid = model.valid_input_size(2 * border + 1, 2 * border + 1)[0]
        offset = -valid % multiple  # every accepted size P has (P + offset) % multiple == 0
        meta["input_rule"] = {
            "pad_before": border,
            "multiple": multiple,
            "offset": offset,
            "text": (
                f"mirror-pad the normalised HxW image by {border} px on the top and left and on "
                f"the bottom/right up to the smallest size P >= H + {2 * border} with "
                f"(P + {offset}) % {multiple} == 0 (each axis); the logits are "
                f"P - {2 * border} px; keep [..., :H, :W]"
            ),
        }
    else:
        meta["input_rule"] = {
            "text": f"any H, W >= {min_size}: the logits are H x W",
        }
    return meta


def export_run(
    run: str | Path, out: str | Path, fmt: str = "onnx", checkpoint: str = "best"
) -> ExportReport:
    """Export ``RUN``'s ``checkpoint`` weights to ``out`` as ``fmt`` (``onnx`` or ``torchscript``).

    The file embeds :func:`run_metadata` and is verified against the torch model on two image
    sizes before it appears at ``out`` (atomically); on any failure ``ConfigError`` is raised and
    no file is left.
    """
    from pixelwise.runs import load_run

    if fmt not in FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                f"--format onnx needs onnx and onnxruntime ({err}); install them with "
                "pip install 'pixelwise[export]', or use --format torchscript"
            ) from None
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name such as model.{fmt}")
    loaded = load_run(run, checkpoint, device="cpu")
    model = loaded.model.eval()
    in_channels = loaded.in_channels
    min_size = min_input_size(model)
    meta = run_metadata(loaded, checkpoint, min_size)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            props = {k: json.dumps(v) for k, v in meta.items()}
            try:
                export_onnx(model, tmp, in_channels=in_channels, metadata=props)
            except ConfigError:
                raise
            except Exception as err:  # exporter failures come in many types
                raise ConfigError(
                    f"export: model '{meta['model']}' cannot be exported to ONNX "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                ) from None
        else:
            try:
                export_torchscript(model, tmp, in_channels=in_channels, metadata=meta)
            except ConfigError:
                raise
            except Exception as err:
                raise ConfigError(
                    f"export: model '{meta['model']}' cannot be traced to TorchScript "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                ) from None
        checks = verify_export(model, tmp, fmt, in_channels, min_size, name=out)
        size = tmp.stat().st_size
    return ExportReport(out, fmt, meta["model"], size, checks, meta)


# ---------------------------------------------------------------------------------------- int8

INT8_TOLERANCE = 0.01  # mean IoU the int8 file may lose against the float model (1 point)


@dataclass
class Int8Report:
    """What :func:`export_int8` wrote and how the int8 file compares with the float model."""

    path: Path
    model: str
    bytes: int
    float_bytes: int
    check: dict[str, Any]
    cached: Path | None

    def lines(self) -> list[str]:
        """Human-readable summary: the file, the accuracy check, where the engine finds it."""
        c = self.check
        out = [
            f"wrote {self.path} (onnx int8 {c['quant_format']}, model {self.model}, "
            f"{self.bytes / 1e6:.2f} MB; float {self.float_bytes / 1e6:.2f} MB)",
            f"  calibrated on {c['calibration_images']} {c['calibration_split']} image(s) of "
            f"{c['data']}",
            f"  check on {c['images']} {c['split']} image(s): mean IoU {c['miou_float']:.4f} "
            f"(float) -> {c['miou_int8']:.4f} (int8), change {100 * c['miou_change']:+.2f} "
            f"points (tolerance {100 * c['tolerance']:.2f}); argmax agreement "
            f"{100 * c['argmax_agreement']:.2f}%",
        ]
        if self.cached is not None:
            out.append(f"  kept as {self.cached} for --engine onnxruntime-int8 / auto")
        else:
            out.append("  not kept with the run (folder and cache not writable)")
        return out


def _run_split(loaded: Any, split: str) -> Any:
    """``loaded``'s dataset ``split`` opened as its training opened it (layout, label map,
    seeded val split; the run's classes)."""
    from pixelwise.training import TrainConfig
    from pixelwise.training.setup import open_split

    try:
        config = TrainConfig.from_dict(loaded.config["train"])
    except (KeyError, TypeError) as err:
        raise ConfigError(f"config.json: has no usable 'train' section ({err})") from None
    classes = None if str(config.data) == "digits" else loaded.classes
    return open_split(config, split, loaded.in_channels, classes=classes)


def _net_input(model: Any, image: Any, mean: Any, std: Any, input_scale: float) -> Any:
    """The float32 array ``(1, C, h, w)`` the network receives for ``image (H, W, C)`` uint8 in
    prediction: normalised, resized by the run's input scale, mirror-padded for the valid
    U-Net (captured from :func:`pixelwise.predict.forward_full` itself)."""
    import torch

    from pixelwise.data.transforms import to_tensor
    from pixelwise.predict import forward_full

    seen: list[torch.Tensor] = []

    def capture(t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros(t.shape[0], 1, *model.output_size(*t.shape[-2:]))

    x = to_tensor(image, mean, std).unsqueeze(0)
    forward_full(model, x, net=capture, input_scale=input_scale)
    return seen[0].numpy().astype("float32")


def calibration_inputs(loaded: Any, count: int, seed: int = 0) -> tuple[list[Any], str]:
    """``count`` images of ``loaded``'s training split (a seeded sample) as network inputs
    (:func:`_net_input`), and the data's name."""
    import numpy as np

    if count < 1:
        raise ConfigError(f"--calibration-images: must be at least 1, got {count}")
    train = _run_split(loaded, "train")
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(train), size=min(count, len(train)), replace=False).tolist())
    scale = float(loaded.config.get("train", {}).get("input_scale", 1.0))
    inputs = [
        _net_input(loaded.model, train[i].image, loaded.mean, loaded.std, scale) for i in picks
    ]
    return inputs, str(loaded.config["train"]["data"])


def int8_check(
    loaded: Any, int8_net: Any, images: int | None = None, progress: Any = None
) -> dict[str, Any]:
    """Float model vs ``int8_net`` (an engine) on ``loaded``'s validation split, predicted as
    ``pixelwise evaluate`` does: both mean IoUs and pixel accuracies, and the share of pixels
    whose argmax agrees. ``images``: the first N validation images (None: all)."""
    import torch

    from pixelwise.data.transforms import mask_to_tensor, to_tensor
    from pixelwise.metrics import confusion_matrix, scores
    from pixelwise.predict import forward_full

    val = _run_split(loaded, "val")
    model, classes = loaded.model.eval(), loaded.classes
    scale = float(loaded.config.get("train", {}).get("input_scale", 1.0))
    c = classes.num_classes
    cms = [torch.zeros(c, c, dtype=torch.int64) for _ in range(2)]
    same = total = 0
    indices = range(len(val) if images is None else min(images, len(val)))
    with torch.inference_mode():
        for i in progress(indices) if progress else indices:
            sample = val[i]
            x = to_tensor(sample.image, loaded.mean, loaded.std).unsqueeze(0)
            y = mask_to_tensor(sample.mask).unsqueeze(0)
            preds = [
                forward_full(model, x, net=net, input_scale=scale).argmax(1)
                for net in (None, int8_net)
            ]
            for cm, pred in zip(cms, preds, strict=True):
                cm += confusion_matrix(pred, y, c, classes.ignore_index)
            same += int((preds[0] == preds[1]).sum())
            total += preds[0].numel()
    s32, s8 = scores(cms[0]), scores(cms[1])
    return {
        "split": "val",
        "images": len(indices),
        "miou_float": s32["mean_iou"],
        "miou_int8": s8["mean_iou"],
        "miou_change": s8["mean_iou"] - s32["mean_iou"],
        "pixel_accuracy_float": s32["pixel_accuracy"],
        "pixel_accuracy_int8": s8["pixel_accuracy"],
        "argmax_agreement": same / max(1, total),
    }


def export_int8(
    run: str | Path,
    out: str | Path,
    checkpoint: str = "best",
    *,
    calibration_images: int = 32,
    tolerance: float = INT8_TOLERANCE,
    check_images: int | None = None,
    fmt: str = "onnx",
    quant_format: str = "qdq",
    progress: Any = None,
) -> Int8Report:
    """Export ``RUN``'s ``checkpoint`` as an int8 ONNX file at ``out``, accuracy-checked.

    The float export (verified as :func:`export_run`'s) is quantized statically
    (:func:`pixelwise.export_formats.quantize_onnx`: QDQ, per-channel int8 weights, uint8
    activations) with ranges from ``calibration_images`` training images preprocessed as
    prediction does them; then the float model and the int8 file predict the validation split
    (:func:`int8_check`). When the int8 mean IoU is more than ``tolerance`` below the float
    one, ``ConfigError`` gives the numbers and nothing is written. Otherwise ``out`` gets the
    file with the run's metadata and the check (``pixelwise_int8_check``), and the same file
    is kept as ``RUN/<checkpoint>.int8.onnx`` (or in the user cache when the run folder is
    read-only), where ``--engine onnxruntime-int8`` and ``auto`` find it.
    """
    import math
    import tempfile

    from pixelwise.engines import OnnxRuntimeEngine, int8_cache_paths, int8_record
    from pixelwise.export_formats import quantize_onnx, set_onnx_metadata
    from pixelwise.files import atomic_open
    from pixelwise.runs import checkpoint_path, load_run

    if fmt != "onnx":
        raise ConfigError(f"--int8: needs --format onnx, got --format {fmt}")
    if not (math.isfinite(tolerance)):
        raise ConfigError(f"--int8-tolerance: must be a finite number, got {tolerance}")
    if check_images is not None and check_images < 1:
        raise ConfigError(f"--check-images: must be at least 1, got {check_images}")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name such as model.int8.onnx")
    loaded = load_run(run, checkpoint, device="cpu")
    calibration, data = calibration_inputs(loaded, calibration_images)
    with tempfile.TemporaryDirectory(prefix="pixelwise-int8-") as tmpdir:
        fp32, int8 = Path(tmpdir) / "float.onnx", Path(tmpdir) / "int8.onnx"
        export_run(run, fp32, "onnx", checkpoint)
        quantize_onnx(fp32, int8, calibration, fmt=quant_format)
        check = int8_check(loaded, OnnxRuntimeEngine(int8), check_images, progress)
        check.update(
            tolerance=tolerance, data=data, calibration_split="train", quant_format=quant_format,
            calibration_images=len(calibration), passed=check["miou_change"] >= -tolerance,
        )  # fmt: skip
        if not check["passed"]:
            raise ConfigError(
                f"--int8-tolerance {tolerance:g}: the int8 model loses "
                f"{-100 * check['miou_change']:.2f} points of mean IoU on {check['images']} "
                f"val image(s) of {data} ({check['miou_float']:.4f} -> {check['miou_int8']:.4f}"
                f", argmax agreement {100 * check['argmax_agreement']:.2f}%); nothing was "
                "written (use the float export, or raise --int8-tolerance)"
            )
        meta = run_metadata(loaded, checkpoint, min_input_size(loaded.model))
        props = {k: json.dumps(v) for k, v in meta.items()}
        ckpt = _checkpoint_file(Path(run), checkpoint, checkpoint_path)
        props.update(int8_record(ckpt, Path(run) / "config.json", check))
        set_onnx_metadata(int8, props)
        data_bytes, float_bytes = int8.read_bytes(), fp32.stat().st_size
    with atomic_open(out, "wb") as f:
        f.write(data_bytes)
    cached = None
    for target in int8_cache_paths(run, checkpoint):
        try:
            with atomic_open(target, "wb") as f:
                f.write(data_bytes)
        except OSError:
            continue
        cached = target
        break
    return Int8Report(out, loaded.config["model"]["name"], len(data_bytes), float_bytes, check,
                      cached)  # fmt: skip


def _checkpoint_file(run: Path, which: str, checkpoint_path: Any) -> Path:
    path = checkpoint_path(run, which)
    return path if path.is_file() or which != "best" else checkpoint_path(run, "last")

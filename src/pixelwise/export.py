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
    "ScatterUnpool",
    "export_onnx",
    "export_run",
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

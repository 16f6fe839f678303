"""What a run directory shows of training: metrics.csv rows, curves and overlays, the summary."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from pixelwise.files import atomic_open

__all__ = ["TensorBoardLog", "metrics_row", "pictures", "row_start", "write_csv"]


def row_start(epoch: int, step: int, lr: float, train_loss: float, val_loss: float) -> dict:
    """The first columns of every task's metrics.csv row."""
    return {
        "epoch": epoch,
        "step": step,
        "lr": f"{lr:.6g}",
        "train_loss": f"{train_loss:.6f}",
        "val_loss": f"{val_loss:.6f}",
    }


def metrics_row(
    epoch: int, step: int, lr: float, train_loss: float, val: Any, seconds: float
) -> dict[str, Any]:
    """One metrics.csv row: the epoch's losses, the validation scores and per-class IoU."""
    s = val.scores
    return {
        **row_start(epoch, step, lr, train_loss, val.loss),
        "val_pixel_accuracy": f"{s['pixel_accuracy']:.6f}",
        "val_mean_accuracy": f"{s['mean_accuracy']:.6f}",
        "val_mean_iou": f"{s['mean_iou']:.6f}",
        "val_fw_iou": f"{s['fw_iou']:.6f}",
        **{f"val_iou_{c}": ("" if math.isnan(v) else f"{v:.6f}") for c, v in enumerate(s["iou"])},
        "time_s": f"{seconds:.1f}",
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path) as f:
        f.write(buf.getvalue())


def pictures(out: Path, rows, classes, examples, epoch: int) -> None:
    """curves.png (class colours, as in the overlays) and overlays/epoch_NNN.png."""
    from pixelwise.plots import plot_curves, plot_examples

    plot_curves(rows, classes, out / "curves.png")
    if examples:
        images, truths, preds = zip(*examples, strict=True)
        plot_examples(
            images,
            truths,
            preds,
            classes,
            out / "overlays" / f"epoch_{epoch:03d}.png",
            title=f"validation, epoch {epoch}",
        )


class TensorBoardLog:
    """``--tensorboard``: each validated epoch's metrics row (losses, scores, per-class IoU,
    learning rate) as scalars at its optimizer step, and its overlay picture as an image, in
    ``RUN/tensorboard/`` (a resumed run appends a new event file; TensorBoard merges them)."""

    def __init__(self, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from pixelwise.errors import ConfigError

            raise ConfigError(
                "--tensorboard: the tensorboard package is not installed; "
                "pip install 'pixelwise[tensorboard]' or drop --tensorboard"
            ) from None
        self._writer_class = SummaryWriter
        self.folder = out / "tensorboard"
        self._writer: Any = None

    def epoch(self, row: dict[str, Any], classes, overlay: Path | None) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.folder))
        step = int(row["step"])
        for key, value in row.items():
            if key in ("epoch", "step", "time_s") or value == "":
                continue
            if key.startswith("val_iou_"):
                name = f"val_iou/{classes.names[int(key[len('val_iou_') :])]}"
            else:
                name = key.replace("val_", "val/", 1) if key.startswith("val_") else key
            self._writer.add_scalar(name, float(value), step)
        if overlay is not None and overlay.is_file():
            import numpy as np
            from PIL import Image

            with Image.open(overlay) as im:
                picture = np.asarray(im.convert("RGB"))
            self._writer.add_image("val/overlays", picture, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

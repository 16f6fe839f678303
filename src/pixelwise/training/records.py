"""What a run directory shows of training: metrics.csv rows, curves and overlays, the summary."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from pixelwise.files import atomic_open

__all__ = ["metrics_row", "pictures", "write_csv"]


def metrics_row(
    epoch: int, step: int, lr: float, train_loss: float, val: Any, seconds: float
) -> dict[str, Any]:
    """One metrics.csv row: the epoch's losses, the validation scores and per-class IoU."""
    s = val.scores
    return {
        "epoch": epoch,
        "step": step,
        "lr": f"{lr:.6g}",
        "train_loss": f"{train_loss:.6f}",
        "val_loss": f"{val.loss:.6f}",
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

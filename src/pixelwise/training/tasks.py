"""What the training loop learns (``--task``): the few steps that differ between segmentation
and colourization, each one small function, so that ``loop.py`` reads the same for both.

A task says: which data it opens, how a batch becomes (model input, target), the loss, the
validation pass and its scores, which score picks the ``best`` checkpoint, the metrics row, the
pictures and the one-line epoch report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from pixelwise.data.transforms import default_normalization
from pixelwise.evaluate import evaluate_dataset
from pixelwise.losses import pixel_cross_entropy, soft_dice_loss
from pixelwise.training.records import metrics_row, pictures, row_start

TASKS = ("segment", "colorize")


class Segment:
    """Pixel classification: cross-entropy (+ Dice), mean IoU picks ``best``."""

    name = "segment"
    best_key = "mean_iou"  # the score that picks ``best`` (higher is better)

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return default_normalization(channels)

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch -> (model input, target): as it is."""
        return x, y

    def loss(self, t: Any, out: torch.Tensor, y: torch.Tensor, pixel_weights=None):
        """Masked (weighted) cross-entropy of logits ``(N, C, H, W)`` against ``y (N, H, W)``,
        plus soft Dice with ``--loss dice-ce``."""
        ignore, border = t.data.classes.ignore_index, t.core.border or None
        loss = pixel_cross_entropy(
            out,
            y,
            t.class_weights if pixel_weights is None else None,
            pixel_weights=pixel_weights,
            ignore_index=ignore,
            border=border,
        )
        if t.config.loss == "dice-ce":
            loss = loss + soft_dice_loss(out, y, ignore_index=ignore, border=border)
        return loss

    def evaluate(self, t: Any, keep: int = 0, progress=None) -> Any:
        return evaluate_dataset(
            t.core, t.data.val, t.mean, t.std, t.device, t.class_weights,
            keep_examples=keep, progress=progress, shard=(t.dist.rank, t.dist.world_size),
            input_scale=t.config.input_scale,
        )  # fmt: skip

    def score(self, val: Any) -> float:
        value = val.scores[self.best_key]
        return 0.0 if math.isnan(value) else value

    def row(self, epoch: int, step: int, lr: float, train_loss: float, val: Any, seconds: float):
        return metrics_row(epoch, step, lr, train_loss, val, seconds)

    def pictures(self, out: Path, rows, classes, examples, epoch: int) -> None:
        pictures(out, rows, classes, examples, epoch)

    def report(self, val: Any) -> str:
        return (
            f"pixel acc {val.scores['pixel_accuracy']:.4f}, mean IoU {val.scores['mean_iou']:.4f}"
        )

    def summary(self, rows: list[dict[str, Any]], best: float) -> dict[str, Any]:
        keys = ("val_mean_iou", "val_pixel_accuracy", "train_loss")
        return {"best_mean_iou": best, "last": {k: rows[-1][k] for k in keys}}


class Colorize(Segment):
    """Colourization (:mod:`pixelwise.colorize`): L in, ab out, smooth L1, PSNR picks ``best``."""

    name = "colorize"
    best_key = "psnr"

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # the loader's images stay RGB in [0, 1]

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB ``(N, 3, H, W)`` -> (``(L - 50) / 50`` ``(N, 1, H, W)``, ``ab / 110``
        ``(N, 2, H, W)``); the mask ``y`` (all zeros) is not used."""
        from pixelwise.colorize import lightness_and_ab

        return lightness_and_ab(x)

    def loss(self, t: Any, out: torch.Tensor, y: torch.Tensor, pixel_weights=None):
        from pixelwise.colorize import colorization_loss

        return colorization_loss(out, y)

    def evaluate(self, t: Any, keep: int = 0, progress=None) -> Any:
        from pixelwise.colorize import evaluate_colorization

        return evaluate_colorization(
            t.core, t.data.val, t.device, keep_examples=keep, progress=progress,
            input_scale=t.config.input_scale, shard=(t.dist.rank, t.dist.world_size),
        )  # fmt: skip

    def row(self, epoch: int, step: int, lr: float, train_loss: float, val: Any, seconds: float):
        s = val.scores
        return {
            **row_start(epoch, step, lr, train_loss, val.loss),
            "val_psnr": f"{s['psnr']:.4f}",
            "val_psnr_grey": f"{s['psnr_grey']:.4f}",
            "val_ab_error": f"{s['ab_error']:.4f}",
            "time_s": f"{seconds:.1f}",
        }

    def pictures(self, out: Path, rows, classes, examples, epoch: int) -> None:
        from pixelwise.colorize import write_pictures

        write_pictures(out, rows, examples, epoch)

    def report(self, val: Any) -> str:
        s = val.scores
        return (
            f"PSNR {s['psnr']:.2f} dB (grey {s['psnr_grey']:.2f} dB), ab error {s['ab_error']:.2f}"
        )

    def summary(self, rows: list[dict[str, Any]], best: float) -> dict[str, Any]:
        keys = ("val_psnr", "val_ab_error", "train_loss")
        return {"best_psnr": best, "last": {k: rows[-1][k] for k in keys}}


def task_for(name: str) -> Segment:
    """The task object of ``--task NAME``."""
    return Colorize() if name == "colorize" else Segment()

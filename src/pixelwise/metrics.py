"""Evaluation from one confusion matrix: the FCN paper's four metrics, per-class IoU and Dice.

Everything is derived from a single ``num_classes x num_classes`` confusion matrix ``cm`` whose
row is the true class and column the predicted class (``cm[t, p]`` counts pixels of class ``t``
predicted as ``p``). With ``n_ij = cm[i, j]``, ``t_i = sum_j n_ij`` (pixels of class i) and
``p_j = sum_i n_ij`` (pixels predicted as j), Long et al. (2015) define

* pixel accuracy      ``sum_i n_ii / sum_i t_i``
* mean accuracy       ``(1/n_cl) sum_i n_ii / t_i``
* mean IoU            ``(1/n_cl) sum_i n_ii / (t_i + p_i - n_ii)``
* frequency-weighted IoU ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + p_i - n_ii)``

and Dice is ``2 n_ii / (t_i + p_i)``. A class that appears neither in the ground truth nor in the
prediction has no IoU (0/0): it is reported as ``nan`` ("absent") and left out of every mean,
never counted as 0 or 1. A class present in the prediction only has IoU 0 and counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["confusion_matrix", "format_scores", "scores"]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Count (true, predicted) class pairs.

    Args:
        pred: predicted class indices, any shape (e.g. ``(N, H, W)``), integer.
        target: true class indices, same shape; pixels equal to ``ignore_index`` are skipped.
        num_classes: number of classes C.
        ignore_index: label of unlabeled pixels.

    Returns:
        ``(C, C)`` int64 tensor on ``pred``'s device; rows are true classes, columns predictions.

    Raises:
        ValueError: shapes differ, or a non-ignored target or a prediction is outside ``[0, C)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            bad = hi if hi >= num_classes else lo
            raise ValueError(
                f"target label {bad} outside the {num_classes} classes "
                f"(0..{num_classes - 1}; {ignore_index} = ignore)"
            )
        lo, hi = int(pred.min()), int(pred.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"predicted label outside 0..{num_classes - 1}")
    index = target * num_classes + pred
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def scores(cm: torch.Tensor | Sequence[Sequence[int]]) -> dict:
    """Metrics from a confusion matrix (rows = truth, columns = prediction).

    Returns a dict with ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``fw_iou`` (floats),
    ``iou``, ``accuracy``, ``dice`` (per-class lists; ``nan`` where undefined), ``present``
    (per-class bool: the class occurs in ground truth or prediction) and ``support`` (labelled
    pixels per class). ``mean_accuracy`` averages over classes present in the ground truth;
    ``mean_iou`` over classes present in ground truth or prediction.
    """
    cm = torch.as_tensor(cm, dtype=torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {tuple(cm.shape)}")
    tp = cm.diagonal()
    t = cm.sum(dim=1)  # pixels truly of each class
    p = cm.sum(dim=0)  # pixels predicted as each class
    union = t + p - tp
    total = float(t.sum())

    def ratio(num: torch.Tensor, den: torch.Tensor) -> list[float]:
        return [float(n / d) if d > 0 else math.nan for n, d in zip(num, den, strict=True)]

    iou = ratio(tp, union)
    acc = ratio(tp, t)
    dice = ratio(2 * tp, t + p)
    fw = (
        sum(float(ti) * v for ti, v in zip(t, iou, strict=True) if ti > 0) / total
        if total > 0
        else math.nan
    )
    return {
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_accuracy": _nanmean(acc),
        "mean_iou": _nanmean(iou),
        "fw_iou": fw,
        "iou": iou,
        "accuracy": acc,
        "dice": dice,
        "present": [bool(u > 0) for u in union],
        "support": [int(v) for v in t],
    }


def format_scores(result: dict, class_names: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per class (IoU, accuracy, Dice, pixels), then the summary."""
    n = len(result["iou"])
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(n)]
    width = max(12, *(len(s) for s in names))

    def fmt(v: float) -> str:
        return "  absent" if math.isnan(v) else f"{v:8.4f}"

    lines = [f"{'class':<{width}}  {'IoU':>8}  {'acc':>8}  {'Dice':>8}  {'pixels':>12}"]
    for i in range(n):
        lines.append(
            f"{names[i]:<{width}}  {fmt(result['iou'][i])}  {fmt(result['accuracy'][i])}  "
            f"{fmt(result['dice'][i])}  {result['support'][i]:>12,}"
        )
    lines.append("")
    for key, label in (
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_accuracy", "mean accuracy"),
        ("mean_iou", "mean IoU"),
        ("fw_iou", "frequency-weighted IoU"),
    ):
        lines.append(f"{label:<24}{fmt(result[key]).strip():>10}")
    return "\n".join(lines)

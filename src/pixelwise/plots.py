"""Pictures: overlays, training curves, confusion matrices, example grids, weight maps.

One palette per dataset (its ``ClassInfo.colors``) is used everywhere, so a class has the same
colour in an overlay, a legend and a mask PNG. Figures are written atomically with matplotlib's
non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from pixelwise.data.classes import ClassInfo  # noqa: E402
from pixelwise.errors import ConfigError  # noqa: E402
from pixelwise.files import atomic_path  # noqa: E402

__all__ = [
    "colorize",
    "overlay",
    "plot_class_frequencies",
    "plot_confusion",
    "plot_curves",
    "plot_examples",
    "plot_weight_map",
    "write_weight_maps",
]

IGNORE_COLOR = (224, 224, 192)


def colorize(mask: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """``(H, W)`` labels -> ``(H, W, 3)`` uint8 colours (ignored pixels in VOC's cream)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: classes.num_classes] = np.asarray(classes.colors, dtype=np.uint8)
    lut[classes.ignore_index] = IGNORE_COLOR
    return lut[mask]


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def overlay(
    image: np.ndarray, mask: np.ndarray, classes: ClassInfo, alpha: float = 0.5
) -> np.ndarray:
    """Blend class colours over an image ``(H, W, C)`` uint8; background-free classes only.

    Class 0 is blended too (its colour is usually black, which darkens the background): the
    overlay shows every pixel's label. Ignored pixels are left as they are.
    """
    rgb = _rgb(image).astype(np.float32)
    colours = colorize(mask, classes).astype(np.float32)
    out = rgb * (1 - alpha) + colours * alpha
    keep = mask == classes.ignore_index
    out[keep] = rgb[keep]
    return out.round().clip(0, 255).astype(np.uint8)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_curves(
    rows: Sequence[dict], class_names: Sequence[str] | ClassInfo, path: str | Path
) -> Path:
    """Training curves from ``metrics.csv`` rows: loss, pixel accuracy / mIoU, IoU per class.

    Given a ``ClassInfo``, each class's IoU curve is drawn in the class's own colour (outlined in
    grey, so black or white classes stay visible), as in the overlays and masks; given names only,
    in matplotlib's tab20 colours.
    """
    colors = None
    if isinstance(class_names, ClassInfo):
        colors = [np.asarray(c, dtype=np.float64) / 255 for c in class_names.colors]
        class_names = class_names.names
    epochs = [int(r["epoch"]) for r in rows]

    def col(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, col("train_loss"), "o-", label="train loss")
    if any(not math.isnan(v) for v in col("val_loss")):
        axes[0].plot(epochs, col("val_loss"), "s-", label="val loss")
    axes[0].set(title="Loss", xlabel="epoch")
    axes[0].legend()
    for key, label in (
        ("val_mean_iou", "mean IoU"),
        ("val_pixel_accuracy", "pixel accuracy"),
        ("val_mean_accuracy", "mean accuracy"),
        ("val_fw_iou", "freq.-weighted IoU"),
    ):
        axes[1].plot(epochs, col(key), "o-", label=label)
    axes[1].set(title="Validation", xlabel="epoch", ylim=(0, 1))
    axes[1].legend(loc="best")
    cmap = plt.get_cmap("tab20")
    outline = [patheffects.Stroke(linewidth=3.2, foreground="0.55"), patheffects.Normal()]
    for i, name in enumerate(class_names):
        key = f"val_iou_{i}"
        if key in rows[0]:
            if colors is None:
                axes[2].plot(epochs, col(key), "-", color=cmap(i % 20), label=name)
            else:
                axes[2].plot(
                    epochs,
                    col(key),
                    "-",
                    color=colors[i],
                    lw=1.8,
                    label=name,
                    path_effects=outline,
                )
    axes[2].set(title="Validation IoU per class", xlabel="epoch", ylim=(0, 1))
    if class_names:  # beside the plot: low IoU curves are where a legend inside would sit
        ncol = 1 if len(class_names) <= 14 else 2
        axes[2].legend(fontsize=7, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (each true class sums to 1), counts in the cells."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (row-normalised)")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j] > 0:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_examples(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray | None],
    preds: Sequence[np.ndarray],
    classes: ClassInfo,
    path: str | Path,
    title: str = "",
) -> Path:
    """A grid with one row per example: image | ground truth | prediction overlay, plus legend."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(10, 3.2 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(_rgb(images[r]))
        if truths[r] is not None:
            axes[r, 1].imshow(colorize(truths[r], classes), interpolation="nearest")
        axes[r, 2].imshow(overlay(images[r], preds[r], classes, 0.6), interpolation="nearest")
        for c, label in enumerate(("image", "ground truth", "prediction")):
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(label)
    present = sorted(
        {int(v) for p in preds for v in np.unique(p)}
        | {int(v) for t in truths if t is not None for v in np.unique(t)}
    )
    handles = [
        Patch(color=np.asarray(classes.colors[i]) / 255, label=classes.names[i])
        for i in present
        if i < classes.num_classes
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(6, max(1, len(handles))),
        bbox_to_anchor=(0.5, -0.02),
    )
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_class_frequencies(
    counts: Sequence[int], classes: ClassInfo, path: str | Path, title: str = ""
) -> Path:
    """Bar chart of each class's share of the labelled pixels, bars in the class colours
    (outlined, so white or black classes stay visible); the share is printed on each bar."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    share = 100 * counts / total if total > 0 else np.zeros_like(counts)
    n = classes.num_classes
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * n + 2), 4))
    colours = np.asarray(classes.colors, dtype=np.float64) / 255
    bars = ax.bar(range(n), share, color=colours, edgecolor="black", linewidth=0.8)
    for bar, value in zip(bars, share, strict=True):
        ax.annotate(
            f"{value:.1f}%" if value >= 0.1 else f"{value:.2f}%",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    rotation, align = (45, "right") if n > 6 else (0, "center")
    ax.set_xticks(range(n), classes.names, rotation=rotation, ha=align)
    ax.set(ylabel="share of labelled pixels (%)", title=title or "Class pixel frequencies")
    ax.set_ylim(0, max(1.0, float(share.max()) * 1.15) if n else 1.0)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_weight_map(
    image: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    classes: ClassInfo,
    path: str | Path,
    title: str = "",
) -> Path:
    """Image | labels | per-pixel loss weight as a heatmap with a colour bar (ignored pixels,
    weight 0, are black)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    axes[0].imshow(_rgb(image))
    axes[0].set_title("image")
    axes[1].imshow(colorize(mask, classes), interpolation="nearest")
    axes[1].set_title("labels")
    im = axes[2].imshow(weights, cmap="magma", vmin=0, interpolation="nearest")
    axes[2].set_title(f"weight (max {float(np.max(weights)):.2f})")
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def write_weight_maps(
    dataset,
    out: str | Path,
    w0: float = 10.0,
    sigma: float = 5.0,
    limit: int | None = None,
    progress: Callable[[Iterable], Iterator] | None = None,
) -> list[Path]:
    """Render the weight map of the first ``limit`` (default all) items of ``dataset`` as PNG
    heatmaps (image | labels | weights), one file ``OUT/<name>_weights.png`` per image
    (the maps are :class:`~pixelwise.data.weights.BorderWeights`)."""
    from pixelwise.data.weights import BorderWeights  # scipy: imported only when drawing maps

    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"--limit: must be a positive number of images, got {limit!r}")
    maps = BorderWeights(w0, sigma, ignore_index=dataset.classes.ignore_index, cache=False)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    written = []
    indices = range(n)
    for i in progress(indices) if progress else indices:
        sample = dataset[i]
        weights = maps(i, sample.mask)
        name = re.sub(r"[^\w.-]+", "_", str(sample.name)) or f"{i:05d}"
        title = f"{sample.name}: U-Net weight map, w0={w0:g}, sigma={sigma:g} px"
        written.append(
            plot_weight_map(
                sample.image,
                sample.mask,
                weights,
                dataset.classes,
                Path(out) / f"{name}_weights.png",
                title,
            )
        )
    return written

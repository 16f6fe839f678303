"""Class heatmaps from a patch classifier: the API behind ``pixelwise heatmap``.

A LeNet-style classifier (:func:`pixelwise.dense.lenet`) learns to name what is at the centre of
a 32 x 32 patch of the digits scenes: ``background`` or a digit (the 11 segmentation classes).
:func:`heatmap` convolutionalizes it and runs it once over a whole image: per-class probability
maps at stride 4 (one per window, like seed 002's "castle" / "wheel" heatmaps), optionally the
à trous map of every window, and an image-sized argmax mask (each window labels its centre).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from pixelwise import __version__
from pixelwise.data import DIGITS_CLASSES, ClassInfo, DigitsScenes, read_image, write_mask
from pixelwise.data.transforms import default_normalization, to_tensor
from pixelwise.dense import atrous, convolutionalize, lenet
from pixelwise.errors import ConfigError
from pixelwise.files import atomic_path, write_json
from pixelwise.models.classifier import CLASSIFIER_FILE, META_FILE, has_patch_classifier
from pixelwise.runs import load_weights

__all__ = [
    "CLASSIFIER_FILE",
    "META_FILE",
    "default_image",
    "has_patch_classifier",
    "heatmap",
    "heatmap_command",
    "load_patch_classifier",
    "train_patch_classifier",
    "write_heatmap_figure",
]

FORMAT = "pixelwise-patch-classifier"
PATCH = 32
DIGIT_SIZE = (16, 26)  # digit heights (pixels) in the training scenes and the default image
JITTER = 4  # a window is digit d when d's box centre is within 4 pixels of its centre
FAR = 10  # ... and background when every digit centre is 10 or more pixels away


# --------------------------------------------------------------------------- patches


def _digit_centres(mask: np.ndarray) -> list[tuple[float, float, int]] | None:
    """(y, x, class) of each digit's box centre, or None when a class covers a box too large
    for one digit (two digits of that class: their centres are unknown)."""
    centres = []
    for label in np.unique(mask)[1:]:
        ys, xs = np.nonzero(mask == label)
        if max(np.ptp(ys), np.ptp(xs)) > DIGIT_SIZE[1] * 1.25:
            return None
        centres.append(((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2, int(label)))
    return centres


def _scene_patches(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, n_digit: int, n_background: int
) -> tuple[list[np.ndarray], list[int]]:
    """Patches of one scene. A window is labelled with digit d when d's centre is within
    ``JITTER`` pixels of the window's centre (``n_digit`` per digit), and ``background`` when
    every digit centre is at least ``FAR`` pixels away (``n_background``, half of them near a
    digit so that partly visible digits count as background). Scenes with two digits of one
    class give no patches."""
    h, w = mask.shape
    centres = _digit_centres(mask)
    if centres is None or h < PATCH or w < PATCH:
        return [], []
    oh, ow = h - PATCH + 1, w - PATCH + 1
    patches, labels = [], []

    def take(y: int, x: int, label: int) -> None:
        patches.append(image[y : y + PATCH, x : x + PATCH])
        labels.append(label)

    half = (PATCH - 1) / 2  # window (y, x) is centred at (y + half, x + half)
    for cy, cx, label in centres:
        for dy, dx in rng.integers(-JITTER, JITTER + 1, size=(n_digit, 2)):
            y, x = round(cy + dy - half), round(cx + dx - half)
            if 0 <= y < oh and 0 <= x < ow:
                take(y, x, label)
    # Chebyshev distance from every window centre to the nearest digit centre
    dist = np.full((oh, ow), np.inf)
    ys, xs = np.arange(oh)[:, None] + half, np.arange(ow)[None, :] + half
    for cy, cx, _ in centres:
        dist = np.minimum(dist, np.maximum(np.abs(ys - cy), np.abs(xs - cx)))
    near = np.flatnonzero((dist >= FAR) & (dist < 2 * FAR))
    far = np.flatnonzero(dist >= FAR)
    for pool, n in ((near, n_background // 2), (far, n_background - n_background // 2)):
        for k in rng.choice(pool, size=min(n, len(pool)), replace=False):
            take(*divmod(int(k), ow), 0)
    return patches, labels


def _patch_set(split: str, num_scenes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, PATCH, PATCH) patches and int64 (N,) labels cut from digits scenes."""
    scenes = DigitsScenes(
        split,
        seed=seed,
        num_images=num_scenes,
        min_size=64,
        max_size=112,
        digits_per_image=(2, 6),
        digit_size=DIGIT_SIZE,
    )
    rng = np.random.default_rng([seed, 4242, 0 if split == "train" else 1])
    patches: list[np.ndarray] = []
    labels: list[int] = []
    for i in range(num_scenes):
        image, mask, _ = scenes.compose(i)
        p, lab = _scene_patches(image, mask, rng, n_digit=8, n_background=4)
        patches += p
        labels += lab
    if not patches:
        raise ConfigError(f"no training patches in {num_scenes} {split} scenes; use more scenes")
    x = torch.from_numpy(np.stack(patches).transpose(0, 3, 1, 2).copy())
    return x, torch.tensor(labels, dtype=torch.int64)


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1024):
        correct += int(
            (model(_normalize(x[i : i + 1024], mean, std)).argmax(1) == y[i : i + 1024]).sum()
        )
    return correct / max(1, len(x))


# --------------------------------------------------------------------------- train / load


def train_patch_classifier(
    out_dir: str | Path,
    epochs: int = 6,
    seed: int = 0,
    progress: Callable[..., Any] | None = None,
    num_scenes: int = 1500,
) -> Path:
    """Train the LeNet-style patch classifier on digits-scene patches; return ``out_dir``.

    Patches (32 x 32, RGB) are cut from ``num_scenes`` train scenes (training digits only,
    digits 16-26 pixels tall, rendered by :class:`DigitsScenes`): a window is digit ``d`` when
    ``d``'s centre is within 4 pixels of the window's centre, ``background`` when every digit
    centre is 10 or more pixels away (partly visible digits included); windows in between are
    not used. Val accuracy: on patches of 150 val scenes (unseen handwriting). Writes
    ``classifier.safetensors`` (weights) and ``classifier.json`` (architecture, patch size,
    classes, normalisation, accuracies), both atomically. ``progress``: a tqdm-like factory
    ``progress(total=, desc=, unit=)``, one bar per epoch. With the defaults: about 15,000
    patches, 25 s with one torch thread, val accuracy about 0.93.
    """
    for name, value in (("epochs", epochs), ("num_scenes", num_scenes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    out = Path(out_dir)
    start = time.perf_counter()
    x, y = _patch_set("train", num_scenes, seed)
    xv, yv = _patch_set("val", 150, seed)
    mean, std = default_normalization(3)
    arch = {
        "num_classes": DIGITS_CLASSES.num_classes,
        "in_channels": 3,
        "padding": 0,
        "input_size": PATCH,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = lenet(**arch)
    gen = torch.Generator().manual_seed(seed)
    batch = 64
    steps = epochs * math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        bar = (
            progress(total=len(order), desc=f"patches {epoch}/{epochs}", unit="patch")
            if progress
            else None
        )
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(_normalize(x[idx], mean, std)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
    model.eval()
    meta = {
        "format": FORMAT,
        "pixelwise": __version__,
        "architecture": {"name": "lenet", "kwargs": arch},
        "patch_size": PATCH,
        "classes": DIGITS_CLASSES.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "digit_size": list(DIGIT_SIZE),
        "labels": f"digit d: d's centre within {JITTER} px of the window centre; background: "
        f"every digit centre >= {FAR} px away",
        "train_accuracy": round(_accuracy(model, x, y, mean, std), 4),
        "val_accuracy": round(_accuracy(model, xv, yv, mean, std), 4),
        "train_patches": len(x),
        "val_patches": len(xv),
        "epochs": epochs,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / CLASSIFIER_FILE) as tmp:
        save_file(state, str(tmp), metadata={"pixelwise": __version__})
    write_json(out / META_FILE, meta)
    return out


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: invalid patch classifier description: {what}")


def load_patch_classifier(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, meta dict from classifier.json)`` of ``run_dir``; a missing or
    corrupt file gives a ConfigError naming it."""
    run = Path(run_dir)
    meta_path = run / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: patch classifier description is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{meta_path}: not readable JSON ({err})") from None
    _need(
        isinstance(meta, dict) and meta.get("format") == FORMAT,
        meta_path,
        f"format is not {FORMAT!r}",
    )
    arch = meta.get("architecture")
    _need(isinstance(arch, dict) and arch.get("name") == "lenet", meta_path, "architecture")
    _need(isinstance(arch.get("kwargs"), dict), meta_path, "architecture kwargs")
    _need(
        isinstance(meta.get("patch_size"), int) and meta["patch_size"] > 0, meta_path, "patch_size"
    )
    norm = meta.get("normalization")
    _need(isinstance(norm, dict) and {"mean", "std"} <= set(norm), meta_path, "normalization")
    try:
        classes = ClassInfo.from_dict(meta.get("classes"))
        model = lenet(**arch["kwargs"])
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{meta_path}: invalid patch classifier description: {err}") from None
    _need(
        classes.num_classes == arch["kwargs"].get("num_classes"),
        meta_path,
        "classes vs num_classes",
    )
    weights = run / CLASSIFIER_FILE
    state = load_weights(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(
            f"{weights}: weights do not fit the architecture in {META_FILE} ({first})"
        ) from None
    return model.eval(), meta


# --------------------------------------------------------------------------- heatmaps


def heatmap(
    source: str | Path | tuple[nn.Module, dict[str, Any]],
    image: np.ndarray,
    full_resolution: bool = True,
) -> dict[str, Any]:
    """Class heatmaps of ``image`` (uint8 (H, W, 3) or (H, W, 1)) from a patch classifier.

    ``source``: a run directory or ``load_patch_classifier``'s ``(model, meta)``. The classifier
    is convolutionalized and run once over the whole image. Returns a dict:

    - ``probs``: float32 (K, h, w) softmax at stride ``stride``; ``[k, i, j]`` is class ``k``'s
      probability for the window with top-left ``(i * stride, j * stride)``
    - ``argmax``: uint8 (h, w) of those
    - ``probs_full``, ``argmax_full``: the same for every window ((K, H - p + 1, W - p + 1),
      one à trous pass), or None without ``full_resolution``
    - ``mask``: uint8 (H, W): each window's label on its centre pixel ``(y + p // 2, x + p // 2)``
      (from the full map, else the nearest stride-``stride`` window); 255 where no window is
      centred (a ``p // 2`` border)
    - ``stride``, ``window`` (``p``), ``classes`` (ClassInfo), ``meta``
    """
    model, meta = load_patch_classifier(source) if isinstance(source, str | Path) else source
    classes = ClassInfo.from_dict(meta["classes"])
    p = int(meta["patch_size"])
    norm = meta["normalization"]
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ConfigError(f"image must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    if h < p or w < p:
        raise ConfigError(f"image {h}x{w} is smaller than the classifier's {p}x{p} patches")
    x = to_tensor(a, norm["mean"], norm["std"])[None]
    fcn = convolutionalize(model, p).eval()
    oh, ow = (h - p) // fcn.stride[0] + 1, (w - p) // fcn.stride[1] + 1
    with torch.inference_mode():
        probs = fcn(x)[0, :, :oh, :ow].softmax(0).numpy()
        full = atrous(fcn)(x)[0].softmax(0).numpy() if full_resolution else None
    mask = np.full((h, w), classes.ignore_index, dtype=np.uint8)
    c = p // 2
    if full is not None:
        mask[c : c + h - p + 1, c : c + w - p + 1] = full.argmax(0)
    else:
        iy = np.clip(np.rint(np.arange(h - p + 1) / fcn.stride[0]).astype(int), 0, oh - 1)
        ix = np.clip(np.rint(np.arange(w - p + 1) / fcn.stride[1]).astype(int), 0, ow - 1)
        mask[c : c + h - p + 1, c : c + w - p + 1] = probs.argmax(0)[np.ix_(iy, ix)]
    return {
        "probs": probs.astype(np.float32),
        "argmax": probs.argmax(0).astype(np.uint8),
        "probs_full": None if full is None else full.astype(np.float32),
        "argmax_full": None if full is None else full.argmax(0).astype(np.uint8),
        "mask": mask,
        "stride": fcn.stride,
        "window": (p, p),
        "classes": classes,
        "meta": meta,
    }


def write_heatmap_figure(result: dict[str, Any], image: np.ndarray, path: str | Path) -> Path:
    """One PNG: the input, the argmax labels over it (class colours, legend) and one small panel
    per class with its stride-``stride`` probability map, on a shared 0..1 colour scale and
    aligned with the image (each cell drawn at its window's centre)."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch, Rectangle

    from pixelwise.plots import overlay  # also selects the Agg backend

    classes: ClassInfo = result["classes"]
    probs = result["probs"]
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    h, w = rgb.shape[:2]
    k = probs.shape[0]
    (sy, sx), (py, px) = result["stride"], result["window"]
    ncol = 6
    nrow = math.ceil(k / ncol)
    fig = plt.figure(figsize=(2.3 * ncol, 2.3 * (nrow + 1.6)))
    gs = fig.add_gridspec(nrow + 1, ncol, height_ratios=[2.0] + [1.0] * nrow)
    ax = fig.add_subplot(gs[0, 0:2])
    ax.imshow(rgb)
    ax.set_title(f"input {w}x{h}")
    ax.set_axis_off()
    ax = fig.add_subplot(gs[0, 2:4])
    mask = result["mask"]
    shown = np.where(mask == 0, classes.ignore_index, mask)  # keep background pixels as they are
    ax.imshow(overlay(rgb, shown, classes, alpha=0.7), interpolation="nearest")
    ax.add_patch(
        Rectangle(
            (px // 2 - 0.5, py // 2 - 0.5), w - px + 1, h - py + 1, fill=False, ls="--", lw=0.8
        )
    )
    full = result["argmax_full"] is not None
    how = "every window (à trous)" if full else f"windows every {sy} px"
    ax.set_title(f"argmax at window centres, {how}", fontsize=9)
    ax.set_axis_off()
    ax = fig.add_subplot(gs[0, 4:6])
    ax.set_axis_off()
    handles = [
        Patch(color=np.array(c) / 255, label=n)
        for n, c in zip(classes.names, classes.colors, strict=True)
    ]
    ax.legend(handles=handles, loc="center", ncol=2, fontsize=8, frameon=False, title="classes")
    meta = result["meta"]
    ax.text(
        0.5,
        0.02,
        f"{px}x{py} patch classifier (val acc {meta.get('val_accuracy', float('nan')):.3f})\n"
        f"convolutionalized: one pass, a score every {sy} px",
        ha="center",
        va="bottom",
        fontsize=8,
        transform=ax.transAxes,
    )
    # cell (i, j) is the window centred at (i * sy + (py - 1) / 2, j * sx + (px - 1) / 2)
    oh, ow = probs.shape[1:]
    extent = (
        (px - 1) / 2 - sx / 2,
        (px - 1) / 2 + (ow - 1) * sx + sx / 2,
        (py - 1) / 2 + (oh - 1) * sy + sy / 2,
        (py - 1) / 2 - sy / 2,
    )
    gray = rgb.astype(np.float32).mean(2)
    cmap = plt.get_cmap("inferno")
    for c in range(k):
        ax = fig.add_subplot(gs[1 + c // ncol, c % ncol])
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
        heat = cmap(probs[c])  # colour and opacity both grow with the probability
        heat[..., 3] = 0.2 + 0.8 * probs[c]
        ax.imshow(heat, extent=extent, interpolation="nearest")
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"P({classes.names[c]})  max {probs[c].max():.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    scale = ScalarMappable(Normalize(0, 1), cmap)
    panels = fig.axes[-k:]
    fig.colorbar(scale, ax=panels, fraction=0.015, pad=0.01, label="probability (per window)")
    fig.suptitle("Class heatmaps of a convolutionalized patch classifier", fontsize=12)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=90, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    buf.seek(0)
    path = Path(path)
    with Image.open(buf) as png, atomic_path(path) as tmp:  # 256 colours: a third of the bytes
        png.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(tmp, format="PNG")
    return path


def default_image(meta: dict[str, Any], seed: int = 0) -> np.ndarray:
    """A digits val scene (unseen handwriting), 120-160 pixels a side, digits drawn at the size
    the classifier was trained on: uint8 (H, W, 3)."""
    lo, hi = meta.get("digit_size", DIGIT_SIZE)
    scenes = DigitsScenes(
        "val",
        seed=seed,
        num_images=1,
        min_size=120,
        max_size=160,
        digits_per_image=(5, 8),
        digit_size=(int(lo), int(hi)),
    )
    return scenes.compose(0)[0]


def heatmap_command(
    run: str | None,
    image_path: str | None,
    out_dir: str | Path,
    *,
    epochs: int = 6,
    seed: int = 0,
    progress: Callable[..., Any] | None = None,
    full_resolution: bool = True,
) -> list[Path]:
    """``pixelwise heatmap [RUN] [IMAGE] --out DIR``: heatmaps of IMAGE by RUN's classifier.

    ``run`` None, or a folder without ``classifier.json`` / ``classifier.safetensors``: train
    a classifier into ``out_dir`` first (its two files are returned too). ``image_path`` None: a
    digits val scene. Writes ``out_dir/heatmap.png`` (figure) and ``out_dir/argmax.png``
    (palette mask, 255 = no window centred there); returns the written paths. A bad image path
    raises the DataError of :func:`pixelwise.data.read_image`; a run that does not exist, a
    ConfigError.
    """
    out = Path(out_dir)
    written: list[Path] = []
    if run is not None and not Path(run).is_dir():
        raise ConfigError(f"{run}: no such run directory")
    if image_path is not None:
        image = read_image(image_path, channels=3)
    if run is None or not has_patch_classifier(run):
        train_patch_classifier(out, epochs=epochs, seed=seed, progress=progress)
        written += [out / CLASSIFIER_FILE, out / META_FILE]
        run = str(out)
    model, meta = load_patch_classifier(run)
    if image_path is None:
        image = default_image(meta, seed)
    result = heatmap((model, meta), image, full_resolution=full_resolution)
    written.append(write_heatmap_figure(result, image, out / "heatmap.png"))
    write_mask(out / "argmax.png", result["mask"], result["classes"])
    written.append(out / "argmax.png")
    return written

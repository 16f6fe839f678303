"""Colourization (Iizuka, Simo-Serra & Ishikawa 2016; Larsson, Maire & Shakhnarovich 2017): a
fully convolutional network predicts the chrominance (Lab a, b) of an image from its lightness
L. It needs no labels, so a folder of the user's own colour images pre-trains a segmenter's
weights (``pixelwise train --init-from COLORIZE_RUN``).

Model input: ``(L - 50) / 50`` ``(N, 1, H, W)``; output: ``ab / 110`` ``(N, 2, H, W)``. Loss:
smooth L1 with a small ``beta`` (:data:`BETA`): quadratic for errors under ~5 Lab units, L1
beyond. L2 regresses to the mean colour of the plausible ones (greyish, Zhang et al. 2016);
L1 regresses to their median, less washed out, and a few wildly coloured pixels (a red car in a
grey street) pull less. Scores: PSNR (dB) of the RGB image rebuilt from the true L and the
predicted ab, the same for ab = 0 (the grey image: the baseline), and the mean ab error (the
Euclidean distance in the ab plane, Lab units).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixelwise.data.colour import lab_to_rgb, rgb_to_lab
from pixelwise.data.io import read_image, write_image
from pixelwise.errors import ConfigError
from pixelwise.predict import forward_full, resolve_device
from pixelwise.runs import load_run, read_config

__all__ = [
    "AB_SCALE",
    "BETA",
    "ColourResult",
    "Colorizer",
    "colorization_loss",
    "colorize_files",
    "evaluate_colorization",
    "is_colorize_run",
    "lightness_and_ab",
    "lightness_filters",
]

AB_SCALE = 110.0  # |a|, |b| <= ~110 for sRGB colours: the targets lie in about [-1, 1]
BETA = 0.05  # smooth-L1's quadratic zone in ab / AB_SCALE units (~5.5 Lab units)
#: RGB -> luma weights (ITU-R 601), the lightness a colour segmenter's input conv is mapped onto
LUMA = (0.299, 0.587, 0.114)


def lightness_and_ab(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB in [0, 1] ``(N, 3, H, W)`` -> model input ``(L - 50) / 50`` ``(N, 1, H, W)`` and
    target ``ab / AB_SCALE`` ``(N, 2, H, W)``."""
    lab = rgb_to_lab(rgb.float())
    return (lab[:, :1] - 50) / 50, lab[:, 1:] / AB_SCALE


def to_rgb(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Model input ``(N, 1, H, W)`` and output ``(N, 2, H, W)`` -> RGB in [0, 1]."""
    return lab_to_rgb(torch.cat((lightness * 50 + 50, ab * AB_SCALE), 1).float())


def colorization_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth L1 (beta :data:`BETA`) between predicted and true ``ab / AB_SCALE``
    ``(N, 2, H, W)``, averaged over pixels and both channels."""
    return F.smooth_l1_loss(pred.float(), target.float(), beta=BETA)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of two images in [0, 1]."""
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """RGB ``(3, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)``."""
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@dataclass
class ColourResult:
    """Mean loss and scores of one pass over a dataset; ``examples``: (grey, predicted, true)
    uint8 (H, W, 3) images of the first samples, for pictures."""

    scores: dict[str, float]
    loss: float
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


@torch.inference_mode()
def colorize_tensor(
    model: torch.nn.Module, rgb: torch.Tensor, input_scale: float = 1.0, net=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB ``(1, 3, H, W)`` in [0, 1] -> (model input L, predicted ab, true ab), each
    ``(1, C, H, W)`` at full resolution (the model sees the image resized by ``input_scale``)."""
    lightness, ab = lightness_and_ab(rgb)
    pred = forward_full(model, lightness, net=net, input_scale=input_scale).float()
    return lightness, pred, ab


def evaluate_colorization(
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device | str = "cpu",
    keep_examples: int = 0,
    progress: Callable[[Iterable], Iterator] | None = None,
    input_scale: float = 1.0,
    shard: tuple[int, int] = (0, 1),
) -> ColourResult:
    """Colourize every image of ``dataset`` at full resolution: mean loss, PSNR (dB, of the RGB
    rebuilt from true L + predicted ab), ``psnr_grey`` (ab = 0) and ``ab_error`` (mean
    Euclidean ab distance, Lab units), averaged over images (summed over processes)."""
    from pixelwise.distributed import all_reduce_sum, shard_range

    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, psnr, grey, ab error
    examples = []
    indices = shard_range(len(dataset), *shard)
    for i in progress(indices) if progress else indices:
        image = dataset[i].image
        rgb = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().to(device) / 255
        lightness, pred, ab = colorize_tensor(model, rgb, input_scale)
        out, grey = to_rgb(lightness, pred), to_rgb(lightness, torch.zeros_like(pred))
        error = ((pred - ab) * AB_SCALE).norm(dim=1).mean()
        sums += torch.tensor(
            [float(colorization_loss(pred, ab)), psnr(out, rgb), psnr(grey, rgb), float(error)],
            dtype=torch.float64,
            device=device,
        )
        if len(examples) < keep_examples:
            examples.append((to_uint8(grey[0]), to_uint8(out[0]), image[..., :3]))
    model.train(was_training)
    if shard[1] > 1:
        all_reduce_sum(sums)
    loss, p, g, e = (float(v) / max(1, len(dataset)) for v in sums)
    return ColourResult({"psnr": p, "psnr_grey": g, "ab_error": e}, loss, examples)


def lightness_filters(
    weight: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """A colourizer's input filters ``(O, 1, k, k)`` (they read ``(L - 50) / 50``) -> filters
    ``(O, C, k, k)`` for an input of C = 3 (RGB) or 1 (grey) channels normalised by
    ``mean``/``std`` that compute the same features of the luma: ``(L - 50) / 50 ~ 2 luma -
    1`` and ``channel_c = x_c std_c + mean_c``, so channel c gets ``2 LUMA_c std_c`` times the
    filter (LUMA = (1,) for grey). The constant ``2 sum LUMA_c mean_c - 1`` would go to the
    bias; BatchNorm after the conv normalises it away, so it is left out."""
    luma = LUMA if len(mean) == 3 else (1.0,)
    scale = torch.tensor([2 * w * s for w, s in zip(luma, std, strict=True)], dtype=weight.dtype)
    return weight * scale.view(1, len(luma), 1, 1)


def is_colorize_run(run: str | Path) -> bool:
    """Was ``RUN`` trained with ``--task colorize``?"""
    return read_config(run).get("train", {}).get("task", "segment") == "colorize"


class Colorizer:
    """A trained colourization run ready to colour images (``Colorizer(RUN)``)."""

    def __init__(self, run: str | Path, which: str = "best", device: str = "auto") -> None:
        if not is_colorize_run(run):
            raise ConfigError(f"{run}: not a colourization run (train one with --task colorize)")
        self.device = resolve_device(device)
        loaded = load_run(run, which, device=self.device)
        self.model = loaded.model
        self.input_scale = float(loaded.config["train"].get("input_scale", 1.0))

    def colorize(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``(H, W, 3)`` (or ``(H, W, 1)``: only its lightness is used) -> colourized
        uint8 ``(H, W, 3)`` with the input's own lightness."""
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        rgb = rgb.expand(3, -1, -1).unsqueeze(0).to(self.device)
        lightness, pred, _ab = colorize_tensor(self.model, rgb, self.input_scale)
        return to_uint8(to_rgb(lightness, pred)[0])


def colorize_files(
    colorizer: Colorizer,
    files: list[Path],
    out_dir: str | Path,
    progress: Callable[[Iterable], Iterator] | None = None,
) -> list[Path]:
    """Write ``OUT/<stem>_color.png`` for every file (each read fully first, written
    atomically: a bad file raises with the outputs before it complete)."""
    out = Path(out_dir)
    written, stems = [], set()
    for path in progress(files) if progress else files:
        stem = Path(path).stem
        while stem in stems:
            stem += "_"
        stems.add(stem)
        coloured = colorizer.colorize(read_image(path, 3))
        write_image(out / f"{stem}_color.png", coloured)
        written.append(out / f"{stem}_color.png")
    return written


def write_pictures(out: Path, rows: list[dict[str, Any]], examples, epoch: int) -> None:
    """RUN/curves.png (losses, PSNR, ab error) and RUN/overlays/epoch_NNN.png: one row per
    validation image, grey | predicted | true."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pixelwise.files import atomic_open

    def col(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]

    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(epochs, col("train_loss"), "o-", label="train loss")
    axes[0].plot(epochs, col("val_loss"), "s-", label="val loss")
    axes[1].plot(epochs, col("val_psnr"), "o-", label="predicted")
    axes[1].plot(epochs, col("val_psnr_grey"), "--", label="grey (ab = 0)")
    axes[2].plot(epochs, col("val_ab_error"), "o-")
    for ax, title in zip(axes, ("smooth-L1 loss", "PSNR (dB)", "mean ab error"), strict=True):
        ax.set(title=title, xlabel="epoch")
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    with atomic_open(out / "curves.png", "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    if examples:
        write_strip(out / "overlays" / f"epoch_{epoch:03d}.png", examples)


def write_strip(path: Path, examples, height: int = 160) -> None:
    """(grey, predicted, true) images -> one PNG, a row per example, each resized to
    ``height`` pixels tall, with 4-pixel white gaps."""
    from PIL import Image

    rows = []
    for triple in examples:
        h, w = triple[0].shape[:2]
        size = (max(1, round(w * height / h)), height)
        tiles = [np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)) for im in triple]
        gap = np.full((height, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.concatenate(rows, 0))

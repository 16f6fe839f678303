"""Prediction: from an image of any size and mode to a label mask.

``Segmenter`` wraps a trained model with its normalisation and classes. Every model returns logits
of exactly the input's height and width: fully convolutional nets do so by construction, and the
valid-convolution U-Net (whose output is smaller than its input by a fixed border) gets its
missing context by mirroring the image, as in the U-Net paper's overlap-tile strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pixelwise.crf import CRFParams, dense_crf
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import read_image, write_image, write_mask
from pixelwise.data.transforms import to_tensor
from pixelwise.errors import ConfigError
from pixelwise.models.base import SegmentationModel
from pixelwise.runs import LoadedRun, load_run
from pixelwise.tiles import mirror_pad

__all__ = ["Segmenter", "forward_full", "mirror_pad", "predict_files", "resolve_device"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def scale_input(x: torch.Tensor, input_scale: float) -> torch.Tensor:
    """``x (N, C, H, W)`` resized by ``input_scale`` (bilinear, antialiased when shrinking)."""
    h, w = x.shape[-2:]
    size = (max(1, round(h * input_scale)), max(1, round(w * input_scale)))
    return F.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=input_scale < 1
    )


def forward_full(
    model: SegmentationModel,
    x: torch.Tensor,
    net: Callable[[torch.Tensor], torch.Tensor] | None = None,
    input_scale: float = 1.0,
) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` for input ``x (N, in_channels, H, W)``, whatever the model's border.

    For a valid-convolution model (``model.border > 0``) the input is mirror-padded to the
    smallest size whose output covers ``H x W`` and for which every 2x2 pooling sees even sizes,
    then the output is cut to ``H x W``. ``net``: the network call to run instead of ``model``
    (an engine from :mod:`pixelwise.engines`); ``model`` still gives the geometry.
    ``input_scale``: the model sees ``x`` resized by this factor (a run trained at half
    resolution has 0.5); its logits are resized back (bilinear) to ``H x W``.
    """
    if input_scale != 1.0:
        h, w = x.shape[-2:]
        small = scale_input(x, input_scale)
        logits = forward_full(model, small, net)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    border = model.border
    if net is None:
        net = model
    if border == 0:
        return net(x)
    h, w = x.shape[-2:]
    in_h, in_w = model.valid_input_size(h, w)
    padded = mirror_pad(x, border, in_h - h - border, border, in_w - w - border)
    return net(padded)[..., :h, :w]


#: Test-time augmentation: the 8 views (quarter turns, then a left-right flip) of the dihedral
#: group, which maps every pixel grid onto itself.
TTA_VIEWS: tuple[tuple[int, bool], ...] = tuple((k, f) for k in range(4) for f in (False, True))


def tta_view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``x (..., H, W)`` flipped left-right (if ``flip``), then turned ``k`` quarter turns."""
    return torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))


def tta_unview(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`tta_view`: maps a view's output back onto the original grid."""
    y = torch.rot90(y, -k, (-2, -1))
    return y.flip(-1) if flip else y


def trained_views(train: dict) -> tuple[tuple[int, bool], ...]:
    """The TTA views a run may average: only the symmetries it was trained with (its ``train``
    options). Flips and rotations up to 180 degrees: all 8; rotations alone: the 4 quarter
    turns; horizontal flips alone: the image and its mirror (a street scene is never turned
    upside down); neither: the image alone."""
    flips = bool(train.get("hflip", True))
    turns = float(train.get("rotate", 0.0) or 0.0) >= 180.0
    return tuple(
        (k, f)
        for k in (range(4) if turns else (0,))
        for f in ((False, True) if flips else (False,))
    )


def mean_over_views(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    views: tuple[tuple[int, bool], ...] = TTA_VIEWS,
) -> torch.Tensor:
    """Test-time augmentation: ``log`` of the mean softmax of ``forward`` over ``views`` (all 8
    :data:`TTA_VIEWS` by default; a run's own: :func:`trained_views`) of ``x (..., H, W)``,
    each mapped back. ``forward`` maps a view to logits ``(..., C, h, w)`` on the view's own
    grid. Log-probabilities are logits: their argmax is the prediction, and cross-entropy on
    them is the negative log of the averaged probability. One forward pass per view; the sum
    of probabilities is one ``(..., C, H, W)`` float32 tensor."""
    total = None
    for k, flip in views:
        p = torch.softmax(tta_unview(forward(tta_view(x, k, flip)).float(), k, flip), -3)
        total = p if total is None else total.add_(p)
    return (total / len(views)).clamp_min_(1e-12).log_()


@dataclass
class Segmenter:
    """A trained model ready to label images (``Segmenter.from_run(RUN)``)."""

    model: SegmentationModel
    classes: ClassInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int
    device: torch.device = torch.device("cpu")
    net: Callable[[torch.Tensor], torch.Tensor] | None = None  # engine; None: plain ``model``
    input_scale: float = 1.0  # the run's --input-scale: images are resized by it for the model
    tta: bool = False  # average the views below (one pass each): see ``mean_over_views``
    views: tuple[tuple[int, bool], ...] = TTA_VIEWS  # a run's: the symmetries it trained with
    crf: CRFParams | None = None  # refine the softmax with the dense CRF (``pixelwise.crf``)

    @classmethod
    def from_run(
        cls,
        run: str | Path | LoadedRun,
        which: str = "best",
        device: str = "auto",
        engine: str | None = None,
        compile: bool = False,
        threads: int | None = None,
        folder: str | Path | None = None,
    ) -> Segmenter:
        """Load ``RUN``'s ``which`` checkpoint with the network call of ``engine``.

        ``engine``: ``torch`` (default: BatchNorm folded, channels-last on CPUs, optionally
        ``compile``d), ``onnxruntime`` (exported once and cached as ``RUN/best.onnx``, run with
        ``threads`` intra-op threads), ``onnxruntime-int8`` (the run's checked int8 file from
        ``pixelwise export --int8``) or ``auto`` (the commands' default: the fastest of those
        available, timed on the first image and recorded in ``RUN/engine.json``); see
        :mod:`pixelwise.engines`. A ``LoadedRun`` has no folder to cache an export in: give
        ``folder`` (its run directory) for the engines that need one, else ``auto`` is torch.
        """
        from pixelwise.engines import LIBRARY_ENGINE, make_engine

        dev = resolve_device(device)
        loaded = run if isinstance(run, LoadedRun) else load_run(run, which, device=dev)
        loaded.model.to(dev).eval()
        if not isinstance(run, LoadedRun):
            folder = run
        net = make_engine(
            loaded.model, engine or LIBRARY_ENGINE, run=folder, which=which,
            in_channels=loaded.in_channels, threads=threads, compile=compile,
        )  # fmt: skip
        train = loaded.config.get("train", {})
        input_scale = float(train.get("input_scale", 1.0))
        return cls(
            loaded.model, loaded.classes, loaded.mean, loaded.std, loaded.in_channels, dev,
            net=net, input_scale=input_scale, views=trained_views(train),
        )  # fmt: skip

    @torch.inference_mode()
    def logits(
        self, image: np.ndarray, tile: int | None = None, overlap: float = 0.25
    ) -> torch.Tensor:
        """Logits ``(num_classes, H, W)`` for an image ``(H, W, C)`` uint8 (C = in_channels).

        ``tile``: compute them tile by tile (``pixelwise.tiles``; for blended models these are
        the log blended probabilities). With ``crf``: the log-probabilities of the dense CRF's
        mean field run on them (after tiles and TTA, at the image's resolution)."""
        scores = self._logits(image, tile, overlap)
        if self.crf is not None:
            return dense_crf(scores, image, self.crf)
        return scores

    def _logits(self, image: np.ndarray, tile: int | None, overlap: float) -> torch.Tensor:
        if tile is not None:
            if self.tta:  # each view of the image tiled; their probabilities averaged
                hwc = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)

                def tiled(view: torch.Tensor) -> torch.Tensor:
                    v = np.ascontiguousarray(view.permute(1, 2, 0).numpy())
                    return self._tiled(v, tile, overlap, logits=True)

                return mean_over_views(tiled, hwc, self.views)
            return self._tiled(image, tile, overlap, logits=True)
        x = to_tensor(image, self.mean, self.std).unsqueeze(0).to(self.device)

        def full(v: torch.Tensor) -> torch.Tensor:
            return forward_full(self.model, v, net=self.net, input_scale=self.input_scale)

        logits = mean_over_views(full, x, self.views) if self.tta else full(x)
        return logits[0].float()

    def predict(
        self, image: np.ndarray, tile: int | None = None, overlap: float = 0.25
    ) -> np.ndarray:
        """Label mask ``(H, W)`` uint8 for an image ``(H, W, C)`` uint8.

        ``tile``: predict ``tile x tile`` tiles (``overlap``: fraction shared by neighbours) with
        memory bounded by tile size and image width; see ``pixelwise.tiles``."""
        if tile is not None and not self.tta and self.crf is None:
            return self._tiled(image, tile, overlap)
        return self.logits(image, tile, overlap).argmax(0).to(torch.uint8).cpu().numpy()

    @torch.inference_mode()
    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Label masks ``(H, W)`` uint8 of same-size images ``(H, W, C)`` uint8, computed as one
        ``(N, C, H, W)`` call (no tiling; the CRF, if set, per image): what ``pixelwise serve
        --batch`` runs."""
        x = torch.stack([to_tensor(im, self.mean, self.std) for im in images]).to(self.device)

        def full(v: torch.Tensor) -> torch.Tensor:
            return forward_full(self.model, v, net=self.net, input_scale=self.input_scale)

        logits = mean_over_views(full, x, self.views) if self.tta else full(x)
        if self.crf is not None:  # the CRF refines each image on its own pixels
            pairs = zip(logits, images, strict=True)
            logits = torch.stack([dense_crf(s.float(), im, self.crf) for s, im in pairs])
        return list(logits.argmax(1).to(torch.uint8).cpu().numpy())

    def tile_net(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network call the tiles use: normalised ``(N, C, h, w)`` -> the model's raw output
        ``(N, K, *model.output_size(h, w))`` (no mirror padding: the tiles do that)."""
        return self.net if self.net is not None else self.model

    def _tiled(
        self, image: np.ndarray, tile: int, overlap: float, logits: bool = False
    ) -> np.ndarray | torch.Tensor:
        """Mask ``(H, W)`` (or ``logits``: scores ``(K, H, W)``) of ``image`` from tiles.

        With an ``input_scale`` the tiles are cut from the resized image and their scores are
        upsampled bilinearly to ``H x W`` before the argmax, band by band, as
        :func:`forward_full` does with the whole image's logits."""
        from pixelwise.tiles import predict_tiled

        h, w = image.shape[:2]
        output_size = None
        if self.input_scale != 1.0:  # tiles of the resized image, the scores resized back
            size = (max(1, round(w * self.input_scale)), max(1, round(h * self.input_scale)))
            image = resize_image(image, size)
            output_size = (h, w)
        return predict_tiled(
            self.tile_net(), self.model, image, self.mean, self.std, tile, overlap,
            device=self.device, logits=logits, output_size=output_size,
        )  # fmt: skip

    def read(self, path: str | Path) -> np.ndarray:
        """Read an image file with the channel count the model expects."""
        return read_image(path, channels=self.in_channels)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image (H, W, C)`` uint8 resized to ``size = (width, height)`` (Pillow, bilinear with
    antialiasing)."""
    from PIL import Image

    chans = [
        np.asarray(Image.fromarray(image[..., c]).resize(size, Image.Resampling.BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(chans, axis=-1)


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (non-recursive) into a sorted list of image files."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(p)
    return files


def predict_files(
    segmenter: Segmenter,
    files: list[Path],
    out_dir: str | Path,
    overlay_alpha: float = 0.5,
    progress: Callable[[Iterable], Iterator] | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    shard: tuple[int, int] | None = None,
) -> list[Path]:
    """Label every file; write ``OUT/<stem>.png`` (palette mask) and ``OUT/<stem>_overlay.png``.

    Each file is read fully before anything is written for it, and every write is atomic, so a
    bad input never leaves a partial output. Returns the mask paths. ``tile``: predict in tiles
    of this size (``pixelwise.tiles``); ``None``: only images over ``tiles.AUTO_TILE_PIXELS``
    pixels, with ``tiles.AUTO_TILE`` tiles; ``0``: never.

    ``shard=(i, n)``: only files ``i, i+n, i+2n, ...`` of ``files`` (several processes or
    ``torchrun`` ranks share one folder); output names are decided over the whole list first,
    so shards never collide. On a bad file the error is raised: outputs of the files before it
    are complete, nothing is written for it or the files after it.
    """
    from pixelwise.plots import overlay
    from pixelwise.tiles import AUTO_TILE, AUTO_TILE_PIXELS, check_tiling

    if tile != 0:
        check_tiling(segmenter.model, AUTO_TILE if tile is None else tile, overlap)

    out = Path(out_dir)
    written = []
    stems: set[str] = set()
    targets: list[tuple[Path, str]] = []
    for path in files:
        stem = Path(path).stem
        while stem in stems:  # a.png and a.jpg in one call: keep both
            stem += "_"
        stems.add(stem)
        targets.append((Path(path), stem))
    if shard is not None:
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ConfigError(f"--shard {index}/{count}: expected I/N with 0 <= I < N")
        targets = targets[index::count]
    for path, stem in progress(targets) if progress else targets:
        image = segmenter.read(path)
        size = tile or None  # None: auto, tile only big images
        if tile is None and image.shape[0] * image.shape[1] > AUTO_TILE_PIXELS:
            size = AUTO_TILE
        mask = segmenter.predict(image, tile=size, overlap=overlap)
        write_mask(out / f"{stem}.png", mask, segmenter.classes)
        # In bands of 1024 rows: overlay's float temporaries stay small for huge images.
        blended = np.concatenate(
            [
                overlay(image[r : r + 1024], mask[r : r + 1024], segmenter.classes, overlay_alpha)
                for r in range(0, image.shape[0], 1024)
            ]
        )
        write_image(out / f"{stem}_overlay.png", blended)
        written.append(out / f"{stem}.png")
    return written

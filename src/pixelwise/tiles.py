"""Tiled prediction: images of any size with memory bounded by the tile size and the image width.

Two strategies, chosen by the model:

- **Overlap-tile** (U-Net paper, for the valid-convolution U-Net, ``model.border > 0``): the image
  is cut into output tiles of ``t x t`` pixels (``t`` a multiple of ``2**depth``); each is
  predicted from an input tile ``border`` pixels larger on every side, cut from the *mirrored*
  image (the reflect indices are computed per tile; no padded copy of the image is made). The
  outputs are written side by side, without blending. Because every tile starts on the pooling
  grid of the whole image, the result equals the whole-image prediction (up to float noise).
- **Blended tiles** (every other model): ``t x t`` tiles overlapping by a fraction ``overlap``,
  starting on the model's pooling grid (``2**depth`` for U-Nets, 32 for the others, so each tile
  sees the whole image's pooling phase), the last one ending at the image border, each weighted
  by a Gaussian window (sigma = t / 8, as in nnU-Net) and accumulated on softmax probabilities;
  seams vanish because every tile's edge pixels get little weight.

Memory: tiles are processed row by row (horizontal strips). Only the rows that later tiles still
touch are kept in an accumulator (``num_classes x t x W`` floats: the blended probabilities, or
the strip of overlap-tile logits being assembled); finished rows go straight to the uint8 mask.
Peak memory is the uint8 input and output plus terms in ``t`` and ``W``, never ``H x W`` floats.

``output_size`` (a run trained with ``--input-scale``: the image was resized for the model): the
scores of finished rows, logits or log blended probabilities, are upsampled bilinearly to the
output size (exactly as ``F.interpolate(..., mode="bilinear", align_corners=False)`` does on the
whole map, but a band of rows at a time) and only then turned into labels, as the whole-image
prediction :func:`pixelwise.predict.forward_full` does with its logits. (The argmax of upsampled
log-probabilities is the argmax of the upsampled logits: the two differ by one number per pixel.)

The network is called as ``net(x)``: a normalised ``(N, in_channels, h, w)`` tensor in, the raw
model output ``(N, num_classes, *model.output_size(h, w))`` out (for border-0 models that is the
input size). ``model`` (a :class:`~pixelwise.models.base.SegmentationModel`) gives the geometry:
``border``, ``tile_grid``, ``in_channels``, ``output_size`` and ``valid_input_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from pixelwise.data.transforms import to_tensor
from pixelwise.errors import ConfigError
from pixelwise.models.base import SegmentationModel
from pixelwise.models.layers import mirror_pad

__all__ = [
    "AUTO_TILE",
    "AUTO_TILE_PIXELS",
    "bilinear_source",
    "check_tiling",
    "gaussian_window",
    "min_tile",
    "mirror_pad",
    "predict_tiled",
    "tile_spans",
]

Net = Callable[[Tensor], Tensor]

AUTO_TILE_PIXELS = 2048 * 2048  # predict_files tiles images above this many pixels by default
AUTO_TILE = 512  # the tile size it then uses
MIN_TILE = 16
MAX_OVERLAP = 0.9


def min_tile(model: SegmentationModel) -> int:
    """Smallest ``tile`` the model accepts: at least 16 and ``model.tile_grid`` (``2**depth`` for
    the U-Nets, 32 for the others), and an input size ``model.output_size`` accepts."""
    if model.border > 0:
        return max(MIN_TILE, model.tile_grid)
    align = model.tile_grid
    n = max(MIN_TILE, align)
    while True:
        try:
            model.output_size(n, n)
            return n
        except ConfigError:
            n += align
            if n > 4096:  # pragma: no cover - no registered model is this demanding
                raise


def check_tiling(model: SegmentationModel, tile: int, overlap: float) -> None:
    """``ConfigError`` (one line, naming ``--tile`` / ``--overlap``) for unusable options."""
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer):
        raise ConfigError(f"--tile {tile!r}: must be an integer number of pixels, e.g. 512")
    smallest = min_tile(model)
    if tile < smallest:
        raise ConfigError(
            f"--tile {tile}: smaller than the smallest tile this model accepts ({smallest} px); "
            f"use --tile {smallest} or more (512 is a good default)"
        )
    if (
        isinstance(overlap, bool)
        or not isinstance(overlap, int | float)
        or not 0 <= overlap <= MAX_OVERLAP
    ):
        raise ConfigError(
            f"--overlap {overlap!r}: must be a fraction of the tile between 0 and {MAX_OVERLAP} "
            "(0.25 is a good default)"
        )


def tile_spans(n: int, tile: int, overlap: float, align: int = 1) -> list[tuple[int, int]]:
    """``(start, size)`` of tiles covering ``0..n-1``: starts on multiples of ``align``, spread
    evenly, neighbours sharing at least ``overlap * tile`` pixels (the step is rounded down to a
    multiple of ``align``, at least ``align``), the first at 0, the last ending exactly at ``n``.

    Every tile has ``tile`` pixels except the last, which has ``n - start`` (``tile`` to
    ``tile + align - 1``: the last start is rounded down to the grid too); ``n < tile + align``
    gives one tile ``(0, n)``. ``tile`` must be a multiple of ``align``.
    """
    last = max(0, n - tile) // align * align
    if last == 0:
        return [(0, n)]
    step = max(align, int(tile * (1.0 - overlap)) // align * align)
    count = -(-last // step) + 1
    starts = sorted({(i * last // (count - 1)) // align * align for i in range(count)})
    return [(a, tile) for a in starts[:-1]] + [(last, n - last)]


def gaussian_window(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """``(height, width)`` float32 weights: a Gaussian with sigma = size / 8 per axis, centred on
    the tile, maximum 1 (nnU-Net's importance map). Edge weights are about exp(-8) = 3e-4."""

    def axis(n: int) -> Tensor:
        x = torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2
        sigma = n / 8
        return torch.exp(-(x**2) / (2 * sigma**2))

    w = axis(height)[:, None] * axis(width)[None, :]
    return (w / w.max()).float()


def _check_image(image: np.ndarray, in_channels: int | None) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ConfigError(f"image must be non-empty uint8 (H, W, C), got {a.dtype} {a.shape}")
    if in_channels is not None and a.shape[2] != in_channels:
        raise ConfigError(f"image has {a.shape[2]} channels but the model takes {in_channels}")
    return a


def _mirror_index(n: int, before: int, after: int) -> np.ndarray:
    """Source index (0..n-1) of every position of an axis of length ``n`` mirror-padded by
    ``before`` / ``after``, exactly as :func:`mirror_pad` pads it (its repeated reflections, and
    its edge replication for an axis of length 1). Only ``n + before + after`` integers: no
    image is padded."""
    probe = torch.arange(n, dtype=torch.float64).view(1, 1, n, 1)
    padded = mirror_pad(probe, before, after, 0, 0)
    return padded[0, 0, :, 0].round().to(torch.int64).numpy()


def _batched(items: Sequence, size: int, key: Callable) -> Iterator[list]:
    """Consecutive runs of ``items`` with equal ``key``, at most ``size`` long."""
    group: list = []
    for item in items:
        if group and (len(group) == size or key(item) != key(group[0])):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _overlap_tiles(
    net: Net,
    model: SegmentationModel,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    tile: int,
    tile_batch: int,
    progress: Callable[[Iterable], Iterator] | None,
) -> Iterator[tuple[int, Tensor]]:
    """Overlap-tile for a valid U-Net: yields ``(y, logits (K, h, W))`` for strips of output
    tiles, top to bottom; the strips tile the image's rows exactly once."""
    height, width = image.shape[:2]
    border = model.border
    period = model.tile_grid  # the step of valid_input_size: shifts by it shift the logits
    step = max(period, tile - tile % period)  # tiles start on the whole image's pooling grid
    ys, xs = range(0, height, step), range(0, width, step)
    # The padded extent forward_full uses for the whole image; every tile's input lies inside it
    # (tiles start on multiples of the period), so the reflect indices are the whole image's.
    whole_h, whole_w = model.valid_input_size(height, width)
    last_h = ys[-1] + model.valid_input_size(height - ys[-1], 1)[0]
    last_w = xs[-1] + model.valid_input_size(1, width - xs[-1])[1]
    rows = _mirror_index(height, border, max(whole_h, last_h) - height - border)
    cols = _mirror_index(width, border, max(whole_w, last_w) - width - border)
    for y in progress(ys) if progress else ys:
        h = min(step, height - y)
        cells = [(x, min(step, width - x)) for x in xs]
        strip: Tensor | None = None
        for group in _batched(cells, tile_batch, key=lambda c: c[1]):
            in_h, in_w = model.valid_input_size(h, group[0][1])
            r = rows[y : y + in_h]
            batch = torch.stack(
                [to_tensor(image[np.ix_(r, cols[x : x + in_w])], mean, std) for x, _ in group]
            ).to(device)
            out = net(batch)
            if strip is None:
                strip = torch.empty(out.shape[1], h, width, device=out.device)
            for i, (x, w) in enumerate(group):
                strip[:, :, x : x + w] = out[i, :, :h, :w].float()
        assert strip is not None
        yield y, strip


def _blended_bands(
    net: Net,
    model: SegmentationModel,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    tile: int,
    overlap: float,
    tile_batch: int,
    progress: Callable[[Iterable], Iterator] | None,
) -> Iterator[tuple[int, Tensor]]:
    """Gaussian-blended tiles: yields ``(y, log probabilities (K, d, W))`` for bands of finished
    rows, top to bottom; the bands tile the image's rows exactly once."""
    height, width = image.shape[:2]
    align = model.tile_grid
    tile = tile // align * align  # >= align: check_tiling asked for at least min_tile
    rows, cols = tile_spans(height, tile, overlap, align), tile_spans(width, tile, overlap, align)
    band = max(h for _, h in rows)
    windows: dict[tuple[int, int], Tensor] = {}
    acc: Tensor | None = None  # image rows y .. y + band of the strip being accumulated
    weight = torch.zeros(band, width, device=device)
    for i, (y, h) in enumerate(progress(rows) if progress else rows):
        for group in _batched(cols, tile_batch, key=lambda c: c[1]):
            w = group[0][1]
            if (h, w) not in windows:
                windows[(h, w)] = gaussian_window(h, w, device)
            window = windows[(h, w)]
            batch = torch.stack(
                [to_tensor(image[y : y + h, x : x + w], mean, std) for x, _ in group]
            ).to(device)
            probs = torch.softmax(net(batch).float(), dim=1) * window
            if acc is None:
                acc = torch.zeros(probs.shape[1], band, width, device=device)
            for j, (x, _) in enumerate(group):
                acc[:, :h, x : x + w] += probs[j]
                weight[:h, x : x + w] += window
        assert acc is not None
        done = rows[i + 1][0] - y if i + 1 < len(rows) else h  # rows no later strip touches
        yield y, (acc[:, :done] / weight[:done]).clamp_min_(1e-30).log_()
        # Move the rows still open to the top of the accumulator; zero the rest.
        acc = torch.cat([acc[:, done:], acc.new_zeros(acc.shape[0], done, width)], dim=1)
        weight = torch.cat([weight[done:], weight.new_zeros(done, width)], dim=0)


def bilinear_source(out: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``out`` positions resized from ``src``: the two source positions ``i0 <= i1``
    and the weight ``t`` of ``i1`` (value ``(1 - t) * v[i0] + t * v[i1]``), as
    ``F.interpolate(mode="bilinear", align_corners=False)`` computes them (source coordinate
    ``(i + 0.5) * src / out - 0.5``, clamped at 0; ``i1`` clamped at ``src - 1``)."""
    pos = np.maximum((np.arange(out) + 0.5) * (src / out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    return i0, np.minimum(i0 + 1, src - 1), pos - i0


def _upsampled(
    bands: Iterable[tuple[int, Tensor]],
    source: tuple[int, int],
    size: tuple[int, int],
    chunk: int = 256,
) -> Iterator[tuple[int, Tensor]]:
    """Bands ``(y, scores (K, d, w))`` of a ``source = (h, w)`` map, top to bottom, resized
    bilinearly to ``size = (H, W)``: yields ``(Y, (K, D, W))`` bands of output rows (at most
    ``chunk`` each), top to bottom, equal to ``F.interpolate`` of the whole map (up to float
    rounding). Keeps only the source rows later output rows still need."""
    r0, r1, rt = bilinear_source(size[0], source[0])
    c0, c1, ct = bilinear_source(size[1], source[1])
    buf: Tensor | None = None  # source rows start .. start + buf.shape[1]
    start = done = 0
    for y, scores in bands:
        dev = scores.device
        if buf is None:
            buf = scores
            cols = (torch.from_numpy(c0).to(dev), torch.from_numpy(c1).to(dev))
            tc = torch.from_numpy(ct).to(dev, torch.float32)
        else:
            buf = torch.cat([buf, scores], dim=1)
        have = y + scores.shape[1]
        # Output rows whose second source row has arrived (all of them after the last band).
        end = size[0] if have >= source[0] else int(np.searchsorted(r1, have, side="left"))
        for a in range(done, end, chunk):
            b = min(end, a + chunk)
            top = buf[:, torch.from_numpy(r0[a:b] - start).to(dev)]
            bottom = buf[:, torch.from_numpy(r1[a:b] - start).to(dev)]
            t = torch.from_numpy(rt[a:b]).to(dev, torch.float32)[:, None]
            rows = top * (1 - t) + bottom * t
            yield a, rows[:, :, cols[0]] * (1 - tc) + rows[:, :, cols[1]] * tc
        done = end
        if done < size[0]:  # drop the source rows no later output row uses
            keep = min(int(r0[done]), have)
            buf, start = buf[:, keep - start :], keep


def predict_tiled(
    net: Net,
    model: SegmentationModel,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    tile: int,
    overlap: float = 0.25,
    *,
    device: torch.device | str = "cpu",
    tile_batch: int = 1,
    logits: bool = False,
    progress: Callable[[Iterable], Iterator] | None = None,
    output_size: tuple[int, int] | None = None,
) -> np.ndarray | Tensor:
    """Label ``image (H, W, C)`` uint8 tile by tile; returns the mask ``(H, W)`` uint8.

    ``net``: the network call (normalised ``(N, C, h, w)`` -> raw logits, see the module doc);
    ``model``: the module it runs (for ``border``, ``tile_grid``, ``valid_input_size``,
    ``output_size``); ``tile``: tile side in pixels (output tiles for the valid U-Net, rounded
    down to a multiple of ``2**depth``; input = output tiles for the others); ``overlap``:
    fraction of the tile shared by neighbours (blended models only; overlap-tiles need none);
    ``tile_batch``: tiles per network call; ``progress`` wraps the iteration over tile rows
    (e.g. tqdm). ``output_size``: ``(H', W')`` to resize the scores to (bilinear, band by band)
    before the argmax, for an image the caller resized for the model; the result then has that
    size.

    ``logits=True`` returns a float32 ``(K, H, W)`` tensor instead (this one *is* full-image
    size): the exact logits for the valid U-Net, the log of the blended probabilities for the
    others (so its argmax is the mask).
    """
    check_tiling(model, tile, overlap)
    if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
        raise ConfigError(f"--tile-batch {tile_batch!r}: must be an integer >= 1")
    image = _check_image(image, model.in_channels)
    device = torch.device(device)
    height, width = image.shape[:2]
    args = (net, model, image, mean, std, device, tile)
    with torch.inference_mode():
        if model.border > 0:
            bands = _overlap_tiles(*args, tile_batch, progress)
        else:
            bands = _blended_bands(*args, overlap, tile_batch, progress)
        out_h, out_w = output_size or (height, width)
        if (out_h, out_w) != (height, width):
            bands = _upsampled(bands, (height, width), (out_h, out_w))
        mask = None if logits else np.empty((out_h, out_w), dtype=np.uint8)
        full: Tensor | None = None
        for y, scores in bands:
            d = scores.shape[1]
            if mask is not None:
                mask[y : y + d] = scores.argmax(0).to(torch.uint8).cpu().numpy()
            else:
                if full is None:
                    full = torch.empty(scores.shape[0], out_h, out_w)
                full[:, y : y + d] = scores.cpu()
    if mask is not None:
        return mask
    assert full is not None
    return full

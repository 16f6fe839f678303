"""ilastik's pixel features as a fixed layer: Gaussian derivative filters at six scales.

ilastik's pixel classification (Sommer et al., ISBI 2011) learns a random forest on a fixed
filter bank; learning a few weights on good local features is what makes it strong with a
handful of scribbles. :class:`FilterBank` computes the same bank inside a network, as separable
convolutions with fixed (not learned) kernels, so a model that starts from it exports to ONNX
and TorchScript like any other. ``unet_same(filter_bank=True)`` feeds it beside the image to the
first convolution; the labeling page's live trainer uses that model.

Per input channel and scale ``s`` (default 0.7, 1, 1.6, 3.5, 5, 10 px; kernels truncated at
4 s, borders replicated), eight features, derivatives scale-normalised (times ``s**order``, so
that every feature of a unit-variance image is of order 1):

    Gaussian smoothing, Laplacian of Gaussian, gradient magnitude, difference of Gaussians
    (s and 0.66 s), structure-tensor eigenvalues (inner scale s, outer 0.5 s; larger first),
    Hessian-of-Gaussian eigenvalues (larger first).

The kernels are scipy.ndimage's (``gaussian_filter`` with ``order``): scipy with
``mode="nearest"``, scale-normalised the same way, gives the same features to float precision
(tests/models/test_filterbank.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCALES = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
PER_SCALE = 8  # features per channel and scale
DOG_RATIO = 0.66  # the inner Gaussian of the difference of Gaussians
OUTER = 0.5  # the structure tensor's outer scale, relative to s
BLOCK_SHORT, BLOCK_LONG = 32, 64  # _along: outputs per window of the banded products
STRIP_ROWS = 256  # forward: taller inputs go strip by strip (the same values, less memory)


def gaussian_kernel1d(sigma: float, order: int = 0) -> Tensor:
    """The 1-D Gaussian (``order`` 0) or its first / second derivative, sampled at integers
    within ``4 sigma`` and normalised as scipy.ndimage does, flipped for ``conv2d`` (which
    correlates). ``(2 r + 1,)`` float32 with ``r = int(4 sigma + 0.5)``."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 * x * x / sigma**2)
    phi = phi / phi.sum()
    if order == 1:
        phi = -x / sigma**2 * phi
    elif order == 2:
        phi = (x * x / sigma**4 - 1 / sigma**2) * phi
    elif order != 0:
        raise ValueError(f"order must be 0, 1 or 2, got {order}")
    return phi.flip(0).float()


def _along(x: Tensor, kernels: Tensor, dim: int) -> Tensor:
    """1-D convolution of every channel of ``x (N, C, H, W)`` with each of ``kernels (m, K)``
    along ``dim`` (2: rows, 3: columns), borders replicated: ``(N, C * m, H, W)``, channel
    ``c * m + j`` = channel c with kernel j.

    Products of overlapping windows of a few dozen outputs with the banded (Toeplitz) matrix
    of each kernel: matrix products, which a CPU runs far closer to its peak than the
    one-channel (or grouped, depthwise) ``conv2d`` that computes the same sums. A traced graph
    (ONNX, TorchScript) keeps the convolution: the same values in fewer operators."""
    n, c, h, w = x.shape
    m, k = kernels.shape
    r = k // 2
    x = F.pad(x, (0, 0, r, r) if dim == 2 else (r, r, 0, 0), mode="replicate")
    if not torch.jit.is_tracing():
        return _banded(x, kernels, dim, h if dim == 2 else w).reshape(n, c * m, h, w)
    shape = (m, 1, k, 1) if dim == 2 else (m, 1, 1, k)
    planes = x.reshape(n * c, 1, *x.shape[-2:])
    return F.conv2d(planes, kernels.reshape(shape)).reshape(n, c * m, h, w)


def _banded(x: Tensor, kernels: Tensor, dim: int, size: int) -> Tensor:
    """``_along`` untraced, ``x`` already padded by ``K // 2`` along ``dim``: windows of
    ``b + K - 1`` inputs every ``b`` outputs (``Tensor.unfold``, a view) times the band
    ``(b + K - 1, b)`` of each kernel; ``b`` is :data:`BLOCK_SHORT` for kernels shorter than
    it, else :data:`BLOCK_LONG`. ``(N, C, m, H, W)``."""
    m, k = kernels.shape
    b = BLOCK_SHORT if k < BLOCK_SHORT else BLOCK_LONG
    blocks = -(-size // b)
    extra = blocks * b - size  # the last window reads past the end: replicated, then cut
    x = F.pad(x, (0, 0, 0, extra) if dim == 2 else (0, extra, 0, 0), mode="replicate")
    band = _band(kernels, b).transpose(1, 2)  # (m, b + K - 1, b)
    n, c = x.shape[:2]
    windows = x.unfold(dim, b + k - 1, b)  # (N, C, H, blocks, L) or (N, C, blocks, W, L)
    lines = windows.shape[2] * windows.shape[3]
    out = torch.matmul(windows.reshape(n, c, 1, lines, -1), band)  # (N, C, m, lines, b)
    if dim == 3:
        return out.reshape(n, c, m, -1, blocks * b)[..., :size]
    out = out.reshape(n, c, m, blocks, -1, b).transpose(-1, -2)  # (N, C, m, blocks, b, W)
    return out.reshape(n, c, m, blocks * b, -1)[:, :, :, :size]


def _band(kernels: Tensor, size: int) -> Tensor:
    """``(m, size, size + K - 1)``: row i holds each kernel at columns i..i+K-1 (the Toeplitz
    matrix of a valid correlation of a padded line with the kernel)."""
    k = kernels.shape[1]
    offset = (
        torch.arange(size + k - 1, device=kernels.device)[None]
        - torch.arange(size, device=kernels.device)[:, None]
    )
    inside = (offset >= 0) & (offset < k)
    return kernels[:, offset.clamp(0, k - 1)] * inside


def _eig2(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (larger first) of the symmetric 2x2 matrices ``[[a, b], [b, c]]``."""
    mean = (a + c) / 2
    root = torch.sqrt(((a - c) / 2) ** 2 + b * b + 1e-12)
    return mean + root, mean - root


class FilterBank(nn.Module):
    """``(N, C, H, W) -> (N, C * 8 * len(scales), H, W)``: ilastik's features of every channel
    (channel-major, then scale, then the eight features in the module docstring's order).

    The kernels are non-persistent buffers: they are not in a checkpoint and follow ``.to()``.
    """

    def __init__(self, in_channels: int, scales: tuple[float, ...] = SCALES) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.scales = tuple(float(s) for s in scales)
        self.out_channels = in_channels * PER_SCALE * len(self.scales)
        for i, s in enumerate(self.scales):
            derivs = torch.stack([gaussian_kernel1d(s, k) for k in range(3)])
            self.register_buffer(f"derivs{i}", derivs, persistent=False)
            self.register_buffer(f"dog{i}", gaussian_kernel1d(DOG_RATIO * s)[None], False)
            self.register_buffer(f"outer{i}", gaussian_kernel1d(OUTER * s)[None], False)

    @property
    def halo(self) -> int:
        """Pixels of context a feature reads on each side (the widest kernel after the
        structure tensor's outer smoothing): strips computed with this margin are exact."""
        return max(int(4 * s + 0.5) + int(4 * OUTER * s + 0.5) for s in self.scales)

    def in_strips(self, x: Tensor, rows: int = 256) -> Tensor:
        """``forward(x)`` computed ``rows`` image rows at a time (with :attr:`halo` rows of
        context) into one preallocated output: the same values, and of the intermediate maps
        only one strip's at a time. ``forward`` uses it for inputs over ``2 * rows`` rows."""
        n, c, h, w = x.shape
        out = x.new_empty(n, self.out_channels, h, w)
        for top in range(0, h, rows):
            lo, hi = max(0, top - self.halo), min(h, top + rows + self.halo)
            strip = self._features(x[..., lo:hi, :])
            out[..., top : top + rows, :] = strip[..., top - lo : top - lo + min(rows, h - top), :]
        return out

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] > 2 * STRIP_ROWS and not torch.jit.is_tracing():
            return self.in_strips(x, STRIP_ROWS)
        return self._features(x)

    def _features(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        planes = x.reshape(n * c, 1, h, w)
        feats = [self._scale(planes, i, s) for i, s in enumerate(self.scales)]
        return torch.cat(feats, 1).reshape(n, -1, h, w)

    def _scale(self, x: Tensor, i: int, s: float) -> Tensor:
        """The eight features of ``x (P, 1, H, W)`` at scale ``s``: ``(P, 8, H, W)``."""
        derivs, dog, outer = (getattr(self, f"{n}{i}") for n in ("derivs", "dog", "outer"))
        rows = _along(x, derivs, 2)  # d^0, d^1, d^2 along rows (y)
        both = _along(rows, derivs, 3)  # then d^0, d^1, d^2 along columns: (P, 9, H, W)
        g, gx, gxx, gy, gxy, gyy = (both[:, j : j + 1] for j in (0, 1, 2, 3, 4, 6))
        gx, gy = gx * s, gy * s  # scale-normalised derivatives
        gxx, gxy, gyy = gxx * s * s, gxy * s * s, gyy * s * s
        inner = _along(_along(x, dog, 2), dog, 3)
        tensor = torch.cat([gx * gx, gx * gy, gy * gy], 1)
        tensor = _along(_along(tensor, outer, 2), outer, 3)
        st1, st2 = _eig2(tensor[:, 0:1], tensor[:, 1:2], tensor[:, 2:3])
        he1, he2 = _eig2(gxx, gxy, gyy)
        magnitude = torch.sqrt(gx * gx + gy * gy + 1e-12)
        return torch.cat([g, gxx + gyy, magnitude, g - inner, st1, st2, he1, he2], 1)


__all__ = ["PER_SCALE", "SCALES", "FilterBank", "gaussian_kernel1d"]

"""The fully connected CRF (Krähenbühl & Koltun 2011) as a post-processing step on the softmax.

Every pixel is connected to every other one. The energy of a labelling ``x`` is

    E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j)

with the unary ``U_i = -log p_i`` (the network's softmax at image resolution), the Potts
compatibility ``mu(l, l') = [l != l']`` and two Gaussian kernels:

- smoothness: ``w_s exp(-|p_i - p_j|^2 / 2 theta_s^2)`` (pixel positions ``p``): removes small
  isolated regions;
- appearance (bilateral): ``w_a exp(-|p_i - p_j|^2 / 2 theta_a^2 - |I_i - I_j|^2 / 2
  theta_c^2)`` (intensities ``I``, every channel of the image): nearby pixels of similar colour
  take the same label, so labels snap to the image's edges.

Mean-field inference approximates the posterior by independent per-pixel distributions ``Q``
and iterates ``Q <- softmax(-U + sum_m w_m K_m Q)``; each step is one Gaussian filtering of
``Q`` per kernel. The kernels are normalised symmetrically, ``K = D^-1/2 G D^-1/2`` with ``D``
the row sums of the Gaussian ``G`` (``NORMALIZE_SYMMETRIC``, the default of Krähenbühl's code
and pydensecrf), so a weight means the same at any kernel width.

The smoothness kernel is a separable Gaussian blur (exact up to its truncation at 4 sigma). The
appearance kernel lives in 2 + C dimensions (C image channels) and is filtered with the
permutohedral lattice (Adams, Baek & Davis 2010), as in Krähenbühl's code, here in vectorised
torch: the lattice is built once per image (:class:`PermutohedralLattice`: one sort of the
vertices' packed keys), then every filtering is a splat, a ``[1 2 1]`` blur along each of the
``d + 1`` lattice directions and a slice, each a product with a sparse (CSR) matrix, all linear
in the number of pixels. It approximates the Gaussian; ``tests/test_crf.py`` compares the
whole mean field with an exact O(N^2) one.

Entry points: :func:`dense_crf` (logits + image -> refined log-probabilities),
:class:`CRFParams` (its options, validated) and :class:`CRFLayer` (the same inference as a
differentiable layer with learnable kernel weights and label compatibility, CRF-as-RNN).
Greyscale images use their intensity as the appearance feature, any other channel count all of
its channels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pixelwise.errors import ConfigError

__all__ = [
    "CRFLayer",
    "CRFParams",
    "PermutohedralLattice",
    "appearance_features",
    "dense_crf",
    "GaussianBlur",
    "gaussian_blur",
    "mean_field",
    "parse_crf_options",
]

#: Images above this many pixels are refused by :func:`dense_crf`: 2048 x 2048. Its memory grows
#: with the pixels, about 0.8 KB per pixel for an RGB image and 11 classes (3 GB at the limit).
MAX_CRF_PIXELS = 2048 * 2048


@dataclass(frozen=True)
class CRFParams:
    """The CRF's options. Weights are the kernels' ``w`` (0 switches a kernel off), ``theta_*``
    their standard deviations: positions in pixels, colours in 0-255 intensity units.

    Defaults: chosen by a grid on CamVid *train* images (360x480) with a trained U-Net
    (``bench/crf.py --grid``, docs/crf.md); the smoothness kernel is Krähenbühl's and DeepLab's
    (w 3, theta 3)."""

    iterations: int = 5
    smooth_weight: float = 3.0
    smooth_xy: float = 3.0
    appearance_weight: float = 5.0
    appearance_xy: float = 80.0
    appearance_color: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool):
            raise ConfigError(f"--crf-iterations: must be a whole number, got {self.iterations!r}")
        if not 1 <= self.iterations <= 100:
            raise ConfigError(f"--crf-iterations: must be 1 to 100, got {self.iterations}")
        checks = (
            ("--crf-smooth W", self.smooth_weight, False),
            ("--crf-smooth THETA", self.smooth_xy, True),
            ("--crf-appearance W", self.appearance_weight, False),
            ("--crf-appearance THETA_XY", self.appearance_xy, True),
            ("--crf-appearance THETA_COLOR", self.appearance_color, True),
        )
        for name, value, positive in checks:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"{name}: must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                need = "a positive number" if positive else "a number >= 0 (0: kernel off)"
                raise ConfigError(f"{name}: must be {need}, got {value}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _numbers(text: str, option: str, names: tuple[str, ...]) -> list[float]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != len(names):
        raise ConfigError(
            f"{option} {text}: expected {len(names)} comma-separated numbers {','.join(names)}"
        )
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{option} {text}: expected numbers {','.join(names)}") from None


def parse_crf_options(
    iterations: int | None = None, smooth: str | None = None, appearance: str | None = None
) -> CRFParams:
    """:class:`CRFParams` from the command line's ``--crf-iterations N``, ``--crf-smooth
    W,THETA`` and ``--crf-appearance W,THETA_XY,THETA_COLOR`` (``None``: the default)."""
    kw: dict[str, float | int] = {}
    if iterations is not None:
        kw["iterations"] = iterations
    if smooth is not None:
        kw["smooth_weight"], kw["smooth_xy"] = _numbers(smooth, "--crf-smooth", ("W", "THETA"))
    if appearance is not None:
        names = ("W", "THETA_XY", "THETA_COLOR")
        w, xy, color = _numbers(appearance, "--crf-appearance", names)
        kw.update(appearance_weight=w, appearance_xy=xy, appearance_color=color)
    return CRFParams(**kw)


# --------------------------------------------------------------------------------------------
# the permutohedral lattice


class PermutohedralLattice:
    """Gaussian filtering ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (approximately) of values
    ``v (N, C)`` at points ``f (N, d)``, in O(N d^2) per filtering (Adams et al. 2010).

    Each point is embedded in the hyperplane ``sum = 0`` of ``R^(d+1)``, tessellated by
    simplices; a point splats its value onto the ``d + 1`` vertices of its simplex with
    barycentric weights, the vertices' values are blurred with ``[1 2 1] / 2`` along each of the
    ``d + 1`` lattice directions, and each point reads back (slices) the weighted sum of its
    vertices. The features are scaled (as in Krähenbühl's code) so that the blur approximates a
    Gaussian of standard deviation 1 in feature units.

    The three steps are sparse matrices built once (CSR, so that each filtering is a few sparse
    matrix products): ``slicing (N, M)`` holds each point's ``d + 1`` barycentric weights,
    ``splatting`` is its transpose, ``blurs`` the ``d + 1`` blurs ``(M, M)``, each ``I + (P_a +
    P_b) / 2`` with ``P`` the shifts to the two neighbours along a direction (a vertex without a
    neighbour there gets nothing from it). ``vertices``: ``M``.
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"features must be (N, d) with N > 0, got {tuple(features.shape)}")
        self.num_points, self.dim = features.shape
        rem0, rank, weights = self._simplices(features)
        self._build(rem0, rank, weights)
        self.alpha = 1.0 / (1.0 + 2.0 ** (-self.dim))  # the lattice's normalising constant

    def _simplices(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each point's simplex: its remainder-0 vertex ``rem0 (N, d+1)`` (int64), the ``rank``
        of each coordinate (the canonical simplex's permutation) and the barycentric weights
        ``(N, d+1)`` of its vertices."""
        n, d = features.shape
        f = features.to(torch.float64)
        i = torch.arange(1, d + 1, dtype=torch.float64, device=f.device)
        # E (p. 5 of Adams et al.), scaled so that the blur is a Gaussian of std 1
        cf = f * (math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt(i * (i + 1)))
        elevated = torch.cat([cf.flip(1).cumsum(1).flip(1), cf.new_zeros(n, 1)], 1)  # sum_k>=j
        elevated[:, 1:] -= i * cf
        # the nearest remainder-0 lattice point: each coordinate rounded to a multiple of d+1
        rem0 = torch.round(elevated / (d + 1))
        total = rem0.sum(1, keepdim=True).long()
        rem0 *= d + 1
        # rank: position of each coordinate's residual in decreasing order (ties: index order)
        res = elevated - rem0
        later = torch.arange(d + 1, device=f.device)
        rank = total.expand(n, d + 1).clone()  # + total: back onto the plane sum = 0
        for j in range(d + 1):  # rank_i counts the j with res_j > res_i, or equal and j < i
            rank += (res[:, j : j + 1] > res) | ((res[:, j : j + 1] == res) & (later > j))
        shift = (rank < 0).long() - (rank > d).long()
        rank += (d + 1) * shift
        rem0 += (d + 1) * shift
        # barycentric coordinates (p. 10 of Adams et al.)
        resid = (elevated - rem0) / (d + 1)
        bary = f.new_zeros(n, d + 2)
        bary.scatter_add_(1, d - rank, resid)
        bary.scatter_add_(1, d - rank + 1, -resid)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        return rem0.long(), rank, bary[:, : d + 1].to(torch.float32)

    def _build(self, rem0: torch.Tensor, rank: torch.Tensor, weights: torch.Tensor) -> None:
        """Number the distinct vertices, find their neighbours, and build the sparse matrices.

        A vertex's key is its first ``d`` coordinates (the last follows from ``sum = 0``),
        packed into one int64 code ``sum_i key_i stride_i`` with room on each side for the
        neighbours' +-(d+1): numbering the vertices is one sort, and a neighbour's code is the
        vertex's code plus a constant, looked up by ``searchsorted``. Vertex ``r`` of a simplex
        is ``rem0 + r``, minus ``d + 1`` on the coordinates ranked above ``d - r`` (the
        canonical simplex), so its code is ``code(rem0) + r sum(stride)`` minus ``d + 1`` times
        the strides of the ``r`` top-ranked coordinates: no ``(N, d+1, d)`` key array."""
        n, d1 = rem0.shape
        d = d1 - 1
        dev = rem0.device
        lo = rem0[:, :d].min(0).values - 2 * d1
        strides, s = [], 1
        for extent in (rem0[:, :d].max(0).values - lo + 2 * d1 + 1).tolist():
            strides.append(s)
            s *= int(extent)
        if s >= 2**62:  # only for features spread over tens of thousands of kernel widths
            raise ConfigError(
                "--crf: the appearance kernel is too narrow for this image (the lattice has too "
                "many cells); use a larger THETA_XY / THETA_COLOR in --crf-appearance"
            )
        stride = torch.tensor([*strides, 0], dtype=torch.int64, device=dev)  # last: implicit
        base = ((rem0 - torch.cat([lo, lo.new_zeros(1)])) * stride).sum(1, keepdim=True)
        by_rank = torch.zeros_like(rank).scatter_(1, rank, stride.expand(n, d1).contiguous())
        top = torch.cat([by_rank.new_zeros(n, 1), by_rank.flip(1).cumsum(1)[:, :d]], 1)
        ones = int(stride.sum())
        r = torch.arange(d1, device=dev)
        codes, perm = (base + r * ones - d1 * top).reshape(-1).sort(stable=True)
        new = torch.ones_like(codes, dtype=torch.bool)
        new[1:] = codes[1:] != codes[:-1]
        unique = codes[new]
        m = unique.numel()
        vertex = new.cumsum(0) - 1  # vertex number of each sorted (point, corner)
        offsets = torch.empty_like(vertex)
        offsets[perm] = vertex
        offsets = offsets.view(n, d1)
        counts = torch.bincount(vertex, minlength=m)
        self.splatting = _csr(counts, perm // d1, weights.reshape(-1)[perm], (m, n))
        cols, order = offsets.sort(1)
        self.slicing = _csr(
            torch.full((n,), d1), cols.reshape(-1), weights.gather(1, order).reshape(-1), (n, m)
        )
        # neighbours along direction j: key - 1 everywhere but key[j] + d, and key + 1 but
        # key[j] - d (for j = d, the implicit last coordinate: key - 1 and key + 1)
        own = torch.arange(m, device=dev)
        self.blurs = []
        for j in range(d1):
            delta = (d1 * strides[j] if j < d else 0) - ones  # to the neighbour key - 1 (+d)
            target = unique + delta
            pos = torch.searchsorted(unique, target).clamp_(max=m - 1)
            found = unique[pos] == target
            first = torch.where(found, pos, m)  # m: none
            second = torch.full_like(first, m)  # the other side: the inverse relation
            second[pos[found]] = own[found]
            low, high = (first, second) if delta < 0 else (second, first)  # columns in order
            cols = torch.stack([low, own, high], 1)
            vals = torch.tensor([0.5, 1.0, 0.5]).expand(m, 3)
            keep = cols < m
            self.blurs.append(_csr(keep.sum(1), cols[keep], vals[keep], (m, m)))
        self.vertices = m
        self.offsets, self.weights = offsets, weights

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """``values (N, C)`` -> ``(N, C)``: splat, blur, slice (differentiable in ``values``)."""
        table = _product(self.splatting, values, self.slicing)
        for blur in self.blurs:  # each blur is symmetric: its own transpose
            table = _product(blur, table, blur)
        return _product(self.slicing, table, self.splatting) * self.alpha


class _SparseProduct(torch.autograd.Function):
    """``a @ x`` for a sparse ``a`` whose transpose ``at`` is at hand: the gradient is ``at @
    g``, with ``g`` made contiguous (sparse products refuse strided gradients)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        ctx.at = at
        return a @ x

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return ctx.at @ g.contiguous(), None, None


def _product(a: torch.Tensor, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``a @ x`` (sparse ``a``, its transpose ``at``), differentiable in ``x``."""
    if x.requires_grad:
        return _SparseProduct.apply(x, a, at)
    return a @ x


def _csr(
    row_counts: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """A CSR matrix from the number of entries in each row and the entries in row order."""
    crow = torch.zeros(size[0] + 1, dtype=torch.int64, device=cols.device)
    torch.cumsum(row_counts, 0, out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we need
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, values.to(torch.float32), size)


# --------------------------------------------------------------------------------------------
# kernels and inference


class GaussianBlur:
    """The smoothness kernel's filter: ``v (H * W, C)`` (row-major pixels) filtered with the
    unnormalised Gaussian ``exp(-|p_i - p_j|^2 / 2 sigma^2)`` of the pixel positions, exactly
    up to its truncation at 4 sigma and with nothing outside the image. Separable: two products
    with banded sparse matrices, faster on a CPU thread than a convolution of many planes."""

    def __init__(self, height: int, width: int, sigma: float) -> None:
        self.height, self.width = height, width
        self.rows, self.cols = _band(height, sigma), _band(width, sigma)

    def row_sums(self) -> torch.Tensor:
        """``G 1 (H * W, 1)``: the product of the two bands' row sums (separable)."""
        ones_h, ones_w = torch.ones(self.height, 1), torch.ones(self.width, 1)
        return ((self.rows @ ones_h) * (self.cols @ ones_w).T).reshape(-1, 1)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        h, w, c = self.height, self.width, v.shape[1]
        y = _product(self.rows, v.reshape(h, w * c), self.rows)  # symmetric bands
        y = y.view(h, w, c).transpose(0, 1).reshape(w, h * c)
        return _product(self.cols, y, self.cols).view(w, h, c).transpose(0, 1).reshape(h * w, c)


def _band(n: int, sigma: float) -> torch.Tensor:
    """The ``(n, n)`` matrix ``exp(-(i - j)^2 / 2 sigma^2)`` for ``|i - j| <= 4 sigma``, CSR."""
    radius = min(n - 1, math.ceil(4 * sigma))
    offsets = torch.arange(-radius, radius + 1)
    cols = torch.arange(n).unsqueeze(1) + offsets
    keep = (cols >= 0) & (cols < n)
    vals = torch.exp(-(offsets.double() ** 2) / (2 * sigma**2)).float().expand(n, -1)
    return _csr(keep.sum(1), cols[keep], vals[keep], (n, n))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x (C, H, W)`` filtered with :class:`GaussianBlur` (the smoothness kernel)."""
    c, h, w = x.shape
    out = GaussianBlur(h, w, sigma)(x.reshape(c, h * w).T)
    return out.T.reshape(c, h, w)


def appearance_features(image: torch.Tensor, theta_xy: float, theta_color: float) -> torch.Tensor:
    """``(H * W, 2 + C)`` features ``(x / theta_xy, y / theta_xy, I_c / theta_color ...)`` of an
    image ``(H, W, C)`` (0-255), row-major."""
    h, w, c = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    pos = torch.stack([xs, ys], -1).reshape(-1, 2) / theta_xy
    col = image.reshape(h * w, c).to(torch.float32) / theta_color
    return torch.cat([pos, col], 1)


class _SymmetricKernel:
    """A filter ``v -> D^-1/2 G D^-1/2 v`` with ``D = G 1`` (``row_sums``, else computed),
    ``G`` given as a function."""

    def __init__(self, gaussian, num_points: int, row_sums: torch.Tensor | None = None) -> None:
        self.gaussian = gaussian
        if row_sums is None:
            row_sums = gaussian(torch.ones(num_points, 1))
        self.norm = (row_sums + 1e-20).rsqrt()

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.gaussian(v * self.norm) * self.norm


def mean_field(
    unary: torch.Tensor, kernels, iterations: int, compat: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean-field inference: ``unary (N, K)`` = ``-log p``, ``kernels`` a list of ``(weight,
    filter)`` with ``filter: (N, K) -> (N, K)``; ``compat (K, K)``: the label compatibility
    applied to the weighted messages (None: Potts, the identity: agreeing with similar pixels
    lowers the energy). Returns ``log Q (N, K)``."""
    if not kernels:  # nothing to pass: the network's own distribution
        return torch.log_softmax(-unary, 1)
    q = torch.softmax(-unary, 1)
    energy = -unary
    for _ in range(iterations):
        message = sum(weight * filt(q) for weight, filt in kernels)
        if compat is not None:
            message = message @ compat
        energy = -unary + message
        q = torch.softmax(energy, 1)
    return torch.log_softmax(energy, 1)


def _as_hwc(image: np.ndarray | torch.Tensor, h: int, w: int) -> torch.Tensor:
    img = torch.as_tensor(np.asarray(image)) if not torch.is_tensor(image) else image
    if img.ndim == 2:
        img = img.unsqueeze(-1)
    if img.ndim != 3 or tuple(img.shape[:2]) != (h, w):
        raise ConfigError(
            f"--crf: the image is {tuple(img.shape)} but the scores are {h}x{w}: the CRF needs "
            "the image at the scores' resolution"
        )
    return img.cpu().to(torch.float32)


def dense_crf(
    logits: torch.Tensor,
    image: np.ndarray | torch.Tensor,
    params: CRFParams | None = None,
) -> torch.Tensor:
    """Refine ``logits (K, H, W)`` (or log-probabilities) of ``image (H, W[, C])`` (uint8 or
    0-255 values, any number of channels) with the fully connected CRF; returns the
    log-probabilities ``log Q (K, H, W)`` after ``params.iterations`` mean-field steps (their
    argmax is the refined label map). Runs on the CPU in float32; the result is on the logits'
    device."""
    p = params or CRFParams()
    k, h, w = logits.shape
    _check_size(h, w)
    img = _as_hwc(image, h, w)
    unary = -torch.log_softmax(logits.detach().float().cpu(), 0).reshape(k, -1).T.contiguous()
    kernels = _kernels(img, p)
    weights = {"smooth": p.smooth_weight, "appearance": p.appearance_weight}
    log_q = mean_field(unary, [(weights[name], f) for name, f in kernels], p.iterations)
    return log_q.T.reshape(k, h, w).contiguous().to(logits.device)


def _check_size(h: int, w: int) -> None:
    if h * w > MAX_CRF_PIXELS:
        raise ConfigError(
            f"--crf: an image of {w}x{h} pixels is over the CRF's limit of "
            f"{MAX_CRF_PIXELS:,} pixels (2048x2048; its memory grows with the pixels): resize "
            "it or predict without --crf"
        )


def _kernels(img: torch.Tensor, p: CRFParams) -> list[tuple[str, _SymmetricKernel]]:
    """The normalised filters of the kernels ``p`` switches on, for ``img (H, W, C)``."""
    h, w, _ = img.shape
    kernels = []
    if p.smooth_weight > 0:
        blur = GaussianBlur(h, w, p.smooth_xy)
        kernels.append(("smooth", _SymmetricKernel(blur, h * w, blur.row_sums())))
    if p.appearance_weight > 0:
        lattice = PermutohedralLattice(
            appearance_features(img, p.appearance_xy, p.appearance_color)
        )
        kernels.append(("appearance", _SymmetricKernel(lattice.filter, h * w)))
    return kernels


class CRFLayer(torch.nn.Module):
    """The dense CRF as a layer (CRF-as-RNN, Zheng et al. 2015): the same mean field unrolled
    for ``params.iterations`` steps, differentiable in the logits, with learnable kernel weights
    (kept positive: their logs are the parameters) and a learnable label compatibility ``(K,
    K)`` (Potts, the identity, at the start). The kernels' widths stay ``params``'s.

    ``forward(logits (K, H, W), image (H, W, C))`` -> ``log Q (K, H, W)``, on the CPU."""

    def __init__(self, num_classes: int, params: CRFParams | None = None) -> None:
        super().__init__()
        self.params = params or CRFParams()
        w = [max(self.params.smooth_weight, 1e-3), max(self.params.appearance_weight, 1e-3)]
        self.log_weights = torch.nn.Parameter(torch.tensor(w).log())
        self.compat = torch.nn.Parameter(torch.eye(num_classes))

    def weights(self) -> dict[str, float]:
        w = self.log_weights.detach().exp().tolist()
        return {"smooth": w[0], "appearance": w[1]}

    def forward(self, logits: torch.Tensor, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        k, h, w = logits.shape
        _check_size(h, w)
        img = _as_hwc(image, h, w)
        unary = -torch.log_softmax(logits.float().cpu(), 0).reshape(k, -1).T.contiguous()
        on = CRFParams(**{**self.params.to_dict(), "smooth_weight": 1.0, "appearance_weight": 1.0})
        weights = dict(zip(("smooth", "appearance"), self.log_weights.exp(), strict=True))
        kernels = [(weights[name], f) for name, f in _kernels(img, on)]
        log_q = mean_field(unary, kernels, self.params.iterations, self.compat)
        return log_q.T.reshape(k, h, w).contiguous().to(logits.device)

"""Pixel-wise cross-entropy with loss masking and class re-weighting.

The loss of an image is the mean, over *labelled* pixels only, of the per-pixel negative
log-likelihood, each optionally multiplied by its class weight and by a per-pixel weight map:

    loss = sum_{x labelled} w_class(y_x) * w_map(x) * -log softmax(z_x)[y_x]  /  #labelled

Pixels whose label is ``ignore_index`` (255: unlabeled, void, outside the field of view, or every
pixel but a few clicked points) contribute nothing and are not counted in the denominator, so a
sparsely labelled image gets as much weight per labelled pixel as a dense one. (PyTorch's own
weighted ``cross_entropy`` divides by the sum of the class weights instead; we divide by the pixel
count so that class weights change the balance between classes and not the overall step size.)

``soft_dice_loss`` is nnU-Net's companion term (``--loss dice-ce`` adds it to the cross-entropy):
one minus the soft Dice of the softmax against the labels, per class over the whole batch,
averaged over the classes that occur in the batch's labels or predictions.

``crf_loss`` is the regularised loss of weak supervision (Tang et al., "On Regularized Losses
for Weakly-supervised CNN Segmentation", ECCV 2018; the local form of Obukhov et al.'s Gated CRF
loss, 2019): on *every* pixel, labelled or not, the expected disagreement of its softmax with
its neighbours', weighted by the dense CRF's appearance kernel. It carries a few clicked labels
to the image's edges: pixels of similar colour close by are pushed to take one label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "align_target",
    "contrast_scale",
    "crf_loss",
    "pixel_cross_entropy",
    "soft_cross_entropy",
    "soft_dice_loss",
]


def align_target(
    target: torch.Tensor, height: int, width: int, border: int | None = None
) -> torch.Tensor:
    """Cut ``target (N, H, W)`` to the ``height x width`` window the logits cover.

    Valid-convolution networks (the original U-Net) predict a window smaller than their input:
    it starts ``border`` pixels in from the top-left corner (``model.border``). Without a border
    the window is centred.
    """
    h, w = target.shape[-2:]
    if (h, w) == (height, width):
        return target
    if height > h or width > w:
        raise ValueError(f"logits {height}x{width} are larger than the mask {h}x{w}")
    if border is None:
        top, left = (h - height) // 2, (w - width) // 2
    else:
        top = left = border
        if top + height > h or left + width > w:
            raise ValueError(f"a {height}x{width} window at border {border} exceeds {h}x{w}")
    return target[..., top : top + height, left : left + width]


def pixel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
    border: int | None = None,
) -> torch.Tensor:
    """Cross-entropy averaged over labelled pixels.

    Args:
        logits: ``(N, C, h, w)`` raw scores.
        target: ``(N, H, W)`` int64 labels; cut to the logits' ``h x w`` when larger (valid U-Net).
        class_weights: optional ``(C,)`` weight per class (e.g. median-frequency balancing).
        pixel_weights: optional ``(N, H, W)`` per-pixel weights (e.g. the U-Net border weight
            map), cropped like ``target``.
        ignore_index: label of pixels that carry no loss.
        border: offset of the logits window inside the target (``model.border`` of a valid
            U-Net); ``None`` centres it.

    Returns:
        Scalar loss. If no pixel is labelled the loss is ``0`` (still differentiable).
    """
    h, w = logits.shape[-2:]
    target = align_target(target, h, w, border)
    nll = F.cross_entropy(
        logits, target, weight=class_weights, ignore_index=ignore_index, reduction="none"
    )
    if pixel_weights is not None:
        nll = nll * align_target(pixel_weights, h, w, border)
    count = (target != ignore_index).sum()
    return nll.sum() / count.clamp(min=1)


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft labels (a teacher's probabilities, as in distillation).

    Args:
        logits: ``(N, C, H, W)`` raw scores.
        target: ``(N, C, H, W)`` probabilities (each pixel's sum to 1).
        mask: optional ``(N, H, W)`` bool: the pixels that carry the loss.

    Returns:
        ``-sum_c target log softmax(logits)`` averaged over the masked pixels (``0``, still
        differentiable, when none is).
    """
    nll = -(target * F.log_softmax(logits.float(), 1)).sum(1)
    if mask is None:
        return nll.mean()
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    border: int | None = None,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """``1 - mean_c 2 |P_c . T_c| / (|P_c| + |T_c|)`` over labelled pixels (batch Dice).

    Args:
        logits: ``(N, C, h, w)`` raw scores; ``P = softmax(logits)``.
        target: ``(N, H, W)`` int64 labels (cut like :func:`pixel_cross_entropy` does);
            ``ignore_index`` pixels count for neither P nor T.
        smooth: added to numerator and denominator (nnU-Net's 1e-5).

    Returns:
        Scalar in [0, 1]; 0 when every labelled pixel is predicted with certainty. Classes with
        no mass in P or T over the batch are left out of the mean.
    """
    h, w = logits.shape[-2:]
    target = align_target(target, h, w, border)
    labelled = (target != ignore_index).unsqueeze(1)  # (N, 1, h, w)
    probs = torch.softmax(logits.float(), dim=1) * labelled
    safe = torch.where(labelled.squeeze(1), target, torch.zeros_like(target))
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype) * labelled
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    present = total > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    dice = (2 * intersection + smooth) / (total + smooth)
    return 1 - dice[present].mean()


def crf_loss(
    logits: torch.Tensor,
    image: torch.Tensor,
    radius: int = 5,
    sigma_xy: float = 5.0,
    sigma_color: float | None = 15.0,
    stride: int = 2,
) -> torch.Tensor:
    """The relaxed Potts energy of the softmax of ``logits (N, K, H, W)`` under a local
    bilateral kernel of ``image (N, C, H, W)`` (intensities 0-255, not normalised), per pixel:

        sum_j k_ij (1 - p_i . p_j) / #neighbours,
        k_ij = exp(-|x_i - x_j|^2 / 2 sigma_xy^2 - |I_i - I_j|^2 / 2 sigma_color^2)

    over the ``(2 radius + 1)^2 - 1`` neighbours ``j`` of ``i`` on a grid ``stride`` times
    coarser than the image (both are average-pooled first; ``sigma_xy`` is in image pixels),
    averaged over the pixels. 0 when every neighbourhood agrees, at most 1.

    ``sigma_color=None`` takes it from each image (:func:`contrast_scale`): the median colour
    difference of neighbouring pixels, so that an edge is an edge relative to the image's own
    contrast (a faint edge, such as a retina's vessel against its background, still counts)."""
    if stride > 1:
        logits = F.avg_pool2d(logits, stride, ceil_mode=True)
        image = F.avg_pool2d(image.float(), stride, ceil_mode=True)
    probs, image = torch.softmax(logits.float(), 1), image.float()
    if sigma_color is None:
        sigma_color = contrast_scale(image).view(-1, 1, 1)
    h, w = probs.shape[-2:]
    total = probs.new_zeros(())
    # each pair once: the offsets (dy, dx) of one half-plane, each pair counted twice below
    half = [(dy, dx) for dy in range(radius + 1) for dx in range(-radius, radius + 1)]
    for dy, dx in [(dy, dx) for dy, dx in half if dy > 0 or dx > 0]:
        if dy >= h or abs(dx) >= w:
            continue
        a = (slice(None), slice(None), slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
        b = (slice(None), slice(None), slice(dy, h), slice(max(0, dx), w - max(0, -dx)))
        colour = ((image[a] - image[b]) ** 2).sum(1) / (2 * sigma_color**2)
        near = (dy * dy + dx * dx) * stride**2 / (2 * sigma_xy**2)
        agree = (probs[a] * probs[b]).sum(1)
        total = total + 2 * (torch.exp(-near - colour) * (1 - agree)).sum()
    neighbours = (2 * radius + 1) ** 2 - 1
    return total / (probs.shape[0] * h * w * neighbours)


def contrast_scale(image: torch.Tensor, floor: float = 1.0) -> torch.Tensor:
    """``(N,)``: per image of ``image (N, C, H, W)``, the median over horizontally and
    vertically neighbouring pixel pairs of their colour distance ``|I_i - I_j|`` (at least
    ``floor``). Flat regions' noise sits below it and edges well above it, whatever the
    image's contrast (the spirit of GrabCut's beta, Rother et al. 2004, robust to a few strong
    edges such as a field of view's border)."""
    image = image.float()
    dx = ((image[..., :, 1:] - image[..., :, :-1]) ** 2).sum(1).flatten(1)
    dy = ((image[..., 1:, :] - image[..., :-1, :]) ** 2).sum(1).flatten(1)
    return torch.cat([dx, dy], 1).median(1).values.sqrt().clamp_min(floor)

"""Pixel-wise cross-entropy with loss masking and class re-weighting.

The loss of an image is the mean, over *labelled* pixels only, of the per-pixel negative
log-likelihood, each optionally multiplied by its class weight and by a per-pixel weight map:

    loss = sum_{x labelled} w_class(y_x) * w_map(x) * -log softmax(z_x)[y_x]  /  #labelled

Pixels whose label is ``ignore_index`` (255: unlabeled, void, outside the field of view, or every
pixel but a few clicked points) contribute nothing and are not counted in the denominator, so a
sparsely labelled image gets as much weight per labelled pixel as a dense one. (PyTorch's own
weighted ``cross_entropy`` divides by the sum of the class weights instead; we divide by the pixel
count so that class weights change the balance between classes and not the overall step size.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["align_target", "pixel_cross_entropy"]


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

"""The contract every registry model keeps: :class:`SegmentationModel`.

Prediction, tiling, engines, export and training read a model only through these members, so a
new architecture that subclasses :class:`SegmentationModel` and fills them in works everywhere
(``tests/models/test_contract.py`` runs every registered model through them).

Shapes use N (batch), C (channels), K (classes), H, W (height, width).
"""

from __future__ import annotations

from torch import nn

from pixelwise.errors import ConfigError

__all__ = ["SegmentationModel"]


class SegmentationModel(nn.Module):
    """Base class of the model zoo: images ``(N, in_channels, H, W)`` in, logits
    ``(N, num_classes, *output_size(H, W))`` out.

    Members (a subclass sets the attributes in ``__init__`` through ``super().__init__`` and
    overrides the methods whose defaults do not describe it):

    - ``in_channels``: image channels C the model takes.
    - ``num_classes``: K, the logits' channels.
    - ``border``: input pixels lost on each side: the logits of an input from
      :meth:`valid_input_size` are ``(H - 2 * border, W - 2 * border)`` and pixel ``(i, j)`` of
      them belongs to input pixel ``(i + border, j + border)``. 0 for every model but the valid
      (unpadded) U-Net.
    - ``tile_grid``: the step (pixels) on which tiles start: every pooling phase of a tile is the
      whole image's when tiles start on multiples of it (``2**depth`` for the U-Nets; 32, five 2x2
      poolings, by default). For a ``border > 0`` model it is also the period of
      :meth:`valid_input_size`: shifting the input by a multiple of it shifts the logits exactly.
    - ``pad`` / ``pad_after``: mirror padding ``(top, left)`` / ``(bottom, right)`` the model
      applies to its own input (the convolutionalized FCN; ``(0, 0)`` for the others). A traced
      graph (ONNX, TorchScript) does it in one reflection, which needs inputs larger than it.
    - ``features``: a fixed (not learned) module that the model applies to its input and feeds
      beside it (``unet_same(filter_bank=True)``: ilastik's filter bank), or None. Its output
      depends on the image alone, so a trainer may compute it once per image and pass crops of
      it as ``forward(x, features=...)``; models with ``features`` None take ``forward(x)``.
    - :meth:`output_size`: the logits' ``(h, w)`` for an ``H x W`` input; ``ConfigError`` for
      inputs the model cannot take (too small).
    - :meth:`valid_input_size`: for wanted logits ``(h, w)``, the smallest input the model takes
      exactly (every pooling sees even sizes where that matters) whose logits cover them: at
      least ``(h + 2 * border, w + 2 * border)``; for ``border == 0`` models the smallest input
      ``>= (h, w)`` they take (their minimum size for small ones).
    """

    in_channels: int
    num_classes: int
    border: int = 0
    tile_grid: int = 32
    pad: tuple[int, int] = (0, 0)
    pad_after: tuple[int, int] = (0, 0)
    features: nn.Module | None  # set in __init__ (a class default would hide a submodule)

    def __init__(self, num_classes: int, in_channels: int = 3, border: int = 0) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.border = int(border)
        self.features = None

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Logits ``(h', w')`` for an ``h x w`` input: ``(h - 2 * border, w - 2 * border)`` by
        default; ``ConfigError`` when that is empty."""
        out = (h - 2 * self.border, w - 2 * self.border)
        if min(out) < 1:
            smallest = 2 * self.border + 1
            raise ConfigError(
                f"input {h}x{w} is too small for {type(self).__name__}: "
                f"the smallest is {smallest}x{smallest}"
            )
        return out

    def valid_input_size(self, h: int, w: int) -> tuple[int, int]:
        """The smallest input ``(H, W)`` the model takes exactly whose logits cover ``(h, w)``.
        Default: ``(h + 2 * border, w + 2 * border)`` (``h, w`` at least 1), for models that
        take any size."""
        return max(1, h) + 2 * self.border, max(1, w) + 2 * self.border

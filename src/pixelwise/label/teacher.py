"""A random-forest teacher for the live model (``TrainerOptions.forest_weight``).

ilastik's pixel classifier (a random forest on a fixed filter bank, Sommer et al. 2011) is
fitted on the filter-bank features of the labelled pixels, the same 48 features per channel that
the live model's first convolution sees (:class:`pixelwise.models.filterbank.FilterBank`). Its
class probabilities on the unlabelled pixels of each training crop are soft labels for the
network, beside the strokes' own loss: knowledge distillation (Hinton et al. 2015) from a
learner that needs no training time and labels every pixel, into the network, which adds
context and smoothness and stays a plain exportable model. The forest is refitted when the
labels change, at most once per training period (:meth:`Trainer.train_for`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


class ForestTeacher:
    """A random forest of ``trees`` trees fitted on at most ``max_samples`` labelled pixels
    (drawn evenly over the labelled images), over ``num_classes`` classes."""

    def __init__(self, trees: int, num_classes: int, seed: int, max_samples: int = 50_000):
        self.trees, self.num_classes, self.seed = trees, num_classes, seed
        self.max_samples = max_samples
        self.forest = None
        self.fits = 0

    def refit(self, labelled: Iterable[tuple[torch.Tensor, np.ndarray]]) -> bool:
        """Fit on ``labelled``: ``(features (F, H', W'), mask (H, W))`` pairs, ``H' >= H`` and
        ``W' >= W`` (features of the image padded at the bottom and right), 255 = unlabelled;
        False (the last forest kept) when no pixel is labelled."""
        pairs = list(labelled)
        per_image = self.max_samples // max(1, len(pairs))
        rng = np.random.default_rng(self.seed + self.fits)
        xs, ys = [], []
        for feats, mask in pairs:
            index = np.flatnonzero(mask.reshape(-1) != 255)
            if len(index) > per_image:
                index = rng.choice(index, per_image, replace=False)
            rows, cols = np.divmod(index, mask.shape[1])
            xs.append(feats[:, rows, cols].T.float().numpy())
            ys.append(mask.reshape(-1)[index])
        if not xs or not sum(len(y) for y in ys):
            return False
        from sklearn.ensemble import RandomForestClassifier

        forest = RandomForestClassifier(self.trees, n_jobs=1, random_state=self.seed + self.fits)
        forest.fit(np.concatenate(xs), np.concatenate(ys))
        self.forest = forest
        self.fits += 1
        return True

    def probabilities(self, feats: torch.Tensor) -> torch.Tensor | None:
        """The forest's class probabilities ``(B, num_classes, H, W)`` of crops whose
        features are ``feats (B, F, H, W)``; None before the first fit."""
        if self.forest is None:
            return None
        b, f, h, w = feats.shape
        rows = feats.permute(0, 2, 3, 1).reshape(-1, f).float().numpy()
        known = self.forest.predict_proba(rows)  # (N, classes seen in the labels)
        probs = np.zeros((len(rows), self.num_classes), np.float32)
        probs[:, self.forest.classes_] = known
        return torch.from_numpy(probs).reshape(b, h, w, -1).permute(0, 3, 1, 2)

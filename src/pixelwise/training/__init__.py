"""Training: ``train(TrainConfig(...))`` is what ``pixelwise train`` calls.

- :mod:`.config`: every option of a run, with the metadata the CLI and the resume rules use;
- :mod:`.checks`: the checks of those options;
- :mod:`.setup`: data, model, run directory, batches and optimizer, made before the first step;
- :mod:`.loop`: the training loop, read top to bottom;
- :mod:`.resume`: continuing a run from its committed checkpoint;
- :mod:`.budget`: the wall-clock budget;
- :mod:`.signals`, :mod:`.amp`, :mod:`.records`: Ctrl-C, mixed precision, metrics and pictures.

The loop and the resume rules import torch; they are loaded on first use, so that reading the
options (``pixelwise --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from pixelwise.training.config import TrainConfig

__all__ = [
    "RESUME_FREE_OPTIONS",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "resume_config",
    "train",
]

_LAZY = {
    "train": "pixelwise.training.loop",
    "TrainingDiverged": "pixelwise.training.loop",
    "RESUME_FREE_OPTIONS": "pixelwise.training.resume",
    "resume_config": "pixelwise.training.resume",
    "TrainingInterrupted": "pixelwise.training.signals",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixelwise.training' has no attribute {name!r}")

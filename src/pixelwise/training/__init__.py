"""Training: ``train(TrainConfig(...))`` is what ``pixelwise train`` calls.

- :mod:`.config`: every option of a run, with the metadata the CLI and the resume rules use;
- :mod:`.checks`: the checks of those options;
- :mod:`.loop`: the training loop.
"""

from pixelwise.training.config import TrainConfig
from pixelwise.training.loop import (
    RESUME_FREE_OPTIONS,
    TrainingDiverged,
    TrainingInterrupted,
    resume_config,
    train,
)

__all__ = [
    "RESUME_FREE_OPTIONS",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "resume_config",
    "train",
]

"""Training: ``train(TrainConfig(...))`` is what ``pixelwise train`` calls.

- :mod:`.config`: every option of a run, with the metadata the CLI and the resume rules use;
- :mod:`.checks`: the checks of those options;
- :mod:`.setup`: data, model, run directory, batches and optimizer, made before the first step;
- :mod:`.loop`: the training loop, read top to bottom;
- :mod:`.resume`: continuing a run from its committed checkpoint;
- :mod:`.signals`, :mod:`.amp`, :mod:`.records`: Ctrl-C, mixed precision, metrics and pictures.
"""

from pixelwise.training.config import TrainConfig
from pixelwise.training.loop import TrainingDiverged, train
from pixelwise.training.resume import RESUME_FREE_OPTIONS, resume_config
from pixelwise.training.signals import TrainingInterrupted

__all__ = [
    "RESUME_FREE_OPTIONS",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "resume_config",
    "train",
]

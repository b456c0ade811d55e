"""Training: the run's settings, its checkpoints, its batches and the loop.

``mimir_fast.train(...)`` (:func:`~mimir_fast.training.loop.train`) runs one pretraining or
finetuning run; :class:`TrainConfig` holds its settings.
"""

from .checkpoint import CHECKPOINT_NAME, MODEL_NAME, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import Trainer, TrainResult, train
from .schedule import learning_rate, step_seed

__all__ = [
    "CHECKPOINT_NAME",
    "MODEL_NAME",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "learning_rate",
    "load_checkpoint",
    "save_checkpoint",
    "step_seed",
    "train",
]

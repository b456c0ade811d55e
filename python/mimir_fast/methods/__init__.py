"""Training methods, each plugged into :func:`mimir_fast.train` through :class:`Method`."""

from .base import METHODS, Batch, Method, StepOutput, get_method, register_method
from .finetune import Finetuning
from .mae import MAEPretraining

__all__ = ["METHODS", "Batch", "Finetuning", "MAEPretraining", "Method", "StepOutput", "get_method",
           "register_method"]

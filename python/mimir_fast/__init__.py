"""mimir-fast: robust masked image modeling on Vision Transformers."""

from ._native import __version__
from .methods import Batch, Method, StepOutput, register_method
from .models import MaskedViT, MaskedViTConfig, create_model, list_models
from .train import TrainConfig, TrainResult, train

__all__ = [
    "Batch",
    "MaskedViT",
    "MaskedViTConfig",
    "Method",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "create_model",
    "list_models",
    "register_method",
    "train",
]

"""MaskedViT, its config, and the named presets."""

from .config import MaskedViTConfig
from .masked_vit import MaskedViT
from .presets import MAE_DECODER, MIMIR_DECODER, create_model, list_models

__all__ = [
    "MAE_DECODER",
    "MIMIR_DECODER",
    "MaskedViT",
    "MaskedViTConfig",
    "create_model",
    "list_models",
]

from .masked_vit import MaskedViT, MaskedViTConfig, create_model
from .presets import MAE_DECODER, MIMIR_DECODER, list_models

__all__ = [
    "MAE_DECODER",
    "MIMIR_DECODER",
    "MaskedViT",
    "MaskedViTConfig",
    "create_model",
    "list_models",
]

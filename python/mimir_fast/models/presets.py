"""Named MaskedViT configurations.

Encoder sizes follow ViT (T/S/B/L); every preset carries MIMIR's small decoder (width 128,
depth 2, 16 heads); override ``decoder_embed_dim=512, decoder_depth=8`` for MAE's original one.
:func:`create_model` builds a preset by name. Like timm's registry, this module imports the
model, never the other way round.
"""

from __future__ import annotations

from typing import Any

from .config import MaskedViTConfig
from .masked_vit import MaskedViT

__all__ = [
    "ENCODER_SIZES",
    "MAE_DECODER",
    "MIMIR_DECODER",
    "PRESETS",
    "create_model",
    "list_models",
]

# name: (embed_dim, depth, num_heads)
ENCODER_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
MAE_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}
MIMIR_DECODER = {"decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 16}


def _preset(size: str, patch_size: int, img_size: int, num_classes: int) -> MaskedViTConfig:
    dim, depth, heads = ENCODER_SIZES[size]
    return MaskedViTConfig(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        num_classes=num_classes,
        **MIMIR_DECODER,
    )


PRESETS: dict[str, MaskedViTConfig] = {}
for _size in ENCODER_SIZES:
    PRESETS[f"vit_{_size}_patch16_224"] = _preset(_size, 16, 224, 1000)
for _size in ("tiny", "small", "base"):
    for _patch in (2, 4):
        PRESETS[f"vit_{_size}_patch{_patch}_32"] = _preset(_size, _patch, 32, 10)


def list_models() -> list[str]:
    """Names accepted by :func:`mimir_fast.create_model`."""
    return sorted(PRESETS)


def create_model(name: str, **overrides: Any) -> MaskedViT:
    """Build a preset by name (see :func:`list_models`); keyword overrides replace config fields.

    Args:
        name: a preset, e.g. "vit_small_patch2_32".
        overrides: config fields to replace, and ``kernels`` (the model's fast-path switch).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(PRESETS))}")
    kernels = overrides.pop("kernels", "auto")
    return MaskedViT(PRESETS[name], kernels=kernels, **overrides)

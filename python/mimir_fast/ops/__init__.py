"""Plain-PyTorch reference implementations of every op that has (or will have) a fused kernel.

These are the readable definitions: the model uses them on the CPU, and the tests compare
every fast path against them.
"""

from .loss import masked_mse_loss, normalize_patches
from .masking import ids_from_keep, random_masking
from .patch import patchify, unpatchify
from .pgd_step import pgd_step, project
from .pos_embed import sincos_pos_embed_2d

__all__ = [
    "ids_from_keep",
    "masked_mse_loss",
    "normalize_patches",
    "patchify",
    "pgd_step",
    "project",
    "random_masking",
    "sincos_pos_embed_2d",
    "unpatchify",
]

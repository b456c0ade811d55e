"""The checks of MaskedViT's public inputs: images and kept patch indices.

Each raises ``ValueError`` with a message a user can act on. The model calls them while its
``check_inputs`` is True (attacks turn it off after validating their inputs once).
"""

from __future__ import annotations

import torch

from .config import MaskedViTConfig

__all__ = ["check_ids_keep", "check_images"]


def check_images(x: torch.Tensor, config: MaskedViTConfig, name: str = "x") -> None:
    """A non-empty float batch (N, C, H, W) of the config's size, finite (no check when compiled).

    Args:
        x: the images. config: the model's architecture. name: the argument, for messages.
    """
    c = config
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got {x.dtype}; convert uint8 "
            "images with x.float() / 255"
        )
    if x.shape[1] != c.in_chans:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model expects in_chans={c.in_chans}"
        )
    if x.shape[2] != c.img_size or x.shape[3] != c.img_size:
        raise ValueError(
            f"{name} is {x.shape[2]}x{x.shape[3]} but the model expects "
            f"{c.img_size}x{c.img_size} images; resize them or build the model "
            f"with img_size={x.shape[2]}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_ids_keep(ids_keep: torch.Tensor, batch: int, num_patches: int) -> None:
    """int64 (batch, len_keep) with 1 <= len_keep <= L; on the CPU also distinct values in [0, L).

    Args:
        ids_keep: the kept patch indices. batch: N. num_patches: L.
    """
    if ids_keep.dtype != torch.int64 or ids_keep.ndim != 2 or ids_keep.shape[0] != batch:
        raise ValueError(
            f"ids_keep must be an int64 tensor of shape ({batch}, len_keep), got "
            f"{ids_keep.dtype} {tuple(ids_keep.shape)}"
        )
    if not 1 <= ids_keep.shape[1] <= num_patches:
        raise ValueError(
            f"ids_keep keeps {ids_keep.shape[1]} patches; it must keep between 1 and {num_patches}"
        )
    if ids_keep.device.type == "cpu":  # value checks would cost a host sync on a GPU
        if ids_keep.min() < 0 or ids_keep.max() >= num_patches:
            raise ValueError(f"ids_keep values must lie in [0, {num_patches})")
        if (ids_keep.sort(dim=1).values.diff(dim=1) == 0).any():
            raise ValueError("ids_keep repeats a patch index within a sample")

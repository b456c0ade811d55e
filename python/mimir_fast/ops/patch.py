"""Images <-> sequences of flattened patches."""

import torch

__all__ = ["patchify", "unpatchify"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping patches, row-major, each flattened as (p, p, C).

    Args:
        images: (N, C, H, W) with H and W divisible by ``patch_size``.
        patch_size: side p of a square patch.

    Returns:
        (N, L, p*p*C) with L = (H/p) * (W/p); the layout inside a patch is (row, col, channel),
        as in MAE, so released MAE decoders stay compatible.
    """
    n, c, h, w = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = images.reshape(n, c, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (N, gh, gw, p, p, C)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, channels: int, grid_size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify`: (N, L, p*p*C) -> (N, C, H, W)."""
    n = patches.shape[0]
    p, c = patch_size, channels
    gh, gw = grid_size
    x = patches.reshape(n, gh, gw, p, p, c)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (N, C, gh, p, gw, p)
    return x.reshape(n, c, gh * p, gw * p)

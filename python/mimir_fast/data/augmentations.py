"""The augmentations both loaders offer, and crop-and-flip of a whole batch in PyTorch."""

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "crop_with_padding_and_flip"]

# Every augmentation a training run can ask for; "rrc*" (random-resized-crop) needs the native
# loader, the others run in either loader.
AUGMENTATIONS = ("crop_flip", "crop", "flip", "rrc_flip", "rrc", "none")


def crop_with_padding_and_flip(
    images: torch.Tensor,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample random crop from a zero-padded image, then a random horizontal flip (CIFAR style).

    Args:
        images: (N, C, H, W).
        padding: zero border added on each side before cropping back to (H, W).
        generator: a CPU generator; the same seed gives the same crops and flips.
    """
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)  # (N, 2) top, left
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (offsets[:, 0, None] + torch.arange(h)).to(images.device)  # (N, H)
    cols = (offsets[:, 1, None] + torch.arange(w)).to(images.device)  # (N, W)
    cols = torch.where(flips.to(images.device)[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=images.device)[:, None, None]
    # advanced indexing: (N, H, W, C) -> (N, C, H, W)
    return padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

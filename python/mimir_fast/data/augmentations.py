"""The augmentations both loaders offer, and crop-and-flip of a whole batch in PyTorch."""

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "crop_padded", "crop_with_padding_and_flip"]

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
        flip: Flip each image with probability 1/2; False: never.
        generator: a CPU generator; the same seed gives the same crops and flips.
    """
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)  # (N, 2) top, left
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return crop_padded(images, offsets, flips, padding, (h, w))


def crop_padded(
    images: torch.Tensor,
    offsets: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """Crop one window per image from the zero-padded batch, mirrored horizontally where asked.

    The one crop-and-flip of the package: the batched augmentation and the per-image
    transforms (``RandomCropWithPadding``, ``RandomHorizontalFlip``) all cut through here.

    Args:
        images: (N, C, H, W).
        offsets: (N, 2) integer top, left corners of the windows in the padded images.
        flips: (N,) bool, mirror that window's columns.
        padding: zero border added on each side first.
        size: (height, width) of the windows.

    Returns:
        (N, C, height, width), a gather (new memory) from ``images``.
    """
    n = images.shape[0]
    height, width = size
    padded = F.pad(images, (padding, padding, padding, padding))  # (N, C, H + 2p, W + 2p)
    rows = (offsets[:, 0, None] + torch.arange(height)).to(images.device)  # (N, height)
    cols = (offsets[:, 1, None] + torch.arange(width)).to(images.device)  # (N, width)
    cols = torch.where(flips.to(images.device)[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=images.device)[:, None, None]  # (N, 1, 1)
    # advanced indexing: (N, height, width, C) -> (N, C, height, width)
    return padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

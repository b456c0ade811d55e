"""Small torch-only image transforms on (C, H, W) float tensors.

Every transform is a callable ``t(img, generator=None)``; pass a
``torch.Generator`` for reproducible draws, otherwise torch's global RNG is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mimir_fast._validate import check_int, check_number
from mimir_fast.data.augmentations import crop_padded

__all__ = [
    "Compose",
    "RandomCropWithPadding",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "default_train_transform",
]

Transform = Callable[..., torch.Tensor]


def _check_image(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.ndim != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"expected a (C, H, W) tensor, got {shape}")


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


class Compose:
    """Apply transforms in order, sharing one generator.

    Args:
        transforms: Callables ``t(img, generator=None)``.
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            img = t(img, generator=generator)
        return img

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCropWithPadding:
    """Zero-pad every side by ``padding`` pixels, then take a random ``size`` x ``size`` crop.

    Args:
        size: Output height and width.
        padding: Zero padding added to each side before cropping.
    """

    def __init__(self, size: int, padding: int = 4):
        self.size = check_int(size, "size", 1)
        self.padding = check_int(padding, "padding", 0)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_image(img)
        hp, wp = img.shape[1] + 2 * self.padding, img.shape[2] + 2 * self.padding
        if self.size > hp or self.size > wp:
            raise ValueError(f"crop size {self.size} is larger than the padded image {hp}x{wp}")
        top = _randint(0, hp - self.size, generator)
        left = _randint(0, wp - self.size, generator)
        offsets = torch.tensor([[top, left]])  # (1, 2)
        no_flip = torch.zeros(1, dtype=torch.bool)
        crop = crop_padded(img[None], offsets, no_flip, self.padding, (self.size, self.size))
        return crop[0].contiguous()  # (C, size, size)

    def __repr__(self) -> str:
        return f"RandomCropWithPadding(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Flip the width axis with probability ``p``.

    Args:
        p: Flip probability in [0, 1].
    """

    def __init__(self, p: float = 0.5):
        self.p = check_number(p, "p", 0.0, 1.0)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_image(img)
        if torch.rand(1, generator=generator).item() < self.p:
            _, h, w = img.shape
            origin, flip = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, dtype=torch.bool)
            return crop_padded(img[None], origin, flip, 0, (h, w))[0].contiguous()  # (C, H, W)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """Crop a random area/aspect-ratio region and resize it to ``size`` x ``size``.

    Up to 10 draws of (area fraction in ``scale``, log-uniform aspect ratio in
    ``ratio``); if none fits the image, a center crop with the aspect ratio clamped
    to ``ratio`` is used. Resizing is bilinear (antialiased when shrinking).

    Args:
        size: Output height and width.
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio (width / height).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        self.size = check_int(size, "size", 1)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def _box(self, h: int, w: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """Return (top, left, height, width) of the crop."""
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(*self.scale, generator)
            aspect = math.exp(_uniform(log_lo, log_hi, generator))
            cw = round(math.sqrt(target * aspect))
            ch = round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return _randint(0, h - ch, generator), _randint(0, w - cw, generator), ch, cw
        # Fallback: largest centered crop whose aspect ratio lies in self.ratio.
        aspect = w / h
        if aspect < self.ratio[0]:
            cw, ch = w, max(1, round(w / self.ratio[0]))
        elif aspect > self.ratio[1]:
            ch, cw = h, max(1, round(h * self.ratio[1]))
        else:
            ch, cw = h, w
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_image(img)
        top, left, ch, cw = self._box(img.shape[1], img.shape[2], generator)
        crop = img[None, :, top : top + ch, left : left + cw].float()  # (1, C, ch, cw)
        out = F.interpolate(
            crop, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        return out[0].clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


def default_train_transform(image_size: int, kind: str = "cifar") -> Compose:
    """Standard training augmentation.

    Args:
        image_size: Output height and width.
        kind: ``"cifar"`` (small images: random crop with ``image_size // 8`` zero
            padding, at least 1, plus horizontal flip) or ``"imagenet"`` (random
            resized crop plus horizontal flip).

    Returns:
        A ``Compose`` transform.
    """
    if kind == "cifar":
        return Compose(
            [
                RandomCropWithPadding(image_size, padding=max(1, image_size // 8)),
                RandomHorizontalFlip(),
            ]
        )
    if kind == "imagenet":
        return Compose([RandomResizedCrop(image_size), RandomHorizontalFlip()])
    raise ValueError(f"unknown transform kind {kind!r}; expected 'cifar' or 'imagenet'")

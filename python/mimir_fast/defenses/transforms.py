"""Input transformations used as purifiers: Gaussian noise, random patch masking, quantisation.

The first two are random (a new draw every call: attack them with EOT); :class:`Quantize` has
a zero gradient almost everywhere (attack it through ``Defended(..., bpda=True)``).
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_int, check_number, check_positive

__all__ = ["GaussianNoise", "Quantize", "RandomPatchMask"]


class GaussianNoise(nn.Module):
    """Random purifier: add N(0, sigma^2) noise and clamp to [0, 1] (a new draw every call).

    Args:
        sigma: the noise's standard deviation on the [0, 1] pixel scale.
    """

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = check_positive(sigma, "sigma")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0)


class RandomPatchMask(nn.Module):
    """Random purifier: zero a random ``ratio`` of ``patch`` x ``patch`` squares (a new draw every
    call).

    Args:
        ratio: the expected fraction of squares zeroed, in [0, 1).
        patch: the side of a square in pixels (squares at the right and bottom edges are cut).
    """

    def __init__(self, ratio: float = 0.25, patch: int = 4):
        super().__init__()
        self.ratio = check_number(ratio, "ratio", 0, 1, high_open=True)
        self.patch = int(patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        gh, gw = -(-h // self.patch), -(-w // self.patch)
        # (N, 1, gh, gw): 1 keeps a square, 0 zeroes it
        keep = (torch.rand(n, 1, gh, gw, device=x.device) >= self.ratio).to(x.dtype)
        keep = keep.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)[:, :, :h, :w]
        return x * keep  # (N, C, H, W)


class Quantize(nn.Module):
    """Non-differentiable purifier (zero gradient almost everywhere): round to ``levels`` grey
    levels.

    Attacked naively it masks gradients; use ``Defended(..., bpda=True)``.

    Args:
        levels: the number of grey levels, >= 2.
    """

    def __init__(self, levels: int = 8):
        super().__init__()
        self.levels = check_int(levels, "levels", low=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)

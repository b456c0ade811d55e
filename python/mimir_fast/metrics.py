"""Image-similarity metrics for reconstruction attacks: PSNR and SSIM, per image.

SSIM follows Wang et al. 2004 with scikit-image's ``gaussian_weights=True`` conventions:
an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma), ``K1 = 0.01``, ``K2 = 0.03``,
population (not sample) covariances, and the mean over the windows that fit inside the image
(skimage averages over the image cropped by the window radius: the same set). Channels are
averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("psnr/ssim take two tensors")  # noqa: TRY004 (bad input is a ValueError throughout)
    if x.shape != y.shape:
        raise ValueError(
            f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.ndim != 4:
        raise ValueError(f"images must be batches (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("images must be a non-empty batch")
    if not x.is_floating_point() or not y.is_floating_point():
        raise ValueError(f"images must be floating-point tensors, got {x.dtype} and {y.dtype}")


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def psnr(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "none"
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image: ``10 log10(data_range^2 / MSE)``.

    Args:
        x, y: (N, C, H, W) images.
        data_range: max - min of the pixel range (1.0 for [0, 1] images).
        reduction: "none" -> (N,), "mean" -> scalar. Identical images give ``inf``.
    """
    _check_pair(x, y)
    _check_positive(data_range=data_range)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return _reduce((10.0 * torch.log10(data_range**2 / mse)).float(), reduction)


def gaussian_window(
    sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float64, device=None
) -> torch.Tensor:
    """The normalised 1-D Gaussian of scipy's ``gaussian_filter``.

    Its radius is ``int(truncate * sigma + 0.5)``, as scipy's.
    """
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "none",
) -> torch.Tensor:
    """Structural similarity per image (mean SSIM over valid windows and channels).

    Args:
        x, y: (N, C, H, W) images, at least 11x11 for the default sigma.
        data_range: max - min of the pixel range.
        sigma: Gaussian window width (radius ``int(3.5 sigma + 0.5)``).
        k1, k2: the SSIM stabilising constants.
        reduction: "none" -> (N,), "mean" -> scalar.
    """
    _check_pair(x, y)
    _check_positive(data_range=data_range, sigma=sigma, k1=k1, k2=k2)
    _n, c, h, w = x.shape
    win = gaussian_window(sigma, device=x.device)
    size = win.numel()
    if h < size or w < size:
        raise ValueError(f"images of {h}x{w} are smaller than the {size}x{size} SSIM window")
    xd, yd = x.double(), y.double()
    kh = win.reshape(1, 1, size, 1).expand(c, 1, size, 1)
    kw = win.reshape(1, 1, 1, size).expand(c, 1, 1, size)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, 'valid' windows only
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(xd), blur(yd)
    var_x = blur(xd * xd) - mu_x**2
    var_y = blur(yd * yd) - mu_y**2
    cov = blur(xd * yd) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return _reduce(s.flatten(1).mean(1).float(), reduction)

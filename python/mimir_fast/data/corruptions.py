"""Common corruptions of Hendrycks & Dietterich (ICLR 2019), made on the fly in Rust.

"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations" defines
ImageNet-C and CIFAR-10-C: fifteen corruptions in four families, each at five severities.
:func:`corrupt` applies fourteen of them to a batch (in parallel, off the GIL), and
``Loader(..., corruption="fog:3")`` applies one to every sample after the other transforms.

Frost is left out: it blends the image with texture photographs (frost on glass) that do not
ship with this package and cannot be fetched offline; asking for it raises ``ValueError``.

Parameters: images whose larger side is at most 64 px use the CIFAR-10-C parameter set, larger
images the ImageNet-C set (made for 224 px). Sizes in those sets (blur radii, pixel swaps,
displacements) are in pixels as published and are not rescaled with the image.

What differs from the published code, and why:

* ImageMagick's motion blur (motion blur, snow) is written out as its one-sided Gaussian line
  kernel, ``2 * ceil(radius) + 1`` taps at offsets rounded to the pixel grid.
* Intermediate 8-bit roundings of the published code (glass blur's first blur, the snow layer
  saved as PNG, PIL's pixelate passes) are not made: the work is in float32 and only the result
  is rounded (to nearest, where ``np.uint8`` in the published code truncates).
* JPEG does the round trip's arithmetic as libjpeg-turbo does under PIL (standard tables and
  quality scaling, 4:2:0 chroma, its integer DCTs and colour conversions) and leaves out the
  lossless entropy coding between: the result equals PIL's encode-decode byte for byte.
* The random draws come from this package's per-image generators, so the corrupted images
  are not those of the released datasets, but follow the same distributions. With one seed,
  the severities of a noise share their draws: the Gaussian's normals are scaled, shot noise
  takes the same quantile of each severity's Poisson, impulse noise's replaced values nest.
* Brightness raises the HSV value ``V = max(channels)`` to ``min(V + c, 1)`` keeping hue and
  saturation, which is a scaling of the pixel by ``V' / V``; snow's gray image uses ITU-R 601
  weights. Any channel count works: gray and other non-RGB images are JPEG-coded per channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mimir_fast import _native
from mimir_fast._validate import check_int, is_integer

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_FAMILIES",
    "SEVERITIES",
    "check_corruption",
    "corrupt",
    "parse_corruption",
]

CORRUPTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
"""The four families of the paper and their corruptions (frost, a weather one, left out)."""

CORRUPTIONS: tuple[str, ...] = tuple(n for names in CORRUPTION_FAMILIES.values() for n in names)
"""The fourteen corruption names, in the paper's order."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_FROST = (
    "corruption 'frost' is not available: frost needs texture photographs (frost on glass) "
    "which do not ship with mimir_fast and cannot be fetched offline; use one of CORRUPTIONS"
)


def check_corruption(corruption: Any, severity: Any) -> tuple[str, int]:
    """``(name, severity)`` checked.

    Raises:
        ValueError: an unknown name (frost says why it is missing) or a severity that is not an
            integer in 1..5.
    """
    if corruption == "frost":
        raise ValueError(_FROST)
    if not isinstance(corruption, str) or corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {corruption!r}")
    if not is_integer(severity) or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return corruption, int(severity)


def parse_corruption(spec: Any, name: str = "corruption") -> tuple[str, int] | None:
    """``None``, ``"fog:3"`` or ``("fog", 3)`` as a checked ``(name, severity)`` (or None).

    Raises:
        ValueError: naming ``name`` for a malformed spec, else as :func:`check_corruption`.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        cname, sep, sev = spec.partition(":")
        if not sep or not sev.strip().lstrip("+-").isdigit():
            if cname == "frost":
                raise ValueError(_FROST)
            raise ValueError(
                f"{name} must be 'name:severity' (e.g. 'fog:3') with a severity in 1..5, "
                f"got {spec!r}"
            )
        return check_corruption(cname.strip(), int(sev))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return check_corruption(spec[0], spec[1])
    raise ValueError(f"{name} must be None, 'name:severity' or (name, severity), got {spec!r}")


def _corrupt_numpy(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """(N, H, W, C) or (H, W, C): uint8 directly, float in [0, 1] through the float path."""
    single = images.ndim == 3
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (N, H, W, C) or (H, W, C), got {images.shape}")
    batch = images[None] if single else images
    if batch.dtype == np.uint8:
        out = _native.corrupt_u8(np.ascontiguousarray(batch), name, severity, seed)
    elif np.issubdtype(batch.dtype, np.floating):
        _check_unit_range(batch)
        chw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        out = _native.corrupt_f32(chw, name, severity, seed).transpose(0, 2, 3, 1)
        out = np.ascontiguousarray(out, dtype=batch.dtype)
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {batch.dtype}")
    return out[0] if single else out


def _check_unit_range(x: np.ndarray) -> None:
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError("float images must be finite and in [0, 1]")


def _corrupt_tensor(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """(N, C, H, W) or (C, H, W): float in [0, 1] (any float dtype, any device) or uint8."""
    if images.ndim not in (3, 4):
        raise ValueError(
            f"images must have shape (N, C, H, W) or (C, H, W), got {tuple(images.shape)}"
        )
    single = images.ndim == 3
    batch = (images[None] if single else images).detach()
    if batch.dtype == torch.uint8:
        hwc = batch.permute(0, 2, 3, 1).cpu().contiguous().numpy()
        out_np = _native.corrupt_u8(hwc, name, severity, seed)
        out = torch.from_numpy(out_np).permute(0, 3, 1, 2).contiguous()
    elif batch.is_floating_point():
        arr = batch.to("cpu", torch.float32).contiguous().numpy()
        _check_unit_range(arr)
        out = torch.from_numpy(_native.corrupt_f32(arr, name, severity, seed)).to(batch.dtype)
    else:
        raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {batch.dtype}")
    out = out.to(images.device)
    return out[0] if single else out


def corrupt(images: Any, corruption: str, severity: int, seed: int = 0) -> Any:
    """Apply a common corruption at a severity to a batch of images.

    Image ``i`` of the batch draws its randomness from a generator keyed on ``(seed, i)``, so
    the result depends only on the images, the corruption, the severity and the seed (not on
    the number of threads). The same seed gives the same draws for a uint8 array and the float
    tensor of the same images.

    Args:
        images: a uint8 numpy array (N, H, W, C) or (H, W, C) (also float in [0, 1]), or a
            torch tensor (N, C, H, W) or (C, H, W), float in [0, 1] (or uint8).
        corruption: one of :data:`CORRUPTIONS`.
        severity: 1..5.
        seed: any integer (kept modulo 2**64).

    Returns:
        The corrupted images, of the input's type, shape, dtype (and device): uint8 results
        rounded to nearest, float results clipped to [0, 1].

    Raises:
        ValueError: an unknown corruption (``frost`` is not available), a severity outside
            1..5, a bad shape or dtype, or float values outside [0, 1].
    """
    name, sev = check_corruption(corruption, severity)
    seed = check_int(seed, "seed") % (1 << 64)
    if isinstance(images, torch.Tensor):
        return _corrupt_tensor(images, name, sev, seed)
    if isinstance(images, np.ndarray):
        return _corrupt_numpy(images, name, sev, seed)
    raise ValueError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")

"""Per-image noise levels: parsing ``"gamma:25,3"``-style specs and drawing sigmas on the device.

Sigmas are on the 0..255 pixel scale (as in NIM); images live in [0, 1], so the noise added
is ``sigma / 255 * N(0, 1)``.
"""

from __future__ import annotations

import math

import torch

from ._tensors import as_device_tensor

__all__ = ["NIM_DEFAULT", "SIGMA_KINDS", "add_noise", "parse_sigma_spec", "sample_sigma"]

SIGMA_KINDS = {"gamma": 2, "uniform": 2, "constant": 1}  # kind -> number of parameters
NIM_DEFAULT = ("gamma", 25.0, 3.0)  # mean 75, NIM's best pretraining distribution
_FORMS = "'gamma:K,THETA', 'uniform:A,B' or 'constant:V'"


def parse_sigma_spec(spec: str | tuple | list, name: str = "noise spec") -> tuple:
    """Read a noise-level spec into ``(kind, *params)`` with float parameters.

    Accepted: ``"gamma:K,THETA"``, ``"uniform:A,B"``, ``"constant:V"``, or the same as a tuple
    or list (``("gamma", K, THETA)``); ``"gamma"`` alone is NIM's Gamma(25, 3). Kinds are
    case-insensitive. The training config and the native loader both read specs here.

    Args:
        spec: The spec string or sequence.
        name: What the caller calls the spec, at the start of error messages (the loader
            says ``"sigma"``).

    Raises:
        ValueError: An unknown kind, the wrong number of parameters, parameters that are not
            finite numbers, or out of their range (K, THETA > 0; 0 <= A <= B; V >= 0).
    """
    if isinstance(spec, str):
        kind, _, params = spec.partition(":")
        params = params.split(",") if params else []
    elif isinstance(spec, (tuple, list)) and spec:
        kind, *params = spec
    else:
        raise ValueError(f"{name} must be {_FORMS} (or such a tuple), got {spec!r}")
    try:
        values = tuple(float(v) for v in params)
    except (TypeError, ValueError):
        raise ValueError(f"{name} parameters must be numbers, got {spec!r}") from None
    kind = kind.lower() if isinstance(kind, str) else None
    if kind == "gamma" and not values:
        values = NIM_DEFAULT[1:]
    if kind not in SIGMA_KINDS or len(values) != SIGMA_KINDS[kind]:
        raise ValueError(f"{name} must be {_FORMS}, got {spec!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} {spec!r}: parameters must be finite")
    if kind == "gamma" and not (values[0] > 0 and values[1] > 0):
        raise ValueError(f"gamma noise needs K > 0 and THETA > 0, got {values}")
    if kind == "uniform" and not 0 <= values[0] <= values[1]:
        raise ValueError(f"uniform noise needs 0 <= A <= B, got {values}")
    if kind == "constant" and values[0] < 0:
        raise ValueError(f"constant noise needs V >= 0, got {values[0]}")
    return (kind, *values)


def sample_sigma(spec: str | tuple, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw ``n`` sigmas (0..255 scale) from ``spec`` with torch's RNG; (n,) float32.

    Args:
        spec: A noise spec, as :func:`parse_sigma_spec` reads it.
        n: How many sigmas.
        device: Where to draw them.
    """
    kind, *p = parse_sigma_spec(spec)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if kind == "gamma":
        k = torch.full((n,), p[0], device=device)
        rate = torch.full_like(k, 1.0 / p[1])  # rate = 1 / theta
        # no argument validation: its checks read values back to the host
        return torch.distributions.Gamma(k, rate, validate_args=False).sample()
    if kind == "uniform":
        return torch.empty(n, device=device).uniform_(p[0], p[1])
    return torch.full((n,), p[0], device=device)


def add_noise(images: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``images + sigma / 255 * N(0, 1)``, sigma per image (N,) or one number; no clamping."""
    sigma = as_device_tensor(sigma, images.device, images.dtype)
    if sigma.ndim == 1:
        sigma = sigma.view(-1, *([1] * (images.ndim - 1)))
    return images + sigma / 255.0 * torch.randn_like(images)

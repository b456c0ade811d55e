"""Constants and input checks that a kernel and its PyTorch reference share.

Both sides import them from here (the reference in :mod:`mimir_fast.ops`, the kernel beside
this module), so the two agree by construction. Import-light: no Triton.
"""

from __future__ import annotations

import torch

from .._validate import check_choice

__all__ = ["NORMS", "NORM_FLOOR", "NORM_PIX_EPS", "check_step_inputs", "per_sample"]

# The threat models of the projected-gradient step.
NORMS = ("linf", "l2")
# A zero gradient (or a zero delta) must not divide by zero in the L2 step.
NORM_FLOOR = 1e-12
# Added to each target patch's variance before the norm-pix normalisation (MAE's value).
NORM_PIX_EPS = 1e-6


def per_sample(value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """A step size or radius as an fp32 (N,) tensor: a Python number or a 0-d / (N,) tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        return t.expand(n)
    if t.shape != (n,):
        raise ValueError(
            f"alpha and eps must be numbers or (N,) tensors with N={n}, got shape {tuple(t.shape)}"
        )
    return t


def check_step_inputs(x_adv: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, norm: str) -> None:
    """Raise ValueError unless the three tensors form one batch of floats and ``norm`` is known."""
    check_choice(norm, "norm", NORMS)
    if x_adv.shape != grad.shape or x_adv.shape != x0.shape:
        raise ValueError(
            f"x_adv, grad and x0 must have the same shape, got {tuple(x_adv.shape)}, "
            f"{tuple(grad.shape)} and {tuple(x0.shape)}"
        )
    if x_adv.ndim < 1 or x_adv.shape[0] == 0:
        raise ValueError("x_adv must be a non-empty batch (N, ...)")
    if not x_adv.is_floating_point():
        raise ValueError(f"x_adv must be a floating-point tensor, got {x_adv.dtype}")

"""The projected-gradient update of PGD/APGD, in plain PyTorch (the reference of
:mod:`mimir_fast.kernels.pgd_step`).

One step moves ``x_adv`` along the gradient, projects the result onto the eps-ball around
``x0`` and clamps it to the image range [0, 1]:

- ``norm="linf"``: ``x = x_adv + alpha * sign(grad)``; ``x = min(max(x, x0 - eps), x0 + eps)``.
- ``norm="l2"``: ``x = x_adv + alpha * grad / ||grad||``; ``delta = x - x0`` is rescaled to
  ``delta * min(1, eps / ||delta||)`` (norms per sample, over all of C, H, W).

then ``x = min(max(x, 0), 1)``. Everything is computed in fp32; the result has ``x_adv``'s dtype.
``alpha = 0`` gives the bare projection.
"""

from __future__ import annotations

import torch

NORMS = ("linf", "l2")
# A zero gradient (or a zero delta) must not divide by zero; the same floor is used by the kernel.
NORM_FLOOR = 1e-12


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
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if x_adv.shape != grad.shape or x_adv.shape != x0.shape:
        raise ValueError(
            f"x_adv, grad and x0 must have the same shape, got {tuple(x_adv.shape)}, "
            f"{tuple(grad.shape)} and {tuple(x0.shape)}"
        )
    if x_adv.ndim < 1 or x_adv.shape[0] == 0:
        raise ValueError("x_adv must be a non-empty batch (N, ...)")
    if not x_adv.is_floating_point():
        raise ValueError(f"x_adv must be a floating-point tensor, got {x_adv.dtype}")


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    alpha: float | torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "linf",
) -> torch.Tensor:
    """One projected-gradient step (see the module docstring). Returns a new tensor.

    Args:
        x_adv: (N, ...) current iterate.
        grad: (N, ...) gradient of the loss to maximise at ``x_adv``.
        x0: (N, ...) the clean images: centre of the eps-ball.
        alpha: step size: a number or an (N,) tensor (one per sample).
        eps: radius of the ball: a number or an (N,) tensor.
        norm: "linf" (sign step, box projection) or "l2" (normalised step, ball projection).
    """
    check_step_inputs(x_adv, grad, x0, norm)
    n = x_adv.shape[0]
    view = (n,) + (1,) * (x_adv.ndim - 1)
    a = per_sample(alpha, n, x_adv.device).reshape(view)
    e = per_sample(eps, n, x_adv.device).reshape(view)
    x, g, c = x_adv.float(), grad.float(), x0.float()
    if norm == "linf":
        x = x + a * torch.sign(g)
        x = torch.minimum(torch.maximum(x, c - e), c + e)
    else:
        g_norm = (
            torch.linalg.vector_norm(g.reshape(n, -1), dim=1).clamp_min(NORM_FLOOR).reshape(view)
        )
        delta = x + a * (g / g_norm) - c
        d_norm = (
            torch.linalg.vector_norm(delta.reshape(n, -1), dim=1)
            .clamp_min(NORM_FLOOR)
            .reshape(view)
        )
        x = c + delta * torch.clamp(e / d_norm, max=1.0)
    return x.clamp(0.0, 1.0).to(x_adv.dtype)


def project(
    x: torch.Tensor, x0: torch.Tensor, eps: float | torch.Tensor, norm: str = "linf"
) -> torch.Tensor:
    """Project ``x`` onto the eps-ball around ``x0`` intersected with [0, 1] (a step with alpha 0)."""
    return pgd_step(x, x, x0, 0.0, eps, norm)

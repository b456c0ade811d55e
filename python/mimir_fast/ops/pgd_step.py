"""The projected-gradient update of PGD/APGD: the reference, and the choice of path.

One step moves ``x_adv`` along the gradient, projects the result onto the eps-ball around
``x0`` and clamps it to the image range [0, 1]:

- ``norm="linf"``: ``x = x_adv + alpha * sign(grad)``; ``x = min(max(x, x0 - eps), x0 + eps)``.
- ``norm="l2"``: ``x = x_adv + alpha * grad / ||grad||``; ``delta = x - x0`` is rescaled to
  ``delta * min(1, eps / ||delta||)`` (norms per sample, over all of C, H, W).

then ``x = min(max(x, 0), 1)``. Everything is computed in fp32; the result has ``x_adv``'s dtype.
``alpha = 0`` gives the bare projection.

- :func:`pgd_step_reference`: the step in plain PyTorch.
- :func:`pgd_step`: what the attacks call; the fused Triton kernel
  (:mod:`mimir_fast.kernels.pgd_step`) reads each input once.
"""

from __future__ import annotations

import torch

from ..kernels._shared import NORM_FLOOR, NORMS, check_step_inputs, per_sample
from ..kernels.dispatch import use_triton

__all__ = ["NORMS", "pgd_step", "pgd_step_reference", "project"]


def pgd_step_reference(
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
        g_norm = _norms(g, n).clamp_min(NORM_FLOOR).reshape(view)
        delta = x + a * (g / g_norm) - c
        d_norm = _norms(delta, n).clamp_min(NORM_FLOOR).reshape(view)
        x = c + delta * torch.clamp(e / d_norm, max=1.0)
    return x.clamp(0.0, 1.0).to(x_adv.dtype)


def _norms(t: torch.Tensor, n: int) -> torch.Tensor:
    """(N, ...) -> (N,) Euclidean norm of each sample."""
    return torch.linalg.vector_norm(t.reshape(n, -1), dim=1)


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    alpha: float | torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "linf",
    kernels: str = "auto",
) -> torch.Tensor:
    """One projected-gradient step on the kernel where chosen; the contract of
    :func:`pgd_step_reference`.

    Args:
        x_adv, grad, x0, alpha, eps, norm: as :func:`pgd_step_reference`.
        kernels: "auto" (the fused Triton kernel where the evidence table verified it faster,
            the reference elsewhere), "torch" or "triton" (see
            :func:`mimir_fast.kernels.resolve_kernels`).
    """
    if use_triton(kernels, "pgd_step", x_adv):
        from ..kernels.pgd_step import pgd_step_triton

        return pgd_step_triton(x_adv, grad, x0, alpha, eps, norm)
    return pgd_step_reference(x_adv, grad, x0, alpha, eps, norm)


def project(
    x: torch.Tensor, x0: torch.Tensor, eps: float | torch.Tensor, norm: str = "linf"
) -> torch.Tensor:
    """Project ``x`` onto the eps-ball around ``x0`` intersected with [0, 1] (alpha 0)."""
    return pgd_step_reference(x, x, x0, 0.0, eps, norm)

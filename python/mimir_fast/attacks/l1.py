"""The L1 threat model: the L1 ball intersected with the image box [0, 1], and PGD on it.

The effective threat model of an L1 attack on images is ``S = {z : ||z - x||_1 <= eps,
0 <= z <= 1}`` (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial attacks on
image classifiers"): projecting on the L1 ball and clipping to the box after it is not the
projection on ``S`` and wastes budget. Here:

- :func:`project_l1_box`: the exact Euclidean projection on ``S``. With ``u = z - x`` and
  ``b_i`` the room the box leaves in the direction of ``u_i`` (``1 - x_i`` or ``x_i``), the
  optimality conditions give ``delta_i = sign(u_i) min(max(|u_i| - lam, 0), b_i)`` for the
  smallest ``lam >= 0`` with ``||delta||_1 <= eps``. ``f(lam) = ||delta(lam)||_1`` is
  piecewise linear and non-increasing with knots at ``|u_i| - b_i`` and ``|u_i|``: the knots
  are sorted, ``f`` is evaluated at every knot by a cumulative sum, and ``lam`` is read off
  the segment where ``f`` crosses ``eps`` (exact up to float64 rounding; no iteration).
- :func:`l1_sparse_direction`: the sparse ascent direction of l1-APGD: ``sign(grad)`` on the
  ``k`` coordinates with the largest ``|grad|`` among those the box lets move in that
  direction, scaled to unit L1 norm.
- :func:`l1_random_start`: a random sparse point of ``S`` (Gaussian noise projected on ``S``).
- :class:`L1PGD`: plain PGD on ``S``: fixed-size sparse steps with a fixed sparsity, then the
  exact projection; ``sparsity=1/d`` is steepest L1 ascent (one coordinate per step).

:class:`~mimir_fast.attacks.apgd.APGD` with ``norm="l1"`` (l1-APGD) uses the same pieces and
adapts the sparsity and the step size at its checkpoints (:func:`l1_checkpoint`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._tensors import as_device_tensor
from .._validate import check_number, is_integer, is_real
from .pgd import PGD

__all__ = [
    "L1_MIN_STEP",
    "L1_STEP_REDUCTION",
    "L1_TOPK_START",
    "L1PGD",
    "l1_checkpoint",
    "l1_norms",
    "l1_random_start",
    "l1_sparse_direction",
    "project_l1_box",
    "topk_count",
]

L1_TOPK_START = 0.2  # l1-APGD's first sparsity: a fifth of the coordinates move
L1_STEP_REDUCTION = 1.5  # l1-APGD divides its step by this at a checkpoint
L1_MIN_STEP = 10.0  # ... and keeps it at least eps / L1_MIN_STEP


def l1_norms(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N,) L1 norm of each sample."""
    return t.reshape(t.shape[0], -1).abs().sum(1)


def _l1_threshold(a: torch.Tensor, b: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The soft threshold (N, 1) with ``sum_i min(max(a_i - lam, 0), b_i) = eps``, or 0.

    Args:
        a: (N, d) magnitudes ``|u_i|``, float64; b: (N, d) box room ``b_i >= 0``, float64.
        eps: (N, 1) radii, float64.
    """
    n, d = a.shape
    knots = torch.cat([a - b, a], dim=1)  # (N, 2d): leaves the box face, reaches zero
    events = torch.cat([a.new_ones(n, d), -a.new_ones(n, d)], dim=1)
    knots, order = knots.sort(dim=1)
    slope = events.gather(1, order).cumsum(1)  # coordinates on their linear part after a knot
    drop = (slope[:, :-1] * knots.diff(dim=1)).cumsum(1)  # (N, 2d - 1)
    f = b.sum(1, keepdim=True) - torch.cat([a.new_zeros(n, 1), drop], dim=1)  # f at the knots
    # the first knot where f <= eps (f is 0 at the last one); lam lies in the segment before it
    j = (f > eps).sum(1, keepdim=True)  # (N, 1)
    prev = (j - 1).clamp_min(0)
    f_prev, t_prev = f.gather(1, prev), knots.gather(1, prev)
    s_prev = slope.gather(1, prev).clamp_min(1.0)
    lam = t_prev + (f_prev - eps) / s_prev
    return torch.where(j > 0, lam, torch.zeros_like(lam)).clamp_min(0.0)


def project_l1_box(z: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of ``z`` on ``{||. - x||_1 <= eps} & [0, 1]^d``, per sample.

    Computed in float64 (see the module docstring); the result has ``z``'s dtype.

    Args:
        z: (N, ...) points; x: (N, ...) centres in [0, 1]; eps: a radius or (N,) radii, > 0.
    """
    n = z.shape[0]
    c = x.double().reshape(n, -1)
    u = z.double().reshape(n, -1) - c  # (N, d)
    room = torch.where(u > 0, 1.0 - c, c).clamp_min(0.0)  # how far the box lets u_i go
    e = as_device_tensor(eps, z.device, torch.float64).reshape(-1, 1).expand(n, 1)
    a = u.abs()
    lam = _l1_threshold(a, room, e)
    delta = torch.sign(u) * torch.minimum((a - lam).clamp_min(0.0), room)
    return (c + delta).clamp(0.0, 1.0).reshape(z.shape).to(z.dtype)


def l1_sparse_direction(
    grad: torch.Tensor, x_adv: torch.Tensor, k: torch.Tensor | int
) -> torch.Tensor:
    """``sign(grad)`` on the ``k`` largest ``|grad_i|`` the box lets move, unit L1 norm.

    A coordinate at 1 with a positive gradient (or at 0 with a negative one) cannot move and is
    never chosen. Ties at the ``k``-th value are all kept. A sample with nothing to move gets 0.

    Args:
        grad: (N, ...) gradient to ascend; x_adv: (N, ...) the current point in [0, 1].
        k: coordinates per sample: an int or an (N,) integer tensor, clamped to [1, d].
    """
    n = grad.shape[0]
    g = grad.float().reshape(n, -1)
    xa = x_adv.float().reshape(n, -1)
    movable = ((g > 0) & (xa < 1.0)) | ((g < 0) & (xa > 0.0))
    score = torch.where(movable, g.abs(), torch.full_like(g, -1.0))  # (N, d)
    kk = as_device_tensor(k, g.device, torch.long).reshape(-1).expand(n)
    kk = kk.clamp(1, g.shape[1])
    kth = score.sort(dim=1, descending=True).values.gather(1, (kk - 1)[:, None])  # (N, 1)
    chosen = movable & (score >= kth) & (score > 0)
    u = torch.sign(g) * chosen
    u = u / u.abs().sum(1, keepdim=True).clamp_min(1.0)
    return u.reshape(grad.shape)


def l1_random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the L1 ball & box: unit Gaussian noise projected on it (the noise is
    far outside the ball, so the projection keeps only a few large coordinates: sparse)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    return project_l1_box(x.float() + noise, x, eps).to(x.dtype)


def l1_checkpoint(
    eta: torch.Tensor,
    x_best: torch.Tensor,
    x: torch.Tensor,
    sparsity_before: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """l1-APGD's adaptation at a checkpoint: (step size, sparsity fraction, sparsity) per row.

    The sparsity ``s = ||x_best - x||_0`` of the best point sets the next steps' sparsity to
    ``s / 1.5`` coordinates. The step size is divided by :data:`L1_STEP_REDUCTION`, unless the
    best point became sparser by more than 5% since the last checkpoint (then it is reset to
    ``eps``); it stays in ``[eps / L1_MIN_STEP, eps]``.
    """
    n = x.shape[0]
    d = x[0].numel()
    sparsity = ((x_best.float() - x.float()).reshape(n, -1) != 0).sum(1).float()  # (N,)
    sparser = sparsity < 0.95 * sparsity_before
    eta = torch.where(sparser, torch.full_like(eta, eps), eta / L1_STEP_REDUCTION)
    eta = eta.clamp(eps / L1_MIN_STEP, eps)
    topk = (sparsity / L1_STEP_REDUCTION / d).clamp(1.0 / d, 1.0)
    return eta, topk, sparsity


def topk_count(topk: torch.Tensor, d: int) -> torch.Tensor:
    """A sparsity fraction (N,) as a number of coordinates in [1, d]."""
    return torch.ceil(topk * d).long().clamp(1, d)


class L1PGD(PGD):
    """PGD on the L1 ball intersected with [0, 1]: sparse fixed-size steps, exact projection.

    Each step moves ``alpha`` (in L1) along :func:`l1_sparse_direction` with a fixed share
    ``sparsity`` of the coordinates, then projects with :func:`project_l1_box`. This is the
    plain baseline l1-APGD (``APGD(..., norm="l1")``) improves on with adaptive sparsity,
    step size and momentum.

    Args:
        model, loss, targeted, eot_iter, seed, max_batch: see :class:`~mimir_fast.attacks.
            base.Attack` (the norm is always "l1").
        eps: L1 radius, > 0 (CIFAR-10: 12).
        alpha: L1 length of a step; default ``2.5 eps / steps``.
        steps, random_start, restarts, early_stop: as :class:`~mimir_fast.attacks.PGD`.
        sparsity: share of the coordinates a step moves, in (0, 1]; default 0.05.
    """

    name = "pgd-l1"
    norms = ("l1",)

    def __init__(
        self,
        model: Any,
        eps: float = 12.0,
        alpha: float | None = None,
        steps: int = 20,
        sparsity: float = 0.05,
        **kwargs: Any,
    ):
        kwargs.setdefault("norm", "l1")
        if alpha is None and is_real(eps) and is_integer(steps) and steps >= 1:
            alpha = 2.5 * eps / steps  # a bad eps is named by the base class first
        super().__init__(model, eps, alpha=alpha, steps=steps, **kwargs)
        self.sparsity = check_number(sparsity, "sparsity", low=0.0, high=1.0, low_open=True)

    def __repr__(self) -> str:
        return (
            f"L1PGD(eps={self.eps:.4g}, alpha={self.alpha:.4g}, steps={self.steps}, "
            f"sparsity={self.sparsity:.4g}, loss={self.objective!r})"
        )

    def _start(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return l1_random_start(x, self.eps, gen) if self.random_start else x

    def _step(self, x_adv, grad, x0, alpha, eps=None):
        k = max(1, math.ceil(self.sparsity * x_adv[0].numel()))
        z = x_adv.float() + alpha * l1_sparse_direction(grad, x_adv, k)
        return project_l1_box(z, x0, self.eps if eps is None else eps).to(x_adv.dtype)

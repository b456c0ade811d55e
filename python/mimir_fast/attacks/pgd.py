"""Gradient attacks with a fixed step: FGSM, PGD (L-inf / L2, restarts, early stop) and MI-FGSM."""

from __future__ import annotations

from typing import Any

import torch

from .._validate import check_int, check_positive
from .base import Attack, random_start

__all__ = ["FGSM", "MIFGSM", "PGD"]


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): ``x + eps * sign(grad)``, clamped to
    [0, 1]. With ``norm="l2"``: ``x + eps * grad / ||grad||`` (fast gradient method)."""

    name = "fgsm"

    def __init__(self, model: Any, eps: float = 8 / 255, **kwargs: Any):
        super().__init__(model, eps, **kwargs)

    def perturb(self, x, y):
        _, _, grad = self._loss_grad(x, x, y)
        with torch.no_grad():
            return self._step(x, grad, x, self.eps)


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018).

    Args:
        model, eps, norm, loss, targeted, eot_iter, seed, kernels, max_batch: see
            :class:`Attack`.
        alpha: step size (L-inf: per-pixel; L2: length of the step).
        steps: gradient steps per restart.
        random_start: start from a uniform point of the eps-ball (else from ``x``: deterministic).
        restarts: independent runs; per sample the worst case is kept (a fooled point, else
            the one with the highest loss). Points fooled by one restart are not attacked again.
            They run as one batch where ``max_batch`` allows, with the same per-sample result.
        early_stop: stop updating samples that are already fooled (classification only).
    """

    name = "pgd"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, eps, **kwargs)
        self.alpha = check_positive(alpha, "alpha")
        self.steps = check_int(steps, "steps", low=1)
        self.restarts = check_int(restarts, "restarts", low=1)
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)

    def __repr__(self) -> str:
        return (
            f"PGD(eps={self.eps:.4g}, alpha={self.alpha:.4g}, steps={self.steps}, "
            f"norm={self.norm!r}, random_start={self.random_start}, restarts={self.restarts}, "
            f"loss={self.objective!r})"
        )

    def perturb(self, x, y):
        if self.restarts == 1:  # the plain loop: no book-keeping forward
            return self._run(x, y, self._start(x, self._generator(x.device)))
        return self._batched_runs(x, y, self._run_rows, restarts=self.restarts)

    def _run_rows(self, x, y, start, target, runs):
        """PGD from ``start`` on every row, then the loss and success at the result."""
        x_adv = self._run(x, y, start)
        loss, logits = self._loss(x_adv, x, y)
        return x_adv, self._fooled(logits, y), loss

    def _run(self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        x_adv = start.clone()
        early = self.early_stop and self.objective.classification
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            if not early:
                _, _, grad = self._loss_grad(x_adv, x, y)
                with torch.no_grad():
                    x_adv = self._step(x_adv, grad, x, self.alpha)
                continue
            xa, x0, ya = x_adv[active], x[active], y[active]
            _, logits, grad = self._loss_grad(xa, x0, ya)
            keep = ~self._fooled(logits, ya)
            if not bool(keep.all()):
                active, xa, x0, grad = active[keep], xa[keep], x0[keep], grad[keep]
                if active.numel() == 0:
                    break
            with torch.no_grad():
                x_adv[active] = self._step(xa, grad, x0, self.alpha)
        return x_adv


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018): ``g <- decay * g + grad / mean|grad|``, then a
    projected sign (or L2) step along ``g``.

    Args:
        alpha: step size; default ``eps / steps``.
        steps: iterations; decay: momentum factor; random_start: as in :class:`PGD`.
    """

    name = "mifgsm"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        decay: float = 1.0,
        random_start: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, eps, **kwargs)
        self.steps = check_int(steps, "steps", low=1)
        self.alpha = check_positive(self.eps / self.steps if alpha is None else alpha, "alpha")
        if not decay >= 0:
            raise ValueError(f"decay must be >= 0, got {decay!r}")
        self.decay = float(decay)
        self.random_start = bool(random_start)

    def perturb(self, x, y):
        gen = self._generator(x.device)
        x_adv = random_start(x, self.eps, self.norm, gen) if self.random_start else x.clone()
        momentum = torch.zeros_like(x, dtype=torch.float32)
        for _ in range(self.steps):
            _, _, grad = self._loss_grad(x_adv, x, y)
            with torch.no_grad():
                grad = grad.float()
                l1 = grad.abs().flatten(1).mean(1).clamp_min(1e-12).reshape(-1, *[1] * (x.ndim - 1))
                momentum = self.decay * momentum + grad / l1
                x_adv = self._step(x_adv, momentum, x, self.alpha)
        return x_adv

"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks"), written from the paper's Algorithm 1.

Per sample: step size ``eta = 2 eps``; ``z = P(x_k + eta * step(grad))``;
``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with momentum ``a = 0.75``
(``a = 1`` on the first step). At the checkpoints ``w_j = ceil(p_j N)``, ``p_0 = 0``,
``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, the step size is halved and
the iterate reset to the best point so far when (1) the loss increased in fewer than
``rho = 0.75`` of the steps since the last checkpoint, or (2) the step size was not halved at
the last checkpoint and the best loss has not improved since. The returned point is the first
fooled iterate when there is one, else the one with the highest loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validate import check_int
from .base import Attack, random_start
from .objectives import TargetedDLR

__all__ = ["APGD", "APGDT", "MOMENTUM", "RHO", "apgd_checkpoints"]

RHO = 0.75
MOMENTUM = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j`` (> 0, < steps) at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1:
            break
        p.append(nxt)
    ws = sorted({math.ceil(round(q * steps, 6)) for q in p[1:]})
    return [w for w in ws if 0 < w < steps]


class APGD(Attack):
    """APGD with the CE (``loss="ce"``) or DLR (``loss="dlr"``) loss, L-inf or L2.

    Args:
        model, eps, norm, loss, eot_iter, seed, kernels: see :class:`Attack`.
        steps: gradient steps per restart (the paper's N_iter; AutoAttack uses 100).
        restarts: runs from fresh random starts, only on the points not yet fooled.
        random_start: start from a random point of the ball (as AutoAttack does), else from x.
        rho: checkpoint condition 1 threshold.
    """

    name = "apgd"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        steps: int = 100,
        restarts: int = 1,
        random_start: bool = True,
        rho: float = RHO,
        loss: Any = "ce",
        **kwargs: Any,
    ):
        super().__init__(model, eps, loss=loss, **kwargs)
        self.steps = check_int(steps, "steps", low=1)
        self.restarts = check_int(restarts, "restarts", low=1)
        self.random_start = bool(random_start)
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho!r}")
        self.rho = float(rho)
        self.name = f"apgd-{self.objective.name}"

    def __repr__(self) -> str:
        return (
            f"APGD(eps={self.eps:.4g}, steps={self.steps}, norm={self.norm!r}, "
            f"loss={self.objective!r})"
        )

    def perturb(self, x, y):
        return self._restarts(x, y, self.objective, self._generator(x.device), self.restarts)

    def _restarts(self, x, y, objective, gen, restarts, result=None, done=None):
        """Run ``restarts`` times on the points not yet fooled, updating ``result`` and ``done``
        in place."""
        n = x.shape[0]
        result = x.clone() if result is None else result
        done = torch.zeros(n, dtype=torch.bool, device=x.device) if done is None else done
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        classification = objective.classification
        for _ in range(restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if isinstance(objective, _SubsetTargetedDLR):
                objective.subset = idx
            x_adv, fooled, loss = self._run(x[idx], y[idx], objective, gen)
            if fooled is None:  # no notion of success: keep the highest loss
                better = loss > best_loss[idx]
                best_loss[idx[better]] = loss[better]
                result[idx[better]] = x_adv[better]
                continue
            better = fooled | (loss > best_loss[idx])
            best_loss[idx] = torch.where(better, loss, best_loss[idx])
            result[idx[better]] = x_adv[better]
            if classification:
                done[idx[fooled]] = True
        return result

    def _run(self, x, y, objective, gen):
        """One APGD run. Returns (x_adv, fooled or None, loss at x_adv)."""
        n = x.shape[0]
        view = (n,) + (1,) * (x.ndim - 1)
        eps = self.eps
        x_cur = random_start(x, eps, self.norm, gen) if self.random_start else x.clone()
        x_prev = x_cur.clone()
        eta = torch.full((n,), 2.0 * eps, device=x.device)
        checkpoints = set(apgd_checkpoints(self.steps))
        x_best, grad_best = x_cur.clone(), None
        loss_best = torch.full((n,), float("-inf"), device=x.device)
        x_found = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        loss_prev = None
        increases = torch.zeros(n, device=x.device)
        last_ckpt, loss_best_at_ckpt = 0, loss_best.clone()
        halved_at_ckpt = torch.ones(n, dtype=torch.bool, device=x.device)  # no condition 2 at w_1
        classification = objective.classification

        for k in range(self.steps + 1):
            if k < self.steps:
                loss, logits, grad = self._loss_grad(x_cur, x, y, objective)
            else:  # the last iterate: loss only
                loss, logits = self._loss(x_cur, x, y, objective)
                grad = None
            with torch.no_grad():
                if classification:
                    fooled = self._fooled(logits, y)
                    new = fooled & ~found
                    x_found[new] = x_cur[new]
                    found |= fooled
                if loss_prev is not None:
                    increases += (loss > loss_prev).float()
                loss_prev = loss
                improved = loss > loss_best
                x_best[improved] = x_cur[improved]
                if grad is not None:
                    grad_best = grad.clone() if grad_best is None else grad_best
                    grad_best[improved] = grad[improved]
                loss_best = torch.where(improved, loss, loss_best)
                if k == self.steps:
                    break
                if k in checkpoints:
                    span = k - last_ckpt
                    cond1 = increases < self.rho * span
                    cond2 = ~halved_at_ckpt & (loss_best <= loss_best_at_ckpt)
                    halve = cond1 | cond2
                    eta = torch.where(halve, eta / 2, eta)
                    x_cur[halve] = x_best[halve]
                    x_prev[halve] = x_best[halve]  # no momentum across a reset
                    grad = torch.where(halve.reshape(view), grad_best, grad)
                    halved_at_ckpt = halve
                    loss_best_at_ckpt = loss_best.clone()
                    increases.zero_()
                    last_ckpt = k
                a = 1.0 if k == 0 else MOMENTUM
                z = self._step(x_cur, grad, x, eta)
                v = (
                    x_cur.float()
                    + a * (z.float() - x_cur.float())
                    + (1 - a) * (x_cur.float() - x_prev.float())
                )
                x_prev = x_cur
                x_cur = self._step(v.to(x.dtype), v, x, 0.0)  # alpha 0: projection only
        if not classification:
            return x_best, None, loss_best
        out = torch.where(found.reshape(view), x_found, x_best)
        return out, found, torch.where(found, torch.full_like(loss_best, float("inf")), loss_best)


class APGDT(APGD):
    """Targeted APGD with the targeted DLR loss (AutoAttack's APGD-T).

    For each of the ``n_target_classes`` classes ranked highest by the clean logits (the true
    class excluded), run APGD towards that class on the points still correctly classified.
    Success means misclassification (any class), as in AutoAttack.
    """

    name = "apgd-t"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        **kwargs: Any,
    ):
        if "loss" in kwargs or kwargs.get("targeted"):
            raise ValueError(
                "APGDT uses the targeted DLR loss against the true labels; pass y as true labels"
            )
        super().__init__(model, eps, steps=steps, restarts=restarts, loss="ce", **kwargs)
        self.n_target_classes = check_int(n_target_classes, "n_target_classes", low=1)
        self.objective = TargetedDLR()
        self.name = "apgd-t"

    def perturb(self, x, y):
        gen = self._generator(x.device)
        with torch.no_grad():
            logits = self.model(x)
        n_classes = logits.shape[1]
        if n_classes < 4:
            raise ValueError(f"APGDT needs at least 4 classes, the model has {n_classes}")
        order = logits.float().scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        result = x.clone()
        done = logits.argmax(1) != y  # already misclassified: nothing to do
        for t in range(min(self.n_target_classes, n_classes - 1)):
            objective = _SubsetTargetedDLR(order[:, t])
            self._restarts(x, y, objective, gen, self.restarts, result, done)
            if bool(done.all()):
                break
        return result


class _SubsetTargetedDLR(TargetedDLR):
    """Targeted DLR whose (full-batch) targets are indexed by the run's subset of samples."""

    def __init__(self, full_target: torch.Tensor):
        super().__init__(None)
        self.full_target = full_target
        self.subset: torch.Tensor | None = None

    def __call__(self, model, x_adv, x, y):
        self.target = self.full_target if self.subset is None else self.full_target[self.subset]
        return super().__call__(model, x_adv, x, y)

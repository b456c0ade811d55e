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

With ``norm="l1"`` this is l1-APGD (Croce & Hein 2021, "Mind the box"): the threat model is
the L1 ball intersected with [0, 1] and ``P`` its exact projection; ``eta = eps`` at the start;
``step(grad)`` is the sparse direction ``sign(grad)`` on the top-k coordinates by ``|grad|``
(those the box lets move), of unit L1 norm, with k a fifth of the coordinates at first; at
every checkpoint k becomes the sparsity of the best point over 1.5 and the step size is divided
by 1.5 (reset to ``eps`` when the best point got sparser by more than 5%, kept at least
``eps / 10``), while the reset to the best point follows conditions (1) and (2) as above
(:mod:`mimir_fast.attacks.l1`). The random start is a sparse random point of the set. Not
done: the paper's runs at a larger eps first (AutoAttack's ``use_largereps``). l1-APGD takes
no momentum step (``a = 1``): on the digits, momentum 0.75 left 5-15 points more robust
accuracy at the same budget.

Restarts, and APGD-T's target classes, run as one batch of up to ``max_batch`` images with the
per-sample result of running them one after another (:mod:`mimir_fast.attacks.batching`). A
row stops as soon as its result is settled: it fooled the model (its first fooled iterate is
the result), or an earlier run in the loop's order fooled the same point (AutoAttack would not
have attacked it again). Checking for settled rows costs one host sync per step on the CPU and
one every ten steps on a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validate import check_int
from ..ops.pgd_step import NORMS
from .base import Attack
from .l1 import (
    L1_TOPK_START,
    l1_checkpoint,
    l1_random_start,
    l1_sparse_direction,
    project_l1_box,
    topk_count,
)
from .objectives import TargetedDLR

__all__ = ["APGD", "APGDT", "MOMENTUM", "RHO", "apgd_checkpoints"]

RHO = 0.75
MOMENTUM = 0.75
_COMPACT_EVERY_CUDA = 10  # steps between checks for settled rows on a GPU (each one syncs)


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
    """APGD with the CE (``loss="ce"``) or DLR (``loss="dlr"``) loss, L-inf, L2 or L1.

    Args:
        model, eps, loss, eot_iter, seed, kernels, max_batch: see :class:`Attack`.
        norm: "linf", "l2" or "l1" (l1-APGD on the L1 ball intersected with [0, 1]).
        steps: gradient steps per restart (the paper's N_iter; AutoAttack uses 100).
        restarts: runs from fresh random starts, only on the points not yet fooled; they run
            as one batch where ``max_batch`` allows.
        random_start: start from a random point of the ball (as AutoAttack does), else from x.
        rho: checkpoint condition 1 threshold.
    """

    name = "apgd"
    norms = (*NORMS, "l1")

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
        return self._batched_runs(x, y, self._run_rows, restarts=self.restarts)

    def _start(self, x, gen):
        if self.norm == "l1":
            return l1_random_start(x, self.eps, gen) if self.random_start else x
        return super()._start(x, gen)

    def _ascent(self, rows: _Rows) -> torch.Tensor:
        """``z = P(x_k + eta * step(grad))`` for every row."""
        if self.norm != "l1":
            return self._step(rows.x_cur, rows.grad, rows.x, rows.eta)
        d = rows.x[0].numel()
        u = l1_sparse_direction(rows.grad, rows.x_cur, topk_count(rows.topk, d))
        z = rows.x_cur.float() + rows.eta.reshape(rows.view) * u
        return project_l1_box(z, rows.x, self.eps)

    def _project(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``P(v)``: the projection on the threat model around ``x``."""
        if self.norm == "l1":
            return project_l1_box(v, x, self.eps)
        return self._step(v, v, x, 0.0)  # alpha 0: projection

    def _run_rows(self, x, y, start, target, runs):
        """APGD on rows that stack ``runs`` runs of the same points (run-major); returns
        ``(x_adv, fooled or None, loss at x_adv)`` per row.

        A row stops once it, or a row of an earlier run on the same point, fooled the model:
        its result is then fixed (the first fooled iterate) or no longer used.
        """
        l1 = self.norm == "l1"
        rows = _Rows(x, y, start, target, runs, (1.0 if l1 else 2.0) * self.eps, l1)
        objective = self.objective if target is None else TargetedDLR()
        classification = objective.classification
        checkpoints = set(apgd_checkpoints(self.steps))
        every = 1 if x.device.type == "cpu" else _COMPACT_EVERY_CUDA
        for k in range(self.steps + 1):
            if target is not None:
                objective.target = rows.target
            if k < self.steps:
                loss, logits, grad = self._loss_grad(rows.x_cur, rows.x, rows.y, objective)
            else:  # the last iterate: loss only
                loss, logits = self._loss(rows.x_cur, rows.x, rows.y, objective)
                grad = None
            with torch.no_grad():
                rows.record(loss, self._fooled(logits, rows.y) if classification else None, grad)
                if k == self.steps:
                    break
                if classification and k % every == 0 and not rows.drop_finished():
                    break  # every row fooled: nothing left to run
                if k in checkpoints:
                    rows.checkpoint(k, self.rho, self.eps if l1 else None)
                z = self._ascent(rows).float()
                a = 1.0 if k == 0 or l1 else MOMENTUM  # l1: no momentum (see the docstring)
                cur = rows.x_cur.float()
                v = cur + a * (z - cur) + (1 - a) * (cur - rows.x_prev.float())
                rows.x_prev = rows.x_cur
                rows.x_cur = self._project(v.to(x.dtype), rows.x)
        return rows.results(classification)


class APGDT(APGD):
    """Targeted APGD with the targeted DLR loss (AutoAttack's APGD-T).

    For each of the ``n_target_classes`` classes ranked highest by the clean logits (the true
    class excluded), run APGD towards that class on the points still correctly classified.
    Success means misclassification (any class), as in AutoAttack. The targets run together
    (N x targets rows, up to ``max_batch``); a point keeps the example of the first target in
    that order that fooled it, as in the sequential loop.
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
        with torch.no_grad():
            logits = self.model(x)
        n_classes = logits.shape[1]
        if n_classes < 4:
            raise ValueError(f"APGDT needs at least 4 classes, the model has {n_classes}")
        order = logits.float().scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        done = logits.argmax(1) != y  # already misclassified: nothing to do
        targets = [order[:, t] for t in range(min(self.n_target_classes, n_classes - 1))]
        return self._batched_runs(x, y, self._run_rows, targets, self.restarts, done)


class _Rows:
    """The state of APGD on a batch of rows (``runs`` runs of the same points, run-major).

    Every tensor below has one entry per live row; rows that cannot change the result any more
    (fooled, or on a point an earlier run fooled) are written to the outputs and dropped.
    """

    PER_ROW = (
        "ids", "x", "y", "target", "x_cur", "x_prev", "eta", "x_best", "grad_best", "grad",
        "loss_best", "loss_prev", "loss_best_ckpt", "x_found", "found", "increases", "halved",
        "topk", "sparsity",
    )  # fmt: skip

    def __init__(self, x, y, start, target, runs, eta, l1=False):
        n = x.shape[0]
        dev = x.device
        self.runs, self.n = runs, n
        self.view = (-1,) + (1,) * (x.ndim - 1)
        self.ids = torch.arange(n, device=dev)  # (R,) row of each live row in the outputs
        self.x, self.y, self.target = x, y, target
        self.x_cur = start.clone()
        self.x_prev = start.clone()
        self.eta = torch.full((n,), eta, device=dev)
        self.x_best, self.grad_best, self.grad = start.clone(), None, None
        self.loss_best = torch.full((n,), float("-inf"), device=dev)
        self.loss_prev = None
        self.loss_best_ckpt = self.loss_best.clone()
        self.x_found = x.clone()
        self.found = torch.zeros(n, dtype=torch.bool, device=dev)
        self.increases = torch.zeros(n, device=dev)
        self.halved = torch.ones(n, dtype=torch.bool, device=dev)  # no condition 2 at w_1
        self.last_ckpt = 0
        self.found_all = torch.zeros(n, dtype=torch.bool, device=dev)  # by output row
        self.out = [torch.empty_like(x), torch.zeros_like(self.found), self.loss_best.clone()]
        # l1-APGD: the share of coordinates a step moves, and the best point's last sparsity
        self.topk = torch.full((n,), L1_TOPK_START, device=dev) if l1 else None
        self.sparsity = torch.full((n,), float(x[0].numel()), device=dev) if l1 else None

    def record(self, loss, fooled, grad) -> None:
        """Book-keeping after a forward at ``x_cur``: first fooled iterate, best point."""
        if fooled is not None:
            new = (fooled & ~self.found).reshape(self.view)
            self.x_found = torch.where(new, self.x_cur, self.x_found)
            self.found = self.found | fooled
        if self.loss_prev is not None:
            self.increases += (loss > self.loss_prev).float()
        self.loss_prev = loss
        improved = loss > self.loss_best
        self.x_best = torch.where(improved.reshape(self.view), self.x_cur, self.x_best)
        if grad is not None:
            if self.grad_best is None:
                self.grad_best = grad.clone()
            self.grad_best = torch.where(improved.reshape(self.view), grad, self.grad_best)
        self.loss_best = torch.where(improved, loss, self.loss_best)
        self.grad = grad

    def checkpoint(self, k: int, rho: float, l1_eps: float | None = None) -> None:
        """Halve the step and restart from the best point where the paper's conditions hold
        (l1-APGD, ``l1_eps`` its radius: adapt the sparsity and step size of every row)."""
        cond1 = self.increases < rho * (k - self.last_ckpt)
        cond2 = ~self.halved & (self.loss_best <= self.loss_best_ckpt)
        halve = cond1 | cond2
        if l1_eps is None:
            self.eta = torch.where(halve, self.eta / 2, self.eta)
        else:
            self.eta, self.topk, self.sparsity = l1_checkpoint(
                self.eta, self.x_best, self.x, self.sparsity, l1_eps
            )
        h = halve.reshape(self.view)
        self.x_cur = torch.where(h, self.x_best, self.x_cur)
        self.x_prev = torch.where(h, self.x_best, self.x_prev)  # no momentum across a reset
        self.grad = torch.where(h, self.grad_best, self.grad)
        self.halved = halve
        self.loss_best_ckpt = self.loss_best.clone()
        self.increases.zero_()
        self.last_ckpt = k

    def drop_finished(self) -> bool:
        """Drop rows whose result is settled; False when no row is left (one host sync)."""
        dead = self.found
        if self.runs > 1:  # also dead: rows on a point that an earlier run already fooled
            self.found_all[self.ids] = self.found
            earlier = self.found_all.reshape(self.runs, -1).cumsum(0) > 0  # (runs, a)
            dead = earlier.reshape(-1)[self.ids]
        n_dead, n_live = int(dead.sum()), dead.numel()
        if n_dead == n_live:
            self._write(torch.arange(n_live, device=dead.device))
            self.ids = self.ids[:0]
            return False
        if n_dead * 16 >= n_live:  # enough to be worth a compaction
            self._write(dead.nonzero().squeeze(1))
            keep = (~dead).nonzero().squeeze(1)
            for name in self.PER_ROW:
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, value[keep])
        return True

    def _write(self, idx: torch.Tensor) -> None:
        """Write the results of the live rows ``idx`` to the outputs."""
        found = self.found[idx]
        rows = self.ids[idx]
        self.out[0][rows] = torch.where(
            found.reshape(self.view), self.x_found[idx], self.x_best[idx]
        )
        self.out[1][rows] = found
        self.out[2][rows] = torch.where(found, float("inf"), self.loss_best[idx])

    def results(self, classification: bool):
        """(x_adv, fooled or None, loss) of every row: the first fooled iterate, else the best."""
        if self.ids.numel():
            self._write(torch.arange(self.ids.numel(), device=self.ids.device))
        x_adv, fooled, loss = self.out
        return x_adv, (fooled if classification else None), loss

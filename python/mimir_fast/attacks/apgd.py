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
(:mod:`mimir_fast.attacks.l1`). The random start is a sparse random point of the set. l1-APGD
takes no momentum step (``a = 1``): on the digits, momentum 0.75 left 5-15 points more robust
accuracy at the same budget.

``large_eps_start=True`` (l1 only; AutoAttack's ``use_largereps``, the paper's initialization
with a larger radius) runs every restart in three stages on the radii ``3 eps``, ``2 eps`` and
``eps``, with ``ceil(0.3 N)``, ``ceil(0.3 N)`` and the remaining iterations
(:func:`large_eps_schedule`; 30, 30, 40 for N = 100). The random start is drawn in the ``3 eps``
set; each later stage starts from the previous stage's highest-loss point projected on its
smaller set, and starts its step size, sparsity and checkpoints afresh. Only points of the
requested set count: an iterate of an earlier stage that fools the model is kept only when it
lies in the ``eps`` ball (without rounding slack), and a point not fooled gets the best point of
the last stage.

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
    l1_norms,
    l1_random_start,
    l1_sparse_direction,
    project_l1_box,
    topk_count,
)
from .objectives import TargetedDLR

__all__ = [
    "APGD",
    "APGDT",
    "LARGE_EPS_FACTORS",
    "LARGE_EPS_SHARES",
    "MOMENTUM",
    "RHO",
    "apgd_checkpoints",
    "large_eps_schedule",
]

RHO = 0.75
MOMENTUM = 0.75
LARGE_EPS_FACTORS = (3.0, 2.0, 1.0)  # large_eps_start: the stages' radii, in units of eps
LARGE_EPS_SHARES = (0.3, 0.3)  # ... and the share of the iterations of all stages but the last
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


def large_eps_schedule(steps: int) -> list[tuple[float, int]]:
    """``[(eps factor, iterations), ...]`` of the stages of ``large_eps_start``.

    ``ceil(0.3 steps)`` iterations at ``3 eps``, as many at ``2 eps``, the rest at ``eps``: the
    stages add up to ``steps``. Below 5 steps a stage may get none (it only evaluates its start).
    """
    steps = check_int(steps, "steps", low=1)
    left, stages = steps, []
    for factor, share in zip(LARGE_EPS_FACTORS, LARGE_EPS_SHARES):
        n = min(math.ceil(share * steps), left)
        stages.append((factor, n))
        left -= n
    return [*stages, (LARGE_EPS_FACTORS[-1], left)]


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
        large_eps_start: norm "l1" only: run each restart on the radii 3 eps, 2 eps, then eps
            (:func:`large_eps_schedule`; AutoAttack's ``use_largereps``, see the module
            docstring); the result lies in the eps set.

    Raises:
        ValueError: ``large_eps_start`` with another norm than "l1".
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
        large_eps_start: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, eps, loss=loss, **kwargs)
        self.steps = check_int(steps, "steps", low=1)
        self.restarts = check_int(restarts, "restarts", low=1)
        self.random_start = bool(random_start)
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho!r}")
        self.rho = float(rho)
        self.large_eps_start = bool(large_eps_start)
        if self.large_eps_start and self.norm != "l1":
            raise ValueError(
                f"large_eps_start is an option of l1-APGD (norm 'l1'), got norm {self.norm!r}"
            )
        self.name = f"apgd-{self.objective.name}"

    def __repr__(self) -> str:
        extra = ", large_eps_start=True" if self.large_eps_start else ""
        return (
            f"APGD(eps={self.eps:.4g}, steps={self.steps}, norm={self.norm!r}, "
            f"loss={self.objective!r}{extra})"
        )

    def perturb(self, x, y):
        return self._batched_runs(x, y, self._run_rows, restarts=self.restarts)

    def stages(self) -> list[tuple[float, int]]:
        """``[(radius, iterations), ...]`` each restart runs: one stage at ``eps`` unless
        ``large_eps_start``."""
        if not self.large_eps_start:
            return [(self.eps, self.steps)]
        return [(f * self.eps, n) for f, n in large_eps_schedule(self.steps)]

    def _start(self, x, gen):
        if self.norm == "l1":
            radius = self.stages()[0][0]
            return l1_random_start(x, radius, gen) if self.random_start else x
        return super()._start(x, gen)

    def _ascent(self, rows: _Rows, eps: float) -> torch.Tensor:
        """``z = P(x_k + eta * step(grad))`` for every row, ``eps`` the radius of ``P``."""
        if self.norm != "l1":
            return self._step(rows.x_cur, rows.grad, rows.x, rows.eta)
        d = rows.x[0].numel()
        u = l1_sparse_direction(rows.grad, rows.x_cur, topk_count(rows.topk, d))
        z = rows.x_cur.float() + rows.eta.reshape(rows.view) * u
        return project_l1_box(z, rows.x, eps)

    def _project(self, v: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """``P(v)``: the projection on the threat model of radius ``eps`` around ``x``."""
        if self.norm == "l1":
            return project_l1_box(v, x, eps)
        return self._step(v, v, x, 0.0, eps)  # alpha 0: projection

    def _run_rows(self, x, y, start, target, runs):
        """APGD on rows that stack ``runs`` runs of the same points (run-major); returns
        ``(x_adv, fooled or None, loss at x_adv)`` per row.

        A row stops once it, or a row of an earlier run on the same point, fooled the model
        inside the ``eps`` set: its result is then fixed (the first such iterate) or no longer
        used. With several stages (``large_eps_start``), each starts from the previous stage's
        best point projected on its own set.
        """
        l1 = self.norm == "l1"
        stages = self.stages()
        rows = _Rows(x, y, start, target, runs, (1.0 if l1 else 2.0) * stages[0][0], l1)
        objective = self.objective if target is None else TargetedDLR()
        for i, (eps, steps) in enumerate(stages):
            if i:
                rows.new_stage(eps, self._project(rows.x_best, rows.x, eps))
            if not self._run_stage(rows, objective, target is not None, eps, steps):
                break  # every row settled
        return rows.results(objective.classification)

    def _run_stage(self, rows: _Rows, objective: Any, targeted: bool, eps: float, steps: int):
        """``steps`` APGD iterations on the set of radius ``eps``; False when no row is left."""
        l1 = self.norm == "l1"
        classification = objective.classification
        outside = eps > self.eps  # a larger set: fooled iterates count only inside the eps one
        checkpoints = set(apgd_checkpoints(steps))
        every = 1 if rows.x.device.type == "cpu" else _COMPACT_EVERY_CUDA
        for k in range(steps + 1):
            if targeted:
                objective.target = rows.target
            if k < steps:
                loss, logits, grad = self._loss_grad(rows.x_cur, rows.x, rows.y, objective)
            else:  # the last iterate: loss only
                loss, logits = self._loss(rows.x_cur, rows.x, rows.y, objective)
                grad = None
            with torch.no_grad():
                fooled = self._fooled(logits, rows.y) if classification else None
                if fooled is not None and outside:
                    inside = l1_norms(rows.x_cur.double() - rows.x.double()) <= self.eps
                    fooled = fooled & inside
                rows.record(loss, fooled, grad)
                if k == steps:
                    break
                if classification and k % every == 0 and not rows.drop_finished():
                    return False  # every row fooled: nothing left to run
                if k in checkpoints:
                    rows.checkpoint(k, self.rho, eps if l1 else None)
                z = self._ascent(rows, eps).float()
                a = 1.0 if k == 0 or l1 else MOMENTUM  # l1: no momentum (see the docstring)
                cur = rows.x_cur.float()
                v = cur + a * (z - cur) + (1 - a) * (cur - rows.x_prev.float())
                rows.x_prev = rows.x_cur
                rows.x_cur = self._project(v.to(rows.x.dtype), rows.x, eps)
        return True


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

    def new_stage(self, eta: float, start: torch.Tensor) -> None:
        """Start a new stage of every live row from ``start`` with step size ``eta``: the best
        loss, the checkpoint counters and the l1 sparsity begin afresh; found points stay."""
        self.x_cur, self.x_prev, self.x_best = start, start.clone(), start.clone()
        self.eta = torch.full_like(self.eta, eta)
        self.loss_best = torch.full_like(self.loss_best, float("-inf"))
        self.loss_prev = None
        self.loss_best_ckpt = self.loss_best.clone()
        self.increases = torch.zeros_like(self.increases)
        self.halved = torch.ones_like(self.halved)
        self.last_ckpt = 0
        if self.topk is not None:
            self.topk = torch.full_like(self.topk, L1_TOPK_START)
            self.sparsity = torch.full_like(self.sparsity, float(self.x[0].numel()))

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

"""Restarts and target classes of an attack as one larger batch, with the sequential result.

AutoAttack's loop runs, for each target class in order, ``restarts`` runs of an attack, each
on the points no earlier run fooled. :func:`batched_runs` stacks as many of those runs as
``max_batch`` images allow into one batch (N x runs rows) and returns, per sample, what the
loop returns: the first run in order that fooled the point, else, among the last target's runs,
the one with the highest loss. The runs' random starts are drawn for the whole batch, one run
after another in the loop's order, so they do not depend on the grouping either. Rows of one
batch must not interact (true of the classification objectives): non-classification
objectives run one run at a time on the whole batch.

On a GPU that runs out of memory, a group is retried with half as many rows (down to one run
in chunks), which changes no result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["DEFAULT_MAX_BATCH", "RunRows", "batched_runs"]

# Images put through the model at once: 9 target classes of a batch of 256 run as one batch.
DEFAULT_MAX_BATCH = 2304
# One batch of runs: (x, y, start, target or None, runs) -> (x_adv, fooled or None, loss), on
# rows that stack ``runs`` runs of the same points, run-major.
RunRows = Callable[..., tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor]]


def batched_runs(
    attack: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    run: RunRows,
    targets: Sequence[torch.Tensor | None] = (None,),
    restarts: int = 1,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every (target, restart) run of ``attack``, the per-sample result of the sequential loop.

    Args:
        attack: the attack: its ``max_batch``, ``objective``, ``_generator`` and ``_start``
            (one run's starting point for the whole batch) are used.
        x, y: the clean images (N, C, H, W) and labels (N,).
        run: runs the attack on stacked rows (see :data:`RunRows`).
        targets: per target class, an (N,) tensor of targets (None: untargeted).
        restarts: runs per target.
        done: (N,) points not to attack (their result is ``x``).
    """
    gen = attack._generator(x.device)
    pick = _Selection(x, done)
    order = [(t, r) for t in range(len(targets)) for r in range(restarts)]
    per_sample = attack.objective.classification  # rows independent: they may share a batch
    limit = attack.max_batch
    starts: list[torch.Tensor | None] = []  # every run's start, drawn in the loop's order
    j = 0
    while j < len(order):
        active = (~pick.done).nonzero().squeeze(1)  # (a,) points still attacked
        a = active.numel()
        if a == 0:
            break
        k = min(len(order) - j, max(1, limit // a)) if per_sample else 1
        while len(starts) < j + k:
            starts.append(attack._start(x, gen))
        ts = [targets[t] for t, _ in order[j : j + k]]
        target = None if ts[0] is None else torch.cat([t[active] for t in ts])
        start = torch.cat([s[active] for s in starts[j : j + k]])
        try:
            outs = _run_group(x[active], y[active], start, target, k, run, limit, per_sample)
        except torch.cuda.OutOfMemoryError:
            if min(k * a, limit) <= 1 or not per_sample:
                raise
            limit = min(k * a, limit) // 2  # the same group again, in smaller batches
            del start, target
            torch.cuda.empty_cache()
            continue
        for (_, r), out in zip(order[j : j + k], outs):
            if r == 0:
                pick.best_loss.fill_(float("-inf"))  # a new target: the loop's reset
            pick.add(active, *out)
        starts[j : j + k] = [None] * k  # free the used starts
        j += k
    return pick.result


def _run_group(x, y, start, target, k, run, limit, per_sample):
    """``run`` on ``k`` stacked runs of the points ``x`` (one run beyond ``limit`` rows goes in
    chunks of ``limit``); per run, ``(x_adv, fooled, loss)`` of its ``a`` rows."""
    a = x.shape[0]
    if k == 1 and a > limit and per_sample:
        parts = [
            run(
                x[i : i + limit],
                y[i : i + limit],
                start[i : i + limit],
                None if target is None else target[i : i + limit],
                1,
            )
            for i in range(0, a, limit)
        ]
        x_adv, fooled, loss = (
            None if parts[0][n] is None else torch.cat([p[n] for p in parts]) for n in range(3)
        )
        return [(x_adv, fooled, loss)]
    reps = (k,) + (1,) * (x.ndim - 1)
    x_adv, fooled, loss = run(x.repeat(reps), y.repeat(k), start, target, k)
    return [
        (
            x_adv[i * a : (i + 1) * a],
            None if fooled is None else fooled[i * a : (i + 1) * a],
            loss[i * a : (i + 1) * a],
        )
        for i in range(k)
    ]


class _Selection:
    """The per-sample result of runs added in the sequential loop's order."""

    def __init__(self, x: torch.Tensor, done: torch.Tensor | None):
        n = x.shape[0]
        self.result = x.clone()
        self.done = torch.zeros(n, dtype=torch.bool, device=x.device) if done is None else done
        self.best_loss = torch.full((n,), float("-inf"), device=x.device)

    def add(self, rows, x_adv, fooled, loss) -> None:
        """Fold in one run on the points ``rows``; those an earlier run fooled are skipped, as
        the loop never attacks them again."""
        attacked = ~self.done[rows]  # (a,)
        better = loss > self.best_loss[rows]
        if fooled is not None:
            better = better | fooled
            self.done[rows] = self.done[rows] | (attacked & fooled)
        better = better & attacked
        self.best_loss[rows] = torch.where(better, loss, self.best_loss[rows])
        view = (-1,) + (1,) * (x_adv.ndim - 1)
        self.result[rows] = torch.where(better.reshape(view), x_adv, self.result[rows])

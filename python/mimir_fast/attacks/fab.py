"""FAB, the fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), L-inf and L2, untargeted and targeted (FAB-T).

Written from the paper. FAB looks for the adversarial example of smallest norm. At the iterate
``x_i`` it linearises the classifier: the decision boundary between the true class ``c`` and a
class ``s`` becomes the hyperplane ``g + <w, z - x_i> = 0`` with ``g = f_s(x_i) - f_c(x_i)`` and
``w = grad f_s - grad f_c``. Untargeted FAB takes the class ``s`` whose hyperplane is closest,
``|g| / ||w||_q`` (q the dual norm); FAB-T takes a fixed target class. Then

- ``d_i`` and ``d_0`` are the smallest steps from ``x_i`` and from the clean ``x_0`` onto the
  hyperplane, inside the box [0, 1] (:func:`project_hyperplane_box`);
- ``alpha = min(||d_i|| / (||d_i|| + ||d_0||), alpha_max)`` biases towards the clean point;
- ``x_{i+1} = clip((1 - alpha)(x_i + eta d_i) + alpha (x_0 + eta d_0))`` (``eta``: overshoot);
- when ``x_{i+1}`` is adversarial it is recorded if closer than the best so far, and pulled
  back towards the clean point: ``x_{i+1} <- (1 - beta) x_0 + beta x_{i+1}``.

Restarts after the first begin at a random point of radius ``min(best distance, eps) / 2``.
Defaults are the paper's and AutoAttack's: 100 steps, 1 restart, ``alpha_max = 0.1``,
``eta = 1.05``, ``beta = 0.9``, and 9 target classes for FAB-T.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validate import check_int, check_number
from .base import Attack

__all__ = ["FAB", "FABT", "project_hyperplane_box"]


def project_hyperplane_box(
    x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, norm: str
) -> torch.Tensor:
    """The smallest step ``d`` (L-inf or L2 norm) with ``<w, d> = r`` and ``x + d`` in [0, 1].

    Each coordinate moves in the direction of ``sign(r) w_i`` until it meets the box: for L2
    ``d_i = sign(r w_i) min(lam |w_i|, room_i)``, for L-inf ``d_i = sign(r w_i) min(lam, room_i)``,
    with the smallest ``lam`` that reaches ``<w, d> = r`` (found exactly by sorting the points at
    which coordinates meet the box). When no point of the box reaches the hyperplane, the
    corner closest to it is returned.

    Args:
        x: (N, D) points in [0, 1].
        w: (N, D) hyperplane normals.
        r: (N,) required value of ``<w, d>``.
        norm: "linf" or "l2".
    """
    sign = torch.where(r < 0, -1.0, 1.0)[:, None]  # (N, 1)
    v = w * sign  # (N, D): now <v, d> = |r| >= 0
    target = r.abs()[:, None]  # (N, 1)
    size = v.abs()
    room = torch.where(v > 0, 1.0 - x, x)  # (N, D) how far each coordinate may move
    speed = size if norm == "l2" else torch.ones_like(size)  # |d_i| = lam * speed_i until the box
    meets = torch.where(speed > 0, room / speed.clamp_min(1e-30), 0.0)  # (N, D) lam at the box
    order = meets.argsort(dim=1)
    meets_sorted = meets.gather(1, order)
    clipped = (size * room).gather(1, order).cumsum(1)  # (N, D) <v, d> of those at the box
    slope = (size * speed).sum(1, keepdim=True) - (size * speed).gather(1, order).cumsum(1)
    reached = clipped + meets_sorted * slope  # (N, D) <v, d(lam)> at each sorted meeting point
    k = (reached < target).sum(1, keepdim=True)  # (N, 1) meeting points passed before the solution
    feasible = k < x.shape[1]
    prev = (k - 1).clamp_min(0)
    clipped_before = torch.where(k > 0, clipped.gather(1, prev), 0.0)
    slope_before = torch.where(k > 0, slope.gather(1, prev), (size * speed).sum(1, keepdim=True))
    lam = (target - clipped_before) / slope_before.clamp_min(1e-30)  # (N, 1)
    step = torch.where(feasible, torch.minimum(lam * speed, room), room)
    return torch.sign(v) * step


def _norms(d: torch.Tensor, norm: str) -> torch.Tensor:
    """(N,) L-inf or L2 norm of each row of ``d`` (N, D)."""
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


class FAB(Attack):
    """Untargeted FAB (L-inf or L2): the smallest adversarial perturbation it finds, within eps.

    Args:
        model: a classifier ``model(x) -> logits``; its gradients for every class are used.
        eps: threat-model radius. A sample whose smallest adversarial example found lies
            farther than eps is returned unchanged (as AutoAttack's FAB does with an eps).
        norm: "linf" or "l2" (any case: "Linf" and "L2" as in torchattacks).
        steps: iterations per restart (the paper's and AutoAttack's 100).
        restarts: runs per sample; restarts after the first start from a random point.
        alpha_max: the largest weight of the step from the clean point.
        eta: overshoot of the projection steps (>= 1).
        beta: backward step towards the clean point after an adversarial iterate, in (0, 1).
        early_stop: skip the later runs for samples already fooled within eps (enough for
            robust accuracy, cheaper); by default every run is made and the smallest kept.
        seed: seeds the random restarts (see :class:`~mimir_fast.attacks.Attack`).
    Gradients come from one forward pass per step (no EOT averaging: FAB follows the boundary
    of a deterministic classifier). Samples the model already misclassifies are returned
    unchanged. After a call, ``last_distances`` holds per sample the norm of the smallest
    adversarial perturbation found (0 for samples already misclassified, inf where none was
    found).
    """

    name = "fab"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        early_stop: bool = False,
        **kwargs: Any,
    ):
        for option in ("loss", "targeted"):
            if option in kwargs:
                raise ValueError(
                    f"{type(self).__name__} takes no {option}= argument: it follows the decision "
                    "boundary of the true labels y (use FABT for the targeted version)"
                )
        norm = norm.lower() if isinstance(norm, str) else norm
        super().__init__(model, eps, norm=norm, **kwargs)
        self.steps = check_int(steps, "steps", 1)
        self.restarts = check_int(restarts, "restarts", 1)
        self.alpha_max = check_number(alpha_max, "alpha_max", 0, 1)
        self.eta = check_number(eta, "eta", 1)
        self.beta = check_number(beta, "beta", 0, 1, low_open=True, high_open=True)
        self.early_stop = bool(early_stop)
        self.last_distances: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:.4g}, norm={self.norm!r}, steps={self.steps}, "
            f"restarts={self.restarts})"
        )

    def _targets(self, logits: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor | None]:
        """The target class per sample of each series of runs (None: the closest boundary)."""
        return [None]

    def perturb(self, x, y):
        gen = self._generator(x.device)
        with torch.no_grad():
            logits = self.model(x)
        best = x.clone()
        dist = torch.where(logits.argmax(1) == y, math.inf, 0.0).float()  # (N,)
        correct = dist > 0
        targets = self._targets(logits, y)
        if self.restarts == 1 and len(targets) > 1:
            self._batched_targets(x, y, targets, correct, best, dist)
        for target in targets if self.restarts > 1 or len(targets) == 1 else []:
            for restart in range(self.restarts):
                todo = correct & ~(dist <= self.eps) if self.early_stop else correct
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                start = x[idx] if restart == 0 else self._random_start(x[idx], dist[idx], gen)
                adv, found = self._run(
                    x[idx], y[idx], None if target is None else target[idx], start
                )
                self._keep_closer(idx, adv, found, best, dist)
        self.last_distances = dist
        within = _norms((best - x).flatten(1).float(), self.norm) <= self.eps  # (N,)
        return torch.where(within.reshape(-1, *[1] * (x.ndim - 1)), best, x)

    @staticmethod
    def _keep_closer(idx, adv, found, best, dist) -> None:
        """Fold one run on the points ``idx`` into ``best``/``dist``: keep what is closer."""
        better = found < dist[idx]
        best[idx[better]] = adv[better]
        dist[idx[better]] = found[better]

    def _batched_targets(self, x, y, targets, correct, best, dist) -> None:
        """One run per target class, as many targets per batch as ``max_batch`` allows, folded
        in the targets' order with the sequential loop's result: a run starts from the clean
        point (no randomness), rows do not interact, and with ``early_stop`` a point fooled
        within eps by an earlier target ignores the later ones, as the loop never runs them."""
        t = 0
        while t < len(targets):
            todo = correct & ~(dist <= self.eps) if self.early_stop else correct
            idx = todo.nonzero().squeeze(1)  # (a,)
            if idx.numel() == 0:
                return
            k = min(len(targets) - t, max(1, self.max_batch // idx.numel()))
            rows = idx.repeat(k)  # (k a,) run-major
            target = torch.cat([targets[t + i][idx] for i in range(k)])
            adv, found = self._run(x[rows], y[rows], target, x[rows])
            for i in range(k):
                part = slice(i * idx.numel(), (i + 1) * idx.numel())
                keep = ~(dist[idx] <= self.eps) if self.early_stop else correct[idx]
                self._keep_closer(idx[keep], adv[part][keep], found[part][keep], best, dist)
            t += k

    def _random_start(
        self, x: torch.Tensor, dist: torch.Tensor, gen: torch.Generator | None
    ) -> torch.Tensor:
        """A random point at distance ``min(dist, eps) / 2`` from ``x``, clipped to the box."""
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1
        else:
            noise = torch.randn(x.shape, generator=gen, device=x.device)
        unit = noise / _norms(noise.flatten(1), self.norm).clamp_min(1e-12).reshape(
            -1, *[1] * (x.ndim - 1)
        )
        radius = 0.5 * dist.clamp(max=self.eps)  # (m,)
        return (x.float() + radius.reshape(-1, *[1] * (x.ndim - 1)) * unit).clamp(0.0, 1.0)

    def _hyperplane(
        self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(g (m,), w (m, D)): the linearised boundary ``f_s - f_y`` at ``x``.

        With a ``target`` s is the target; else s is the class whose linearised boundary is
        closest (all class gradients are needed: one backward pass per class).
        """
        xa = x.detach().requires_grad_(True)
        rows = torch.arange(x.shape[0], device=x.device)
        with torch.enable_grad():
            logits = self.model(xa).float()  # (m, K)
            if target is not None:
                diff = logits[rows, target] - logits[rows, y]  # (m,)
                (grad,) = torch.autograd.grad(diff.sum(), xa)
                return diff.detach(), grad.flatten(1).float()
            k = logits.shape[1]
            jac = torch.stack(
                [
                    torch.autograd.grad(logits[:, j].sum(), xa, retain_graph=j < k - 1)[0]
                    for j in range(k)
                ],
                dim=1,
            ).flatten(2)  # (m, K, D)
        g = (logits - logits[rows, y][:, None]).detach()  # (m, K)
        w = jac.float() - jac[rows, y].float()[:, None]  # (m, K, D)
        dual = w.abs().sum(2) if self.norm == "linf" else w.norm(dim=2)  # (m, K)
        gap = g.abs() / dual.clamp_min(1e-12)
        gap[rows, y] = math.inf
        s = gap.argmin(dim=1)
        return g[rows, s], w[rows, s]

    @torch.no_grad()
    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        start: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One FAB run from ``start``: (closest adversarial example found, its distance or inf)."""
        shape, dtype = x.shape, x.dtype
        x0 = x.flatten(1).float()  # (m, D)
        xi = start.flatten(1).float()
        best = x0.clone()
        best_dist = torch.full((x.shape[0],), math.inf, device=x.device)
        for _ in range(self.steps):
            g, w = self._hyperplane(xi.reshape(shape).to(dtype), y, target)
            d_i = project_hyperplane_box(xi, w, -g, self.norm)
            d_0 = project_hyperplane_box(x0, w, -(g + ((x0 - xi) * w).sum(1)), self.norm)
            n_i, n_0 = _norms(d_i, self.norm), _norms(d_0, self.norm)
            alpha = (n_i / (n_i + n_0).clamp_min(1e-12)).clamp(max=self.alpha_max)[:, None]
            xi = ((1 - alpha) * (xi + self.eta * d_i) + alpha * (x0 + self.eta * d_0)).clamp(0, 1)
            fooled = self.model(xi.reshape(shape).to(dtype)).argmax(1) != y  # (m,)
            dist = _norms(xi - x0, self.norm)
            closer = fooled & (dist < best_dist)
            best[closer] = xi[closer]
            best_dist[closer] = dist[closer]
            xi = torch.where(fooled[:, None], (1 - self.beta) * x0 + self.beta * xi, xi)
        return best.reshape(shape).to(dtype), best_dist


class FABT(FAB):
    """Targeted FAB (FAB-T, as in AutoAttack): FAB towards each of the ``n_target_classes``
    classes ranked highest by the clean logits (the true class excluded), one target at a
    time; per sample the smallest perturbation found over all targets is kept. Success means
    misclassification (any class); ``y`` holds the true labels. Each target needs one gradient
    per step instead of one per class.

    Args:
        n_target_classes: how many target classes (>= 1; at most the number of classes - 1).
        Others: see :class:`FAB`.
    """

    name = "fab-t"

    def __init__(self, model: Any, eps: float = 8 / 255, n_target_classes: int = 9, **kwargs: Any):
        super().__init__(model, eps, **kwargs)
        self.n_target_classes = check_int(n_target_classes, "n_target_classes", 1)

    def _targets(self, logits: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor | None]:
        if logits.shape[1] < 2:
            raise ValueError(f"FABT needs at least 2 classes, the model has {logits.shape[1]}")
        order = logits.float().scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)
        return [order[:, t] for t in range(min(self.n_target_classes, logits.shape[1] - 1))]

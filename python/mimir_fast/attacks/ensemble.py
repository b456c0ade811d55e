"""An AutoAttack-style ensemble: each attack runs only on the points that are still robust."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from .apgd import APGD, APGDT
from .base import Attack, attack_mode, check_images, check_labels, num_classes_of
from .square import Square

__all__ = ["AutoAttack", "Ensemble"]


class Ensemble:
    """Run ``attacks`` in order; each sees only the points that every earlier attack failed on.

    A point counts as robust when the ``model`` (default: the first attack's model) still
    classifies it correctly; the returned batch holds, per point, the first adversarial example
    found (the clean image where none was). ``last_report`` lists, after each attack, how many
    points were attacked and the robust accuracy so far.
    """

    name = "ensemble"

    def __init__(self, attacks: Sequence[Attack], model: Any = None):
        if not attacks:
            raise ValueError("Ensemble needs at least one attack")
        self.attacks = list(attacks)
        self.model = model if model is not None else self.attacks[0].model
        self.eps = self.attacks[0].eps
        self.norm = self.attacks[0].norm
        self.last_report: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(repr(a) for a in self.attacks)}])"

    @torch.no_grad()
    def _correct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with attack_mode(self.model):
            return self.model(x).argmax(1) == y

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x)
        y = check_labels(y, x.shape[0], num_classes_of(self.model)).to(x.device)
        x_adv = x.detach().clone()
        robust = self._correct(x, y)
        self.last_report = [
            {"attack": "clean", "attacked": 0, "robust_accuracy": robust.float().mean().item()}
        ]
        for atk in self.attacks:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            started = time.perf_counter()
            adv = atk(x[idx], y[idx])
            still = self._correct(adv, y[idx])
            flipped = idx[~still]
            x_adv[flipped] = adv[~still]
            robust[flipped] = False
            self.last_report.append(
                {
                    "attack": getattr(atk, "name", type(atk).__name__),
                    "attacked": idx.numel(),
                    "robust_accuracy": robust.float().mean().item(),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
        return x_adv


class AutoAttack(Ensemble):
    """The standard AutoAttack-style ensemble without FAB: APGD-CE, then APGD-T (targeted DLR,
    ``n_target_classes`` targets), then Square (``n_queries``), each on points still robust.

    Args:
        model: the classifier (or a Defended pipeline: gradients go through it with EOT).
        eps, norm: the threat model; Square is skipped for ``norm="l2"``.
        steps: APGD iterations (100 in AutoAttack's standard version).
        seed: seeds every component.
        kernels, eot_iter: passed to the gradient attacks.
    """

    name = "autoattack"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        n_target_classes: int = 9,
        n_queries: int = 5000,
        seed: int = 0,
        kernels: str = "auto",
        eot_iter: int | None = None,
    ):
        common = {"norm": norm, "seed": seed, "kernels": kernels, "eot_iter": eot_iter}
        attacks: list[Attack] = [
            APGD(model, eps, steps=steps, loss="ce", **common),
            APGDT(model, eps, steps=steps, n_target_classes=n_target_classes, **common),
        ]
        if norm == "linf":
            attacks.append(Square(model, eps, n_queries=n_queries, seed=seed))
        super().__init__(attacks, model)

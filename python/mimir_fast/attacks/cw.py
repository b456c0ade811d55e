"""Carlini & Wagner's L2 attack (Carlini & Wagner 2017, "Towards evaluating the robustness of
neural networks"), with torchattacks' arguments: one constant ``c``, no binary search over it.

Written from the paper. The attack optimises ``w`` in tanh space, ``x' = (tanh(w) + 1) / 2``,
so every iterate lies in the box [0, 1] without clipping, and minimises with Adam

    ||x' - x||_2^2 + c * max(z_y - max_{i != y} z_i, -kappa)        (untargeted)
    ||x' - x||_2^2 + c * max(max_{i != t} z_i - z_t, -kappa)        (targeted, y = t)

``z`` being the logits at ``x'``. Per sample, the closest iterate that reaches the goal is
returned; a sample for which none does is returned unchanged. The attack has no eps: its
perturbations are as small as the optimisation finds (``eps`` reads inf).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validate import check_int, check_number, check_positive
from .base import Attack

__all__ = ["CW"]

_TANH_EDGE = 1 - 1e-6  # keeps atanh finite at pixels equal to 0 or 1


def _other_max(z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(N,) the largest logit of each row other than ``label``."""
    return z.scatter(1, label[:, None], -math.inf).amax(dim=1)


class CW(Attack):
    """Carlini-Wagner L2 (untargeted, or targeted with ``targeted=True`` and target labels y).

    Args:
        model: a classifier ``model(x) -> logits``.
        c: weight of the classification term against the squared L2 distance (> 0).
        kappa: confidence margin (>= 0): the attack stops pushing a logit gap past kappa.
        steps: Adam steps.
        lr: Adam's learning rate (in tanh space).
        targeted, seed: see :class:`~mimir_fast.attacks.Attack` (the attack is deterministic).
    """

    name = "cw"

    def __init__(
        self,
        model: Any,
        c: float = 1.0,
        kappa: float = 0.0,
        steps: int = 50,
        lr: float = 0.01,
        **kwargs: Any,
    ):
        for option in ("loss", "norm", "eps"):
            if option in kwargs:
                raise ValueError(f"CW is an L2 attack without a radius; it takes no {option}=")
        super().__init__(model, 1.0, norm="l2", **kwargs)
        self.eps = math.inf  # no threat-model radius
        self.c = check_positive(c, "c")
        self.kappa = check_number(kappa, "kappa", 0)
        self.steps = check_int(steps, "steps", 1)
        self.lr = check_positive(lr, "lr")

    def __repr__(self) -> str:
        return f"CW(c={self.c:.4g}, kappa={self.kappa:.4g}, steps={self.steps}, lr={self.lr:.4g})"

    def _gap(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) the logit gap to close: ``z_y - max_{i!=y} z_i`` (or its targeted mirror)."""
        z = logits.float()
        z_y = z.gather(1, y[:, None]).squeeze(1)
        return _other_max(z, y) - z_y if self.targeted else z_y - _other_max(z, y)

    def perturb(self, x, y):
        xf = x.float()
        w = torch.atanh((2 * xf - 1).clamp(-_TANH_EDGE, _TANH_EDGE)).requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=self.lr)
        best = x.clone()
        best_dist = torch.full((x.shape[0],), math.inf, device=x.device)
        for step in range(self.steps + 1):
            with torch.enable_grad():
                x_adv = (torch.tanh(w) + 1) / 2  # (N, C, H, W) in [0, 1]
                logits = self.model(x_adv.to(x.dtype))
                gap = self._gap(logits, y)
                dist = (x_adv - xf).flatten(1).pow(2).sum(1)  # (N,) squared L2
                with torch.no_grad():
                    closer = self._fooled(logits, y) & (dist < best_dist)
                    best[closer] = x_adv[closer].detach().to(x.dtype)
                    best_dist[closer] = dist[closer]
                if step == self.steps:  # the last iterate is only scored
                    break
                loss = dist.sum() + self.c * gap.clamp_min(-self.kappa).sum()
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        return best

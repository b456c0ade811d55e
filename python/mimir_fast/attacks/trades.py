"""TRADES' inner maximisation (Zhang et al. 2019) as an attack: push ``f(x_adv)`` away from
``f(x)`` in KL divergence. Used by adversarial finetuning (``adversarial="trades"``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._validate import check_int, check_positive
from .base import Attack
from .objectives import CallableObjective

__all__ = ["TRADES_INIT_STD", "TRADESAttack"]

TRADES_INIT_STD = 0.001  # TRADES starts its attack from x + 0.001 * N(0, 1)


class TRADESAttack(Attack):
    """TRADES' inner maximisation: ``x_adv`` maximising ``KL(softmax f(x) || softmax f(x_adv))``.

    Starts from ``x + init_std * N(0, 1)`` (TRADES' start; clamped to [0, 1] here), then takes
    ``steps`` L-inf sign steps of size ``alpha``, each projected onto the eps-ball around ``x``
    and clamped to [0, 1]. ``f(x)`` is computed once, in attack mode (eval), without gradients.

    Args:
        model, eps, eot_iter, seed, kernels: see :class:`~mimir_fast.attacks.Attack` (L-inf only).
        alpha: step size; steps: iterations; init_std: std of the Gaussian start.
    """

    name = "trades"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        init_std: float = TRADES_INIT_STD,
        **kwargs: Any,
    ):
        super().__init__(model, eps, norm="linf", **kwargs)
        self.alpha = check_positive(alpha, "alpha")
        self.steps = check_int(steps, "steps", low=1)
        self.init_std = check_positive(init_std, "init_std")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean_log_probs = F.log_softmax(self.model(x).float(), dim=1)  # (N, classes)

        def kl_to_clean(model, x_adv, x0, y0):  # per sample, summed over classes: (N,)
            adv_log_probs = F.log_softmax(model(x_adv).float(), dim=1)
            return F.kl_div(adv_log_probs, clean_log_probs, reduction="none", log_target=True).sum(
                dim=1
            )

        objective = CallableObjective(kl_to_clean)
        noise = torch.randn(
            x.shape, generator=self._generator(x.device), device=x.device, dtype=torch.float32
        )
        x_adv = (x.float() + self.init_std * noise).clamp(0.0, 1.0).to(x.dtype)  # (N, C, H, W)
        for _ in range(self.steps):
            _, _, grad = self._loss_grad(x_adv, x, y, objective)
            with torch.no_grad():
                x_adv = self._step(x_adv, grad, x, self.alpha)
        return x_adv

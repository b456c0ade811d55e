"""DI-FGSM (Xie et al. 2019, "Improving transferability of adversarial examples with input
diversity"), with the momentum of M-DI2-FGSM; torchattacks' arguments.

Written from the paper. Before each gradient, with probability ``diversity_prob`` the current
iterate is resized to a random size between ``H`` and ``resize_rate * H`` and zero-padded at a
random place onto the larger of the two sizes (the original size when ``resize_rate < 1``); the
gradient flows back through that transformation to the iterate. The update is the momentum
iterative one, ``g <- decay * g + grad / mean|grad|``, then a projected sign step of ``alpha``;
``decay = 0`` is plain DI-FGSM, and with ``diversity_prob = 0`` as well it is I-FGSM (PGD
without random start).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._validate import check_int, check_number, check_positive
from .base import Attack, random_start

__all__ = ["DIFGSM", "input_diversity"]


def _draw(low: int, high: int, gen: torch.Generator | None, device) -> int:
    """A uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=gen, device=device))


def input_diversity(
    x: torch.Tensor, resize_rate: float, prob: float, gen: torch.Generator | None = None
) -> torch.Tensor:
    """With probability ``prob``: ``x`` (N, C, H, W) resized to a random size and zero-padded.

    The size is drawn in [small, large) with ``small, large`` the smaller and larger of ``H`` and
    ``int(resize_rate * H)`` (width alike, keeping the aspect ratio); the result is (N, C,
    large_h, large_w). Otherwise (and when both sizes are equal) ``x`` itself is returned.

    Args:
        x: the images.
        resize_rate: ratio of the second size to the image's.
        prob: probability of transforming the batch (one draw per call).
        gen: the random generator (None: the global one).
    """
    if float(torch.rand((), generator=gen, device=x.device)) >= prob:
        return x
    h, w = x.shape[-2:]
    small_h, large_h = sorted((h, int(h * resize_rate)))
    small_w, large_w = sorted((w, int(w * resize_rate)))
    if small_h == large_h or small_w == large_w:
        return x
    size_h = _draw(small_h, large_h - 1, gen, x.device)
    size_w = min(large_w - 1, max(small_w, round(size_h * w / h)))
    resized = F.interpolate(x, size=(size_h, size_w), mode="bilinear", align_corners=False)
    top = _draw(0, large_h - size_h, gen, x.device)
    left = _draw(0, large_w - size_w, gen, x.device)
    padding = (left, large_w - size_w - left, top, large_h - size_h - top)
    return F.pad(resized, padding, value=0.0)  # (N, C, large_h, large_w)


class _DiverseModel:
    """Calls the model on ``input_diversity`` of its input (a fresh draw per call)."""

    def __init__(self, model: Any, resize_rate: float, prob: float, gen: torch.Generator | None):
        self.model, self.resize_rate, self.prob, self.gen = model, resize_rate, prob, gen

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_diversity(x, self.resize_rate, self.prob, self.gen))


class _DiverseObjective:
    """The attack's objective, evaluated through :class:`_DiverseModel`."""

    def __init__(self, objective: Any, diverse_model: _DiverseModel):
        self.objective, self.diverse_model = objective, diverse_model

    def __call__(self, model, x_adv, x, y):
        return self.objective(self.diverse_model, x_adv, x, y)


class DIFGSM(Attack):
    """Diverse-inputs iterative FGSM, with optional momentum (M-DI2-FGSM).

    Args:
        model, eps, norm, loss, targeted, eot_iter, seed, kernels: see
            :class:`~mimir_fast.attacks.Attack`; the loss sees the model through the random
            transformation (a classification loss, which only calls the model).
        alpha: step size.
        steps: iterations.
        decay: momentum factor (0: no momentum).
        resize_rate: ratio of the random resize's second size to the image size (> 0; below 1
            the model keeps its input size).
        diversity_prob: probability of transforming the input before a gradient, in [0, 1].
        random_start: start from a uniform point of the eps-ball (else from ``x``).
    """

    name = "difgsm"

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 0.0,
        resize_rate: float = 0.9,
        diversity_prob: float = 0.5,
        random_start: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, eps, **kwargs)
        self.alpha = check_positive(alpha, "alpha")
        self.steps = check_int(steps, "steps", 1)
        self.decay = check_number(decay, "decay", 0)
        self.resize_rate = check_positive(resize_rate, "resize_rate")
        self.diversity_prob = check_number(diversity_prob, "diversity_prob", 0, 1)
        self.random_start = bool(random_start)

    def __repr__(self) -> str:
        return (
            f"DIFGSM(eps={self.eps:.4g}, alpha={self.alpha:.4g}, steps={self.steps}, "
            f"decay={self.decay:.4g}, resize_rate={self.resize_rate:.4g}, "
            f"diversity_prob={self.diversity_prob:.4g})"
        )

    def perturb(self, x, y):
        gen = self._generator(x.device)
        diverse = _DiverseObjective(
            self.objective, _DiverseModel(self.model, self.resize_rate, self.diversity_prob, gen)
        )
        x_adv = random_start(x, self.eps, self.norm, gen) if self.random_start else x.clone()
        momentum = torch.zeros_like(x, dtype=torch.float32)
        for _ in range(self.steps):
            _, _, grad = self._loss_grad(x_adv, x, y, diverse)
            with torch.no_grad():
                grad = grad.float()
                l1 = grad.abs().flatten(1).mean(1).clamp_min(1e-12)  # (N,)
                momentum = self.decay * momentum + grad / l1.reshape(-1, *[1] * (x.ndim - 1))
                x_adv = self._step(x_adv, momentum, x, self.alpha)
        return x_adv

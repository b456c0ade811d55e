"""A defended pipeline ``classifier(purifier(x))`` as one model, and BPDA for purifiers that
have no useful gradient.

How to attack such a pipeline honestly (EOT, gray- and black-box threat models) is
:mod:`mimir_fast.attacks.defended`'s concern.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._validate import check_int

__all__ = ["BPDA", "Defended"]


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018) with the identity.

    The forward pass returns ``fn(x)``; the backward pass treats it as ``x`` (straight-through).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.fn(x.detach())
        return x + (out - x).detach()


class Defended(nn.Module):
    """``classifier(purifier(x))`` as one model.

    Args:
        classifier: the model producing logits.
        purifier: any callable ``(N, C, H, W) -> (N, C, H, W)``, possibly random.
        eot_samples: gradients averaged per attack step in white-box attacks (EOT); use > 1
            for a random purifier.
        bpda: wrap the purifier in :class:`BPDA` (for a non-differentiable one).
    """

    def __init__(
        self,
        classifier: nn.Module,
        purifier: Callable[[torch.Tensor], torch.Tensor],
        eot_samples: int = 1,
        bpda: bool = False,
    ):
        super().__init__()
        self.classifier = classifier
        self.purifier = BPDA(purifier) if bpda else purifier
        self.eot_samples = check_int(eot_samples, "eot_samples", low=1)
        n = getattr(classifier, "num_classes", None)
        if isinstance(n, int):
            self.num_classes = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x))

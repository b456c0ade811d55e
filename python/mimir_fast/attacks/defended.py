"""How to attack a defended pipeline ``classifier(purifier(x))`` honestly.

- White-box: attack the :class:`~mimir_fast.defenses.Defended` module itself. Gradients flow
  through the purifier; a random purifier is handled with EOT (the attacks average
  ``eot_samples`` gradients per step; :class:`~mimir_fast.defenses.Defended` sets that
  attribute, :class:`EOT` sets it on any model). A non-differentiable purifier is wrapped in
  :class:`~mimir_fast.defenses.BPDA` (identity on the backward pass).
- Gray-box: attack ``defended.classifier`` alone (:func:`gray_box_target`), evaluate the whole
  pipeline.
- Black-box: :class:`~mimir_fast.attacks.Square` queries the whole pipeline.

The purifiers and the pipeline themselves live in :mod:`mimir_fast.defenses`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._validate import check_choice, check_int
from ..defenses.pipeline import Defended

__all__ = ["EOT", "THREATS", "check_threat", "gray_box_target"]

THREATS = ("white", "gray", "black")


def gray_box_target(model: Any) -> Any:
    """What a gray-box attacker differentiates: the classifier behind a Defended, else the model."""
    return model.classifier if isinstance(model, Defended) else model


def check_threat(threat: str) -> str:
    """``threat`` if it is one of :data:`THREATS` ("white", "gray", "black")."""
    return check_choice(threat, "threat", THREATS)


class EOT(nn.Module):
    """Mark a (random) model for Expectation over Transformation: white-box attacks on it
    average ``samples`` gradients per step. ``EOT(model, 8)`` is equivalent to passing
    ``eot_iter=8`` to every attack. The forward pass is the model's, one draw.

    Args:
        model: the (random) model or pipeline.
        samples: gradients averaged per attack step, >= 1.
    """

    def __init__(self, model: nn.Module, samples: int = 8):
        super().__init__()
        self.model = model
        self.eot_samples = check_int(samples, "samples", low=1)
        n = getattr(model, "num_classes", None)
        if isinstance(n, int):
            self.num_classes = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

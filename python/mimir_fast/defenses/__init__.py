"""Purifiers (test-time defenses) and the defended pipeline ``classifier(purifier(x))``.

- :class:`Defended` joins a classifier and a purifier into one model; :class:`BPDA` gives a
  non-differentiable purifier the identity's gradient.
- Simple transformations: :class:`GaussianNoise`, :class:`RandomPatchMask`, :class:`Quantize`.
- Autoencoder purifiers: :class:`MAEPurifier`, :class:`NIMDefense` and :class:`IMPurePurifier`
  (with :func:`impure_loss`, the loss it is trained with).

Attacking a pipeline (EOT, the gray- and black-box threat models) lives in
:mod:`mimir_fast.attacks.defended`.
"""

from .autoencoders import MAEPurifier, NIMDefense
from .impure import IMPurePurifier, impure_loss
from .pipeline import BPDA, Defended
from .transforms import GaussianNoise, Quantize, RandomPatchMask

__all__ = [
    "BPDA",
    "Defended",
    "GaussianNoise",
    "IMPurePurifier",
    "MAEPurifier",
    "NIMDefense",
    "Quantize",
    "RandomPatchMask",
    "impure_loss",
]

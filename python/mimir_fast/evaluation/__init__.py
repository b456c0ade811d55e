"""The parts of :func:`mimir_fast.evaluate`: running attacks batch by batch over the ranks
(:mod:`~mimir_fast.evaluation.runner`) and the gradient-masking checks on the results
(:mod:`~mimir_fast.evaluation.masking_checks`)."""

from .masking_checks import SANITY_ACCURACY, masking_warnings
from .runner import AttackRun, AttackRunner

__all__ = ["SANITY_ACCURACY", "AttackRun", "AttackRunner", "masking_warnings"]

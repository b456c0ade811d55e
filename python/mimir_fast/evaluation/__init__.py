"""The parts of :func:`mimir_fast.evaluate`: running attacks batch by batch over the ranks
(:mod:`~mimir_fast.evaluation.runner`), the gradient-masking checks on the results
(:mod:`~mimir_fast.evaluation.masking_checks`), and accuracy under common corruptions with CE
and mCE (:mod:`~mimir_fast.evaluation.corruptions`,
:mod:`~mimir_fast.evaluation.corruption_scores`)."""

from .corruption_scores import corruption_errors, monotone_check
from .corruptions import SEVERITIES, corruption_plan, evaluate_corruptions
from .masking_checks import SANITY_ACCURACY, masking_warnings
from .runner import AttackRun, AttackRunner

__all__ = [
    "SANITY_ACCURACY",
    "SEVERITIES",
    "AttackRun",
    "AttackRunner",
    "corruption_errors",
    "corruption_plan",
    "evaluate_corruptions",
    "masking_warnings",
    "monotone_check",
]

"""The report's summaries of the per-image results of :func:`mimir_fast.evaluate`: robust
accuracy by attack and eps, the per-sample worst case over every attack, and which runs are
parts of an ensemble (for the gradient-masking checks)."""

from __future__ import annotations

from typing import Any

import torch

from ..attacks.ensemble import Ensemble
from .runner import AttackRun

__all__ = ["ensemble_parts", "eps_key", "robust_accuracy_table", "worst_case"]


def ensemble_parts(runs: list[AttackRun]) -> dict[str, list[str]]:
    """Ensemble label -> the labels of the other runs that attack with one of its parts."""
    parts = {}
    for run in runs:
        if isinstance(run.attack, Ensemble):
            names = {getattr(a, "name", None) for a in run.attack.attacks}
            parts[run.label] = sorted(
                {
                    r.label
                    for r in runs
                    if not isinstance(r.attack, Ensemble) and getattr(r.attack, "name", "") in names
                }
            )
    return parts


def eps_key(e: float) -> str:
    """An eps as the report's tables key it: 6 significant digits."""
    return f"{e:.6g}"


def robust_accuracy_table(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """attack label -> eps (as text, 6 significant digits) -> robust accuracy."""
    table: dict[str, dict[str, float]] = {}
    for r in results:
        table.setdefault(r["attack"], {})[eps_key(r["eps"])] = r["robust_accuracy"]
    return table


def worst_case(
    robust: dict[tuple[str, float], torch.Tensor], clean_correct: torch.Tensor
) -> list[dict[str, Any]]:
    """Per eps, the accuracy when an image counts as robust only if every attack at that eps
    failed on it (``robust``: (label, eps) -> which images (N,) stayed correct)."""
    worst = []
    for e in sorted({e for _, e in robust}):
        all_robust = clean_correct.clone()  # (N,)
        for (_, e2), robust_images in robust.items():
            if e2 == e:
                all_robust &= robust_images
        worst.append(
            {
                "eps": e,
                "robust_accuracy": all_robust.float().mean().item(),
                "attacks": sorted(label for (label, e2) in robust if e2 == e),
            }
        )
    return worst

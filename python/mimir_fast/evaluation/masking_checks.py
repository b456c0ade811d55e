"""Gradient-masking sanity checks on an evaluation's rows (Carlini et al. 2019, "On Evaluating
Adversarial Robustness").

Each check compares robust accuracies that an honest evaluation orders one way; a difference
counts when it exceeds the tolerance ``tol`` (:func:`mimir_fast.evaluate` uses
``max(0.02, 2 / n_images)``):

- robust accuracy rises with eps for some attack, or does not fall to :data:`SANITY_ACCURACY`
  under PGD at a large eps (the "pgd@large_eps" sanity row);
- single-step FGSM is stronger than an iterative gradient attack at the same eps;
- under the white-box threat model, black-box Square is stronger than every white-box attack
  at the same eps.

Rows are the dicts of the report's ``results`` and ``sanity`` lists: "attack", "eps", "kind"
(see :func:`mimir_fast.attacks.registry.attack_kind`) and "robust_accuracy".
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["LARGE_EPS_ATTACK", "SANITY_ACCURACY", "masking_warnings"]

SANITY_ACCURACY = 0.10  # robust accuracy at large_eps above this is reported
LARGE_EPS_ATTACK = "pgd@large_eps"  # the label of the sanity row at the large eps

Row = dict[str, Any]


def _same_eps(a: float, b: float) -> bool:
    return abs(a - b) < 1e-12


def _rises_with_eps(results: list[Row], tol: float) -> list[str]:
    out = []
    by_attack: dict[str, list[Row]] = {}
    for r in results:
        by_attack.setdefault(r["attack"], []).append(r)
    for name, rows in by_attack.items():
        rows = sorted(rows, key=lambda r: r["eps"])
        for a, b in itertools.pairwise(rows):
            if b["robust_accuracy"] > a["robust_accuracy"] + tol:
                out.append(
                    f"gradient masking? {name}: robust accuracy rises from "
                    f"{a['robust_accuracy']:.3f} at eps {a['eps']:.4g} to "
                    f"{b['robust_accuracy']:.3f} at eps {b['eps']:.4g}"
                )
    return out


def _not_near_zero_at_large_eps(sanity: list[Row]) -> list[str]:
    return [
        f"gradient masking? robust accuracy under PGD at the large eps {r['eps']:.4g} is "
        f"{r['robust_accuracy']:.3f}, not near 0"
        for r in sanity
        if r["attack"] == LARGE_EPS_ATTACK and r["robust_accuracy"] > SANITY_ACCURACY
    ]


def _single_step_stronger(results: list[Row], sanity: list[Row], tol: float) -> list[str]:
    singles = [r for r in results + sanity if r["kind"] == "single"]
    iterative = [r for r in results if r["kind"] == "iterative"]
    return [
        f"gradient masking? single-step {s['attack']} ({s['robust_accuracy']:.3f}) is stronger "
        f"than iterative {it['attack']} ({it['robust_accuracy']:.3f}) at eps {s['eps']:.4g}"
        for s in singles
        for it in iterative
        if _same_eps(it["eps"], s["eps"]) and s["robust_accuracy"] < it["robust_accuracy"] - tol
    ]


def _black_box_stronger(results: list[Row], tol: float) -> list[str]:
    out = []
    for b in (r for r in results if r["kind"] == "black"):
        white = [
            r["robust_accuracy"]
            for r in results
            if r["kind"] in ("iterative", "single") and _same_eps(r["eps"], b["eps"])
        ]
        if white and b["robust_accuracy"] < min(white) - tol:
            out.append(
                f"gradient masking? black-box {b['attack']} ({b['robust_accuracy']:.3f}) is "
                f"stronger than every white-box attack ({min(white):.3f}) at eps {b['eps']:.4g}"
            )
    return out


def masking_warnings(results: list[Row], sanity: list[Row], tol: float, threat: str) -> list[str]:
    """The failed checks, one message each, in a fixed order (see the module docstring).

    Args:
        results: the classification rows of the evaluated attacks.
        sanity: the rows of the sanity attacks (the large-eps PGD, FGSM when not requested).
        tol: the smallest difference that counts.
        threat: "white", "gray" or "black"; the black-box comparison runs under "white" only.
    """
    out = _rises_with_eps(results, tol)
    out += _not_near_zero_at_large_eps(sanity)
    out += _single_step_stronger(results, sanity, tol)
    if threat == "white":
        out += _black_box_stronger(results, tol)
    return out

"""Gradient-masking sanity checks on an evaluation's rows (Carlini et al. 2019, "On Evaluating
Adversarial Robustness").

Each check compares robust accuracies that an honest evaluation orders one way; a difference
counts when it exceeds the tolerance ``tol`` (:func:`mimir_fast.evaluate` uses
``max(0.02, 2 / n_images)``, the report's "tolerance": two images, at least 2%):

- robust accuracy rises with eps for some attack, or does not fall to :data:`SANITY_ACCURACY`
  under PGD at a large eps (the "pgd@large_eps" sanity row);
- more iterations help the defender: PGD with 4k steps leaves more points robust than the
  requested PGD-k at the same eps (the ``more_steps`` rows);
- single-step FGSM is stronger than an iterative gradient attack at the same eps, or an
  iterative attack is no stronger than FGSM at any eps where FGSM does something (within
  ``tol`` everywhere: the pattern label smoothing and other masking of the loss surface cause);
- an ensemble (e.g. AutoAttack) leaves more points robust than one of its own parts run alone;
- under the white-box threat model, black-box Square is stronger than every white-box attack
  at the same eps; :func:`threat_model_warnings` makes the same comparison across the reports
  of one model under several threat models (e.g. the rows of the demo's table).

Rows are the dicts of the report's ``results``, ``sanity`` and ``more_steps`` lists: "attack",
"eps", "kind" (see :func:`mimir_fast.attacks.registry.attack_kind`) and "robust_accuracy"; a
``more_steps`` row also names the row it is compared with under "fewer_steps".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "LARGE_EPS_ATTACK",
    "MORE_STEPS_FACTOR",
    "SANITY_ACCURACY",
    "masking_warnings",
    "more_steps_label",
    "threat_model_warnings",
]

SANITY_ACCURACY = 0.10  # robust accuracy at large_eps above this is reported
LARGE_EPS_ATTACK = "pgd@large_eps"  # the label of the sanity row at the large eps
MORE_STEPS_FACTOR = 4  # PGD-k is compared with PGD-(4k)
WHITE_KINDS = ("iterative", "single")  # the gradient attacks of the classification objective

Row = dict[str, Any]


def _same_eps(a: float, b: float) -> bool:
    return abs(a - b) < 1e-12


def more_steps_label(label: str, steps: int) -> str:
    """The label of the run that repeats attack ``label`` with ``steps`` iterations."""
    return f"{label}@{steps}_steps"


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
            if r["kind"] in WHITE_KINDS and _same_eps(r["eps"], b["eps"])
        ]
        if white and b["robust_accuracy"] < min(white) - tol:
            out.append(
                f"gradient masking? black-box {b['attack']} ({b['robust_accuracy']:.3f}) is "
                f"stronger than every white-box attack ({min(white):.3f}) at eps {b['eps']:.4g}"
            )
    return out


def _more_steps_weaker(results: list[Row], more_steps: list[Row], tol: float) -> list[str]:
    out = []
    for m in more_steps:
        for r in results:
            if r["attack"] == m["fewer_steps"] and _same_eps(r["eps"], m["eps"]):
                if m["robust_accuracy"] > r["robust_accuracy"] + tol:
                    out.append(
                        f"gradient masking? more iterations help the defender: {m['attack']} "
                        f"leaves {m['robust_accuracy']:.3f} robust, {r['attack']} "
                        f"{r['robust_accuracy']:.3f}, at eps {r['eps']:.4g}"
                    )
    return out


def _no_stronger_than_fgsm(
    results: list[Row], sanity: list[Row], tol: float, clean: float | None
) -> list[str]:
    """Iterative attacks within ``tol`` of FGSM at every shared eps where FGSM leaves more than
    :data:`SANITY_ACCURACY` robust and (when ``clean`` is known) flips more than ``tol``."""
    fgsm = [
        r
        for r in results + sanity
        if r["kind"] == "single"
        and r["robust_accuracy"] > SANITY_ACCURACY
        and (clean is None or r["robust_accuracy"] < clean - tol)
    ]
    out = []
    by_attack: dict[str, list[tuple[Row, Row]]] = {}
    for it in (r for r in results if r["kind"] == "iterative"):
        for s in fgsm:
            if _same_eps(it["eps"], s["eps"]):
                by_attack.setdefault(it["attack"], []).append((it, s))
    for name, pairs in by_attack.items():
        if all(abs(it["robust_accuracy"] - s["robust_accuracy"]) <= tol for it, s in pairs):
            where = ", ".join(
                f"{it['robust_accuracy']:.3f} vs {s['robust_accuracy']:.3f} at eps {s['eps']:.4g}"
                for it, s in pairs
            )
            out.append(
                f"gradient masking? iterative {name} is no stronger than single-step FGSM ({where})"
            )
    return out


def _ensemble_weaker_than_part(
    results: list[Row], parts: Mapping[str, Sequence[str]], tol: float
) -> list[str]:
    out = []
    for ens in (r for r in results if r["attack"] in parts):
        for part in results:
            if part["attack"] in parts[ens["attack"]] and _same_eps(part["eps"], ens["eps"]):
                if ens["robust_accuracy"] > part["robust_accuracy"] + tol:
                    out.append(
                        f"gradient masking or a reduced budget? {ens['attack']} "
                        f"({ens['robust_accuracy']:.3f}) is weaker than its own part "
                        f"{part['attack']} run alone ({part['robust_accuracy']:.3f}) at eps "
                        f"{ens['eps']:.4g}"
                    )
    return out


def masking_warnings(
    results: list[Row],
    sanity: list[Row],
    tol: float,
    threat: str,
    *,
    more_steps: Sequence[Row] = (),
    parts: Mapping[str, Sequence[str]] | None = None,
    clean: float | None = None,
) -> list[str]:
    """The failed checks, one message each, in a fixed order (see the module docstring).

    Args:
        results: the classification rows of the evaluated attacks.
        sanity: the rows of the sanity attacks (the large-eps PGD, FGSM when not requested).
        tol: the smallest difference that counts.
        threat: "white", "gray" or "black"; the black-box comparison runs under "white" only.
        more_steps: rows of PGD repeated with :data:`MORE_STEPS_FACTOR` times the steps.
        parts: ensemble label -> the labels of the rows that ran its parts alone.
        clean: the clean accuracy (the FGSM comparison skips eps where FGSM flips nothing).
    """
    out = _rises_with_eps(results, tol)
    out += _not_near_zero_at_large_eps(sanity)
    out += _more_steps_weaker(results, list(more_steps), tol)
    out += _single_step_stronger(results, sanity, tol)
    out += _no_stronger_than_fgsm(results, sanity, tol, clean)
    out += _ensemble_weaker_than_part(results, parts or {}, tol)
    if threat == "white":
        out += _black_box_stronger(results, tol)
    return out


def threat_model_warnings(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """Black-box attacks stronger than white-box ones across the reports of one model or
    pipeline evaluated under several threat models (e.g. one demo table's rows of a defense).

    A black-box row (any report) counts when its robust accuracy is below that of every
    white-box gradient attack of the *other* reports made under ``threat="white"`` at the same
    eps, by more than the largest of the reports' tolerances (one report alone is checked by
    :func:`masking_warnings`).

    Args:
        reports: the dicts :func:`mimir_fast.evaluate` returned for the one model.
    """
    tol = max((r.get("tolerance", 0.02) for r in reports), default=0.02)
    out = []
    for i, report in enumerate(reports):
        for b in (r for r in report["results"] if r["kind"] == "black"):
            white = [
                r["robust_accuracy"]
                for j, other in enumerate(reports)
                if j != i and other["threat"] == "white"
                for r in other["results"]
                if r["kind"] in WHITE_KINDS and _same_eps(r["eps"], b["eps"])
            ]
            if white and b["robust_accuracy"] < min(white) - tol:
                out.append(
                    f"gradient masking? black-box {b['attack']} ({report['threat']}-box report, "
                    f"{b['robust_accuracy']:.3f}) is stronger than every white-box attack "
                    f"({min(white):.3f}) at eps {b['eps']:.4g}"
                )
    return out

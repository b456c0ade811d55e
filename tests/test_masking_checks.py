"""The gradient-masking checks on constructed results: each fires on the pattern it looks for
and stays quiet on an honest evaluation."""

from __future__ import annotations

from mimir_fast.evaluation.masking_checks import (
    masking_warnings,
    more_steps_label,
    threat_model_warnings,
)

TOL = 0.02


def row(attack, eps, acc, kind="iterative", **extra):
    return {"attack": attack, "eps": eps, "kind": kind, "robust_accuracy": acc, **extra}


def warnings_of(results, sanity=(), **kwargs):
    return masking_warnings(list(results), list(sanity), TOL, "white", **kwargs)


# ---------------------------------------------------------------------- more iterations
def test_more_steps_helping_the_defender_fires():
    results = [row("pgd", 0.03, 0.40)]
    more = [row(more_steps_label("pgd", 80), 0.03, 0.50, fewer_steps="pgd")]
    (warning,) = warnings_of(results, more_steps=more)
    assert "more iterations help the defender" in warning and "pgd@80_steps" in warning


def test_more_steps_stays_quiet_when_stronger_or_within_tolerance():
    results = [row("pgd", 0.03, 0.40)]
    for acc in (0.30, 0.40, 0.40 + TOL):
        more = [row("pgd@80_steps", 0.03, acc, fewer_steps="pgd")]
        assert warnings_of(results, more_steps=more) == []
    other_eps = [row("pgd@80_steps", 0.01, 0.9, fewer_steps="pgd")]
    assert warnings_of(results, more_steps=other_eps) == []


# ---------------------------------------------------------------------- FGSM as strong
def test_iterative_no_stronger_than_fgsm_at_every_eps_fires():
    # the label-smoothing pattern: PGD and APGD tie with FGSM at every eps
    results = [
        row("pgd", 0.01, 0.85),
        row("pgd", 0.03, 0.781),
        row("apgd-ce", 0.03, 0.781),
        row("fgsm", 0.01, 0.86, "single"),
        row("fgsm", 0.03, 0.781, "single"),
    ]
    warnings = warnings_of(results, clean=0.95)
    assert len(warnings) == 2, warnings
    assert all("no stronger than single-step FGSM" in w for w in warnings)
    assert "iterative pgd" in warnings[0] and "iterative apgd-ce" in warnings[1]


def test_iterative_stronger_than_fgsm_somewhere_stays_quiet():
    results = [
        row("pgd", 0.01, 0.85),
        row("pgd", 0.03, 0.60),  # clearly stronger at the larger eps
        row("fgsm", 0.01, 0.86, "single"),
    ]
    sanity = [row("fgsm", 0.03, 0.78, "single")]  # FGSM from the sanity rows counts as well
    assert warnings_of(results, sanity, clean=0.95) == []


def test_fgsm_tie_stays_quiet_where_fgsm_does_nothing_or_everything():
    # FGSM flips nothing (eps too small to tell) or leaves almost nothing robust
    assert (
        warnings_of([row("pgd", 0.001, 0.95), row("fgsm", 0.001, 0.95, "single")], clean=0.95) == []
    )
    assert warnings_of([row("pgd", 0.3, 0.05), row("fgsm", 0.3, 0.05, "single")], clean=0.95) == []


# ---------------------------------------------------------------------- ensemble vs its parts
def test_ensemble_weaker_than_its_own_part_fires():
    results = [row("autoattack", 0.03, 0.50), row("apgd-ce", 0.03, 0.40), row("pgd", 0.03, 0.45)]
    warnings = warnings_of(results, parts={"autoattack": ["apgd-ce"]})
    assert len(warnings) == 1 and "weaker than its own part apgd-ce" in warnings[0]


def test_ensemble_at_least_as_strong_as_its_parts_stays_quiet():
    results = [row("autoattack", 0.03, 0.38), row("apgd-ce", 0.03, 0.40), row("pgd", 0.01, 0.1)]
    assert warnings_of(results, parts={"autoattack": ["apgd-ce"]}) == []
    # a part at another eps is no comparison
    other_eps = [row("autoattack", 0.03, 0.5), row("apgd-ce", 0.01, 0.3)]
    assert warnings_of(other_eps, parts={"autoattack": ["apgd-ce"]}) == []


# ---------------------------------------------------------------------- black-box vs white-box
def report(threat, rows, tolerance=TOL):
    return {"threat": threat, "results": rows, "tolerance": tolerance}


def test_black_box_stronger_than_white_box_across_reports_fires():
    white = report("white", [row("PGD-10", 0.03, 0.60), row("ensemble", 0.03, 0.55)])
    gray = report("gray", [row("PGD-10", 0.03, 0.70)])
    black = report("black", [row("Square", 0.03, 0.40, "black")])
    (warning,) = threat_model_warnings([white, gray, black])
    assert "black-box Square (black-box report, 0.400)" in warning and "0.550" in warning


def test_black_box_weaker_than_white_box_across_reports_stays_quiet():
    white = report("white", [row("PGD-10", 0.03, 0.60), row("ensemble", 0.03, 0.55)])
    black = report("black", [row("Square", 0.03, 0.56, "black")])
    assert threat_model_warnings([white, black]) == []
    # no white-box report, or another eps: nothing to compare
    assert threat_model_warnings([report("gray", [row("PGD", 0.03, 0.9)]), black]) == []
    assert (
        threat_model_warnings([white, report("black", [row("Square", 0.01, 0.1, "black")])]) == []
    )

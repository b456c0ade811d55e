"""AutoAttack: the official versions and budgets, labels naming every differing budget, and the
standard version against torchattacks' on a trained classifier."""

from __future__ import annotations

import pytest
import torch
from mimir_fast.attacks import APGD, AutoAttack
from mimir_fast.attacks.ensemble import official_budgets
from mimir_fast.attacks.registry import build_attack
from torch import nn


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_standard_version_lists_the_four_attacks_at_official_budgets(norm):
    aa = AutoAttack(linear_model(), 0.1, norm, version="standard")
    assert [a.name for a in aa.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a.norm == norm for a in aa.attacks)
    assert aa.budgets == [
        ("apgd-ce", {"steps": 100, "restarts": 1, "eot_iter": 1}),
        ("apgd-t", {"steps": 100, "n_target_classes": 9, "restarts": 1, "eot_iter": 1}),
        ("fab-t", {"steps": 100, "n_target_classes": 9, "restarts": 1}),
        ("square", {"n_queries": 5000}),
    ]
    assert aa.describe() == aa.label == "AutoAttack standard"


def test_plus_and_rand_versions():
    model = linear_model()
    plus = AutoAttack(model, 0.1, version="plus")
    assert [a.name for a in plus.attacks] == [
        "apgd-ce",
        "apgd-dlr",
        "fab",
        "square",
        "apgd-t",
        "fab-t",
    ]
    assert [b.get("restarts") for _, b in plus.budgets] == [5, 5, 5, None, 1, 1]
    rand = AutoAttack(model, 0.1, version="rand")
    assert [a.name for a in rand.attacks] == ["apgd-ce", "apgd-dlr"]
    assert [a.eot_iter for a in rand.attacks] == [20, 20]
    assert rand.describe() == "AutoAttack rand"
    assert official_budgets("rand")[0] == ("apgd-ce", {"steps": 100, "restarts": 1, "eot_iter": 20})


def test_label_names_every_budget_that_differs():
    model = linear_model()
    assert (
        AutoAttack(model, 0.1, n_queries=1000).describe()
        == "AutoAttack standard, Square 1000 queries"
    )
    text = AutoAttack(model, 0.1, steps=10, n_target_classes=3, restarts=2).describe()
    assert text == (
        "AutoAttack standard, APGD-CE/APGD-T/FAB-T 10 iterations, APGD-CE/APGD-T/FAB-T 2 "
        "restarts, APGD-T/FAB-T 3 target classes"
    )
    # EOT taken from a model that asks for it differs from the standard version's single draw
    model.eot_samples = 4
    assert AutoAttack(model, 0.1).describe() == "AutoAttack standard, APGD-CE/APGD-T 4 EOT draws"
    assert AutoAttack(model, 0.1, version="rand").describe() == "AutoAttack rand"


def test_custom_version_through_the_registry():
    model = linear_model()
    aa = build_attack("autoattack", model, 0.1, version="custom", attacks=["APGD-CE", "pgd"])
    assert [a.name for a in aa.attacks] == ["apgd-ce", "pgd"]
    assert aa.describe() == "AutoAttack custom (apgd-ce, pgd)"
    x, y = torch.rand(6, 1, 4, 4), torch.arange(6)
    x_adv = aa(x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"version": "fast"}, "version"),
        ({"version": "custom"}, "custom"),
        ({"version": "custom", "attacks": ["nope"]}, "attacks"),
        ({"version": "plus", "attacks": ["apgd-ce"]}, "attacks"),
        ({"norm": "l1"}, "norm"),
        ({"eps": 0.0}, "eps"),
    ],
    ids=["version", "custom-empty", "custom-unknown", "attacks-not-custom", "norm", "eps"],
)
def test_bad_arguments_name_the_option(kwargs, option):
    kwargs = {"eps": 0.1, **kwargs}
    with pytest.raises(ValueError, match=option):
        AutoAttack(linear_model(), **kwargs)


def test_labels_beyond_the_class_count_raise_for_any_classifier():
    aa = AutoAttack(linear_model(), 0.1, steps=2, n_queries=5)
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 10])
    with pytest.raises(ValueError, match="10 classes"):
        aa(x, y)


def test_autoattack_at_least_as_strong_as_its_apgd_ce_alone(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:32], y[:32]
    aa = AutoAttack(model, 0.02, steps=5, n_target_classes=3, n_queries=50, seed=0)
    x_adv = aa(x, y)
    apgd = APGD(model, 0.02, steps=5, seed=0)(x, y)
    with torch.no_grad():
        robust_aa = model(x_adv).argmax(1) == y
        robust_apgd = model(apgd).argmax(1) == y
    assert not bool((robust_aa & ~robust_apgd).any())  # APGD-CE runs first, same seed
    assert [r["attack"] for r in aa.last_report] == [
        "clean",
        "apgd-ce",
        "apgd-t",
        "fab-t",
        "square",
    ][: len(aa.last_report)]


def test_standard_robust_set_no_larger_than_torchattacks(digits_classifier):
    """Both sides at the same reduced budgets: 10 iterations (torchattacks' own default),
    9 target classes, Square 500 queries."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits_classifier
    x, y = x[:64], y[:64]
    eps, queries = 4 / 255, 300
    ours = AutoAttack(model, eps, "linf", steps=10, n_queries=queries, seed=0)
    assert ours.describe() == "AutoAttack standard, APGD-CE/APGD-T/FAB-T 10 iterations, " + (
        f"Square {queries} queries"
    )
    theirs = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0)
    components = theirs._autoattack.attacks
    assert [type(a).__name__ for a in components] == ["APGD", "APGDT", "FAB", "Square"]
    assert [a.steps for a in components[:3]] == [10, 10, 10]
    components[3].n_queries = queries
    x_ours, x_theirs = ours(x, y), theirs(x, y)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        robust_ours = model(x_ours).argmax(1) == y
        robust_theirs = model(x_theirs).argmax(1) == y
    assert 0 < int(robust_theirs.sum()) < int(clean.sum())  # a set worth comparing
    assert not bool((robust_ours & ~clean).any())
    extra = int((robust_ours & ~robust_theirs).sum())
    assert extra <= x.shape[0] // 64, (int(robust_ours.sum()), int(robust_theirs.sum()), extra)

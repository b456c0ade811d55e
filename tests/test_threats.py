"""evaluate_threats: one row per norm at the preset's radii, each attack named with its budget,
robust accuracy from attacks that stay inside their threat model, and bad input named."""

from __future__ import annotations

import json

import pytest
import torch
from mimir_fast import evaluate_threats
from mimir_fast.evaluation.threats import THREAT_PRESETS, _suite
from tiny_models import TinyNet, trained_tiny_net


def test_one_row_per_norm_at_the_cifar_radii(tmp_path):
    model, x, y = trained_tiny_net()
    report = evaluate_threats(
        model, (x[:48], y[:48]), preset="cifar", steps=5, n_target_classes=3, batch_size=32,
        out_dir=tmp_path,
    )  # fmt: skip
    rows = report["rows"]
    assert [r["norm"] for r in rows] == ["linf", "l2", "l1"]
    assert [r["eps"] for r in rows] == [8 / 255, 0.5, 12.0]
    for r in rows:
        assert r["attack"] == "APGD-CE + APGD-T (3 targets), 5 iterations each"
        assert 0.0 <= r["robust_accuracy"] < report["clean_accuracy"], r
    clean = report["clean_accuracy"]
    with torch.no_grad():
        assert clean == (model(x[:48]).argmax(1) == y[:48]).float().mean().item()
    assert rows[2]["robust_accuracy"] == 0.0  # L1 radius 12 on 64 pixels: every digit falls
    table = (tmp_path / "threats.md").read_text()
    assert table == report["table"] and "| L-inf | 8/255 |" in table and "| L1 | 12 |" in table
    assert json.loads((tmp_path / "threats.json").read_text())["rows"] == rows


def test_robust_accuracy_matches_the_attacks_run_by_hand():
    model, x, y = trained_tiny_net()
    x, y = x[:32], y[:32]
    report = evaluate_threats(
        model, (x, y), norms=("l1",), eps={"l1": 1.0}, steps=5, n_target_classes=2
    )
    suite, _ = _suite(model, "l1", 1.0, "apgd", 5, 2, 0)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x_adv = suite(x[correct], y[correct])
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y[correct]).sum().item()
    (row,) = report["rows"]
    assert row["eps"] == 1.0 and row["robust_accuracy"] == robust / 32


def test_presets_and_autoattack_labels():
    assert THREAT_PRESETS["imagenet"] == {"linf": 4 / 255, "l2": 4 / 255}  # MIMIR's ImageNet
    model = TinyNet()
    aa, label = _suite(model, "l1", 12.0, "autoattack", 100, None, 0)
    assert label == aa.describe() and label.startswith(
        "AutoAttack L1 standard (apgd-ce 5 restarts, apgd-t 5 targets, at 3, 2, 1 eps)"
    )
    aa, label = _suite(model, "linf", 8 / 255, "autoattack", 100, 9, 0)
    assert label.startswith("AutoAttack standard") and [a.name for a in aa.attacks][:2] == [
        "apgd-ce",
        "apgd-t",
    ]


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"preset": "mnist"}, "preset"),
        ({"norms": ("linf", "l3")}, "norms"),
        ({"norms": "linf"}, "norms"),
        ({"eps": {"l1": 0.0}}, "eps"),
        ({"eps": {"l1": -12.0}}, "eps"),
        ({"attacks": "square"}, "attacks"),
        ({"preset": "imagenet", "norms": ("linf", "l1")}, "norms"),  # no L1 radius preset
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_input_names_the_option(kwargs, option):
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=option):
        evaluate_threats(TinyNet(), (x, y), **kwargs)

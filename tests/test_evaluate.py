"""mimir_fast.evaluate: the report, its files, determinism, threat models and masking checks."""

from __future__ import annotations

import json

import pytest
import torch
from mimir_fast.attacks import PGD, Defended, GaussianNoise, Quantize
from mimir_fast.data import load_digits
from mimir_fast.evaluate import evaluate
from mimir_fast.evaluation import masking_warnings as _masking_warnings

SMALL = [{"name": "pgd", "steps": 5}, {"name": "fgsm"}, {"name": "square", "n_queries": 40}]


def test_report_and_files(digits_classifier, tmp_path):
    model, x, y = digits_classifier
    x, y = x[:64], y[:64]
    report = evaluate(
        model, (x, y), attacks=SMALL, eps=(0.03, 0.01), out_dir=tmp_path, progress=False
    )
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert report["clean_accuracy"] == pytest.approx(clean)
    assert report["eps"] == [0.01, 0.03] and report["n_images"] == x.shape[0]
    assert len(report["results"]) == 6
    for r in report["results"]:
        assert 0 <= r["robust_accuracy"] <= clean
        assert r["robust_accuracy"] == pytest.approx(
            clean * (1 - r["attack_success_rate"]), abs=1e-6
        )
        assert report["robust_accuracy"][r["attack"]][f"{r['eps']:.6g}"] == r["robust_accuracy"]
    for w in report["worst_case"]:
        assert w["robust_accuracy"] <= min(
            r["robust_accuracy"] for r in report["results"] if r["eps"] == w["eps"]
        )
        assert w["attacks"] == ["fgsm", "pgd", "square"]
    pgd = [r["robust_accuracy"] for r in report["results"] if r["attack"] == "pgd"]
    assert pgd[1] <= pgd[0] < clean
    assert [s["attack"] for s in report["sanity"]] == ["pgd@large_eps"]  # FGSM already requested
    assert report["sanity"][0]["robust_accuracy"] < 0.1
    assert report["warnings"] == []
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["results"] == report["results"]
    md = (tmp_path / "evaluation.md").read_text()
    assert "| attack" in md and "worst case" in md and "## Warnings" in md
    assert (tmp_path / "robust_accuracy_vs_eps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fixed_seeds_make_it_deterministic(digits_classifier):
    model, x, y = digits_classifier
    kw = {
        "attacks": [{"name": "pgd", "steps": 3}],
        "eps": 0.02,
        "progress": False,
        "sanity_checks": False,
        "seed": 5,
    }
    a, b = evaluate(model, (x[:48], y[:48]), **kw), evaluate(model, (x[:48], y[:48]), **kw)
    assert [r["robust_accuracy"] for r in a["results"]] == [
        r["robust_accuracy"] for r in b["results"]
    ]


def test_data_formats_agree(digits_classifier):
    model, _, _ = digits_classifier
    ds = load_digits("test")
    loader = torch.utils.data.DataLoader(ds, batch_size=20)
    kw = {
        "attacks": [{"name": "fgsm"}],
        "eps": 0.02,
        "max_images": 50,
        "progress": False,
        "sanity_checks": False,
    }
    a, b = evaluate(model, ds, **kw), evaluate(model, loader, **kw)
    assert a["n_images"] == b["n_images"] == 50
    assert a["clean_accuracy"] == b["clean_accuracy"]
    assert a["results"][0]["robust_accuracy"] == b["results"][0]["robust_accuracy"]


def test_threat_models(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:48], y[:48]
    purifier = GaussianNoise(0.1)
    kw = {
        "attacks": [{"name": "pgd", "steps": 5}],
        "eps": 0.03,
        "progress": False,
        "sanity_checks": False,
    }
    white = evaluate(
        model, (x, y), defense=Defended(model, purifier, eot_samples=2), threat="white", **kw
    )
    gray = evaluate(model, (x, y), defense=purifier, threat="gray", **kw)
    assert white["threat"] == "white" and gray["threat"] == "gray"
    assert white["clean_accuracy"] == gray["clean_accuracy"]  # same seeded pipeline draws
    assert white["results"][0]["robust_accuracy"] < white["clean_accuracy"]
    black = evaluate(
        model,
        (x, y),
        attacks=[{"name": "square", "n_queries": 30}],
        eps=0.05,
        defense=purifier,
        threat="black",
        progress=False,
    )
    assert black["sanity"] == []  # no gradient-based checks in the black-box setting
    with pytest.raises(ValueError):
        evaluate(model, (x, y), defense=purifier, threat="black", **kw)


def test_masking_warning_for_a_non_differentiable_defense(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:48], y[:48]
    report = evaluate(
        model,
        (x, y),
        attacks=[{"name": "pgd", "steps": 5}, {"name": "square", "n_queries": 100}],
        eps=0.1,
        defense=Quantize(4),
        progress=False,
    )
    assert any("black-box square" in w for w in report["warnings"]), report["warnings"]


def test_masking_checks_unit():
    rows = [
        {"attack": "pgd", "eps": 0.01, "kind": "iterative", "robust_accuracy": 0.5},
        {"attack": "pgd", "eps": 0.02, "kind": "iterative", "robust_accuracy": 0.7},
        {"attack": "fgsm", "eps": 0.02, "kind": "single", "robust_accuracy": 0.3},
    ]
    sanity = [{"attack": "pgd@large_eps", "eps": 0.5, "kind": "iterative", "robust_accuracy": 0.4}]
    warnings = _masking_warnings(rows, sanity, 0.02, "white")
    assert len(warnings) == 3
    assert "rises" in warnings[0] and "large eps" in warnings[1] and "single-step" in warnings[2]
    fine = [dict(rows[0]), dict(rows[1], robust_accuracy=0.2), dict(rows[2], robust_accuracy=0.6)]
    assert _masking_warnings(fine, [dict(sanity[0], robust_accuracy=0.0)], 0.02, "white") == []


def test_reconstruction_attack_reports_psnr_ssim(digits_classifier, tmp_path):
    model, x, y = digits_classifier
    report = evaluate(
        model,
        (x[:16], y[:16]),
        attacks=[{"name": "mim", "steps": 3}],
        eps=0.03,
        progress=False,
        out_dir=tmp_path,
    )
    assert report["results"] == [] and report["sanity"] == []
    (row,) = report["reconstruction"]
    assert row["loss_adv"] > row["loss_clean"]
    assert 20 < row["psnr_input"] < 100 and 0 < row["ssim_input"] < 1
    assert row["psnr_recon"] > 0 and row["ssim_recon"] <= 1
    assert "Reconstruction attacks" in (tmp_path / "evaluation.md").read_text()


def test_attack_instances_and_factories(digits_classifier):
    model, x, y = digits_classifier
    inst = PGD(model, 0.02, 0.005, 3, seed=0)
    report = evaluate(
        model,
        (x[:32], y[:32]),
        attacks=[inst, lambda m, e: PGD(m, e, e / 4, 3, seed=0)],
        eps=(0.01, 0.02),
        progress=False,
        sanity_checks=False,
    )
    assert [(r["attack"], r["eps"]) for r in report["results"]] == [
        ("pgd", 0.02),
        ("<lambda>", 0.01),
        ("<lambda>", 0.02),
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": 0.0},
        {"eps": (-0.1, 0.1)},
        {"attacks": ["nope"]},
        {"threat": "grey"},
        {"batch_size": 0},
        {"norm": "l1"},
        {"attacks": [{"steps": 3}]},
    ],
    ids=["eps0", "eps-neg", "unknown-attack", "threat", "batch", "norm", "spec-without-name"],
)
def test_bad_arguments_raise(digits_classifier, kwargs):
    model, x, y = digits_classifier
    with pytest.raises(ValueError):
        evaluate(model, (x[:8], y[:8]), progress=False, **kwargs)


def test_bad_data_raise(digits_classifier):
    model, x, y = digits_classifier
    for data in [(x[:8], y[:7]), (x[:8] * 3, y[:8]), (x[:8], y[:8] + 10)]:
        with pytest.raises(ValueError):
            evaluate(model, data, eps=0.01, progress=False, sanity_checks=False)

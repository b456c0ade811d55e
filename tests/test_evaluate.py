"""mimir_fast.evaluate: the report, its files, determinism, threat models and masking checks."""

from __future__ import annotations

import json

import pytest
import torch
from mimir_fast.attacks import FGSM, PGD, Defended, GaussianNoise, Quantize
from mimir_fast.data import load_digits
from mimir_fast.evaluate import evaluate
from mimir_fast.evaluation import masking_warnings as _masking_warnings
from mimir_fast.evaluation.runner import AttackRunner
from mimir_fast.report import write_report
from mimir_fast.report.evaluation import accuracy_by_eps, evaluation_markdown

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
        {"norm": "l3"},
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


# ---------------------------------------------------------------------- random pipelines and EOT
def _recording_pgd(seen):
    """A factory building PGD-2 on whatever ``evaluate`` attacks, recording its EOT count."""

    def pgd2(m, e):
        atk = PGD(m, e, e / 2, 2, seed=0)
        seen.append(atk.eot_iter)
        return atk

    return pgd2


def test_random_purifier_gets_eot_20_and_a_warning_by_default(digits_classifier):
    model, x, y = digits_classifier
    seen = []
    kw = {"eps": 0.03, "progress": False, "sanity_checks": False}
    report = evaluate(
        model, (x[:8], y[:8]), attacks=[_recording_pgd(seen)], defense=GaussianNoise(0.1), **kw
    )
    assert report["random_pipeline"] is True and report["eot_samples"] == 20
    assert seen == [20]
    assert any("eot_samples was not given" in w for w in report["warnings"]), report["warnings"]
    gray = evaluate(
        model, (x[:8], y[:8]), attacks="fgsm", defense=GaussianNoise(0.1), threat="gray", **kw
    )
    assert gray["random_pipeline"] is True and gray["eot_samples"] is None
    assert gray["warnings"] == []  # gray-box attacks differentiate the classifier alone


def test_the_randomness_probe_leaves_the_seeded_draws_alone(digits_classifier, monkeypatch):
    model, x, y = digits_classifier
    kw = {
        "attacks": [{"name": "pgd", "steps": 2}],
        "eps": 0.03,
        "defense": Defended(model, GaussianNoise(0.1), eot_samples=2),
        "progress": False,
        "sanity_checks": False,
    }
    probed = evaluate(model, (x[:16], y[:16]), **kw)
    monkeypatch.setattr(AttackRunner, "probe", lambda self: (True, 10))  # no forward pass
    unprobed = evaluate(model, (x[:16], y[:16]), **kw)
    assert probed["clean_accuracy"] == unprobed["clean_accuracy"]
    assert probed["results"][0]["robust_accuracy"] == unprobed["results"][0]["robust_accuracy"]


def test_explicit_single_draw_is_honoured_but_warned_about(digits_classifier):
    model, x, y = digits_classifier
    seen = []
    report = evaluate(
        model,
        (x[:8], y[:8]),
        attacks=[_recording_pgd(seen)],
        eps=0.03,
        defense=GaussianNoise(0.1),
        eot_samples=1,
        progress=False,
        sanity_checks=False,
    )
    assert seen == [1] and report["eot_samples"] == 1
    assert any("overstated" in w and "eot_samples=1" in w for w in report["warnings"])
    md = evaluation_markdown(report)
    assert "EOT 1" in md and "overstated" in md


def test_pipeline_eot_setting_is_kept(digits_classifier):
    model, x, y = digits_classifier
    seen = []
    report = evaluate(
        model,
        (x[:8], y[:8]),
        attacks=[_recording_pgd(seen)],
        eps=0.03,
        defense=Defended(model, GaussianNoise(0.1), eot_samples=3),
        progress=False,
        sanity_checks=False,
    )
    assert seen == [3] and report["eot_samples"] == 3 and report["warnings"] == []


@pytest.mark.parametrize("defense", [None, Quantize(4)], ids=["no-defense", "quantize"])
def test_deterministic_pipeline_gets_no_eot_warning(digits_classifier, defense):
    model, x, y = digits_classifier
    seen = []
    report = evaluate(
        model,
        (x[:8], y[:8]),
        attacks=[_recording_pgd(seen)],
        eps=0.03,
        defense=defense,
        progress=False,
        sanity_checks=False,
    )
    assert report["random_pipeline"] is False and report["eot_samples"] == 1 and seen == [1]
    assert not any("random" in w for w in report["warnings"]), report["warnings"]


def test_bad_eot_samples_and_labels_beyond_any_classifier_raise(digits_classifier):
    model, x, y = digits_classifier
    with pytest.raises(ValueError, match="eot_samples"):
        evaluate(model, (x[:8], y[:8]), eot_samples=0, progress=False)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10))
    with pytest.raises(ValueError, match="10 classes"):
        evaluate(plain, (x[:8], y[:8] + 10), eps=0.01, progress=False, sanity_checks=False)


# ---------------------------------------------------------------------- the worst case, labels
def test_worst_case_column_is_the_per_sample_intersection(digits_classifier, tmp_path):
    """Deterministic attacks (FGSM, PGD without random start), re-run here image by image."""
    model, x, y = digits_classifier
    x, y = x[:48], y[:48]
    eps_grid, steps = (0.01, 0.03), 3
    attacks = [{"name": "fgsm"}, {"name": "pgd", "steps": steps, "random_start": False}]
    report = evaluate(
        model, (x, y), attacks=attacks, eps=eps_grid, progress=False, sanity_checks=False
    )
    table = accuracy_by_eps(report)
    assert [list(row) for row in table] == [["eps", "clean", "fgsm", "pgd", "worst case"]] * 2
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    for e, row in zip(eps_grid, table):
        fgsm = FGSM(model, e)(x, y)
        pgd = PGD(model, e, 2.5 * e / steps, steps, random_start=False)(x, y)
        with torch.no_grad():
            both = clean & (model(fgsm).argmax(1) == y) & (model(pgd).argmax(1) == y)
        assert row["worst case"] == pytest.approx(both.float().mean().item())
        assert row["worst case"] <= min(row["fgsm"], row["pgd"])
    write_report(report, tmp_path)
    md = (tmp_path / "evaluation.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| eps"))
    assert [c.strip() for c in header.strip("|").split("|")][-1] == "worst case"


def test_autoattack_is_labelled_with_its_version_and_budgets(digits_classifier):
    model, x, y = digits_classifier
    spec = {"name": "autoattack", "steps": 2, "n_target_classes": 2, "n_queries": 10}
    report = evaluate(
        model, (x[:8], y[:8]), attacks=[spec], eps=0.03, progress=False, sanity_checks=False
    )
    text = (
        "AutoAttack standard, APGD-CE/APGD-T/FAB-T 2 iterations, APGD-T/FAB-T 2 target "
        "classes, Square 10 queries"
    )
    assert report["descriptions"] == {"autoattack": text}
    assert f"autoattack ({text})" in evaluation_markdown(report)

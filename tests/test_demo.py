"""The README's demo, run for real in its quick form: every stage of the comparison, the table
and the pictures. (The full demo's figures are measured and stated in the README.)"""

import json

import pytest
import torch
from mimir_fast.demo import demo_plan, run_demo


def test_quick_demo_runs_every_stage_and_writes_the_comparison(tmp_path):
    threads = torch.get_num_threads()
    summary = run_demo(tmp_path, quick=True, progress=False)
    assert torch.get_num_threads() == threads  # the demo's one thread is restored after it
    plan = demo_plan(tmp_path, quick=True)
    assert list(summary["training"]) == list(plan.runs)
    for name in plan.runs:
        assert (tmp_path / name / "model.safetensors").is_file(), name
    for name in (
        "reconstructions-mae.png",
        "reconstructions-mimir.png",
        "reconstructions-impure-pretrain.png",
        "purification.png",
        "loss_curves.png",
    ):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    rows = summary["robustness"]
    assert [(r["model"], r["threat"].split("-")[0]) for r in rows] == [
        ("plain ViT (MAE + finetuning)", "white"),
        ("MAE + PGD-AT", "white"),
        ("MIMIR + PGD-AT", "white"),
        ("NIM defense", "white"),
        ("NIM defense", "gray"),
        ("NIM defense", "black"),
        ("IMPure purifier", "white"),
        ("IMPure purifier", "gray"),
        ("IMPure purifier", "black"),
    ]
    pgd, mi = f"PGD-{plan.attack_steps}", f"PGD-MI-{plan.attack_steps}"
    for r in rows:
        assert 0 <= r["clean"] <= 1
        attacked = [r[c] for c in (pgd, mi, "AutoAttack", "Square") if r[c] is not None]
        assert attacked and all(0 <= a <= r["clean"] for a in attacked), (
            r
        )  # robust points are clean-correct
        assert r["worst case"] <= min(attacked) + 1e-9, r  # robust only if every attack failed
        first = r is next(q for q in rows if q["model"] == r["model"])
        assert (r["corruptions"] is not None) == first, r  # once per model
        assert r["corruptions"] is None or 0 <= r["corruptions"] <= 1
    assert all(r["Square"] is not None for r in rows if r["threat"] == "black-box")
    assert [r["model"] for r in rows if r[mi] is not None] == ["MIMIR + PGD-AT"]
    label = summary["settings"]["autoattack"]["label"]
    assert label.startswith("AutoAttack standard, ") and "queries" in label  # reduced: named

    checks = summary["pretraining_checks"]
    assert list(checks) == ["mae", "mimir", "nim", "impure-pretrain"]
    for name, c in checks.items():
        assert c["mse"] >= 0 and c["baseline_mse"] > 0, name
        assert c["ratio"] == pytest.approx(c["mse"] / c["baseline_mse"]), name
    nim = checks["nim"]
    assert nim["baseline_mse"] == min(nim["identity_mse"], nim["mean_image_mse"])
    # MIMIR's held-out loss under its attack is at least the clean one (the quick run is too
    # short for the classifiers to leave chance: the README states the full run's figures)
    assert summary["training"]["mimir"]["adv_loss"] >= summary["training"]["mimir"]["loss"] - 1e-6
    assert summary["test_accuracy"] == summary["training"]["plain"]["accuracy"]

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["robustness"] == json.loads(json.dumps(rows))
    text = (tmp_path / "summary.md").read_text()
    assert "MIMIR + PGD-AT" in text and "IMPure purifier" in text and "gray-box" in text
    assert "Pretraining checks" in text and label in text
    assert summary["seconds"] >= sum(summary["stage_seconds"].values()) - 1


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2"])
def test_bad_thread_count_is_refused_before_anything_runs(tmp_path, threads):
    with pytest.raises(ValueError, match="threads"):
        run_demo(tmp_path / "out", quick=True, progress=False, threads=threads)
    assert not (tmp_path / "out").exists()

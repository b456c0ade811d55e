"""Adaptive attacks on MIMIR: the MI-adaptive objective (cross-entropy + lambda HSIC) against an
independent float64 reference, the feature-space objective per sample and per batch, and the
"pgd-mi" / "pgd-feature" attacks through the factory, evaluate() and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from mimir_fast.attacks import L1PGD, PGD, FeatureDistance, MIAdaptive, build_attack
from mimir_fast.cli import main
from mimir_fast.evaluate import evaluate
from mimir_fast.models import create_model
from tiny_models import TinyNet, trained_tiny_net


def reference_hsic(a: torch.Tensor, b: torch.Tensor, sigma=5.0, ridge=1e-5) -> torch.Tensor:
    """MIMIR's normalised-CCA HSIC in float64, written from the formula (no mimir_fast code):
    ``K = exp(-|a_i - a_j|^2 / (2 sigma^2 d))``, ``Kc = K H``, ``R = Kc (Kc + ridge m I)^-1``,
    ``HSIC = sum(R_a * R_b^T)``."""

    def r(t):
        t = t.reshape(t.shape[0], -1).double()
        m, d = t.shape
        sq = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)
        k = torch.exp(-sq / (2 * sigma**2 * d))
        h = torch.eye(m, dtype=torch.float64) - 1.0 / m
        kc = k @ h
        return kc @ torch.linalg.inv(kc + ridge * m * torch.eye(m, dtype=torch.float64))

    return (r(a) * r(b).T).sum()


def reference_mi_loss(model, x, y, weight):
    """(N,) CE + weight * HSIC(x, features) in float64 on a float64 copy of the model."""
    m64 = copy.deepcopy(model).double()
    x64 = x.double()
    features = m64.forward_features(x64)
    ce = F.cross_entropy(m64.forward_head(features), y, reduction="none")
    return ce, weight * reference_hsic(x64, features)


TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "in_chans": 1}


@pytest.mark.parametrize("which", ["mlp", "vit"])
def test_mi_loss_equals_cross_entropy_plus_lambda_hsic(which):
    torch.manual_seed(1)
    if which == "mlp":
        model, x = TinyNet().eval(), torch.rand(7, 1, 8, 8)
    else:
        model, x = create_model("vit_tiny_patch4_32", **TINY_VIT).eval(), torch.rand(5, 1, 32, 32)
    y = torch.randint(0, 10, (x.shape[0],))
    ce, term = reference_mi_loss(model, x, y, 1.0)
    assert term.item() > 0.1  # the HSIC is not negligible: the comparison below can fail
    ours, logits = MIAdaptive()(model, x, x, y)  # the defaults: lambda 1e-5, sigma 5
    assert ours.shape == (x.shape[0],) and logits.shape == (x.shape[0], 10)
    torch.testing.assert_close((ours.double() - ce), 1e-5 * term.expand_as(ce), rtol=2e-2, atol=0)
    heavy, _ = MIAdaptive(weight=1.0)(model, x, x, y)
    torch.testing.assert_close(heavy.double(), ce + term, rtol=1e-4, atol=1e-5)


def test_mi_gradient_flows_through_hsic():
    torch.manual_seed(2)
    model, x = TinyNet().eval(), torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    grads = {}
    for weight in (0.0, 1.0):
        xa = x.clone().requires_grad_(True)
        loss, _ = MIAdaptive(weight=weight)(model, xa, x, y)
        (grads[weight],) = torch.autograd.grad(loss.sum(), xa)
    assert torch.isfinite(grads[1.0]).all()
    x64 = x.double().requires_grad_(True)
    features = copy.deepcopy(model).double().forward_features(x64)
    (ref,) = torch.autograd.grad(reference_hsic(x64, features), x64)
    # HSIC sits in each of the N entries: the sum's gradient is N times HSIC's (fp32 Gram
    # matrices against float64: compared by relative error over the whole gradient)
    hsic_part = (grads[1.0] - grads[0.0]).double()
    assert (hsic_part - 6 * ref).norm() / (6 * ref).norm() < 2e-3
    assert ref.norm() > 1e-2


def test_mi_batch_of_one_is_cross_entropy():
    model, x = TinyNet().eval(), torch.rand(1, 1, 8, 8)
    y = torch.tensor([3])
    loss, logits = MIAdaptive(weight=1.0)(model, x, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, reduction="none"))


def test_mi_needs_features():
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="feature_fn"):
        MIAdaptive()(plain, torch.rand(2, 1, 8, 8), None, torch.tensor([0, 1]))
    for bad in ({"weight": -1.0}, {"sigma": 0.0}, {"estimator": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MIAdaptive(**bad)


def test_feature_distance_per_sample_and_per_batch():
    torch.manual_seed(3)
    model = TinyNet().eval()
    x = torch.rand(5, 1, 8, 8)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        diff = model.forward_features(x_adv) - model.forward_features(x)  # pre-logits features
    per_sample = diff.pow(2).sum(1)
    cases = {
        ("sample", True): per_sample,
        ("sample", False): per_sample.sqrt(),
        ("batch", True): per_sample.sum().expand(5),
        ("batch", False): per_sample.sum().sqrt().expand(5),
    }
    for (reduction, squared), want in cases.items():
        loss, logits = FeatureDistance(reduction=reduction, squared=squared)(model, x_adv, x, None)
        assert logits is None
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        FeatureDistance(reduction="mean")
    xa = x.clone().requires_grad_(True)  # at x_adv == x the distance's slope is not NaN
    loss, _ = FeatureDistance(squared=False)(model, xa, x, None)
    (g,) = torch.autograd.grad(loss.sum(), xa)
    assert torch.isfinite(g).all()


def test_factory_builds_the_adaptive_attacks():
    model = TinyNet().eval()
    mi = build_attack("pgd-mi", model, 8 / 255)
    assert isinstance(mi, PGD) and isinstance(mi.objective, MIAdaptive)
    assert (mi.objective.weight, mi.objective.sigma, mi.steps) == (1e-5, 5.0, 20)
    assert build_attack("pgd-mi", model, 8 / 255, weight=0.1).objective.weight == 0.1
    feat = build_attack("pgd-feature", model, 8 / 255)
    assert isinstance(feat.objective, FeatureDistance)
    assert (feat.objective.reduction, feat.objective.squared) == ("sample", False)
    batch = build_attack("pgd-feature", model, 8 / 255, reduction="batch")
    assert batch.objective.reduction == "batch"
    assert isinstance(build_attack("pgd-mi", model, 3.0, norm="l1"), L1PGD)


def test_adaptive_attacks_lower_accuracy_in_evaluate():
    model, x, y = trained_tiny_net()
    attacks = [{"name": "pgd-mi", "steps": 5}, {"name": "pgd-feature", "steps": 5}]
    report = evaluate(
        model, (x[:48], y[:48]), attacks=attacks, eps=0.1, batch_size=48, progress=False,
        sanity_checks=False, device="cpu",
    )  # fmt: skip
    rows = {r["attack"]: r for r in report["results"]}
    assert rows.keys() == {"pgd-mi", "pgd-feature"}
    assert rows["pgd-feature"]["kind"] == "feature" and rows["pgd-mi"]["kind"] == "iterative"
    clean = report["clean_accuracy"]  # 0.94; measured: pgd-mi 0.23, pgd-feature 0.77
    assert rows["pgd-mi"]["robust_accuracy"] < clean - 0.5
    assert rows["pgd-feature"]["robust_accuracy"] < clean - 0.1


def test_cli_accepts_the_adaptive_attacks(digits_classifier, tmp_path, capsys):
    model, _, _ = digits_classifier
    path = tmp_path / "classifier.safetensors"
    model.save(path)
    argv = ["evaluate", str(path), "--attacks", "pgd-mi,pgd-feature", "--eps", "8/255"]
    argv += ["--steps", "5", "--max-images", "24", "--batch-size", "12", "--device", "cpu"]
    argv += ["--no-sanity-checks", "--no-progress", "--out", str(tmp_path / "eval")]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    rows = {r["attack"]: r for r in report["results"]}
    assert rows.keys() == {"pgd-mi", "pgd-feature"}
    assert report["clean_accuracy"] > 0.5
    for row in rows.values():
        assert row["robust_accuracy"] < report["clean_accuracy"], row

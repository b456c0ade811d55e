"""l1-APGD's ``large_eps_start`` (AutoAttack's ``use_largereps``): the stage schedule, results
inside the requested L1 ball and box, points fooled only at a larger radius not returned, and
AutoAttackL1's standard version at the AutoAttack release's L1 budgets."""

from __future__ import annotations

import math

import pytest
import torch
from mimir_fast import evaluate_threats
from mimir_fast.attacks import APGD, APGDT, AutoAttackL1, build_attack, project_l1_box
from mimir_fast.attacks.apgd import _Rows, large_eps_schedule
from mimir_fast.attacks.ensemble import official_budgets
from mimir_fast.attacks.registry import attack_from_spec
from mimir_fast.evaluation.threats import _suite
from tiny_models import TinyNet, trained_tiny_net


def l1(t: torch.Tensor) -> torch.Tensor:
    return t.double().flatten(1).abs().sum(1)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class Confident(torch.nn.Module):
    """A linear classifier whose class-0 logit is 100 above the rest: never fooled by small
    perturbations, so no row stops early."""

    def __init__(self, pixels: int = 64, classes: int = 4):
        super().__init__()
        self.linear = torch.nn.Linear(pixels, classes)
        self.num_classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.zeros(self.num_classes, device=x.device)
        bias[0] = 100.0
        return self.linear(x.flatten(1)) + bias


class FarFromGrey(torch.nn.Module):
    """Two classes: class 1 wins once the image is more than ``threshold`` away from mid-grey in
    L1, the distance an attack from the all-0.5 image has moved. Counts fooled forwards."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.fooled_at: list[float] = []  # the L1 distance of every fooled input seen
        self.num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = (x - 0.5).flatten(1).abs().sum(1)
        self.fooled_at += dist[dist > self.threshold].tolist()
        return torch.stack([torch.full_like(dist, self.threshold), dist], dim=1)


def test_schedule_splits_the_iterations_as_autoattack():
    assert large_eps_schedule(100) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    assert large_eps_schedule(10) == [(3.0, 3), (2.0, 3), (1.0, 4)]
    assert large_eps_schedule(7) == [(3.0, 3), (2.0, 3), (1.0, 1)]
    for n in range(1, 300):
        stages = large_eps_schedule(n)
        assert [f for f, _ in stages] == [3.0, 2.0, 1.0]
        assert sum(k for _, k in stages) == n and min(k for _, k in stages) >= 0
        if n >= 5:  # the release's split: ceil(0.3 n) twice, the rest last (at least one)
            assert [k for _, k in stages[:2]] == [math.ceil(0.3 * n)] * 2
            assert stages[2][1] >= 1
    model = TinyNet()
    assert APGD(model, 2.0, norm="l1", steps=10, large_eps_start=True).stages() == [
        (6.0, 3),
        (4.0, 3),
        (2.0, 4),
    ]
    assert APGD(model, 2.0, norm="l1", steps=10).stages() == [(2.0, 10)]


@pytest.mark.parametrize("targeted", [False, True])
def test_every_iteration_runs_on_its_stage_radius(monkeypatch, targeted):
    """A spy on the ascent step records each iteration's radius, step size, sparsity and
    iterate; a spy on the stage change checks each stage starts from the previous best point
    projected on the smaller set."""
    torch.manual_seed(0)
    model, eps, steps = Confident(), 0.5, 10
    x, y = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)
    calls, starts = [], []
    ascent, new_stage = APGD._ascent, _Rows.new_stage

    def spy_ascent(self, rows, radius):
        dist = l1(rows.x_cur - rows.x)
        calls.append((radius, rows.eta.clone(), rows.topk.clone(), float(dist.max())))
        return ascent(self, rows, radius)

    def spy_new_stage(rows, eta, start):
        expected = project_l1_box(rows.x_best, rows.x, eta)
        starts.append((eta, torch.equal(start, expected), float(l1(start - rows.x).max())))
        new_stage(rows, eta, start)

    monkeypatch.setattr(APGD, "_ascent", spy_ascent)
    monkeypatch.setattr(_Rows, "new_stage", spy_new_stage)
    if targeted:
        attack = APGDT(model, eps, norm="l1", steps=steps, n_target_classes=3, seed=0,
                       large_eps_start=True)  # fmt: skip
    else:
        attack = APGD(model, eps, norm="l1", steps=steps, seed=0, large_eps_start=True)
    x_adv = attack(x, y)

    radii = [c[0] for c in calls]
    assert radii == [1.5] * 3 + [1.0] * 3 + [0.5] * 4  # 3 eps, 2 eps, eps: 3 + 3 + 4 steps
    for i in (0, 3, 6):  # a stage's first step: step size = its radius, a fifth of the pixels
        assert torch.all(calls[i][1] == radii[i]) and torch.all(calls[i][2] == 0.2)
    assert all(dist <= radius * (1 + 1e-6) for radius, _, _, dist in calls)
    assert max(dist for radius, _, _, dist in calls if radius == 1.5) > 1.0  # beyond 2 eps
    assert [(eta, same) for eta, same, _ in starts] == [(1.0, True), (0.5, True)]
    assert all(dist <= eta * (1 + 1e-6) for eta, _, dist in starts)
    assert bool((l1(x_adv - x) <= eps * (1 + 1e-6)).all())


def test_points_fooled_only_at_a_larger_radius_are_not_returned():
    eps = 0.5
    x, y = torch.full((4, 1, 8, 8), 0.5), torch.zeros(4, dtype=torch.long)
    model = FarFromGrey(threshold=1.5 * eps)  # fooled only beyond 1.5 eps: not inside eps
    x_adv = APGD(model, eps, norm="l1", steps=10, seed=0, large_eps_start=True)(x, y)
    assert model.fooled_at and max(model.fooled_at) > 1.5 * eps  # fooled during the 3 eps stage
    assert bool((l1(x_adv - x) <= eps * (1 + 1e-6)).all())
    assert accuracy(model, x_adv, y) == 1.0

    model = FarFromGrey(threshold=0.75 * eps)  # now reachable inside eps: every point falls
    x_adv = APGD(model, eps, norm="l1", steps=10, seed=0, large_eps_start=True)(x, y)
    assert bool((l1(x_adv - x) <= eps * (1 + 1e-6)).all())
    assert accuracy(model, x_adv, y) == 0.0


@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_results_lie_in_the_l1_ball_and_the_box(eps):
    model, x, y = trained_tiny_net()
    for attack in (
        APGD(model, eps, norm="l1", steps=10, restarts=2, seed=0, large_eps_start=True),
        APGDT(model, eps, norm="l1", steps=10, n_target_classes=3, seed=0, large_eps_start=True),
    ):
        x_adv = attack(x, y)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        dist = l1(x_adv - x)
        assert bool((dist <= eps * (1 + 1e-6)).all()), float(dist.max())


def test_large_eps_start_is_a_valid_attack_as_strong_as_without():
    """On this MLP the two reach the same robust accuracy up to a few images: over seeds 0-3,
    eps 0.5-1.5 and 20 or 50 steps, the differences went both ways, at most 4 of 96 images.
    So this checks the option is not weaker beyond that spread, not that it is stronger."""
    model, x, y = trained_tiny_net()
    clean = accuracy(model, x, y)
    for eps in (1.0, 1.5):
        robust = {
            flag: accuracy(
                model,
                APGD(model, eps, norm="l1", steps=20, seed=0, large_eps_start=flag)(x, y),
                y,
            )
            for flag in (False, True)
        }
        assert robust[True] < clean - 0.3, robust
        assert robust[True] <= robust[False] + 6 / 96, robust


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_large_eps_start_needs_norm_l1(norm):
    model = TinyNet()
    with pytest.raises(ValueError, match="large_eps_start"):
        APGD(model, 0.1, norm=norm, large_eps_start=True)
    with pytest.raises(ValueError, match="large_eps_start"):
        APGDT(model, 0.1, norm=norm, large_eps_start=True)
    with pytest.raises(ValueError, match="large_eps_start"):
        build_attack("apgd-ce", model, 0.1, norm=norm, large_eps_start=True)


def test_autoattack_l1_standard_has_the_release_budgets():
    expected = [
        ("apgd-ce", {"steps": 100, "restarts": 5, "eot_iter": 1, "large_eps_start": True}),
        (
            "apgd-t",
            {
                "steps": 100,
                "n_target_classes": 5,
                "restarts": 1,
                "eot_iter": 1,
                "large_eps_start": True,
            },
        ),
    ]
    assert official_budgets("standard", norm="l1") == expected
    model = TinyNet()
    # mimir_fast.evaluate builds "autoattack" under L1 this way
    aa, eps = attack_from_spec("autoattack", model, 12.0, "l1", 0, "auto")
    assert isinstance(aa, AutoAttackL1) and eps == 12.0
    assert aa.budgets == expected
    ce, t = aa.attacks
    assert (ce.restarts, ce.steps, ce.large_eps_start) == (5, 100, True)
    assert (t.n_target_classes, t.restarts, t.steps, t.large_eps_start) == (5, 1, 100, True)
    assert (
        aa.describe()
        == "AutoAttack L1 standard (apgd-ce 5 restarts, apgd-t 5 targets, at 3, 2, 1 eps)"
    )
    small = AutoAttackL1(model, 12.0, steps=10, n_target_classes=3)
    assert small.describe().endswith("APGD-CE/APGD-T 10 iterations, APGD-T 3 target classes")
    rand = AutoAttackL1(model, 12.0, version="rand")
    assert not any(getattr(a, "large_eps_start", False) for a in rand.attacks)


def test_threat_rows_use_autoattack_l1_or_the_cheaper_apgd():
    model, x, y = trained_tiny_net()
    aa, label = _suite(model, "l1", 12.0, "autoattack", 100, None, 0)
    assert isinstance(aa, AutoAttackL1) and aa.budgets == official_budgets("standard", "l1")
    assert label == aa.describe()
    cheap, label = _suite(model, "l1", 12.0, "apgd", 100, None, 0)
    assert [(a.name, a.restarts, a.large_eps_start) for a in cheap.attacks] == [
        ("apgd-ce", 1, False),
        ("apgd-t", 1, False),
    ]
    assert cheap.attacks[1].n_target_classes == 9
    assert label == "APGD-CE + APGD-T (9 targets), 100 iterations each"

    report = evaluate_threats(
        model, (x[:16], y[:16]), norms=("l1",), eps={"l1": 1.5}, attacks="autoattack", steps=5
    )
    (row,) = report["rows"]
    assert row["attack"].startswith("AutoAttack L1 standard (apgd-ce 5 restarts, apgd-t 5")
    assert row["attack"].endswith("APGD-CE/APGD-T 5 iterations")
    assert row["robust_accuracy"] < report["clean_accuracy"]

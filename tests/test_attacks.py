"""Attacks: exactness against a plain loop, threat-model constraints, strength orderings,
EOT/BPDA on defended pipelines, objectives beyond classification, and input validation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from mimir_fast.attacks import (
    APGD,
    APGDT,
    BPDA,
    DLR,
    EOT,
    FGSM,
    MIFGSM,
    PGD,
    AutoAttack,
    Defended,
    Ensemble,
    FeatureDistance,
    GaussianNoise,
    MaskedReconstruction,
    Quantize,
    RandomPatchMask,
    Square,
    apgd_checkpoints,
)
from mimir_fast.attacks.objectives import dlr_loss, targeted_dlr_loss
from torch import nn


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def plain_pgd(model, x, y, eps, alpha, steps, norm):
    """An independent PGD loop without random start (no mimir_fast code)."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if norm == "linf":
                x_adv = x_adv + alpha * g.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
            else:
                g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                delta = x_adv + alpha * g / g_norm - x
                d_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                x_adv = (x + delta * torch.clamp(eps / d_norm, max=1.0)).clamp(0, 1)
    return x_adv.detach()


def distances(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def assert_in_threat_model(x_adv, x, eps, norm):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    dist = distances(x_adv, x, norm)  # per sample
    assert bool((dist <= eps * (1 + 1e-6) + 1e-6).all()), (
        f"max distance {dist.max():.6g} > eps {eps}"
    )


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.03, 0.01), ("l2", 1.0, 0.3)])
def test_pgd_without_random_start_is_deterministic_and_equals_plain_loop(
    digits_classifier, norm, eps, alpha
):
    model, x, y = digits_classifier
    x, y = x[:32], y[:32]
    atk = PGD(model, eps=eps, alpha=alpha, steps=7, random_start=False, norm=norm)
    a, b = atk(x, y), atk(x, y)
    assert torch.equal(a, b)
    want = plain_pgd(model, x, y, eps, alpha, 7, norm)
    assert distances(a, x, norm).max() > eps / 2  # the attack moved
    torch.testing.assert_close(a, want, rtol=0, atol=1e-6)


def test_fgsm_is_one_sign_step(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:16], y[:16]
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    torch.testing.assert_close(
        FGSM(model, eps=0.05)(x, y), (x + 0.05 * g.sign()).clamp(0, 1), rtol=0, atol=1e-7
    )


def test_random_start_is_seeded(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:8], y[:8]
    assert torch.equal(
        PGD(model, 0.05, 0.01, 3, seed=1)(x, y), PGD(model, 0.05, 0.01, 3, seed=1)(x, y)
    )
    assert not torch.equal(
        PGD(model, 0.05, 0.01, 3, seed=1)(x, y), PGD(model, 0.05, 0.01, 3, seed=2)(x, y)
    )


def test_model_state_restored_and_no_gradient_leak(digits_classifier):
    model, x, y = digits_classifier
    model.train()
    for p in model.parameters():
        p.grad = None  # left over from training
    frozen = model.patch_embed.proj.weight
    frozen.requires_grad_(False)
    try:
        PGD(model, 0.03, 0.01, 2, seed=0)(x[:8], y[:8])
        APGD(model, 0.03, steps=2, seed=0)(x[:8], y[:8])
        assert all(m.training for m in model.modules())
        assert not frozen.requires_grad
        others = [p for p in model.parameters() if p is not frozen]
        assert all(p.requires_grad for p in others)
        assert all(p.grad is None for p in model.parameters())
        assert model.check_inputs
    finally:
        frozen.requires_grad_(True)
        model.eval()


# ---------------------------------------------------------------------- constraints
def _all_attacks(model):
    return {
        "fgsm": (FGSM(model, eps=0.05), 0.05, "linf"),
        "fgsm-l2": (FGSM(model, eps=1.0, norm="l2"), 1.0, "l2"),
        "pgd": (PGD(model, 0.05, 0.02, 5, seed=0, restarts=2, early_stop=True), 0.05, "linf"),
        "pgd-l2": (PGD(model, 1.0, 0.4, 5, norm="l2", seed=0, restarts=2), 1.0, "l2"),
        "pgd-targeted": (PGD(model, 0.05, 0.02, 5, targeted=True, seed=0), 0.05, "linf"),
        "mifgsm": (MIFGSM(model, 0.05, steps=5), 0.05, "linf"),
        "apgd-ce": (APGD(model, 0.05, steps=6, seed=0), 0.05, "linf"),
        "apgd-dlr-l2": (APGD(model, 1.0, steps=6, norm="l2", loss="dlr", seed=0), 1.0, "l2"),
        "apgd-t": (APGDT(model, 0.03, steps=5, n_target_classes=2, seed=0), 0.03, "linf"),
        "square": (Square(model, 0.05, n_queries=50, seed=0), 0.05, "linf"),
        "autoattack": (
            AutoAttack(model, 0.03, steps=5, n_target_classes=2, n_queries=30),
            0.03,
            "linf",
        ),
        "autoattack-l2": (
            AutoAttack(model, 0.5, norm="l2", steps=5, n_target_classes=2),
            0.5,
            "l2",
        ),
    }


@pytest.mark.parametrize("name", list(_all_attacks(nn.Identity()).keys()))
def test_every_x_adv_within_eps_and_unit_box(digits_classifier, name):
    model, x, y = digits_classifier
    x, y = x[:24], y[:24]
    atk, eps, norm = _all_attacks(model)[name]
    target = (y + 1) % 10 if name == "pgd-targeted" else y
    assert_in_threat_model(atk(x, target), x, eps, norm)


# ---------------------------------------------------------------------- strength
def test_robust_accuracy_falls_monotonically_with_eps(digits_classifier):
    model, x, y = digits_classifier
    accs = [accuracy(model, x, y)]
    for eps in (0.005, 0.01, 0.02, 0.05, 0.15):
        accs.append(accuracy(model, PGD(model, eps, 2.5 * eps / 10, 10, seed=0)(x, y), y))
    assert all(b <= a for a, b in itertools.pairwise(accs)), accs
    assert accs[1] < accs[0]
    assert accs[-1] < 0.05, accs


@pytest.mark.parametrize("eps", [0.01, 0.02])
def test_apgd_at_least_as_strong_as_pgd_same_budget(digits_classifier, eps):
    model, x, y = digits_classifier
    steps = 10
    pgd = accuracy(model, PGD(model, eps, 2.5 * eps / steps, steps, seed=0)(x, y), y)
    apgd = accuracy(model, APGD(model, eps, steps=steps, seed=0)(x, y), y)
    assert pgd < accuracy(model, x, y)
    assert apgd <= pgd, (apgd, pgd)


def test_targeted_pgd_reaches_its_targets(digits_classifier):
    model, x, y = digits_classifier
    target = (y + 3) % 10
    x_adv = PGD(model, 0.2, 0.04, 10, targeted=True, seed=0)(x, target)
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == target).float().mean().item()
    assert hit > 0.9


def test_restarts_keep_the_worst_case_per_sample(digits_classifier):
    model, x, y = digits_classifier
    eps = 0.01
    one = PGD(model, eps, 2.5 * eps / 5, 5, seed=3)(x, y)
    three = PGD(model, eps, 2.5 * eps / 5, 5, seed=3, restarts=3)(x, y)
    with torch.no_grad():
        fooled_one, fooled_three = model(one).argmax(1) != y, model(three).argmax(1) != y
    assert bool((fooled_three | ~fooled_one).all())  # every point fooled by 1 restart stays fooled
    assert fooled_three.sum() >= fooled_one.sum()


def test_early_stop_leaves_fooled_points_fooled(digits_classifier):
    model, x, y = digits_classifier
    x_adv = PGD(model, 0.05, 0.02, 10, early_stop=True, seed=0)(x, y)
    assert (
        accuracy(model, x_adv, y)
        <= accuracy(model, PGD(model, 0.05, 0.02, 10, seed=0)(x, y), y) + 0.05
    )


class _NoGradientModel(nn.Module):
    """Fails when anything tries to differentiate it: proves an attack is gradient-free."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.calls = 0

    def forward(self, x):
        assert not torch.is_grad_enabled() and not x.requires_grad
        self.calls += 1
        return self.model(x)


def test_square_lowers_accuracy_without_gradients(digits_classifier):
    model, x, y = digits_classifier
    wrapped = _NoGradientModel(model)
    atk = Square(wrapped, 0.1, n_queries=150, seed=0)
    x_adv = atk(x, y)
    assert_in_threat_model(x_adv, x, 0.1, "linf")
    clean = accuracy(model, x, y)
    assert accuracy(model, x_adv, y) < clean - 0.4
    assert int(atk.last_queries.max()) <= 150 and wrapped.calls <= 150


def test_ensemble_attacks_only_points_still_robust(digits_classifier):
    model, x, y = digits_classifier
    seen = []

    class Recorder(PGD):
        def perturb(self, xs, ys):
            seen.append(xs.shape[0])
            return super().perturb(xs, ys)

    ens = Ensemble(
        [Recorder(model, 0.02, 0.005, 5, seed=0), Recorder(model, 0.02, 0.005, 5, seed=1)]
    )
    x_adv = ens(x, y)
    n = x.shape[0]
    after_first = ens.last_report[1]["robust_accuracy"]
    assert seen == [round(accuracy(model, x, y) * n), round(after_first * n)]
    assert 0 < after_first < accuracy(model, x, y)
    assert accuracy(model, x_adv, y) == ens.last_report[2]["robust_accuracy"] <= after_first
    assert [r["attack"] for r in ens.last_report] == ["clean", "pgd", "pgd"]


def test_autoattack_at_least_as_strong_as_its_first_attack(digits_classifier):
    model, x, y = digits_classifier
    eps = 0.01
    aa = AutoAttack(model, eps, steps=10, n_target_classes=2, n_queries=50, seed=0)
    acc_aa = accuracy(model, aa(x, y), y)
    acc_apgd = accuracy(model, APGD(model, eps, steps=10, seed=0)(x, y), y)
    assert acc_aa <= acc_apgd
    assert [r["attack"] for r in aa.last_report][:2] == ["clean", "apgd-ce"]


# ---------------------------------------------------------------------- defenses
def _pipeline_accuracy(pipe, x, y, draws=8):
    torch.manual_seed(1234)
    with torch.no_grad():
        return sum((pipe(x).argmax(1) == y).float().mean().item() for _ in range(draws)) / draws


def test_eot_is_at_least_as_strong_against_a_random_defense(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:64], y[:64]
    pipe = Defended(model, GaussianNoise(0.15))
    no_eot = PGD(pipe, 0.03, 0.0075, 10, seed=0, eot_iter=1)(x, y)
    with_eot = PGD(EOT(pipe, 6), 0.03, 0.0075, 10, seed=0)(x, y)
    acc_no, acc_eot = _pipeline_accuracy(pipe, no_eot, y), _pipeline_accuracy(pipe, with_eot, y)
    assert acc_eot <= acc_no, (acc_eot, acc_no)
    assert acc_eot < _pipeline_accuracy(pipe, x, y)


def test_defended_sets_eot_and_random_purifiers_are_random(digits_classifier):
    model, x, _ = digits_classifier
    pipe = Defended(model, RandomPatchMask(0.5, 8), eot_samples=4)
    assert PGD(pipe, 0.03).eot_iter == 4 and pipe.num_classes == 10
    assert not torch.equal(pipe.purifier(x[:4]), pipe.purifier(x[:4]))


def test_bpda_breaks_a_non_differentiable_purifier(digits_classifier):
    model, x, y = digits_classifier
    naive = Defended(model, Quantize(4))
    bpda = Defended(model, Quantize(4), bpda=True)
    x_naive = PGD(naive, 0.1, 0.025, 10, random_start=False)(x, y)
    assert torch.equal(
        x_naive, x
    )  # zero gradients: a naive attack does not move (gradient masking)
    acc_bpda = accuracy(naive, PGD(bpda, 0.1, 0.025, 10, seed=0)(x, y), y)
    assert acc_bpda < accuracy(naive, x, y) - 0.4
    q = BPDA(Quantize(4))
    xr = x[:2].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(q(xr).sum(), xr)
    assert torch.equal(g, torch.ones_like(g)) and torch.equal(q(x[:2]), Quantize(4)(x[:2]))


# ---------------------------------------------------------------------- objectives
def test_masked_reconstruction_attack_raises_the_mim_loss(digits_classifier):
    model, x, _ = digits_classifier
    x = x[:16]
    obj = MaskedReconstruction(mask_ratio=0.5, seed=0)
    x_adv = PGD(model, 0.05, 0.01, 5, loss=obj, seed=0)(x)
    assert_in_threat_model(x_adv, x, 0.05, "linf")
    noise = (x + 0.05 * torch.randn_like(x).sign()).clamp(0, 1)
    with torch.no_grad():
        clean, _ = obj(model, x, x, None)
        adv, _ = obj(model, x_adv, x, None)
        rand, _ = obj(model, noise, x, None)
    assert adv.shape == (16,)
    assert (adv > clean).all() and adv.mean() > rand.mean()
    # per-sample loss agrees with the model's own (batch-mean) MAE loss under the same mask
    ids = obj.ids_keep(model, x)
    with torch.no_grad():
        loss, _, _ = model.forward_mae(x_adv, 0.5, ids_keep=ids, target=x)
    torch.testing.assert_close(adv.mean(), loss, rtol=1e-5, atol=1e-6)


def test_feature_and_callable_objectives(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:16], y[:16]
    x_feat = PGD(model, 0.05, 0.01, 5, loss=FeatureDistance(), seed=0)(x, y)
    with torch.no_grad():

        def f(z):
            return model.forward_head(model.forward_features(z), pre_logits=True)

        moved = (f(x_feat) - f(x)).norm(dim=1)
        rand = (f((x + 0.05 * torch.randn_like(x).sign()).clamp(0, 1)) - f(x)).norm(dim=1)
    assert moved.mean() > 2 * rand.mean()

    def brighten(model, x_adv, x, y):  # a user loss: push every pixel up
        return x_adv.flatten(1).sum(1)

    x_b = PGD(model, 0.05, 0.05, 1, loss=brighten, random_start=False)(x, y)
    torch.testing.assert_close(x_b, (x + 0.05).clamp(0, 1))


def test_dlr_losses():
    z = torch.tensor([[3.0, 1.0, 0.5, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-(3.0 - 1.0) / (3.0 - 0.5)]))
    torch.testing.assert_close(
        targeted_dlr_loss(z, y, t), torch.tensor([-(3.0 - 0.5) / (3.0 - 0.25)])
    )
    zz = torch.randn(6, 10)
    yy = torch.randint(0, 10, (6,))
    torch.testing.assert_close(
        dlr_loss(4 * zz + 2, yy), dlr_loss(zz, yy)
    )  # shift- and scale-invariant
    with pytest.raises(ValueError):
        DLR()(nn.Linear(4, 2), torch.rand(3, 4), None, torch.zeros(3, dtype=torch.long))


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "make",
    [
        lambda m: PGD(m, eps=0.0),
        lambda m: PGD(m, eps=-0.1),
        lambda m: PGD(m, steps=0),
        lambda m: PGD(m, alpha=0),
        lambda m: APGD(m, steps=0),
        lambda m: Square(m, n_queries=0),
        lambda m: PGD(m, norm="l1"),
        lambda m: MIFGSM(m, steps=0),
        lambda m: PGD(m, eot_iter=0),
        lambda m: APGDT(m, n_target_classes=0),
    ],
    ids=[
        "eps0",
        "eps-neg",
        "steps0",
        "alpha0",
        "apgd-steps0",
        "square-queries0",
        "norm",
        "mifgsm-steps0",
        "eot0",
        "apgdt-targets0",
    ],
)
def test_bad_settings_raise(digits_classifier, make):
    with pytest.raises(ValueError):
        make(digits_classifier[0])


@pytest.mark.parametrize("atk_cls", [FGSM, PGD, APGD, Square])
def test_bad_inputs_raise(digits_classifier, atk_cls):
    model, x, y = digits_classifier
    atk = atk_cls(model, eps=0.03)
    x, y = x[:4], y[:4]
    bad = [
        (x, torch.tensor([0, 1, 2, 10])),  # label out of range
        (x, torch.tensor([0, 1, -1, 2])),  # negative label
        (x * 2, y),  # outside [0, 1]
        (x - 0.5, y),
        (x, y[:3]),  # mismatched batch sizes
        (x, y.float()),
        (x.masked_fill(x > 0.5, float("nan")), y),
    ]
    for xb, yb in bad:
        with pytest.raises(ValueError):
            atk(xb, yb)
    with pytest.raises(ValueError):
        Ensemble([atk])(x, y[:3])

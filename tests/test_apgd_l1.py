"""The L1 threat model: the exact projection on the L1 ball intersected with [0, 1] against an
independent reference, the sparse step, l1-APGD and L1-PGD staying inside the threat model,
and l1-APGD at least as strong as L1-PGD at the same budget."""

from __future__ import annotations

import pytest
import torch
from mimir_fast.attacks import APGD, APGDT, L1PGD, build_attack, project_l1_box
from mimir_fast.attacks.l1 import l1_sparse_direction
from tiny_models import TinyNet, trained_tiny_net


def bisection_projection(z, x, eps, iters=200):
    """The projection by bisection on the soft threshold, float64, written from the optimality
    conditions ``delta_i = sign(u_i) min(max(|u_i| - lam, 0), room_i)`` (no mimir_fast code)."""
    n = z.shape[0]
    c, u = x.double().reshape(n, -1), (z.double() - x.double()).reshape(n, -1)
    room, a = torch.where(u > 0, 1 - c, c), u.abs()

    def delta(lam):
        return torch.sign(u) * torch.minimum((a - lam).clamp_min(0), room)

    lo, hi = torch.zeros(n, 1, dtype=torch.float64), a.max(1, keepdim=True).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        over = delta(mid).abs().sum(1, keepdim=True) > eps
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    inside = delta(torch.zeros_like(lo)).abs().sum(1, keepdim=True) <= eps
    return (c + delta(torch.where(inside, torch.zeros_like(hi), hi))).reshape(z.shape)


def l1(t):
    return t.flatten(1).abs().sum(1)


@pytest.mark.parametrize("eps", [0.3, 5.0, 40.0, 400.0])
def test_projection_is_exact(eps):
    gen = torch.Generator().manual_seed(int(eps * 10))
    x = torch.rand(6, 3, 8, 8, generator=gen)
    x[:, 0, :2] = 0.0  # pixels on the box's faces
    x[:, 1, :2] = 1.0
    z = x + 0.7 * torch.randn(x.shape, generator=gen)
    ours = project_l1_box(z, x, eps)
    ref = bisection_projection(z, x, eps)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-6)
    assert float(ours.min()) >= 0 and float(ours.max()) <= 1
    assert bool((l1(ours.double() - x.double()) <= eps * (1 + 1e-6)).all())
    # no point of the set is closer to z than the projection
    for _ in range(20):
        w = project_l1_box(x + torch.randn(x.shape, generator=gen), x, eps * 0.9).double()
        assert bool(((w - z).flatten(1).norm(dim=1) >= (ref - z).flatten(1).norm(dim=1)).all())


def test_projection_keeps_points_inside_and_takes_per_sample_radii():
    x = torch.rand(4, 1, 8, 8)
    z = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)  # inside both sets
    torch.testing.assert_close(project_l1_box(z, x, 100.0), z)
    radii = torch.tensor([0.1, 0.5, 1.0, 2.0])
    far = x + torch.randn_like(x)
    out = project_l1_box(far, x, radii)
    for i in range(4):
        torch.testing.assert_close(
            out[i : i + 1], project_l1_box(far[i : i + 1], x[i : i + 1], radii[i].item())
        )


def test_sparse_direction_moves_k_free_coordinates():
    grad = torch.tensor([[[[5.0, -4.0, 3.0, 2.0, -1.0, 0.5]]]])
    x_adv = torch.tensor([[[[1.0, 0.5, 0.5, 0.5, 0.0, 0.5]]]])  # 5.0 and -1.0 are blocked
    u = l1_sparse_direction(grad, x_adv, 2)
    torch.testing.assert_close(u, torch.tensor([[[[0.0, -0.5, 0.5, 0.0, 0.0, 0.0]]]]))


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_apgd_l1_stays_in_the_threat_model_and_beats_l1_pgd(eps):
    model, x, y = trained_tiny_net()
    steps = 20
    apgd = APGD(model, eps=eps, norm="l1", steps=steps, seed=0)
    pgd = L1PGD(model, eps=eps, steps=steps, seed=0)
    assert apgd.norm == "l1" and pgd.norm == "l1"
    results = {}
    for name, atk in (("apgd", apgd), ("pgd", pgd)):
        x_adv = atk(x, y)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        assert bool((l1(x_adv - x) <= eps * (1 + 1e-4)).all()), name
        results[name] = accuracy(model, x_adv, y)
    clean = accuracy(model, x, y)
    assert results["apgd"] < clean - 0.1
    assert results["apgd"] <= results["pgd"], results


def test_apgd_t_l1_and_factory_norms():
    model, x, y = trained_tiny_net()
    x_adv = APGDT(model, eps=1.5, norm="l1", steps=10, n_target_classes=3, seed=0)(x[:32], y[:32])
    assert bool((l1(x_adv - x[:32]) <= 1.5 * (1 + 1e-4)).all())
    assert accuracy(model, x_adv, y[:32]) < accuracy(model, x[:32], y[:32])
    assert isinstance(build_attack("pgd", model, 12.0, norm="l1"), L1PGD)
    built = build_attack("apgd-t", model, 12.0, norm="l1")
    assert isinstance(built, APGDT) and built.norm == "l1"
    with pytest.raises(ValueError, match="norm 'l1'"):
        build_attack("square", model, 12.0, norm="l1")


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_l1_eps_must_be_positive(eps):
    model = TinyNet()
    for make in (
        lambda: APGD(model, eps=eps, norm="l1"),
        lambda: L1PGD(model, eps=eps),
        lambda: build_attack("apgd", model, eps, norm="l1"),
        lambda: build_attack("pgd", model, eps, norm="l1"),
    ):
        with pytest.raises(ValueError, match="eps"):
            make()
    with pytest.raises(ValueError, match="sparsity"):
        L1PGD(model, eps=1.0, sparsity=0.0)
    with pytest.raises(ValueError, match="norm"):
        L1PGD(model, eps=1.0, norm="l2")

"""FAB and FAB-T: minimal distances on linear classifiers (known in closed form), the exact
hyperplane-and-box projection, the eps budget on a trained classifier, and bad settings."""

from __future__ import annotations

import math

import pytest
import torch
from mimir_fast.attacks.fab import FAB, FABT, project_hyperplane_box


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def distances(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


class Linear(torch.nn.Module):
    """A linear classifier on (N, C, H, W) images; every decision boundary is a hyperplane."""

    def __init__(self, num_classes, shape, gen):
        super().__init__()
        dim = math.prod(shape)
        self.weight = torch.nn.Parameter(torch.randn(num_classes, dim, generator=gen))
        self.bias = torch.nn.Parameter(torch.randn(num_classes, generator=gen))
        self.num_classes = num_classes

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


def exact_distance(model, x, norm):
    """(labels, distance to the decision boundary, whether the closest boundary point lies
    inside the box) for a linear model: the smallest ``|g_k| / ||w_k - w_y||_q`` over k != y."""
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    rows = torch.arange(x.shape[0])
    w = model.weight.detach()
    diff_w = w[None] - w[y][:, None]  # (N, K, D)
    gap = logits - logits[rows, y][:, None]  # (N, K), <= 0
    dual = diff_w.abs().sum(2) if norm == "linf" else diff_w.norm(dim=2)
    dist = gap.abs() / dual.clamp_min(1e-12)
    dist[rows, y] = math.inf
    dist, k = dist.min(1)
    normal = diff_w[rows, k]  # (N, D), the closest boundary's normal (pointing to class k)
    if norm == "linf":
        step = normal.sign() * dist[:, None]
    else:
        step = normal * (dist / normal.norm(dim=1))[:, None]
    closest = x.flatten(1) + step
    inside = ((closest >= 0) & (closest <= 1)).all(1)
    return y, dist, inside


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack", ["fab", "fab-t"])
@pytest.mark.parametrize("num_classes", [2, 6])
def test_fab_finds_the_minimal_distance_of_a_linear_classifier(norm, attack, num_classes):
    gen = torch.Generator().manual_seed(11 + num_classes)
    shape = (3, 5, 5)
    model = Linear(num_classes, shape, gen)
    x = 0.3 + 0.4 * torch.rand(400, *shape, generator=gen)  # (400, 3, 5, 5), away from the box
    y, exact, inside = exact_distance(model, x, norm)
    near = inside & (exact < (0.1 if norm == "linf" else 0.6))
    x, y, exact = x[near][:24], y[near][:24], exact[near][:24]
    assert x.shape[0] >= 12
    eps = 1.0 if norm == "linf" else 100.0  # no budget: every example found is returned
    atk = (FAB if attack == "fab" else FABT)(model, eps, norm=norm, steps=100, seed=0)
    x_adv = atk(x, y)
    with torch.no_grad():
        assert bool((model(x_adv).argmax(1) != y).all())
    ratio = distances(x_adv, x, norm) / exact
    assert float(ratio.min()) >= 1 - 1e-4, ratio.min()  # nothing beats the exact distance
    assert float(ratio.max()) <= 1.05, ratio.max()
    torch.testing.assert_close(atk.last_distances, distances(x_adv, x, norm))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_meets_the_hyperplane_inside_the_box_at_the_smallest_norm(norm):
    gen = torch.Generator().manual_seed(5)
    n, d = 64, 9
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w[:, 0] = 0.0  # a coordinate the hyperplane ignores must not move
    r = 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    reach = torch.where(w > 0, 1 - x, -x) * w  # <w, d> at the box corner along w
    lo = torch.minimum(reach, torch.where(w > 0, -x, 1 - x) * w).sum(1)
    hi = reach.sum(1)
    feasible = (r > lo) & (r < hi)
    step = project_hyperplane_box(x, w, r, norm)
    assert bool(((x + step >= 0) & (x + step <= 1 + 1e-12)).all())
    assert bool((step[:, 0] == 0).all())
    torch.testing.assert_close((w * step).sum(1)[feasible], r[feasible])
    # Other points of the hyperplane inside the box, near the projection, are no closer.
    size = distances(step, torch.zeros_like(step), norm)
    for _ in range(50):
        u = torch.randn(n, d, generator=gen, dtype=torch.float64)
        u = u - ((u * w).sum(1) / (w * w).sum(1))[:, None] * w  # (n, d) along the hyperplane
        other = step + 0.05 * u
        in_box = ((x + other >= 0) & (x + other <= 1)).all(1) & feasible
        other_size = distances(other, torch.zeros_like(other), norm)
        assert bool((other_size[in_box] >= size[in_box] - 1e-12).all())
    # Without the box, the smallest step has the closed form |r| / ||w||_q.
    far = (0.5 + 1e-3 * torch.rand(n, d, generator=gen, dtype=torch.float64), 1e-3 * r)
    small = project_hyperplane_box(far[0], w, far[1], norm)
    dual = w.abs().sum(1) if norm == "linf" else w.norm(dim=1)
    torch.testing.assert_close(distances(small, torch.zeros_like(small), norm), far[1].abs() / dual)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_fab_t_lowers_robust_accuracy_and_respects_eps(digits_classifier, norm, eps):
    model, x, y = digits_classifier
    x, y = x[:32], y[:32]
    atk = FABT(model, eps, norm=norm, steps=10, n_target_classes=3, seed=0)
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool((distances(x_adv, x, norm) <= eps).all())
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
    over = atk.last_distances > eps  # found only beyond eps (or never): the clean input back
    assert bool(over.any())
    assert torch.equal(x_adv[over], x[over])
    with torch.no_grad():
        assert bool((model(x_adv[~over]).argmax(1) != y[~over]).all())


def test_untargeted_fab_on_the_trained_classifier(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:16], y[:16]
    eps = 0.03
    x_adv = FAB(model, eps, norm="Linf", steps=8, restarts=2, seed=0)(x, y)
    assert bool((distances(x_adv, x, "linf") <= eps).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)


@pytest.mark.parametrize(
    "make,option",
    [
        (lambda m: FAB(m, eps=0.0), "eps"),
        (lambda m: FAB(m, eps=-0.1), "eps"),
        (lambda m: FAB(m, norm="l1"), "norm"),
        (lambda m: FAB(m, steps=0), "steps"),
        (lambda m: FAB(m, restarts=0), "restarts"),
        (lambda m: FAB(m, beta=1.0), "beta"),
        (lambda m: FAB(m, eta=0.5), "eta"),
        (lambda m: FAB(m, loss="ce"), "loss"),
        (lambda m: FABT(m, n_target_classes=0), "n_target_classes"),
        (lambda m: FABT(m, steps=0), "steps"),
    ],
    ids=[
        "eps0",
        "eps-neg",
        "norm",
        "steps0",
        "restarts0",
        "beta1",
        "eta",
        "loss",
        "targets0",
        "t-steps0",
    ],
)
def test_bad_settings_raise_naming_the_option(make, option):
    model = Linear(3, (1, 2, 2), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=option):
        make(model)

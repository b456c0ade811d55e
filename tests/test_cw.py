"""Carlini-Wagner L2: the box, lower accuracy, the input back where it fails, the closest
success kept (near the exact distance of a linear classifier), and bad settings."""

from __future__ import annotations

import pytest
import torch
from mimir_fast.attacks.cw import CW


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_cw_lowers_accuracy_inside_the_box(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:32], y[:32]
    x_adv = CW(model, c=1.0, steps=30, lr=0.05)(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    clean = accuracy(model, x, y)
    assert accuracy(model, x_adv, y) < clean - 0.3
    with torch.no_grad():
        failed = model(x_adv).argmax(1) == y
    assert torch.equal(x_adv[failed], x[failed])


def test_cw_returns_the_input_where_it_fails(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:16], y[:16]
    x_adv = CW(model, c=1e-3, steps=3, lr=0.01)(x, y)  # far too weak to succeed
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert bool(correct.any())
    assert torch.equal(x_adv[correct], x[correct])


def test_targeted_cw_reaches_its_targets(digits_classifier):
    model, x, y = digits_classifier
    x, target = x[:16], (y[:16] + 3) % 10
    x_adv = CW(model, c=10.0, steps=40, lr=0.05, targeted=True)(x, target)
    assert accuracy(model, x_adv, target) > 0.8


def test_cw_keeps_the_closest_success_on_a_linear_classifier():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(16, generator=gen)
    x = 0.4 + 0.2 * torch.rand(64, 1, 4, 4, generator=gen)  # (64, 1, 4, 4)
    b = -float((x.flatten(1) @ w).median())

    def model(z):
        s = z.flatten(1) @ w + b
        return torch.stack([-s / 2, s / 2], dim=1)  # (N, 2): class 1 where s > 0

    exact = (x.flatten(1) @ w + b).abs() / w.norm()  # distance to the boundary (box inactive)
    x = x[exact > 0.02]
    exact = exact[exact > 0.02]
    y = model(x).argmax(1)
    found = []
    for steps in (10, 100, 300):  # one deterministic path: more steps, never a farther success
        x_adv = CW(model, c=10.0, steps=steps, lr=0.01)(x, y)
        assert bool((model(x_adv).argmax(1) != y).all())
        found.append((x_adv - x).flatten(1).norm(dim=1))
    assert bool((found[1] <= found[0]).all() and (found[2] <= found[1]).all())
    ratio = found[-1] / exact
    assert float(ratio.min()) >= 1 - 1e-4, ratio.min()  # nothing beats the exact distance
    assert float(ratio.median()) < 1.1, ratio.median()
    assert float(found[-1].sum()) < float(found[0].sum())


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"c": 0.0}, "c"),
        ({"kappa": -1.0}, "kappa"),
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"eps": 0.5}, "eps"),
        ({"norm": "linf"}, "norm"),
    ],
    ids=["c0", "kappa-neg", "steps0", "lr0", "eps", "norm"],
)
def test_bad_settings_raise_naming_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        CW(torch.nn.Identity(), **kwargs)

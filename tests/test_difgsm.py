"""DI-FGSM: I-FGSM step for step without diversity and momentum, torchattacks' momentum update,
the random resize-and-pad, the threat model, and bad settings."""

from __future__ import annotations

import pytest
import torch
from mimir_fast.attacks import PGD
from mimir_fast.attacks.difgsm import DIFGSM, input_diversity


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_without_diversity_and_momentum_it_is_pgd_without_random_start(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:32], y[:32]
    eps, alpha, steps = 0.03, 0.01, 6
    di = DIFGSM(model, eps, alpha, steps, decay=0.0, diversity_prob=0.0, seed=0)(x, y)
    pgd = PGD(model, eps, alpha, steps, random_start=False)(x, y)
    assert (di - x).abs().max() > eps / 2  # the attack moved
    torch.testing.assert_close(di, pgd, rtol=0, atol=1e-6)


def test_momentum_matches_torchattacks_without_diversity(digits_classifier):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits_classifier
    x, y = x[:16], y[:16]
    eps, alpha, steps = 0.03, 0.008, 5
    ours = DIFGSM(model, eps, alpha, steps, decay=1.0, diversity_prob=0.0)(x, y)
    theirs = torchattacks.DIFGSM(model, eps, alpha, steps, decay=1.0, diversity_prob=0.0)(x, y)
    differ = ((ours - theirs).abs() > 1e-6).float().mean().item()
    assert differ < 1e-3, differ  # a rounding tie may flip a rare sign


def test_difgsm_lowers_accuracy_within_eps_and_is_seeded(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:32], y[:32]
    eps = 0.03
    atk = DIFGSM(model, eps, 0.01, 8, decay=1.0, diversity_prob=1.0, random_start=True, seed=0)
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2
    again = DIFGSM(model, eps, 0.01, 8, decay=1.0, diversity_prob=1.0, random_start=True, seed=0)
    other = DIFGSM(model, eps, 0.01, 8, decay=1.0, diversity_prob=1.0, random_start=True, seed=1)
    assert torch.equal(x_adv, again(x, y)) and not torch.equal(x_adv, other(x, y))


@pytest.mark.parametrize("rate,size", [(0.9, 32), (1.1, 35)])
def test_input_diversity_resizes_and_pads_with_zeros(rate, size):
    gen = torch.Generator().manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(3, 3, 32, 32, generator=gen)  # (3, 3, 32, 32), no zeros
    assert input_diversity(x, rate, 0.0, gen) is x
    for _ in range(5):
        out = input_diversity(x, rate, 1.0, gen)
        assert out.shape == (3, 3, size, size)
        zero_rows = (out == 0).all(dim=3).all(dim=1).any(dim=1)  # (3,) a row of zeros
        zero_cols = (out == 0).all(dim=2).all(dim=1).any(dim=1)  # (3,) a column of zeros
        assert bool((zero_rows | zero_cols).all())  # padded by at least one row or column
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(input_diversity(x, rate, 1.0, gen).sum(), x)
    assert float(g.abs().sum()) > 0


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"steps": 0}, "steps"),
        ({"alpha": 0.0}, "alpha"),
        ({"decay": -0.5}, "decay"),
        ({"resize_rate": 0.0}, "resize_rate"),
        ({"diversity_prob": 1.5}, "diversity_prob"),
    ],
    ids=["eps0", "eps-neg", "norm", "steps0", "alpha0", "decay", "rate", "prob"],
)
def test_bad_settings_raise_naming_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        DIFGSM(torch.nn.Identity(), **kwargs)

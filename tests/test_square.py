"""Square attack in L2: the centred pattern, the L2 ball and the box, the query budget spent only
on points still robust, and bad settings (the L-inf attack is covered in test_attacks.py)."""

from __future__ import annotations

import pytest
import torch
from mimir_fast.attacks.square import Square, centred_pattern
from torch import nn


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class _CountingModel(nn.Module):
    """Records the batch size of every call; fails when anything differentiates it."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.batch_sizes: list[int] = []

    def forward(self, x):
        assert not torch.is_grad_enabled() and not x.requires_grad
        self.batch_sizes.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("side", [1, 2, 5, 8])
def test_centred_pattern_has_unit_norm_and_grows_towards_the_centre(side):
    eta = centred_pattern(side)
    assert eta.shape == (side, side)
    torch.testing.assert_close(eta.norm(), torch.tensor(1.0))
    assert torch.equal(eta, eta.T)
    centre = side // 2
    row = eta[centre]
    assert bool((row[1 : centre + 1] > row[:centre]).all())  # rises up to the centre
    assert float(eta.min()) > 0 and float(eta[centre, centre]) == float(eta.max())


def test_square_l2_stays_in_the_ball_and_lowers_accuracy(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:48], y[:48]
    eps, budget = 2.0, 150
    counting = _CountingModel(model)
    atk = Square(counting, eps, norm="l2", n_queries=budget, seed=0)
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    dist = (x_adv - x).flatten(1).norm(dim=1)  # (N,)
    assert bool((dist <= eps * (1 + 1e-6)).all()), dist.max()
    clean, robust = accuracy(model, x, y), accuracy(model, x_adv, y)
    assert robust < clean - 0.2, (clean, robust)
    # Queries: one per call for each point still robust, none once a point is fooled.
    queries = atk.last_queries
    assert sum(counting.batch_sizes) == int(queries.sum())
    assert counting.batch_sizes == sorted(counting.batch_sizes, reverse=True)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert bool((queries[~fooled] == budget).all())
    assert bool((queries[fooled] < budget).any()) and int(queries.max()) <= budget


def test_square_l2_is_seeded(digits_classifier):
    model, x, y = digits_classifier
    x, y = x[:8], y[:8]
    a = Square(model, 1.0, norm="L2", n_queries=20, seed=1)(x, y)
    b = Square(model, 1.0, norm="l2", n_queries=20, seed=1)(x, y)
    c = Square(model, 1.0, norm="l2", n_queries=20, seed=2)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"eps": 0.0, "norm": "l2"}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"n_queries": 0, "norm": "l2"}, "n_queries"),
        ({"p_init": 0.0, "norm": "l2"}, "p_init"),
        ({"p_init": 1.5}, "p_init"),
    ],
    ids=["eps0", "norm", "queries0", "p0", "p-big"],
)
def test_bad_settings_raise_naming_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        Square(nn.Identity(), **kwargs)

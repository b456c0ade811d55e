"""Restarts and target classes run as one batch give the per-sample result of the sequential loop.

``max_batch=1`` forces the sequential loop (one run at a time, on the points no earlier run
fooled, one image per forward); the default batches every run together. Rows of a batch are
independent, so both give the same adversarial example per sample under a fixed seed. The
model runs in float64 here: in float32 a matrix product's last bits depend on the batch size,
which can move one pixel of one sample by a rounding error.
"""

from __future__ import annotations

import copy

import pytest
import torch
from mimir_fast.attacks import APGD, APGDT, FABT, PGD, Square
from torch import nn

N = 24  # images attacked per comparison


@pytest.fixture(scope="module")
def classifier64(digits_classifier):
    """The digits classifier in float64, and 24 held-out images and labels."""
    model, x, y = digits_classifier
    return copy.deepcopy(model).double(), x[:N].double(), y[:N]


def fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def assert_same_per_sample(model, batched, sequential, x, y):
    torch.testing.assert_close(batched, sequential, rtol=0, atol=1e-9)
    assert torch.equal(fooled(model, batched, y), fooled(model, sequential, y))
    assert not torch.equal(batched, x)  # the attack moved the points


@pytest.mark.parametrize("norm,eps", [("linf", 0.015), ("l2", 0.2)])
def test_batched_apgdt_equals_the_sequential_loop(classifier64, norm, eps):
    model, x, y = classifier64

    def attack(max_batch, targets=4):
        return APGDT(
            model, eps, norm=norm, steps=10, n_target_classes=targets, seed=5, max_batch=max_batch
        )(x, y)

    batched = attack(10_000)
    assert_same_per_sample(model, batched, attack(1), x, y)
    assert_same_per_sample(model, attack(2 * N), batched, x, y)  # two targets per batch
    # the case that matters happened: some points fell to a later target only, some to none
    n_first, n_all = (
        int(fooled(model, attack(10_000, 1), y).sum()),
        int(fooled(model, batched, y).sum()),
    )
    assert 0 < n_first < n_all < N


def test_apgdt_keeps_the_first_target_that_fooled_each_point(classifier64):
    """A point fooled by target 0 keeps target 0's example even if target 1 fools it too."""
    model, x, y = classifier64
    first = APGDT(model, 0.03, steps=10, n_target_classes=1, seed=5)(x, y)
    both = APGDT(model, 0.03, steps=10, n_target_classes=2, seed=5)(x, y)
    by_first = fooled(model, first, y)
    assert by_first.any()
    torch.testing.assert_close(both[by_first], first[by_first], rtol=0, atol=1e-9)


@pytest.mark.parametrize("norm,eps,early_stop", [("linf", 0.02, True), ("l2", 0.3, False)])
def test_batched_fab_t_equals_the_sequential_loop(classifier64, norm, eps, early_stop):
    """FAB-T's target classes in one batch: the same example and distance per sample as one
    target after another, with and without AutoAttack's early stop."""
    model, x, y = classifier64

    def attack(max_batch, targets=4):
        fab = FABT(
            model,
            eps,
            norm=norm,
            steps=8,
            n_target_classes=targets,
            seed=3,
            early_stop=early_stop,
            max_batch=max_batch,
        )
        return fab(x, y), fab.last_distances

    (batched, dist_b), (sequential, dist_s) = attack(10_000), attack(1)
    assert_same_per_sample(model, batched, sequential, x, y)
    torch.testing.assert_close(dist_b, dist_s, rtol=0, atol=1e-9)
    assert_same_per_sample(model, attack(2 * N)[0], batched, x, y)  # two targets per batch
    n_first, n_all = (int(fooled(model, a, y).sum()) for a in (attack(10_000, 1)[0], batched))
    assert 0 < n_first < n_all < N  # some points fell to a later target only, some to none


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_batched_apgd_restarts_equal_the_sequential_loop(classifier64, loss):
    model, x, y = classifier64

    def attack(max_batch):
        return APGD(model, 0.02, steps=8, restarts=3, loss=loss, seed=2, max_batch=max_batch)(x, y)

    assert_same_per_sample(model, attack(10_000), attack(1), x, y)


def test_batched_pgd_restarts_equal_the_sequential_loop(classifier64):
    model, x, y = classifier64

    def attack(max_batch):
        return PGD(model, 0.02, 0.005, 6, restarts=3, seed=4, max_batch=max_batch)(x, y)

    assert_same_per_sample(model, attack(10_000), attack(1), x, y)


def test_one_run_larger_than_max_batch_runs_in_chunks(classifier64):
    model, x, y = classifier64
    whole = APGD(model, 0.02, steps=6, seed=1)(x, y)
    chunked = APGD(model, 0.02, steps=6, seed=1, max_batch=7)(x, y)
    assert_same_per_sample(model, chunked, whole, x, y)


class _SmallMemoryModel(nn.Module):
    """Raises CUDA's out-of-memory error on batches of more than ``most`` images."""

    def __init__(self, model, most):
        super().__init__()
        self.model, self.most, self.num_classes = model, most, model.num_classes

    def forward(self, x):
        if x.shape[0] > self.most:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test stand-in)")
        return self.model(x)


def test_out_of_memory_retries_in_smaller_batches_with_the_same_result(classifier64):
    model, x, y = classifier64
    for most, make in (
        (30, lambda m, b: APGDT(m, 0.015, steps=6, n_target_classes=3, seed=5, max_batch=b)),
        (10, lambda m, b: APGD(m, 0.015, steps=6, restarts=2, seed=5, max_batch=b)),  # chunks
    ):
        small = _SmallMemoryModel(model, most)
        assert_same_per_sample(model, make(small, 10_000)(x, y), make(model, 1)(x, y), x, y)


def test_max_batch_must_be_a_positive_integer(digits_classifier):
    model = digits_classifier[0]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_batch"):
            APGD(model, 0.03, max_batch=bad)


def _sequential_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda m: PGD(m, 0.03, 0.01, 3),
        lambda m: APGD(m, 0.03, steps=3),
        lambda m: APGDT(m, 0.03, steps=3, n_target_classes=2),
        lambda m: Square(m, 0.03, n_queries=5),
    ],
    ids=["pgd", "apgd", "apgd-t", "square"],
)
def test_label_beyond_the_class_count_raises_for_any_classifier(make):
    model = _sequential_classifier()
    x = torch.rand(4, 1, 8, 8)
    bad = torch.tensor([0, 1, 10, 2])
    with pytest.raises(ValueError, match="y has label 10 but the model has 10 classes"):
        make(model)(x, bad)
    with pytest.raises(ValueError, match="y has label 10 but the model has 10 classes"):
        make(lambda images: model(images))(x, bad)  # a plain callable, not a module
    assert not model._forward_hooks  # the check is gone after the call
    out = make(model)(x, torch.tensor([0, 1, 9, 2]))  # the last class is a valid label
    assert out.shape == x.shape and not model._forward_hooks


def test_the_label_check_runs_with_the_first_forward_only():
    model = _sequential_classifier()
    hooks_seen = []
    handle = model.register_forward_hook(lambda *a: hooks_seen.append(len(model._forward_hooks)))
    PGD(model, 0.03, 0.01, 4)(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 9, 2]))
    handle.remove()
    assert hooks_seen == [2, 1, 1, 1]  # the check's hook is there for the first forward only

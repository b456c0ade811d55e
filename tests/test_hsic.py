"""HSIC estimators against direct float64 formulas written out element by element."""

import math

import numpy as np
import pytest
import torch
from mimir_fast.hsic import HSIC, hsic, median_sigma
from mimir_fast.ops.gaussian_gram import gaussian_gram_reference as gaussian_gram


def direct_gram(a, sigma, scale_by_dim=True):
    """K_ij = exp(-sum_k (a_ik - a_jk)^2 / (2 sigma^2 d)), by explicit loops in float64."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    m, d = a.shape
    denom = 2.0 * sigma**2 * (d if scale_by_dim else 1)
    k = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            k[i, j] = math.exp(-sum((a[i, t] - a[j, t]) ** 2 for t in range(d)) / denom)
    return k


def direct_hsic(kx, ky, estimator, eps=1e-5):
    m = kx.shape[0]
    h = np.eye(m) - np.ones((m, m)) / m
    if estimator == "biased":
        return np.trace(kx @ h @ ky @ h) / (m - 1) ** 2
    if estimator == "unbiased":
        kt, lt = kx - np.diag(np.diag(kx)), ky - np.diag(np.diag(ky))
        one = np.ones(m)
        return (
            np.trace(kt @ lt)
            + (one @ kt @ one) * (one @ lt @ one) / ((m - 1) * (m - 2))
            - 2.0 / (m - 2) * (one @ kt @ lt @ one)
        ) / (m * (m - 3))
    if estimator == "nocca":  # the paper's form, with explicit inverses
        rx = (kx @ h) @ np.linalg.inv(kx @ h + eps * m * np.eye(m))
        ry = (ky @ h) @ np.linalg.inv(ky @ h + eps * m * np.eye(m))
        return float(np.sum(rx * ry.T))
    if estimator == "cka":
        b = lambda p, q: direct_hsic(p, q, "biased")  # noqa: E731
        return b(kx, ky) / math.sqrt(b(kx, kx) * b(ky, ky))
    raise AssertionError(estimator)


@pytest.mark.parametrize("estimator", ["nocca", "biased", "unbiased", "cka"])
@pytest.mark.parametrize("m,dx,dy", [(7, 12, 5), (10, 3 * 4 * 4, 9)], ids=["m7", "m10"])
def test_estimators_match_direct_formulas(estimator, m, dx, dy):
    gen = torch.Generator().manual_seed(m * 31 + dx)
    x = torch.rand(m, dx, generator=gen)
    y = torch.randn(m, dy, generator=gen) * 3 + x[:, :1]  # some dependence
    # sigma small enough that the Gram matrices are far from all-ones
    sigma = 0.3 if estimator != "nocca" else 5.0
    got = hsic(x, y, estimator, sigma=sigma).double().item()
    want = direct_hsic(direct_gram(x, sigma), direct_gram(y, sigma), estimator)
    assert got == pytest.approx(want, rel=2e-3, abs=1e-7)


def test_mimir_defaults_sigma5_eps1e5_match_paper_form():
    gen = torch.Generator().manual_seed(0)
    x_adv = torch.rand(12, 3, 4, 4, generator=gen)  # flattened per sample to d = 48
    latent = torch.randn(12, 5, 8, generator=gen)  # (m, tokens, width) -> d = 40
    got = hsic(x_adv, latent).double().item()  # estimator "nocca", sigma 5, eps 1e-5
    want = direct_hsic(
        direct_gram(x_adv.reshape(12, -1), 5.0), direct_gram(latent.reshape(12, -1), 5.0), "nocca"
    )
    assert got == pytest.approx(want, rel=1e-3)


def test_gram_kernel_without_dim_scaling_and_centering():
    a = torch.randn(6, 5, dtype=torch.float64)
    k = gaussian_gram(a, 1.7, scale_by_dim=False).double().numpy()
    np.testing.assert_allclose(k, direct_gram(a, 1.7, scale_by_dim=False), rtol=1e-5)
    kc = gaussian_gram(a, 1.7, scale_by_dim=False, center=True).double().numpy()
    h = np.eye(6) - 1 / 6
    np.testing.assert_allclose(kc, h @ direct_gram(a, 1.7, False) @ h, atol=1e-6)


def test_median_heuristic():
    a = torch.randn(9, 4)
    d2 = [((a[i] - a[j]) ** 2).sum().item() for i in range(9) for j in range(9) if i != j]
    assert median_sigma(a).item() ** 2 == pytest.approx(
        float(np.sort(d2)[(len(d2) - 1) // 2]), rel=1e-5
    )
    got = hsic(a, a[:, :2], "biased", bandwidth="median").item()
    s = median_sigma(a).item()
    s2 = median_sigma(a[:, :2]).item()
    want = direct_hsic(direct_gram(a, s, False), direct_gram(a[:, :2], s2, False), "biased")
    assert got == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_independent_near_zero_and_grows_with_dependence(estimator):
    gen = torch.Generator().manual_seed(1)
    m, d = 256, 8  # the biased form's offset shrinks like 1/m
    x = torch.randn(m, d, generator=gen)
    noise = torch.randn(m, d, generator=gen)
    values = [
        hsic(x, w * x + (1 - w) * noise, estimator, bandwidth="median").item()
        for w in (0.0, 0.3, 0.6, 1.0)
    ]
    assert abs(values[0]) < 0.1 * values[-1]
    assert values == sorted(values)  # more dependence, larger HSIC


@pytest.mark.parametrize("estimator", ["nocca", "biased", "unbiased", "cka"])
def test_invariant_to_joint_permutation(estimator):
    x, y = torch.rand(11, 6), torch.rand(11, 4)
    perm = torch.randperm(11)
    a = hsic(x, y, estimator, sigma=0.5)
    b = hsic(x[perm], y[perm], estimator, sigma=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6)


def test_gradient_reaches_latent_side_and_stays_fp32_under_autocast():
    x = torch.rand(8, 3, 4, 4)
    latent = torch.randn(8, 5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = hsic(x, latent)
    assert value.dtype == torch.float32
    value.backward()
    assert (
        latent.grad is not None
        and torch.isfinite(latent.grad).all()
        and latent.grad.abs().sum() > 0
    )


def test_non_finite_disables_the_term_without_sync():
    x = torch.rand(6, 4)
    y = torch.rand(6, 4)
    y[0, 0] = float("nan")
    assert hsic(x, y).item() == 0.0
    assert torch.isnan(hsic(x, y, zero_if_nonfinite=False))


def test_module_batches_several_tensors():
    x = torch.rand(9, 12)
    others = [torch.randn(9, 5), torch.randn(9, 2, 3), torch.rand(9, 7)]
    out = HSIC("biased", sigma=0.8)(x, *others)
    assert out.shape == (3,)
    for value, o in zip(out, others):
        assert value.item() == pytest.approx(hsic(x, o, "biased", sigma=0.8).item(), rel=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="same batch size"):
        hsic(torch.rand(4, 3), torch.rand(5, 3))
    with pytest.raises(ValueError, match="estimator"):
        hsic(torch.rand(4, 3), torch.rand(4, 3), "mystery")
    with pytest.raises(ValueError, match="bandwidth"):
        HSIC(bandwidth="silverman")
    with pytest.raises(ValueError, match="at least 4"):
        hsic(torch.rand(3, 3), torch.rand(3, 3), "unbiased")
    with pytest.raises(ValueError, match="batch size"):
        HSIC()(torch.rand(4, 3), torch.rand(4, 2), torch.rand(3, 2))

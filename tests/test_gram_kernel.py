"""The fused Gaussian Gram kernel against its PyTorch reference: outputs and gradients.

On the CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set before any kernel
is defined: Triton reads it when a kernel is decorated); on a GPU the real-size cases run too.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mimir_fast.hsic import HSIC, hsic
from mimir_fast.kernels import resolve_kernels
from mimir_fast.ops.gaussian_gram import gaussian_gram_reference as gaussian_gram

pytestmark = pytest.mark.interpreter


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _compare(shape, sigma, scale_by_dim, dtype, device, ieee=True):
    from mimir_fast.kernels.gaussian_gram import gaussian_gram_triton

    gen = torch.Generator(device="cpu").manual_seed(sum(shape))
    a = (torch.randn(*shape, generator=gen) * 0.7 + 0.2).to(device=device, dtype=dtype)
    a_fast = a.clone().requires_grad_(True)
    a_ref = a.clone().requires_grad_(True)
    k_fast = gaussian_gram_triton(a_fast, sigma, scale_by_dim=scale_by_dim, ieee=ieee)
    k_ref = gaussian_gram(a_ref, sigma, scale_by_dim=scale_by_dim)
    upstream = torch.randn(k_ref.shape, generator=gen).to(device)
    (k_fast * upstream).sum().backward()
    (k_ref * upstream).sum().backward()
    return _rel(k_fast, k_ref), _rel(a_fast.grad.float(), a_ref.grad.float())


@pytest.mark.parametrize(
    "shape,sigma,scale_by_dim",
    [
        ((7, 13), 1.3, False),
        ((3, 33, 70), 5.0, True),
        ((2, 17, 129), 0.9, False),
        ((1, 5), 2.0, True),
    ],
    ids=["m7-d13", "b3-m33-d70", "b2-m17-d129", "m1-d5"],
)
def test_kernel_matches_reference_fp32(shape, sigma, scale_by_dim):
    out_err, grad_err = _compare(shape, sigma, scale_by_dim, torch.float32, "cpu")
    assert out_err < 1e-5 and grad_err < 1e-4


def test_kernel_matches_reference_bf16_input():
    out_err, grad_err = _compare((9, 40), 1.0, False, torch.bfloat16, "cpu")
    assert out_err < 1e-2 and grad_err < 2e-2


@pytest.mark.parametrize("ieee", [False, True], ids=["tf32", "ieee"])
def test_every_tile_written_once_and_mirrored(ieee):
    # m = 97: 4 x 4 blocks of 32 rows, the last partial; only the 10 tiles on and above the
    # diagonal are computed, the 6 below are their transposes (the output starts uninitialised).
    from mimir_fast.kernels.gaussian_gram import gaussian_gram_triton

    a = torch.randn(2, 97, 40, generator=torch.Generator().manual_seed(4))
    k = gaussian_gram_triton(a, 1.5, scale_by_dim=False, ieee=ieee)
    assert torch.equal(k[:, 32:, :32], k[:, :32, 32:].mT)
    assert torch.equal(k[:, 96:, :96], k[:, :96, 96:].mT)
    assert _rel(k, gaussian_gram(a, 1.5, scale_by_dim=False)) < 1e-5


def test_per_matrix_sigma_tensor():
    from mimir_fast.kernels.gaussian_gram import gaussian_gram_triton

    a = torch.randn(3, 6, 10)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    got = gaussian_gram_triton(a, sigma, scale_by_dim=False)
    for i in range(3):
        assert _rel(got[i], gaussian_gram(a[i], sigma[i].item(), scale_by_dim=False)) < 1e-5


@pytest.mark.parametrize(
    "estimator,bandwidth", [("nocca", "mimir"), ("biased", "median"), ("cka", "mimir")]
)
def test_hsic_on_the_kernel_equals_reference(estimator, bandwidth):
    x = torch.rand(12, 3, 4, 4)
    z = torch.randn(12, 5, 8, requires_grad=True)
    fast = hsic(x, z, estimator, bandwidth=bandwidth, kernels="triton")
    (g_fast,) = torch.autograd.grad(fast, z)
    ref = hsic(x, z, estimator, bandwidth=bandwidth, kernels="torch")
    (g_ref,) = torch.autograd.grad(ref, z)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-3, abs=1e-7)
    # the normalised-CCA form amplifies fp32 rounding of K (a near-singular solve)
    assert _rel(g_fast, g_ref) < (5e-2 if estimator == "nocca" else 1e-2)
    module = HSIC(estimator, bandwidth=bandwidth, kernels="triton")
    assert module(x, z).item() == pytest.approx(ref.item(), rel=1e-3, abs=1e-7)


def test_auto_uses_the_reference_on_cpu():
    assert resolve_kernels("auto", ("gaussian_gram",), "cpu") == "torch"
    with pytest.raises(ValueError, match="kernels"):
        HSIC(kernels="cuda")


@pytest.mark.requires_cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: real-size kernel check"
)
@pytest.mark.parametrize("m,d", [(512, 3 * 32 * 32), (512, 65 * 384), (256, 3 * 224 * 224)])
def test_kernel_matches_reference_real_sizes_on_gpu(m, d):
    out_err, grad_err = _compare((m, d), 5.0, True, torch.float32, "cuda")
    assert out_err < 1e-5 and grad_err < 1e-4


@pytest.mark.requires_cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: real-size kernel check"
)
@pytest.mark.parametrize("m,d", [(512, 3 * 32 * 32), (512, 65 * 384), (256, 3 * 224 * 224)])
def test_tf32_kernel_real_sizes_on_gpu(m, d):
    # The default path: TF32 inner products (10 mantissa bits per input), fp32 accumulation.
    # Stated tolerance: K within 1e-4 of the fp32 reference, the gradient within 1e-3.
    out_err, grad_err = _compare((m, d), 5.0, True, torch.float32, "cuda", ieee=False)
    assert out_err < 1e-4 and grad_err < 1e-3

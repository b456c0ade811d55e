"""The Hilbert-Schmidt independence criterion (HSIC) between batches of tensors.

Estimators (``K``, ``L`` are Gaussian Gram matrices of the two inputs, ``m`` the batch):

- ``"nocca"``: MIMIR's normalised-CCA form: ``Kc = K H``, ``R = Kc (Kc + eps m I)^-1``,
  ``HSIC = sum(R_x * R_y^T)`` (parity with the paper's code, but solved in float64, not inverted).
- ``"biased"``: Gretton et al. 2005, ``tr(K H L H) / (m - 1)^2``.
- ``"unbiased"``: Song et al. 2012, on Gram matrices with zeroed diagonals (needs m >= 4).
- ``"cka"``: normalised HSIC, ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` (biased form).

Everything stays on the device, Gram matrices in fp32 and the m x m algebra in float64 (also
under autocast), with no host synchronisation:
a non-finite value is replaced by zero with tensor ops, so a training step never syncs.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import check_choice
from .kernels.dispatch import KERNEL_CHOICES
from .ops.gaussian_gram import center_gram, gaussian_gram, pairwise_sq_dists

__all__ = ["BANDWIDTHS", "ESTIMATORS", "HSIC", "hsic", "hsic_from_grams", "median_sigma"]

ESTIMATORS = ("nocca", "biased", "unbiased", "cka")
BANDWIDTHS = ("mimir", "median")


def median_sigma(a: torch.Tensor) -> torch.Tensor:
    """Median heuristic: ``sigma^2`` = the median off-diagonal squared distance (per matrix).

    Returns a tensor of shape (..., 1, 1); no host sync.
    """
    m = a.shape[-2]
    dists = pairwise_sq_dists(a)
    off = ~torch.eye(m, dtype=torch.bool, device=a.device)
    med = dists[..., off].median(dim=-1).values  # (...,)
    return med.clamp_min(1e-12).sqrt()[..., None, None]


def _gram(a: torch.Tensor, sigma: float, bandwidth: str, kernels: str = "auto") -> torch.Tensor:
    """(m, d) -> (m, m) Gram matrix, on the fused kernel where ``kernels`` resolves to Triton."""
    if bandwidth == "median":  # the bandwidth is a data-derived constant: no gradient through it
        return gaussian_gram(a, median_sigma(a.detach()), scale_by_dim=False, kernels=kernels)
    return gaussian_gram(a, sigma, scale_by_dim=True, kernels=kernels)


def hsic_from_grams(
    kx: torch.Tensor, ky: torch.Tensor, estimator: str = "nocca", eps: float = 1e-5
) -> torch.Tensor:
    """HSIC between two (batches of) (m, m) Gram matrices; returns fp32 of shape (...).

    The m x m algebra runs in float64: Gram matrices of wide inputs are close to constant, and
    centring them in fp32 would leave few significant digits (m <= a few thousand: cheap).
    """
    m = kx.shape[-1]
    kx, ky = kx.double(), ky.double()
    if estimator == "nocca":
        eye = torch.eye(m, dtype=torch.float64, device=kx.device)

        def r(k: torch.Tensor) -> torch.Tensor:
            kc = k - k.mean(dim=-1, keepdim=True)  # K H
            # solve_ex: no error check, so no host sync (a singular system gives non-finite values)
            solved, _ = torch.linalg.solve_ex(kc + eps * m * eye, kc, left=False)
            return solved  # Kc (Kc + eps m I)^-1

        return (r(kx) * r(ky).mT).sum(dim=(-2, -1)).float()
    if estimator == "biased":
        return ((center_gram(kx) * ky).sum(dim=(-2, -1)) / (m - 1) ** 2).float()
    if estimator == "unbiased":
        if m < 4:
            raise ValueError(f"the unbiased HSIC estimator needs a batch of at least 4, got {m}")
        eye = torch.eye(m, dtype=torch.bool, device=kx.device)
        kt, lt = kx.masked_fill(eye, 0.0), ky.masked_fill(eye, 0.0)
        trace = (kt * lt.mT).sum(dim=(-2, -1))
        sums = kt.sum(dim=(-2, -1)) * lt.sum(dim=(-2, -1)) / ((m - 1) * (m - 2))
        cross = (kt.sum(dim=-2) * lt.sum(dim=-1)).sum(dim=-1) * 2.0 / (m - 2)  # 1^T K L 1
        return ((trace + sums - cross) / (m * (m - 3))).float()
    if estimator == "cka":
        xy = hsic_from_grams(kx, ky, "biased")
        xx = hsic_from_grams(kx, kx, "biased")
        yy = hsic_from_grams(ky, ky, "biased")
        return (xy.double() / (xx.double() * yy.double()).clamp_min(1e-300).sqrt()).float()
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def hsic(
    x: torch.Tensor,
    y: torch.Tensor,
    estimator: str = "nocca",
    sigma: float = 5.0,
    bandwidth: str = "mimir",
    eps: float = 1e-5,
    zero_if_nonfinite: bool = True,
    kernels: str = "auto",
) -> torch.Tensor:
    """HSIC between two batches, each flattened per sample.

    Args:
        x, y: (m, ...) tensors with the same batch size ``m``.
        estimator: "nocca" (MIMIR), "biased", "unbiased" or "cka".
        sigma: bandwidth for ``bandwidth="mimir"`` (``2 sigma^2 d`` in the exponent).
        bandwidth: "mimir" or "median" (median heuristic, no ``d`` scaling).
        eps: ridge of the "nocca" form (MIMIR: 1e-5).
        zero_if_nonfinite: return 0 instead of NaN/inf, without a host sync.
        kernels: Gram matrices on the fused Triton kernel: "auto" (where the evidence table
            verified it faster, or as ``MIMIR_FAST_KERNELS`` says), "torch" or "triton".

    Returns:
        A scalar fp32 tensor.
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    check_choice(bandwidth, "bandwidth", BANDWIDTHS)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same batch size, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("HSIC needs a batch of at least 2 samples")
    with torch.autocast(device_type=x.device.type, enabled=False):
        kx = _gram(x.reshape(x.shape[0], -1).float(), sigma, bandwidth, kernels)
        ky = _gram(y.reshape(y.shape[0], -1).float(), sigma, bandwidth, kernels)
        value = hsic_from_grams(kx, ky, estimator, eps)
    if zero_if_nonfinite:
        value = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
    return value


class HSIC(nn.Module):
    """HSIC between one input and one or more other tensors: ``HSIC(...)(x, z1, z2, ...)``.

    Returns a tensor of shape (number of others,); the Gram matrix of ``x`` is computed once.
    """

    def __init__(
        self,
        estimator: str = "nocca",
        sigma: float = 5.0,
        bandwidth: str = "mimir",
        eps: float = 1e-5,
        kernels: str = "auto",
    ):
        super().__init__()
        check_choice(kernels, "kernels", KERNEL_CHOICES)
        check_choice(estimator, "estimator", ESTIMATORS)
        check_choice(bandwidth, "bandwidth", BANDWIDTHS)
        self.estimator, self.sigma, self.bandwidth, self.eps = estimator, sigma, bandwidth, eps
        self.kernels = kernels

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        if not others:
            raise ValueError("HSIC needs at least one tensor to compare x with")
        m = x.shape[0]
        for i, o in enumerate(others):
            if o.shape[0] != m:
                raise ValueError(f"tensor {i} has batch size {o.shape[0]}, x has {m}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            kx = _gram(x.reshape(m, -1).float(), self.sigma, self.bandwidth, self.kernels)
            values = torch.stack(
                [
                    hsic_from_grams(
                        kx,
                        _gram(o.reshape(m, -1).float(), self.sigma, self.bandwidth, self.kernels),
                        self.estimator,
                        self.eps,
                    )
                    for o in others
                ]
            )
        return torch.where(torch.isfinite(values), values, torch.zeros_like(values))

    def extra_repr(self) -> str:
        return (
            f"estimator={self.estimator!r}, sigma={self.sigma}, "
            f"bandwidth={self.bandwidth!r}, eps={self.eps}"
        )

"""Gaussian Gram matrices for HSIC: the reference, and the choice of path.

- :func:`gaussian_gram_reference`: the definition every fast path is tested against, in fp32.
- :func:`gaussian_gram`: what HSIC calls. The fused Triton kernel
  (:mod:`mimir_fast.kernels.gaussian_gram`: a TF32 tensor-core GEMM for fp32 inputs, the
  exponential in its epilogue, one triangle computed and mirrored) never writes the distances
  to memory.
"""

from __future__ import annotations

import torch

from .._tensors import as_device_tensor
from ..kernels.dispatch import use_triton

__all__ = ["center_gram", "gaussian_gram", "gaussian_gram_reference", "pairwise_sq_dists"]


def pairwise_sq_dists(a: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of each matrix, in fp32.

    Args:
        a: (..., m, d) samples (flattened per sample).

    Returns:
        (..., m, m), clamped at 0 (rounding can push ``|a|^2 + |b|^2 - 2ab`` below zero) and
        exactly zero on the diagonal. Uses one matrix product, so no (m, m, d) intermediate.
    """
    a = a.float()
    sq = (a * a).sum(dim=-1)  # (..., m)
    d = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (a @ a.mT)  # (..., m, m)
    eye = torch.eye(a.shape[-2], dtype=torch.bool, device=a.device)
    return d.clamp_min(0.0).masked_fill(eye, 0.0)


def center_gram(gram: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 1/m``: subtract row and column means, add back the grand mean."""
    row = gram.mean(dim=-1, keepdim=True)
    col = gram.mean(dim=-2, keepdim=True)
    return gram - row - col + gram.mean(dim=(-2, -1), keepdim=True)


def gaussian_gram_reference(
    a: torch.Tensor,
    sigma: float | torch.Tensor = 5.0,
    scale_by_dim: bool = True,
    center: bool = False,
) -> torch.Tensor:
    """``K_ij = exp(-||a_i - a_j||^2 / (2 sigma^2 d))`` (MIMIR's rule), or without ``d``.

    Args:
        a: (..., m, d) samples; computed in fp32 whatever the input dtype.
        sigma: kernel bandwidth, a number or a tensor broadcastable to (..., 1, 1).
        scale_by_dim: divide by the feature dimension ``d`` (MIMIR); False gives the plain kernel.
        center: return ``H K H`` with ``H = I - 1/m`` (both sides), instead of ``K``.
    """
    d = a.shape[-1] if scale_by_dim else 1
    gram = torch.exp(
        -pairwise_sq_dists(a) / (2.0 * as_device_tensor(sigma, a.device) ** 2 * d)
    )  # (..., m, m)
    return center_gram(gram) if center else gram


def gaussian_gram(
    a: torch.Tensor,
    sigma: float | torch.Tensor = 5.0,
    scale_by_dim: bool = True,
    center: bool = False,
    kernels: str = "auto",
) -> torch.Tensor:
    """The Gaussian Gram matrix of :func:`gaussian_gram_reference`, on the kernel where chosen.

    Args:
        a: (m, d) or (B, m, d) samples.
        sigma: a number, or a tensor with one value per matrix.
        scale_by_dim, center: as :func:`gaussian_gram_reference`.
        kernels: "auto", "torch" or "triton" (see :func:`mimir_fast.kernels.resolve_kernels`).

    Returns:
        (m, m) or (B, m, m), fp32.
    """
    if use_triton(kernels, "gaussian_gram", a):
        from ..kernels.gaussian_gram import gaussian_gram_triton

        gram = gaussian_gram_triton(a, sigma, scale_by_dim=scale_by_dim)
        return center_gram(gram) if center else gram
    return gaussian_gram_reference(a, sigma, scale_by_dim=scale_by_dim, center=center)

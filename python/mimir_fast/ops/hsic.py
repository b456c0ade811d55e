"""Reference Gaussian Gram matrices for HSIC: the definition every fast path is tested against."""

import torch


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
    d = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (a @ a.mT)
    eye = torch.eye(a.shape[-2], dtype=torch.bool, device=a.device)
    return d.clamp_min(0.0).masked_fill(eye, 0.0)


def gaussian_gram(
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
        -pairwise_sq_dists(a)
        / (2.0 * torch.as_tensor(sigma, dtype=torch.float32, device=a.device) ** 2 * d)
    )
    return center_gram(gram) if center else gram


def center_gram(gram: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 1/m``: subtract row and column means, add back the grand mean."""
    row = gram.mean(dim=-1, keepdim=True)
    col = gram.mean(dim=-2, keepdim=True)
    return gram - row - col + gram.mean(dim=(-2, -1), keepdim=True)

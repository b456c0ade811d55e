"""The MAE reconstruction loss (masked MSE on per-patch normalised targets), and its path.

- :func:`normalize_patches`, :func:`masked_mse_loss`: the loss on patch sequences.
- :func:`norm_pix_loss_reference`: the same loss against the patches of an image, in fp32.
- :func:`norm_pix_loss`: what the model calls. The fused Triton kernel
  (:mod:`mimir_fast.kernels.norm_pix_loss`) reads the target patches straight from the image.
"""

from __future__ import annotations

import torch

from ..kernels._shared import NORM_PIX_EPS
from ..kernels.dispatch import use_triton
from .patch import patchify

__all__ = ["masked_mse_loss", "norm_pix_loss", "norm_pix_loss_reference", "normalize_patches"]


def normalize_patches(target: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Normalise each patch by its own mean and variance: ``(t - mean) / sqrt(var + eps)``.

    Args:
        target: (N, L, P) patches. The variance is the unbiased one, as in MAE.
        eps: added to the variance (MAE: 1e-6, also the kernel's value).
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    norm_pix: bool = False,
) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches only.

    Args:
        pred: (N, L, P) predicted patches.
        target: (N, L, P) target patches (see :func:`~mimir_fast.ops.patchify`).
        mask: (N, L), 1 for patches that count; ``None`` counts every patch (denoising).
        norm_pix: normalise each target patch by its own statistics first.

    Returns:
        A scalar loss, computed in fp32.
    """
    pred, target = pred.float(), target.float()
    if norm_pix:
        target = normalize_patches(target)
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
    if mask is None:
        return per_patch.mean()
    mask = mask.float()
    # clamp_min keeps a fully visible batch (mask all 0) finite without a host sync
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def norm_pix_loss_reference(
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix: bool = True,
) -> torch.Tensor:
    """:func:`masked_mse_loss` against the patches of ``image``.

    Args:
        image: (N, C, H, W) target. pred: (N, L, p*p*C). mask: (N, L) 1 = counts, or None.
        patch_size: p. norm_pix: normalise each target patch first.
    """
    return masked_mse_loss(pred, patchify(image, patch_size), mask, norm_pix=norm_pix)


def norm_pix_loss(
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix: bool = True,
    kernels: str = "auto",
) -> torch.Tensor:
    """MAE's loss: MSE between ``pred`` and the patches of ``image``, over ``mask``; fp32 scalar.

    Args:
        image: (N, C, H, W) target. pred: (N, L, p*p*C). mask: (N, L) 1 = counts, or None (all).
        patch_size: p. norm_pix: normalise each target patch by its mean and unbiased std.
        kernels: "auto", "torch" or "triton" (see :func:`mimir_fast.kernels.resolve_kernels`).
    """
    if use_triton(kernels, "norm_pix_loss", pred):
        from ..kernels.norm_pix_loss import norm_pix_loss_triton

        return norm_pix_loss_triton(image, pred, mask, patch_size, norm_pix)
    return norm_pix_loss_reference(image, pred, mask, patch_size, norm_pix)

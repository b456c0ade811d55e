"""The MAE reconstruction loss."""

import torch


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise each patch by its own mean and variance: ``(t - mean) / sqrt(var + eps)``.

    Args:
        target: (N, L, P) patches. The variance is the unbiased one, as in MAE.
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


def image_mse_loss(
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: "torch.Tensor | None",
    patch_size: int,
    norm_pix: bool = True,
) -> torch.Tensor:
    """:func:`masked_mse_loss` against the patches of ``image``: the reference of the fused
    :mod:`mimir_fast.kernels.norm_pix_loss` kernel.

    Args:
        image: (N, C, H, W) target. pred: (N, L, p*p*C). mask: (N, L) 1 = counts, or None.
        patch_size: p. norm_pix: normalise each target patch first.
    """
    from .patch import patchify

    return masked_mse_loss(pred, patchify(image, patch_size), mask, norm_pix=norm_pix)

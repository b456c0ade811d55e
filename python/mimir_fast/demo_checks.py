"""Held-out checks that a pretraining learned something: each model's error beside the error of a
predictor that ignores the image.

- Masked autoencoders (MAE, MIMIR): MSE over the removed patches, in the model's own target space
  (per-patch normalised pixels when ``norm_pix_loss``), against predicting every removed patch as
  the mean training patch of its position.
- IMPure's autoencoder: MSE of the regional-intersection rebuild (every patch rebuilt from the
  others), against the same per-position mean patch, i.e. the mean training image.
- NIM's denoiser: MSE of the denoised image, against the better of two image-blind answers: the
  noisy input itself (identity) and the mean training image. The smaller one is the baseline.

Every mask and noise draw comes from ``seed`` (torch's global RNG is left untouched).
"""

from __future__ import annotations

from typing import Any

import torch

from .defenses import IMPurePurifier
from .noise import sample_sigma
from .ops.norm_pix_loss import normalize_patches

__all__ = [
    "denoising_check",
    "masked_patch_check",
    "position_mean",
    "regional_rebuild_check",
]


def _targets(model: Any, images: torch.Tensor) -> torch.Tensor:
    """The patches the model is trained to predict, (N, L, P)."""
    patches = model.patchify(images)
    return normalize_patches(patches) if model.config.norm_pix_loss else patches


@torch.no_grad()
def position_mean(model: Any, train_images: torch.Tensor) -> torch.Tensor:
    """The mean training target of every patch position, (L, P)."""
    return _targets(model, train_images.float()).mean(dim=0)


def _result(model_mse: float, baseline_mse: float, baseline: str) -> dict[str, Any]:
    return {
        "mse": model_mse,
        "baseline_mse": baseline_mse,
        "ratio": model_mse / baseline_mse if baseline_mse > 0 else float("inf"),
        "baseline": baseline,
    }


@torch.no_grad()
def masked_patch_check(
    model: Any,
    images: torch.Tensor,
    train_images: torch.Tensor,
    mask_ratio: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out MSE over the removed patches vs the per-position mean training patch.

    Args:
        model: a MaskedViT autoencoder. images: (N, C, H, W) held-out images.
        train_images: (M, C, H, W) training images (for the baseline's means).
        mask_ratio: the fraction of patches removed (the same mask for model and baseline).
    """
    model.eval()
    x = images.float()
    n, length = x.shape[0], model.num_patches
    keep = max(1, int(length * (1 - mask_ratio)))
    gen = torch.Generator().manual_seed(seed)
    ids_keep = torch.argsort(torch.rand(n, length, generator=gen), dim=1)[:, :keep]
    latent, mask, ids_restore = model.forward_encoder(x, ids_keep=ids_keep)
    pred = model.forward_decoder(latent, ids_restore)  # (N, L, P)
    target = _targets(model, x)
    mean = position_mean(model, train_images)
    removed = mask.sum()
    got = (((pred - target) ** 2).mean(-1) * mask).sum() / removed
    base = (((mean[None] - target) ** 2).mean(-1) * mask).sum() / removed
    return _result(float(got), float(base), "per-position mean training patch")


@torch.no_grad()
def regional_rebuild_check(
    model: Any, images: torch.Tensor, train_images: torch.Tensor, groups: int, seed: int = 0
) -> dict[str, Any]:
    """Held-out MSE of IMPure's rebuild (each patch from the other ``groups - 1`` groups, pixels
    clamped to [0, 1] as the purifier returns them) vs the mean training image."""
    model.eval()
    x = images.float()
    gen = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(x.shape[0], model.num_patches, generator=gen), dim=1)
    rebuilt = IMPurePurifier(model, groups)(x, order=order)
    mean = train_images.float().mean(dim=0, keepdim=True)
    got = ((rebuilt - x) ** 2).mean()
    base = ((mean - x) ** 2).mean()
    return _result(float(got), float(base), "mean training image")


@torch.no_grad()
def denoising_check(
    model: Any, images: torch.Tensor, train_images: torch.Tensor, noise: str, seed: int = 0
) -> dict[str, Any]:
    """Held-out MSE of NIM's denoised image vs the better of the noisy input and the mean training
    image (both reported). ``noise``: the sigma spec of the pretraining (0..255 scale)."""
    model.eval()
    x = images.float()
    gen = torch.Generator().manual_seed(seed)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        sigma = sample_sigma(noise, x.shape[0])
    finally:
        torch.random.set_rng_state(state)
    noisy = x + sigma.view(-1, 1, 1, 1) / 255.0 * torch.randn(x.shape, generator=gen)
    latent, _, ids_restore = model.forward_encoder(noisy, 0.0)
    denoised = model.unpatchify(model.forward_decoder(latent, ids_restore))
    got = float(((denoised - x) ** 2).mean())
    identity = float(((noisy - x) ** 2).mean())
    mean_image = float(((train_images.float().mean(dim=0, keepdim=True) - x) ** 2).mean())
    out = _result(
        got,
        min(identity, mean_image),
        "noisy input" if identity <= mean_image else "mean training image",
    )
    out.update(identity_mse=identity, mean_image_mse=mean_image)
    return out

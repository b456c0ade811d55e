"""Purifiers that rebuild the input with a masked autoencoder (MaskedViT).

- :class:`MAEPurifier`: hide a random subset of the patches and paste the reconstruction in.
- :class:`NIMDefense`: add Gaussian noise, then let the autoencoder rebuild every patch (NIM).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import MaskedViT
from ..noise import add_noise

__all__ = ["MAEPurifier", "NIMDefense"]


class MAEPurifier(nn.Module):
    """Random purifier: reconstruct the image with a MaskedViT from a random ``mask_ratio`` subset
    of its patches, keeping the visible patches as they were (a new mask every call)."""

    def __init__(self, mae: nn.Module, mask_ratio: float = 0.5):
        super().__init__()
        self.mae, self.mask_ratio = mae, float(mask_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latent, mask, ids_restore = self.mae.forward_encoder(x, self.mask_ratio)
        pred = self.mae.forward_decoder(latent, ids_restore)
        recon = self.mae.pred_to_image(pred, reference=x if self.mae.config.norm_pix_loss else None)
        p = self.mae.config.patch_size
        m = self.mae.unpatchify(mask[..., None].expand(-1, -1, p * p * x.shape[1]).to(x.dtype))
        return (x * (1 - m) + recon * m).clamp(0.0, 1.0)


class NIMDefense(nn.Module):
    """NIM's defense: add Gaussian noise, denoise with the autoencoder, clamp to [0, 1].

    ``y = classifier(NIMDefense(ae, sigma)(x))``. Random (a new noise draw per call) and
    differentiable, so white-box attacks go through it with EOT.

    The output is the autoencoder's pixel prediction and nothing else: no statistic of the
    (possibly adversarial) input is copied into it. Autoencoders trained with norm-pix loss are
    refused, since turning their output into pixels would need exactly those statistics.

    Args:
        autoencoder: a MaskedViT trained with ``train(method="nim")`` (pixel targets).
        sigma: noise level on the 0..255 scale (NIM: 30-140; ~70-75 is the most robust).
    """

    def __init__(self, autoencoder: MaskedViT, sigma: float = 75.0):
        super().__init__()
        if autoencoder.config.norm_pix_loss:
            raise ValueError(
                "NIMDefense needs an autoencoder that predicts pixels (norm_pix_loss=False); "
                "a norm-pix model would leak the input's patch statistics into the output"
            )
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0 (0..255 scale), got {sigma}")
        self.autoencoder = autoencoder
        self.sigma = float(sigma)

    def denoise(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """The autoencoder's reconstruction of every patch, clamped to [0, 1]."""
        latent, _, ids_restore = self.autoencoder.forward_encoder(x_noisy, 0.0)
        pred = self.autoencoder.forward_decoder(latent, ids_restore)
        return self.autoencoder.unpatchify(pred).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.denoise(add_noise(x, self.sigma))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"

"""IMPure's purifier (every patch rebuilt from the other patches) and its training loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MaskedViT

__all__ = ["IMPurePurifier", "impure_loss"]


class IMPurePurifier(nn.Module):
    """IMPure's regional intersection: every patch is rebuilt from the *other* patches only.

    The patches are shuffled per sample and split into ``num_groups`` groups; group ``g`` is
    reconstructed by the autoencoder from the patches of all other groups. The ``num_groups``
    reconstructions run as one batch of ``N * num_groups``, and each patch of the output comes
    from the pass in which it was hidden, so no patch is rebuilt from its own (possibly
    perturbed) pixels.

    Args:
        autoencoder: a MaskedViT predicting pixels (``norm_pix_loss=False``).
        num_groups: k, the number of patch groups (IMPure: 4); must divide the patch count.
    """

    def __init__(self, autoencoder: MaskedViT, num_groups: int = 4):
        super().__init__()
        if autoencoder.config.norm_pix_loss:
            raise ValueError(
                "IMPurePurifier needs an autoencoder that predicts pixels (norm_pix_loss=False); "
                "a norm-pix model would need the attacker's patch statistics to produce pixels"
            )
        if (
            not isinstance(num_groups, int)
            or num_groups < 2
            or autoencoder.num_patches % num_groups
        ):
            raise ValueError(
                f"num_groups must be an integer >= 2 dividing the {autoencoder.num_patches} "
                f"patches, got {num_groups!r}"
            )
        self.autoencoder = autoencoder
        self.num_groups = num_groups

    def group_order(self, n: int, device: torch.device) -> torch.Tensor:
        """A random patch order per sample, (N, L): group ``g`` is the ``g``-th block of L/k."""
        return torch.argsort(torch.rand(n, self.autoencoder.num_patches, device=device), dim=1)

    def forward(
        self, x: torch.Tensor, order: torch.Tensor | None = None, clamp: bool = True
    ) -> torch.Tensor:
        """Purify ``x`` (N, C, H, W) -> (N, C, H, W) in [0, 1]; ``order`` (N, L) fixes the groups.

        ``clamp=False`` returns the raw prediction (training: a clamped pixel has no gradient).
        """
        ae, k = self.autoencoder, self.num_groups
        n, length = x.shape[0], ae.num_patches
        order = self.group_order(n, x.device) if order is None else order
        size = length // k
        groups = order.view(n, k, size)  # (N, k, L/k) patch indices of each group
        # pass g keeps every group but g: (N, k, L - L/k) kept indices
        keep = torch.stack(
            [torch.cat([groups[:, :g], groups[:, g + 1 :]], dim=1).flatten(1) for g in range(k)],
            dim=1,
        )
        x_rep = x.repeat_interleave(k, dim=0)  # (N*k, C, H, W), pass g of sample i at i*k + g
        latent, _, ids_restore = ae.forward_encoder(x_rep, ids_keep=keep.flatten(0, 1))
        pred = ae.forward_decoder(latent, ids_restore).view(n, k, length, -1)  # (N, k, L, P)
        # patch j comes from the pass whose hidden group contains it
        group_of = torch.empty_like(order)
        group_of.scatter_(
            1,
            order,
            torch.arange(length, device=x.device).div(size, rounding_mode="floor").expand(n, -1),
        )
        patches = torch.gather(
            pred, 1, group_of[:, None, :, None].expand(-1, 1, -1, pred.shape[-1])
        ).squeeze(1)
        out = ae.unpatchify(patches)
        return out.clamp(0.0, 1.0) if clamp else out

    def random_combination(self, x_adv: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """IMPure's random combination module (training only): paste a random contiguous
        1/k' (k' in {2, 3, 4}) of a random patch order of ``purified`` into ``x_adv``."""
        ae = self.autoencoder
        n, length = x_adv.shape[0], ae.num_patches
        parts = torch.randint(2, 5, (n, 1), device=x_adv.device)  # k' per sample
        span = length // parts  # (N, 1) patches pasted
        start = (torch.rand(n, 1, device=x_adv.device) * (length - span + 1)).long()
        rank = torch.argsort(
            self.group_order(n, x_adv.device), dim=1
        )  # position of each patch in the order
        pasted = ((rank >= start) & (rank < start + span)).to(x_adv.dtype)  # (N, L)
        p = ae.config.patch_size
        region = pasted.view(n, 1, *ae.grid_size).repeat_interleave(p, 2).repeat_interleave(p, 3)
        return region * purified + (1 - region) * x_adv


def impure_loss(
    purified: torch.Tensor,
    clean: torch.Tensor,
    features: Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]] | None = None,
    pixel_weight: float = 1.0,
    feature_weights: float | list[float] | tuple[float, ...] = 1.0,
) -> torch.Tensor:
    """Pixel L1 to the clean image, plus L1 between frozen features of the two (perceptual loss).

    ``pixel_weight * mean|purified - clean| + sum_i feature_weights[i] * mean|f_i(purified) -
    f_i(clean)|``, the clean image's features taken without gradient.

    Args:
        features: a frozen network returning a tensor or a list of tensors (e.g. a classifier's
            ``forward_features``); None: pixel loss only.
        feature_weights: a number for every returned tensor, or a list with one weight per
            tensor (IMPure with VGG19-BN: 30/10/10).
    """
    loss = pixel_weight * F.l1_loss(purified, clean)
    if features is None:
        return loss
    got = features(purified)
    with torch.no_grad():
        want = features(clean)
    got = [got] if torch.is_tensor(got) else list(got)
    want = [want] if torch.is_tensor(want) else list(want)
    if isinstance(feature_weights, (list, tuple)):
        weights = list(feature_weights)
    else:
        weights = [feature_weights] * len(got)
    if len(weights) != len(got):
        raise ValueError(
            f"{len(weights)} feature weights for {len(got)} feature tensors "
            "(impure_feature_weights: give one weight, or one per tensor)"
        )
    for w, a, b in zip(weights, got, want):
        loss = loss + w * F.l1_loss(a, b)
    return loss

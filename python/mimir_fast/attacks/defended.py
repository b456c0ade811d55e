"""Defended pipelines ``classifier(purifier(x))`` and how to attack them honestly.

- White-box: attack the :class:`Defended` module itself. Gradients flow through the purifier;
  a random purifier is handled with EOT (the attacks average ``eot_samples`` gradients per step;
  :class:`Defended` sets that attribute). A non-differentiable purifier is wrapped in
  :class:`BPDA` (identity on the backward pass).
- Gray-box: attack ``defended.classifier`` alone, evaluate the whole pipeline.
- Black-box: :class:`~mimir_fast.attacks.Square` queries the whole pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

THREATS = ("white", "gray", "black")


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018) with the identity.

    The forward pass returns ``fn(x)``; the backward pass treats it as ``x`` (straight-through).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.fn(x.detach())
        return x + (out - x).detach()


class Defended(nn.Module):
    """``classifier(purifier(x))`` as one model.

    Args:
        classifier: the model producing logits.
        purifier: any callable ``(N, C, H, W) -> (N, C, H, W)``, possibly random.
        eot_samples: gradients averaged per attack step in white-box attacks (EOT); use > 1
            for a random purifier.
        bpda: wrap the purifier in :class:`BPDA` (for a non-differentiable one).
    """

    def __init__(
        self,
        classifier: nn.Module,
        purifier: Callable[[torch.Tensor], torch.Tensor],
        eot_samples: int = 1,
        bpda: bool = False,
    ):
        super().__init__()
        if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
            raise ValueError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
        self.classifier = classifier
        self.purifier = BPDA(purifier) if bpda else purifier
        self.eot_samples = eot_samples
        n = getattr(classifier, "num_classes", None)
        if isinstance(n, int):
            self.num_classes = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x))


class GaussianNoise(nn.Module):
    """Random purifier: add N(0, sigma^2) noise and clamp to [0, 1] (a new draw every call)."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0)


class RandomPatchMask(nn.Module):
    """Random purifier: zero a random ``ratio`` of ``patch`` x ``patch`` squares (new draw every call)."""

    def __init__(self, ratio: float = 0.25, patch: int = 4):
        super().__init__()
        if not 0 <= ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
        self.ratio, self.patch = float(ratio), int(patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        gh, gw = -(-h // self.patch), -(-w // self.patch)
        keep = (torch.rand(n, 1, gh, gw, device=x.device) >= self.ratio).to(x.dtype)
        keep = keep.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)[:, :, :h, :w]
        return x * keep


class Quantize(nn.Module):
    """Non-differentiable purifier (zero gradient almost everywhere): round to ``levels`` grey levels.

    Attacked naively it masks gradients; use ``Defended(..., bpda=True)``.
    """

    def __init__(self, levels: int = 8):
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels!r}")
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


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


def gray_box_target(model: Any) -> Any:
    """What a gray-box attacker differentiates: the classifier behind a Defended, else the model."""
    return model.classifier if isinstance(model, Defended) else model


def check_threat(threat: str) -> str:
    if threat not in THREATS:
        raise ValueError(f"threat must be one of {THREATS}, got {threat!r}")
    return threat


class EOT(nn.Module):
    """Mark a (random) model for Expectation over Transformation: white-box attacks on it
    average ``samples`` gradients per step. ``EOT(model, 8)`` is equivalent to passing
    ``eot_iter=8`` to every attack. The forward pass is the model's, one draw."""

    def __init__(self, model: nn.Module, samples: int = 8):
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        self.model = model
        self.eot_samples = samples
        n = getattr(model, "num_classes", None)
        if isinstance(n, int):
            self.num_classes = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

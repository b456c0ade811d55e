"""IMPure's perceptual feature network: frozen, returning the tensors its L1 loss compares.

The paper takes three layers of an ImageNet VGG19-BN (the authors' code: ``features.38``, the
ReLU of conv4_4, three quarters of the way through the 16 convolutions; ``features.51``, the
ReLU of conv5_4, the last one; ``classifier.1``, the ReLU of the first fully connected layer)
with weights 30, 10 and 10. Offline, with no VGG at hand, the default here is the analogue on
the target classifier: the tokens after the block three quarters of the way through the encoder,
the final features and the pooled pre-logits (:class:`ViTFeatureTaps`).

:func:`build_feature_network` reads the ``impure_features`` setting: None (the classifier), a
MaskedViT file, ``"timm:NAME:WEIGHTS_FILE"`` (a timm model whose pretrained weights come from
that local file only: nothing is downloaded) or a name given to
:func:`register_feature_network` (any ``nn.Module``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import MaskedViT

__all__ = [
    "FEATURE_NETWORKS",
    "FrozenFeatures",
    "ViTFeatureTaps",
    "build_feature_network",
    "register_feature_network",
]

FEATURE_NETWORKS: dict[str, nn.Module] = {}
TAP_DEPTH = 0.75  # conv4_4 is the 12th of VGG19's 16 convolutions


def register_feature_network(name: str, network: nn.Module) -> None:
    """Make ``network`` IMPure's perceptual network for ``impure_features=name``."""
    if not isinstance(network, nn.Module):
        raise ValueError(f"a feature network must be an nn.Module, got {type(network).__name__}")  # noqa: TRY004 (bad input is a ValueError throughout)
    if not isinstance(name, str) or not name or name.startswith("timm:"):
        raise ValueError(f"a feature network's name must be a string without 'timm:', got {name!r}")
    FEATURE_NETWORKS[name] = network


class ViTFeatureTaps(nn.Module):
    """Three feature tensors of a MaskedViT classifier (the analogue of IMPure's VGG layers).

    Returns ``[tokens after block round(0.75 * depth), final features (N, 1 + L, D), pooled
    pre-logits (N, D)]``.
    """

    def __init__(self, vit: MaskedViT):
        super().__init__()
        self.vit = vit
        self.tap = max(0, round(TAP_DEPTH * len(vit.blocks)) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hook = self.vit.blocks[self.tap].register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            features = self.vit.forward_features(x)
        finally:
            hook.remove()
        return [seen[0], features, self.vit.forward_head(features, pre_logits=True)]


class FrozenFeatures(nn.Module):
    """A feature network in eval mode with frozen parameters, optionally normalising its input.

    Args:
        network: a module returning a tensor or a list/tuple/dict of tensors.
        mean, std: per-channel input normalisation (e.g. a timm model's), or None.
    """

    def __init__(self, network: nn.Module, mean: Any = None, std: Any = None):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)

    def train(self, mode: bool = True) -> FrozenFeatures:
        super().train(mode)
        self.network.eval()  # frozen: batch norms keep their statistics
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.mean is not None and self.std is not None:
            channels = self.mean.numel()
            if x.shape[1] == 1 and channels > 1:  # grey images into an RGB network
                x = x.expand(-1, channels, -1, -1)
            mean = self.mean.to(x.device, x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / self.std.to(x.device, x.dtype).view(1, -1, 1, 1)
        out = self.network(x)
        if torch.is_tensor(out):
            return [out]
        return list(out.values()) if isinstance(out, dict) else list(out)


def _timm_network(spec: str) -> FrozenFeatures:
    """``timm:NAME:WEIGHTS_FILE``: the model's stage features, weights from the file only."""
    _, _, rest = spec.partition(":")
    name, _, weights = rest.partition(":")
    if not name or not weights:
        raise ValueError(
            f"impure_features {spec!r}: a timm network is 'timm:NAME:WEIGHTS_FILE' (pretrained "
            "weights from a local file; nothing is downloaded)"
        )
    if not Path(weights).is_file():
        raise ValueError(f"impure_features {spec!r}: no weights file {weights!r}")
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dev extra
        raise ValueError(f"impure_features {spec!r} needs timm (pip install timm)") from None
    network = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": weights}, features_only=True
    )
    cfg = getattr(network, "pretrained_cfg", None) or {}
    return FrozenFeatures(network, cfg.get("mean"), cfg.get("std"))


def build_feature_network(
    spec: str | None, classifier: nn.Module, kernels: str = "auto"
) -> Callable[[torch.Tensor], Any]:
    """IMPure's frozen perceptual network from the ``impure_features`` setting.

    Args:
        spec: None or "classifier" (the target classifier's :class:`ViTFeatureTaps`, or its
            ``forward_features`` when it is not a MaskedViT), a registered name, a MaskedViT
            file or ``"timm:NAME:WEIGHTS_FILE"``.
        classifier: the frozen target classifier.
        kernels: fast path of a MaskedViT loaded from a file.

    Raises:
        ValueError: the spec names nothing usable.
    """
    if spec is None or spec == "classifier":
        if isinstance(classifier, MaskedViT):
            return FrozenFeatures(ViTFeatureTaps(classifier))
        features = getattr(classifier, "forward_features", None)
        if features is None:
            raise ValueError(
                f"{type(classifier).__name__} has no forward_features; set impure_features"
            )
        return features
    if spec in FEATURE_NETWORKS:
        return FrozenFeatures(FEATURE_NETWORKS[spec])
    if spec.startswith("timm:"):
        return _timm_network(spec)
    if Path(spec).is_file():
        return FrozenFeatures(ViTFeatureTaps(MaskedViT.load(spec, kernels=kernels)))
    raise ValueError(
        f"impure_features {spec!r} is not 'classifier', a registered name "
        f"({', '.join(sorted(FEATURE_NETWORKS)) or 'none registered'}), a MaskedViT file or "
        "'timm:NAME:WEIGHTS_FILE'"
    )

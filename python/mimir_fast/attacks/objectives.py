"""What an attack maximises.

An objective is called as ``objective(model, x_adv, x, y)`` and returns ``(loss, logits)``:
``loss`` is an (N,) tensor, one value per sample, that the attack *maximises*; ``logits`` are
the classifier outputs at ``x_adv`` when the objective is a classification one (the attack uses
them to know which samples are already fooled), else ``None``.

Classification objectives: :class:`CrossEntropy`, :class:`DLR`, :class:`TargetedDLR`
(Croce & Hein 2020) and :class:`Margin`. Beyond classification: :class:`MaskedReconstruction`
(the MAE loss of a :class:`~mimir_fast.MaskedViT`: the attack MIMIR pretrains against),
:class:`FeatureDistance`, and :class:`CallableObjective` for any ``loss(model, x_adv, x, y)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..ops import patchify
from ..ops.norm_pix_loss import normalize_patches

__all__ = [
    "DLR",
    "CallableObjective",
    "CrossEntropy",
    "FeatureDistance",
    "Margin",
    "MaskedReconstruction",
    "Objective",
    "TargetedDLR",
    "get_objective",
]


class Objective(ABC):
    """Base class. ``classification`` says whether ``y`` are labels and logits come back."""

    classification = True
    name = "objective"

    @abstractmethod
    def __call__(
        self, model: Any, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample loss (N,) to maximise, and the logits at ``x_adv`` (or None)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropy(Objective):
    """Cross-entropy of the true label (untargeted), or minus that of the target (targeted)."""

    name = "ce"

    def __init__(self, targeted: bool = False):
        self.targeted = targeted

    def __call__(self, model, x_adv, x, y):
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        return (-loss if self.targeted else loss), logits


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)`` (>= 3 classes)."""
    z = logits.float()
    top, _ = z.sort(dim=1, descending=True)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (needs >= 4 classes)."""
    z = logits.float()
    top, _ = z.sort(dim=1, descending=True)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


class DLR(Objective):
    """The scale-invariant DLR loss of APGD-DLR (untargeted)."""

    name = "dlr"

    def __call__(self, model, x_adv, x, y):
        logits = model(x_adv)
        if logits.shape[1] < 3:
            raise ValueError(
                f"the DLR loss needs at least 3 classes, the model has {logits.shape[1]}"
            )
        return dlr_loss(logits, y), logits


class TargetedDLR(Objective):
    """Targeted DLR towards ``target`` (an (N,) tensor set by the attack before each run)."""

    name = "dlr-t"

    def __init__(self, target: torch.Tensor | None = None):
        self.target = target

    def __call__(self, model, x_adv, x, y):
        if self.target is None or self.target.shape != y.shape:
            raise ValueError("TargetedDLR.target must be set to an (N,) tensor of target labels")
        logits = model(x_adv)
        if logits.shape[1] < 4:
            raise ValueError(
                f"the targeted DLR loss needs at least 4 classes, the model has {logits.shape[1]}"
            )
        return targeted_dlr_loss(logits, y, self.target), logits


class Margin(Objective):
    """``max_{i!=y} z_i - z_y`` (untargeted) or ``z_t - max_{i!=t} z_i`` (targeted); > 0 means
    success."""

    name = "margin"

    def __init__(self, targeted: bool = False):
        self.targeted = targeted

    def __call__(self, model, x_adv, x, y):
        logits = model(x_adv)
        z = logits.float()
        z_y = z.gather(1, y[:, None]).squeeze(1)
        other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return ((z_y - other) if self.targeted else (other - z_y)), logits


class MaskedReconstruction(Objective):
    """The masked-reconstruction (MAE) loss of a MaskedViT, per sample.

    The encoder sees the visible patches of ``x_adv``; the decoder's prediction is scored
    against ``x`` (``target="clean"``) or against ``x_adv`` itself (``target="adv"``, the
    objective MIMIR's authors pretrain against: the plain MAE loss of the attacked image, whose
    gradient reaches every pixel), over the masked patches. With ``target="clean"`` only the
    visible pixels get a gradient.

    Args:
        mask_ratio: fraction of patches removed.
        seed: seed of the masks. With ``resample=False`` (default) one mask per sample is
            drawn at the first call of a batch and kept; ``resample=True`` draws new masks at
            every call (expectation over masks, as with EOT).
        target: "clean" or "adv".
    """

    classification = False
    name = "mim"

    def __init__(
        self, mask_ratio: float = 0.75, seed: int = 0, target: str = "clean", resample: bool = False
    ):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if target not in ("clean", "adv"):
            raise ValueError(f"target must be 'clean' or 'adv', got {target!r}")
        self.mask_ratio, self.seed, self.target, self.resample = mask_ratio, seed, target, resample
        self._draws = 0

    def ids_keep(self, model: Any, x: torch.Tensor, salt: int = 0) -> torch.Tensor:
        """The kept patch indices (N, len_keep) for ``x``, a function of the seed, ``salt``, N."""
        n, length = x.shape[0], model.num_patches
        keep = max(1, int(length * (1 - self.mask_ratio)))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + salt)
        noise = torch.rand(n, length, generator=gen)
        return noise.argsort(dim=1)[:, :keep].sort(dim=1).values.to(x.device)

    def per_sample_loss(
        self, model: Any, x_in: torch.Tensor, target: torch.Tensor, ids_keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss (N,), pred (N, L, P), mask (N, L)) of reconstructing ``target`` from ``x_in``."""
        latent, mask, ids_restore = model.forward_encoder(x_in, self.mask_ratio, ids_keep)
        pred = model.forward_decoder(latent, ids_restore)
        tgt = patchify(target, model.config.patch_size).float()
        if model.config.norm_pix_loss:
            tgt = normalize_patches(tgt)
        per_patch = ((pred.float() - tgt) ** 2).mean(dim=-1)  # (N, L)
        mask = mask.float()
        return (per_patch * mask).sum(1) / mask.sum(1).clamp_min(1.0), pred, mask

    def __call__(self, model, x_adv, x, y):
        if not hasattr(model, "forward_encoder"):
            raise ValueError(
                "MaskedReconstruction needs a MaskedViT (with forward_encoder/forward_decoder)"
            )
        salt = 0
        if self.resample:
            self._draws += 1
            salt = self._draws
        ids = self.ids_keep(model, x_adv, salt)
        loss, _, _ = self.per_sample_loss(model, x_adv, x if self.target == "clean" else x_adv, ids)
        return loss, None


def _pre_logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    raise ValueError(
        "FeatureDistance needs feature_fn= for a model without forward_features/forward_head"
    )


class FeatureDistance(Objective):
    """Squared L2 distance between features of ``x_adv`` and of ``x`` (default: pre-logits).

    Args:
        feature_fn: ``feature_fn(model, images) -> (N, ...)`` features; default the pooled
            pre-logits features (``forward_head(forward_features(x), pre_logits=True)``).
    """

    classification = False
    name = "feature"

    def __init__(self, feature_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None):
        self.feature_fn = feature_fn or _pre_logits

    def __call__(self, model, x_adv, x, y):
        with torch.no_grad():
            ref = self.feature_fn(model, x).float()
        f = self.feature_fn(model, x_adv).float()
        return (f - ref).flatten(1).pow(2).sum(1), None


class CallableObjective(Objective):
    """Any user ``loss(model, x_adv, x, y)`` returning an (N,) tensor or a scalar to maximise.

    A scalar is spread evenly over the batch (restarts then cannot pick the worst case per sample).
    """

    classification = False
    name = "callable"

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn = fn

    def __call__(self, model, x_adv, x, y):
        loss = self.fn(model, x_adv, x, y)
        if not isinstance(loss, torch.Tensor):
            raise ValueError(f"the loss callable must return a tensor, got {type(loss).__name__}")  # noqa: TRY004 (bad input is a ValueError throughout)
        if loss.ndim == 0:
            loss = loss.expand(x_adv.shape[0]) / x_adv.shape[0]
        elif loss.shape != (x_adv.shape[0],):
            raise ValueError(
                f"the loss callable must return a scalar or an (N,) tensor, got {tuple(loss.shape)}"
            )
        return loss, None

    def __repr__(self) -> str:
        return f"CallableObjective({getattr(self.fn, '__name__', self.fn)!r})"


_NAMED = {
    "ce": CrossEntropy,
    "dlr": DLR,
    "margin": Margin,
    "mim": MaskedReconstruction,
    "recon": MaskedReconstruction,
    "feature": FeatureDistance,
}


def get_objective(spec: str | Objective | Callable, targeted: bool = False) -> Objective:
    """An :class:`Objective` from a name ("ce", "dlr", "margin", "mim"/"recon", "feature"),
    an Objective, or a callable ``loss(model, x_adv, x, y)``."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key not in _NAMED:
            raise ValueError(
                f"unknown loss {spec!r}; use one of {sorted(_NAMED)}, an Objective or a callable"
            )
        if key in ("ce", "margin"):
            return _NAMED[key](targeted=targeted)
        if targeted:
            raise ValueError(f"loss {spec!r} has no targeted form; use 'ce' or the APGDT attack")
        return _NAMED[key]()
    if callable(spec):
        return CallableObjective(spec)
    raise ValueError(f"loss must be a name, an Objective or a callable, got {type(spec).__name__}")

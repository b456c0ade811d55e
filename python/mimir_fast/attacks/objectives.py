"""What an attack maximises.

An objective is called as ``objective(model, x_adv, x, y)`` and returns ``(loss, logits)``:
``loss`` is an (N,) tensor, one value per sample, that the attack *maximises*; ``logits`` are
the classifier outputs at ``x_adv`` when the objective is a classification one (the attack uses
them to know which samples are already fooled), else ``None``.

Classification objectives: :class:`CrossEntropy`, :class:`DLR`, :class:`TargetedDLR`
(Croce & Hein 2020) and :class:`Margin`. Beyond classification: :class:`MaskedReconstruction`
(the MAE loss of a :class:`~mimir_fast.MaskedViT`: the attack MIMIR pretrains against),
:class:`FeatureDistance`, and :class:`CallableObjective` for any ``loss(model, x_adv, x, y)``.
Adaptive attacks on MIMIR: :class:`MIAdaptive` (cross-entropy plus MIMIR's HSIC penalty) and
:class:`FeatureDistance` (features pushed away from the clean ones).

Batch quantities (HSIC, a whole-batch feature distance) are added to every sample's entry of
the (N,) loss, so the entries' mean is the batch objective. The gradient of their sum is then
N times the batch term's gradient next to the per-sample terms, as when the batch objective
uses the *mean* cross-entropy: sign (L-inf) and per-sample normalised (L2, L1) steps see the
same direction either way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .._validate import check_choice, check_number, check_positive
from ..hsic import ESTIMATORS, hsic
from ..ops import patchify
from ..ops.norm_pix_loss import normalize_patches

__all__ = [
    "DLR",
    "CallableObjective",
    "CrossEntropy",
    "FeatureDistance",
    "MIAdaptive",
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
    """L2 distance between features of ``x_adv`` and of ``x`` (default: pre-logits), to maximise.

    Args:
        feature_fn: ``feature_fn(model, images) -> (N, ...)`` features; default the pooled
            pre-logits features (``forward_head(forward_features(x), pre_logits=True)``).
        reduction: "sample": per sample, ``||f(x_adv)_i - f(x)_i||``; "batch": one distance
            over the whole batch, ``||F(x_adv) - F(x)||`` (all samples' features flattened
            together), added to every sample's entry (see the module docstring).
        squared: the squared distance (default, the value this class always had) or the
            distance itself. Per sample both give the same step direction; they differ in
            the loss values restarts compare.
    """

    classification = False
    name = "feature"

    def __init__(
        self,
        feature_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "sample",
        squared: bool = True,
    ):
        self.feature_fn = feature_fn or _pre_logits
        self.reduction = check_choice(reduction, "reduction", ("sample", "batch"))
        self.squared = bool(squared)

    def __call__(self, model, x_adv, x, y):
        with torch.no_grad():
            ref = self.feature_fn(model, x).float()
        f = self.feature_fn(model, x_adv).float()
        sq = (f - ref).flatten(1).pow(2).sum(1)  # (N,)
        if self.reduction == "batch":
            sq = sq.sum().expand(x_adv.shape[0])
        # no NaN gradient at f == ref (the square root's slope is infinite at 0)
        return (sq if self.squared else sq.clamp_min(1e-30).sqrt()), None

    def __repr__(self) -> str:
        return f"FeatureDistance(reduction={self.reduction!r}, squared={self.squared})"


def _features_and_logits(
    model: Any, x: torch.Tensor, feature_fn: Callable | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) at ``x``: one forward through ``forward_features``/``forward_head``,
    or ``feature_fn(model, x)`` and ``model(x)``."""
    if feature_fn is not None:
        return feature_fn(model, x), model(x)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        features = model.forward_features(x)
        return features, model.forward_head(features)
    raise ValueError("MIAdaptive needs a model with forward_features/forward_head, or feature_fn=")


class MIAdaptive(Objective):
    """The adaptive attack on MIMIR: ``CE(model(x_adv), y) + weight * HSIC(x_adv, features)``.

    MIMIR's training penalty is ``lambda * HSIC(x_adv, latent)``, which the defender
    *minimises*: it keeps the latent from carrying information about the adversarial input.
    The adaptive attacker of the paper runs PGD on the cross-entropy plus the same term and
    *maximises* the sum, so it also looks for perturbations the features depend on (the
    paper's summary says only that MIMIR resists adaptive attacks; the project's reference
    notes: "Adaptive attack: PGD on cross-entropy + lambda*HSIC"). The HSIC is MIMIR's: the
    normalised-CCA estimator ("nocca") with Gaussian kernels
    ``exp(-||a_i - a_j||^2 / (2 sigma^2 d))``, sigma 5, d the flattened size of each tensor,
    ridge 1e-5 (:func:`mimir_fast.hsic.hsic`, called as MIMIR pretraining calls it). It is a
    batch quantity: it is added to every sample's cross-entropy (module docstring), so the
    mean of the returned loss is the authors' ``mean CE + lambda * HSIC``. A batch of one has
    no HSIC: the loss is then the cross-entropy alone.

    Args:
        weight: lambda, >= 0 (MIMIR: 1e-5).
        sigma: the Gaussian kernels' width (MIMIR: 5).
        estimator: the HSIC estimator (see :data:`mimir_fast.hsic.ESTIMATORS`).
        feature_fn: ``feature_fn(model, images) -> (N, ...)``; default the classifier's
            ``forward_features`` (all tokens), flattened per sample.
        kernels: the Gram matrices' path ("auto", "torch" or "triton").
    """

    name = "mi"

    def __init__(
        self,
        weight: float = 1e-5,
        sigma: float = 5.0,
        estimator: str = "nocca",
        feature_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        kernels: str = "auto",
    ):
        self.weight = check_number(weight, "weight", low=0.0)
        self.sigma = check_positive(sigma, "sigma")
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.feature_fn, self.kernels = feature_fn, kernels

    def __call__(self, model, x_adv, x, y):
        features, logits = _features_and_logits(model, x_adv, self.feature_fn)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        if self.weight == 0 or x_adv.shape[0] < 2:
            return loss, logits
        dependence = hsic(x_adv, features, self.estimator, sigma=self.sigma, kernels=self.kernels)
        return loss + self.weight * dependence, logits

    def __repr__(self) -> str:
        return f"MIAdaptive(weight={self.weight:g}, sigma={self.sigma:g}, {self.estimator!r})"


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
    "mi": MIAdaptive,
}


def get_objective(spec: str | Objective | Callable, targeted: bool = False) -> Objective:
    """An :class:`Objective` from a name ("ce", "dlr", "margin", "mim"/"recon", "feature",
    "mi"), an Objective, or a callable ``loss(model, x_adv, x, y)``."""
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

"""Single attacks by name: :func:`build_single_attack`, with the defaults evaluations use.

:mod:`~mimir_fast.attacks.registry` adds the ensembles on top; :class:`~mimir_fast.attacks.
ensemble.AutoAttack` builds its custom components here, so this module imports no ensemble.
"""

from __future__ import annotations

from typing import Any

from .apgd import APGD, APGDT
from .base import Attack
from .difgsm import DIFGSM
from .fab import FAB, FABT
from .l1 import L1PGD
from .objectives import FeatureDistance, MaskedReconstruction, MIAdaptive
from .pgd import FGSM, MIFGSM, PGD
from .square import Square

__all__ = ["L1_ATTACK_NAMES", "SINGLE_ATTACK_NAMES", "build_single_attack", "check_norm_support"]

SINGLE_ATTACK_NAMES = (
    "fgsm",
    "pgd",
    "mifgsm",
    "apgd",
    "apgd-ce",
    "apgd-dlr",
    "apgd-t",
    "square",
    "mim",
    "fab",
    "fab-t",
    "difgsm",
    "pgd-mi",
    "pgd-feature",
)
# the single attacks that take norm="l1" (the L1 ball intersected with [0, 1])
L1_ATTACK_NAMES = ("pgd", "apgd", "apgd-ce", "apgd-dlr", "apgd-t", "pgd-mi", "pgd-feature")
_PGD_NAMES = ("pgd", "mim", "pgd-mi", "pgd-feature")


def check_norm_support(name: str, norm: str) -> None:
    """Raise ValueError when the single attack ``name`` (lower case) has no form for ``norm``.

    Every single attack takes "linf" and "l2"; "l1" only those of :data:`L1_ATTACK_NAMES`.
    """
    if norm == "l1" and name not in L1_ATTACK_NAMES:
        raise ValueError(
            f"attack {name!r} has no form for norm 'l1' (the L1 ball intersected with [0, 1]); "
            f"the attacks that support 'l1' are {L1_ATTACK_NAMES} and 'autoattack'"
        )


def build_single_attack(
    name: str,
    model: Any,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    kernels: str = "auto",
    **kwargs: Any,
) -> Attack:
    """One attack from its name and the threat model; ``kwargs`` override the defaults.

    Defaults: PGD-20 with ``alpha = 2.5 eps / steps`` and a random start; MI-FGSM-10;
    APGD/APGD-T 100 steps; Square 5000 queries; "mim": PGD-20 on the masked-reconstruction
    loss of a MaskedViT (mask ratio 0.75); FAB / FAB-T 100 steps (FAB-T: 9 target classes);
    DI-FGSM 10 steps of 2/255. Adaptive attacks on MIMIR, PGD-20 like "pgd": "pgd-mi" on
    cross-entropy + 1e-5 HSIC(x_adv, features) (:class:`~mimir_fast.attacks.objectives.
    MIAdaptive`; ``weight=`` and ``sigma=`` override), "pgd-feature" on the per-sample L2
    distance between the features of x_adv and of x (:class:`~mimir_fast.attacks.objectives.
    FeatureDistance`; ``reduction="batch"`` for the whole-batch distance). With ``norm="l1"``
    the PGD attacks are :class:`~mimir_fast.attacks.l1.L1PGD` and APGD is l1-APGD.

    Args:
        name: one of :data:`SINGLE_ATTACK_NAMES` (lower case).
        model: what the attack differentiates or queries.
        eps, norm, seed, kernels: the threat model, the attack's seed and its step path.
        **kwargs: constructor arguments that override the defaults.

    Raises:
        ValueError: ``name`` is not a single attack, or has no form for ``norm``.
    """
    check_norm_support(name, norm)
    common = {"norm": norm, "seed": seed, "kernels": kernels}
    if name == "fgsm":
        return FGSM(model, eps, **{**common, **kwargs})
    if name in _PGD_NAMES:
        return _build_pgd(name, model, eps, common, kwargs)
    if name == "mifgsm":
        return MIFGSM(model, eps, **{**common, **kwargs})
    if name in ("apgd", "apgd-ce", "apgd-dlr"):
        loss = "dlr" if name == "apgd-dlr" else kwargs.pop("loss", "ce")
        return APGD(model, eps, loss=loss, **{**common, **kwargs})
    if name == "apgd-t":
        return APGDT(model, eps, **{**common, **kwargs})
    if name == "square":
        return Square(model, eps, seed=seed, **{"norm": norm, **kwargs})
    if name in ("fab", "fab-t"):
        return (FAB if name == "fab" else FABT)(model, eps, **{**common, **kwargs})
    if name == "difgsm":
        return DIFGSM(model, eps, **{**common, **kwargs})
    raise ValueError(f"unknown single attack {name!r}; use one of {SINGLE_ATTACK_NAMES}")


def _build_pgd(
    name: str, model: Any, eps: float, common: dict[str, Any], kwargs: dict[str, Any]
) -> Attack:
    """PGD-20 (``alpha = 2.5 eps / steps``) on the loss ``name`` says; L1PGD for norm "l1"."""
    steps = kwargs.pop("steps", 20)
    alpha = kwargs.pop("alpha", 2.5 * eps / steps)
    if name == "mim":
        loss = MaskedReconstruction(kwargs.pop("mask_ratio", 0.75), seed=common["seed"])
        kwargs.setdefault("loss", loss)
    elif name == "pgd-mi":
        mi = {k: kwargs.pop(k) for k in ("weight", "sigma", "estimator") if k in kwargs}
        kwargs.setdefault("loss", MIAdaptive(**mi, kernels=common["kernels"]))
    elif name == "pgd-feature":
        reduction = kwargs.pop("reduction", "sample")
        kwargs.setdefault("loss", FeatureDistance(reduction=reduction, squared=False))
    if common["norm"] == "l1":
        return L1PGD(model, eps, alpha=alpha, steps=steps, **{**common, **kwargs})
    return PGD(model, eps, alpha=alpha, steps=steps, **{**common, **kwargs})

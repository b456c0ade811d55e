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
from .objectives import MaskedReconstruction
from .pgd import FGSM, MIFGSM, PGD
from .square import Square

__all__ = ["SINGLE_ATTACK_NAMES", "build_single_attack"]

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
    DI-FGSM 10 steps of 2/255.

    Args:
        name: one of :data:`SINGLE_ATTACK_NAMES` (lower case).
        model: what the attack differentiates or queries.
        eps, norm, seed, kernels: the threat model, the attack's seed and its step path.
        **kwargs: constructor arguments that override the defaults.

    Raises:
        ValueError: ``name`` is not a single attack.
    """
    common = {"norm": norm, "seed": seed, "kernels": kernels}
    if name == "fgsm":
        return FGSM(model, eps, **{**common, **kwargs})
    if name in ("pgd", "mim"):
        steps = kwargs.pop("steps", 20)
        alpha = kwargs.pop("alpha", 2.5 * eps / steps)
        if name == "mim":
            kwargs.setdefault(
                "loss", MaskedReconstruction(kwargs.pop("mask_ratio", 0.75), seed=seed)
            )
        return PGD(model, eps, alpha=alpha, steps=steps, **{**common, **kwargs})
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

"""Attacks by name: :func:`build_attack` and the specs :func:`mimir_fast.evaluate` accepts.

An attack spec is a name from :data:`ATTACK_NAMES`, a dict ``{"name": ..., "label": ...,
**overrides}``, a factory ``(model, eps) -> attack`` or an attack instance (run at its own eps).
:func:`attack_kind` sorts attacks into the groups the gradient-masking checks compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Attack
from .ensemble import AUTOATTACK_VERSIONS, AutoAttack, AutoAttackL1, Ensemble, check_l1_version
from .factory import SINGLE_ATTACK_NAMES, build_single_attack, check_norm_support

__all__ = [
    "ATTACK_KINDS",
    "ATTACK_NAMES",
    "DEFAULT_ATTACKS",
    "NORMS",
    "attack_from_spec",
    "attack_kind",
    "attack_specs",
    "build_attack",
    "check_specs_norm",
]

# the single attacks, with "autoattack" where it always stood in this list
ATTACK_NAMES = (*SINGLE_ATTACK_NAMES[:8], "autoattack", *SINGLE_ATTACK_NAMES[8:])
ATTACK_KINDS = ("iterative", "single", "black", "reconstruction", "feature")
GRADIENT_FREE = ("square",)
NORMS = ("linf", "l2", "l1")  # the threat models; "l1": the L1 ball intersected with [0, 1]
# mimir_fast.evaluate's attacks=None: PGD; under L1 also AutoAttack's L1 attacks one by one
DEFAULT_ATTACKS = {"linf": ("pgd",), "l2": ("pgd",), "l1": ("pgd", "apgd-ce", "apgd-t")}
SINGLE_STEP = ("fgsm",)


def build_attack(
    name: str,
    model: Any,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    kernels: str = "auto",
    **kwargs: Any,
) -> Attack | Ensemble:
    """An attack from its name and the threat model; ``kwargs`` override the defaults.

    Single attacks come from :func:`~mimir_fast.attacks.factory.build_single_attack` (PGD-20
    with ``alpha = 2.5 eps / steps``, APGD 100 steps, Square 5000 queries, ...); "autoattack"
    (or "ensemble") is :class:`~mimir_fast.attacks.ensemble.AutoAttack`, by default its standard
    version (``version=`` one of :data:`~mimir_fast.attacks.ensemble.AUTOATTACK_VERSIONS`,
    ``attacks=[names]`` for "custom"); with ``norm="l1"`` it is
    :class:`~mimir_fast.attacks.ensemble.AutoAttackL1` (standard: APGD-CE with 5 restarts then
    APGD-T with 5 target classes, both from larger radii).

    Args:
        name: one of :data:`ATTACK_NAMES` (any case), or "ensemble" (AutoAttack).
        model: what the attack differentiates or queries.
        eps, norm, seed, kernels: the threat model, the attack's seed and its step path.
        **kwargs: constructor arguments that override the defaults.
    """
    key = name.lower()
    if key in ("autoattack", "ensemble"):
        kind = AutoAttackL1 if norm == "l1" else AutoAttack
        return kind(model, eps, norm=norm, seed=seed, kernels=kernels, **kwargs)
    if key in SINGLE_ATTACK_NAMES:
        return build_single_attack(key, model, eps, norm, seed, kernels, **kwargs)
    raise ValueError(
        f"unknown attack {name!r}; use one of {ATTACK_NAMES}, a spec dict, a factory "
        f"(model, eps) -> attack, or an attack instance (AutoAttack versions: "
        f"{AUTOATTACK_VERSIONS})"
    )


def _label_and_spec(attack: Any) -> tuple[str, Any]:
    """(label, normalised spec) of one entry of ``attacks``."""
    if isinstance(attack, str):
        if attack.lower() not in ATTACK_NAMES + ("ensemble",):
            raise ValueError(f"unknown attack {attack!r}; use one of {ATTACK_NAMES}")
        return attack.lower(), attack.lower()
    if isinstance(attack, Mapping):
        if "name" not in attack:
            raise ValueError(f"an attack spec dict needs a 'name': {dict(attack)}")
        return str(attack.get("label", attack["name"])), dict(attack)
    if isinstance(attack, (Attack, Ensemble)):
        return getattr(attack, "name", type(attack).__name__.lower()), attack
    if callable(attack):
        return getattr(attack, "__name__", "custom"), attack
    raise ValueError(f"cannot use {attack!r} as an attack")  # noqa: TRY004 (bad input is a ValueError throughout)


def attack_specs(attacks: Any) -> list[tuple[str, Any]]:
    """``[(label, spec), ...]`` from one attack spec or a list of them; labels are unique.

    Names become lower case, dicts are copied, instances and factories are kept as given.

    Args:
        attacks: a spec or a sequence of specs (see the module docstring).
    """
    if isinstance(attacks, (str, Mapping, Attack, Ensemble)) or (
        callable(attacks) and not isinstance(attacks, (list, tuple))
    ):
        attacks = [attacks]
    specs = [_label_and_spec(a) for a in attacks]
    if not specs:
        raise ValueError("attacks must name at least one attack")
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack labels must be unique (give dict specs a 'label'), got {labels}")
    return specs


def check_specs_norm(specs: list[tuple[str, Any]], norm: str) -> None:
    """Raise ValueError, before any attack runs, when a spec of :func:`attack_specs` has no
    form for ``norm``: a single attack without one (e.g. "fgsm" for "l1"), an AutoAttack
    version that needs one ("plus" for "l1"), or an attack instance built for another norm.
    Factories and unknown names are left to :func:`attack_from_spec`.
    """
    for label, spec in specs:
        if isinstance(spec, (Attack, Ensemble)):
            if spec.norm != norm:
                raise ValueError(
                    f"attack {label!r} was built for norm {spec.norm!r}, the evaluation's norm "
                    f"is {norm!r}"
                )
            continue
        if not isinstance(spec, (str, dict)):
            continue
        name = (spec if isinstance(spec, str) else str(spec["name"])).lower()
        if name in ("autoattack", "ensemble") and norm == "l1":
            options = spec if isinstance(spec, dict) else {}
            check_l1_version(options.get("version", "standard"), options.get("attacks"))
        elif name in SINGLE_ATTACK_NAMES:
            check_norm_support(name, norm)


def attack_from_spec(
    spec: Any, model: Any, eps: float | None, norm: str, seed: int, kernels: str
) -> tuple[Attack | Ensemble, float]:
    """(attack, the eps it runs at) for one spec of :func:`attack_specs` and one eps.

    An attack instance runs at its own eps (``eps`` is ignored, and may be None).
    """
    if isinstance(spec, (Attack, Ensemble)):
        return spec, spec.eps
    if isinstance(spec, str):
        return build_attack(spec, model, eps, norm, seed, kernels), eps
    if isinstance(spec, dict):
        overrides = {k: v for k, v in spec.items() if k not in ("name", "label")}
        return build_attack(spec["name"], model, eps, norm, seed, kernels, **overrides), eps
    return spec(model, eps), eps


def attack_kind(spec: Any, attack: Any) -> str:
    """One of :data:`ATTACK_KINDS`: "feature" ("pgd-feature": scored by accuracy, but its
    objective is not the classifier's, so the gradient-masking checks leave it out),
    "reconstruction" (another objective that is not classification), "black" (gradient-free),
    "single" (single-step) or "iterative"."""
    if isinstance(spec, dict):
        name = spec["name"]
    elif isinstance(spec, str):
        name = spec
    else:
        name = getattr(attack, "name", "")
    name = name.lower()
    if name == "pgd-feature":
        return "feature"
    if name == "mim" or (isinstance(attack, Attack) and not attack.objective.classification):
        return "reconstruction"
    if name in GRADIENT_FREE or getattr(attack, "uses_gradients", True) is False:
        return "black"
    if name in SINGLE_STEP:
        return "single"
    return "iterative"

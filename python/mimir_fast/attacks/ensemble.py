"""Attacks chained on the points still robust: :class:`Ensemble`, and :class:`AutoAttack` with
the compositions and budgets of Croce & Hein 2020 ("Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks") and the AutoAttack release.

AutoAttack's versions (L-inf and L2 alike; 100 iterations for every gradient attack):

- "standard": APGD-CE (no restarts), APGD-T (9 target classes), FAB-T (9 target classes),
  Square (5000 queries).
- "plus": APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square (5000 queries), then
  APGD-T and FAB-T (9 target classes, 1 restart each).
- "rand", for randomised defenses: APGD-CE and APGD-DLR, gradients averaged over 20 draws (EOT).
- "custom": the attacks named in ``attacks``; AutoAttack's own at their standard budgets, any
  other single attack by name (see :mod:`~mimir_fast.attacks.factory`) at its defaults.

:class:`AutoAttackL1` is AutoAttack on the L1 ball intersected with [0, 1] (l1-APGD, Croce &
Hein 2021, "Mind the box"). Its "standard" version has the AutoAttack release's L1 budgets:
APGD-CE with 5 restarts, then APGD-T with 5 target classes (1 restart), 100 iterations each,
both with ``large_eps_start`` (the release's ``use_largereps``: each run on the radii 3 eps,
2 eps, then eps; see :mod:`~mimir_fast.attacks.apgd`). The release's L1 standard also lists
FAB-T and Square, which have no L1 form here: they are left out.
:func:`~mimir_fast.evaluation.threats.evaluate_threats` runs this version for its L1 rows with
``attacks="autoattack"``. "rand" is unchanged (APGD-CE, APGD-DLR), "custom" takes the attacks
of :data:`~mimir_fast.attacks.factory.L1_ATTACK_NAMES` (APGD-CE and APGD-T at the L1 standard
budgets), and "plus" (FAB and Square) is refused.

Every budget that differs from the version's (an override, or EOT taken from the model's
``eot_samples``) is recorded and named by :meth:`AutoAttack.describe`, e.g.
"AutoAttack standard, Square 1000 queries", which reports use as the attack's label.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from .._validate import check_choice
from .base import Attack, attack_mode, check_images, check_labels, num_classes_of
from .factory import SINGLE_ATTACK_NAMES, build_single_attack, check_norm_support

__all__ = [
    "AUTOATTACK_VERSIONS",
    "AutoAttack",
    "AutoAttackL1",
    "Ensemble",
    "check_l1_version",
    "official_budgets",
]

_APGD = {"steps": 100, "restarts": 1, "eot_iter": 1}
_TARGETED = {"steps": 100, "n_target_classes": 9, "restarts": 1}
_SQUARE = {"n_queries": 5000}
# version -> the attacks in the order they run, each with its official budget
_OFFICIAL: dict[str, tuple[tuple[str, dict[str, int]], ...]] = {
    "standard": (
        ("apgd-ce", _APGD),
        ("apgd-t", {**_TARGETED, "eot_iter": 1}),
        ("fab-t", _TARGETED),
        ("square", _SQUARE),
    ),
    "plus": (
        ("apgd-ce", {**_APGD, "restarts": 5}),
        ("apgd-dlr", {**_APGD, "restarts": 5}),
        ("fab", {"steps": 100, "restarts": 5}),
        ("square", _SQUARE),
        ("apgd-t", {**_TARGETED, "eot_iter": 1}),
        ("fab-t", _TARGETED),
    ),
    "rand": (
        ("apgd-ce", {**_APGD, "eot_iter": 20}),
        ("apgd-dlr", {**_APGD, "eot_iter": 20}),
    ),
}
AUTOATTACK_VERSIONS = (*_OFFICIAL, "custom")
# the versions on the L1 ball: the release's L1 budgets for the attacks with an L1 form
_OFFICIAL_L1 = {
    "standard": (
        ("apgd-ce", {**_APGD, "restarts": 5, "large_eps_start": True}),
        ("apgd-t", {**_TARGETED, "n_target_classes": 5, "eot_iter": 1, "large_eps_start": True}),
    ),
    "rand": _OFFICIAL["rand"],
}
# the budgets of a "custom" version's components
_STANDARD = dict(_OFFICIAL["standard"]) | {"apgd-dlr": _APGD, "fab": {"steps": 100, "restarts": 1}}
_STANDARD_L1 = _STANDARD | dict(_OFFICIAL_L1["standard"])
# how AutoAttackL1.describe names a version's attacks: with their budgets where they matter
_L1_NOTES = {"standard": "apgd-ce 5 restarts, apgd-t 5 targets, at 3, 2, 1 eps"}
_DISPLAY = {
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "apgd-t": "APGD-T",
    "fab": "FAB",
    "fab-t": "FAB-T",
    "square": "Square",
}
_UNITS = {
    "steps": "iterations",
    "restarts": "restarts",
    "n_target_classes": "target classes",
    "n_queries": "queries",
    "eot_iter": "EOT draws",
    "large_eps_start": "large-eps start",
}


def official_budgets(version: str, norm: str = "linf") -> list[tuple[str, dict[str, int]]]:
    """``[(attack name, its budget), ...]`` of an official AutoAttack version, in run order.

    Args:
        version: "standard", "plus" or "rand" ("standard" or "rand" for norm "l1").
        norm: "linf", "l2" or "l1" (:class:`AutoAttackL1`'s versions).
    """
    check_choice(norm, "norm", ("linf", "l2", "l1"))
    if norm == "l1":
        check_l1_version(version)
    table = _OFFICIAL_L1 if norm == "l1" else _OFFICIAL
    check_choice(version, "version", tuple(table))
    return [(name, dict(budget)) for name, budget in table[version]]


def check_l1_version(version: str, attacks: Sequence[Any] | None = None) -> None:
    """Raise ValueError when AutoAttack ``version`` (and a "custom" version's ``attacks``)
    needs an attack without an L1 form: "plus" runs FAB and Square."""
    check_choice(version, "version", AUTOATTACK_VERSIONS)
    if version == "plus":
        raise ValueError(
            "AutoAttack version 'plus' runs FAB and Square, which have no form for norm 'l1'; "
            "use version 'standard' (APGD-CE, APGD-T), 'rand' or 'custom' with norm 'l1'"
        )
    for attack in attacks or ():
        if isinstance(attack, str) and attack.lower() in SINGLE_ATTACK_NAMES:
            check_norm_support(attack.lower(), "l1")


class Ensemble:
    """Run ``attacks`` in order; each sees only the points that every earlier attack failed on.

    A point counts as robust when the ``model`` (default: the first attack's model) still
    classifies it correctly; the returned batch holds, per point, the first adversarial example
    found (the clean image where none was). ``last_report`` lists, after each attack, how many
    points were attacked and the robust accuracy so far.
    """

    name = "ensemble"

    def __init__(self, attacks: Sequence[Attack], model: Any = None):
        if not attacks:
            raise ValueError("Ensemble needs at least one attack")
        self.attacks = list(attacks)
        self.model = model if model is not None else self.attacks[0].model
        self.eps = self.attacks[0].eps
        self.norm = self.attacks[0].norm
        self.last_report: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(repr(a) for a in self.attacks)}])"

    def describe(self) -> str:
        """What reports call this ensemble: its attacks in order."""
        return "ensemble of " + ", ".join(_name_of(a) for a in self.attacks)

    @property
    def label(self) -> str:
        """The same as :meth:`describe`."""
        return self.describe()

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with attack_mode(self.model):
            return self.model(x)  # (N, K)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x)
        y = check_labels(y, x.shape[0], num_classes_of(self.model)).to(x.device)
        logits = self._logits(x)
        check_labels(y, x.shape[0], logits.shape[1])  # the class count of any classifier
        robust = logits.argmax(1) == y  # (N,)
        x_adv = x.detach().clone()
        self.last_report = [
            {"attack": "clean", "attacked": 0, "robust_accuracy": robust.float().mean().item()}
        ]
        for atk in self.attacks:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            started = time.perf_counter()
            adv = atk(x[idx], y[idx])
            still = self._logits(adv).argmax(1) == y[idx]
            flipped = idx[~still]
            x_adv[flipped] = adv[~still]
            robust[flipped] = False
            self.last_report.append(
                {
                    "attack": _name_of(atk),
                    "attacked": idx.numel(),
                    "robust_accuracy": robust.float().mean().item(),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
        return x_adv


def _name_of(attack: Any) -> str:
    return getattr(attack, "name", type(attack).__name__)


class AutoAttack(Ensemble):
    """AutoAttack (Croce & Hein 2020) in one of its versions, each attack on the points still
    robust (see the module docstring for the compositions and budgets).

    Args:
        model: the classifier (or a Defended pipeline: gradients go through it with EOT).
        eps, norm: the threat model ("linf" or "l2"; "l1": :class:`AutoAttackL1`).
        steps, n_target_classes, n_queries: override the version's iterations (APGD, FAB),
            target classes (APGD-T, FAB-T) and Square queries; None keeps the version's.
        seed: seeds every component.
        kernels: the gradient attacks' projected-step path.
        eot_iter: gradients averaged per APGD step; None: the version's for "rand" (20), else
            the model's ``eot_samples`` (1 when it has none).
        version: "standard", "plus", "rand" or "custom".
        attacks: the attack names of the "custom" version.
        restarts: overrides the version's restarts of APGD and FAB.
        compile: every component runs the model through ``torch.compile`` (see
            :class:`~mimir_fast.attacks.Attack`; off by default).

    Raises:
        ValueError: an unknown version, or ``attacks`` given to another version than "custom".
    """

    name = "autoattack"
    title = "AutoAttack"  # what :meth:`describe` starts with
    norms: tuple[str, ...] = ("linf", "l2")
    _official = _OFFICIAL  # version -> its attacks and budgets
    _standard = _STANDARD  # attack name -> its budget in a "custom" version

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int | None = None,
        n_target_classes: int | None = None,
        n_queries: int | None = None,
        seed: int = 0,
        kernels: str = "auto",
        eot_iter: int | None = None,
        *,
        version: str = "standard",
        attacks: Sequence[str | Attack] | None = None,
        restarts: int | None = None,
        compile: bool | dict[str, Any] = False,
    ):
        self.version = check_choice(version, "version", AUTOATTACK_VERSIONS)
        norm = norm.lower() if isinstance(norm, str) else norm
        if norm == "l1" and "l1" not in self.norms:
            raise ValueError("norm 'l1': use AutoAttackL1, AutoAttack on the L1 ball")
        norm = check_choice(norm, "norm", self.norms)
        if norm == "l1":
            check_l1_version(self.version, attacks)
        overrides = {
            "steps": steps,
            "n_target_classes": n_target_classes,
            "n_queries": n_queries,
            "restarts": restarts,
            "eot_iter": eot_iter,
        }
        plan = _plan(self.version, attacks, overrides, self._official, self._standard)
        built = [
            spec
            if isinstance(spec, Attack)
            else build_single_attack(spec, model, eps, norm, seed, kernels, compile=compile, **run)
            for spec, _, run in plan
        ]
        super().__init__(built, model)
        officials = [official for _, official, _ in plan]
        self.budgets = [(_name_of(a), _budget_of(a, o)) for a, o in zip(built, officials)]
        self.differences = _differences(built, officials)

    def describe(self) -> str:
        """The version and every budget that differs from it, e.g.
        "AutoAttack standard, Square 1000 queries"."""
        text = f"{self.title} {self.version}"
        if self.version == "custom" or self.norm == "l1":
            names = ", ".join(_name_of(a) for a in self.attacks)
            if self.norm == "l1":
                names = _L1_NOTES.get(self.version, names)
            text += f" ({names})"
        return ", ".join([text, *self.differences])


class AutoAttackL1(AutoAttack):
    """AutoAttack on the L1 ball intersected with [0, 1]: "standard" runs APGD-CE (5 restarts)
    then APGD-T (5 target classes), l1-APGD with 100 iterations each on the radii 3 eps, 2 eps
    then eps (``large_eps_start``), the release's L1 budgets; its FAB-T and Square have no L1
    form and are left out. "rand" runs APGD-CE and APGD-DLR with 20 EOT draws, "custom" the
    attacks named (from :data:`~mimir_fast.attacks.factory.L1_ATTACK_NAMES`); "plus" needs FAB
    and Square: ValueError.

    :meth:`describe` names the attacks, for "standard" with its budgets: "AutoAttack L1
    standard (apgd-ce 5 restarts, apgd-t 5 targets, at 3, 2, 1 eps)", then any budget that
    differs, e.g. ", APGD-CE/APGD-T 10 iterations".

    Args:
        model, steps, n_target_classes, seed, kernels, eot_iter, version, attacks, restarts,
            compile: as :class:`AutoAttack`.
        eps: the L1 radius (CIFAR-10: 12).
        norm: "l1" only.
        n_queries: accepted for :class:`AutoAttack`'s signature; no L1 attack queries.
    """

    title = "AutoAttack L1"
    norms = ("l1",)
    _official = _OFFICIAL_L1
    _standard = _STANDARD_L1

    def __init__(self, model: Any, eps: float = 12.0, norm: str = "l1", *args: Any, **kwargs: Any):
        super().__init__(model, eps, norm, *args, **kwargs)


def _plan(
    version: str,
    attacks: Sequence[str | Attack] | None,
    overrides: dict[str, int | None],
    official: dict[str, tuple[tuple[str, dict[str, int]], ...]],
    standard: dict[str, dict[str, int]],
) -> list[tuple[str | Attack, dict[str, int], dict[str, Any]]]:
    """(attack name or instance, its reference budget, its constructor budget) per component,
    in run order.

    The reference budget is the version's (``standard``'s for a custom component); the
    constructor budget replaces it by the overrides given and leaves "eot_iter" out (the
    model's) outside "rand".
    """
    if version != "custom":
        if attacks is not None:
            raise ValueError(
                f"attacks= names the attacks of version='custom' only; version={version!r} "
                "runs its own"
            )
        components = [(name, dict(budget)) for name, budget in official[version]]
    else:
        specs = [_custom_name(a) for a in attacks or ()]
        if not specs:
            raise ValueError("version='custom' needs attacks=[...], at least one attack name")
        components = [(s, dict(standard.get(s, {})) if isinstance(s, str) else {}) for s in specs]
    plan = []
    for spec, official in components:
        run: dict[str, Any] = {"early_stop": True} if spec in ("fab", "fab-t") else {}
        for key, value in official.items():
            if overrides.get(key) is not None:
                run[key] = overrides[key]
            elif key != "eot_iter" or version == "rand":
                run[key] = value
        plan.append((spec, official, run))
    return plan


def _custom_name(attack: str | Attack) -> str | Attack:
    if isinstance(attack, Attack):
        return attack
    name = attack.lower() if isinstance(attack, str) else attack
    if name not in SINGLE_ATTACK_NAMES:
        raise ValueError(
            f"attacks must hold attack names from {SINGLE_ATTACK_NAMES} (or Attack instances), "
            f"got {attack!r}"
        )
    return name


def _budget_of(attack: Attack, keys: Any) -> dict[str, int]:
    """The budgets ``keys`` (those the version fixes) of a built attack (flags stay bools)."""
    values = {k: getattr(attack, k) for k in keys if hasattr(attack, k)}
    return {k: v if isinstance(v, bool) else int(v) for k, v in values.items()}


def _differences(built: list[Attack], officials: list[dict[str, int]]) -> list[str]:
    """ "APGD-CE/APGD-T 10 iterations", ...: each budget that differs from the reference one,
    grouped by budget and value, in the order of ``_UNITS``."""
    groups: dict[tuple[str, int], list[str]] = {}
    for attack, official in zip(built, officials):
        for key, value in _budget_of(attack, official).items():
            if value != official[key]:
                groups.setdefault((key, value), []).append(_DISPLAY[_name_of(attack)])
    ordered = sorted(groups.items(), key=lambda kv: (list(_UNITS).index(kv[0][0]), kv[0][1]))
    return [f"{'/'.join(names)} {value} {_UNITS[key]}" for (key, value), names in ordered]

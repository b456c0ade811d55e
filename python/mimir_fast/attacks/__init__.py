"""Adversarial attacks with torchattacks' call convention: ``x_adv = atk(x, y)``.

Gradient attacks (:class:`FGSM`, :class:`PGD`, :class:`MIFGSM`, :class:`APGD`, :class:`APGDT`,
:class:`TRADESAttack`, :class:`DIFGSM`, the minimal-norm :class:`FAB` / :class:`FABT`,
:class:`CW` and the L1 :class:`L1PGD`) share :class:`~mimir_fast.attacks.base.Attack`;
:class:`Square` (L-inf, L2) is score-based black-box; :class:`Ensemble` / :class:`AutoAttack`
chain attacks on the points still robust. Objectives other than classification live in
:mod:`mimir_fast.attacks.objectives`; attacks by name in :mod:`mimir_fast.attacks.registry`;
attacking defended pipelines (EOT, gray-/black-box) in :mod:`mimir_fast.attacks.defended`.
The purifiers and :class:`Defended` itself live in :mod:`mimir_fast.defenses` and are
re-exported here.
"""

from ..defenses import BPDA, Defended, GaussianNoise, MAEPurifier, Quantize, RandomPatchMask
from .apgd import APGD, APGDT, apgd_checkpoints
from .base import Attack, attack_mode, pgd_step
from .cw import CW
from .defended import EOT, THREATS, check_threat, gray_box_target
from .difgsm import DIFGSM
from .ensemble import AutoAttack, AutoAttackL1, Ensemble
from .fab import FAB, FABT
from .l1 import L1PGD, project_l1_box
from .objectives import (
    DLR,
    CallableObjective,
    CrossEntropy,
    FeatureDistance,
    Margin,
    MaskedReconstruction,
    MIAdaptive,
    Objective,
    TargetedDLR,
    get_objective,
)
from .pgd import FGSM, MIFGSM, PGD
from .registry import ATTACK_NAMES, build_attack
from .square import Square
from .trades import TRADESAttack

__all__ = [
    "APGD",
    "APGDT",
    "ATTACK_NAMES",
    "BPDA",
    "CW",
    "DIFGSM",
    "DLR",
    "EOT",
    "FAB",
    "FABT",
    "FGSM",
    "L1PGD",
    "MIFGSM",
    "PGD",
    "THREATS",
    "Attack",
    "AutoAttack",
    "AutoAttackL1",
    "CallableObjective",
    "CrossEntropy",
    "Defended",
    "Ensemble",
    "FeatureDistance",
    "GaussianNoise",
    "MAEPurifier",
    "MIAdaptive",
    "Margin",
    "MaskedReconstruction",
    "Objective",
    "Quantize",
    "RandomPatchMask",
    "Square",
    "TRADESAttack",
    "TargetedDLR",
    "apgd_checkpoints",
    "attack_mode",
    "build_attack",
    "check_threat",
    "get_objective",
    "gray_box_target",
    "pgd_step",
    "project_l1_box",
]

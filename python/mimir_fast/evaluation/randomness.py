"""Random pipelines are never attacked white-box without EOT by accident.

:meth:`~mimir_fast.evaluation.runner.AttackRunner.probe` tells whether the evaluated pipeline is
random (two forward passes on the same images differ); :func:`choose_eot` then fixes how many
gradients a white-box attack averages per step (Expectation over Transformation):

- ``eot_samples`` given: that count, even 1 (honoured, and warned about on a random pipeline);
- not given: the pipeline's own ``eot_samples`` (a :class:`~mimir_fast.defenses.Defended` sets
  it), except that a random pipeline left at 1 gets :data:`RAND_EOT`, the EOT count of
  AutoAttack's "rand" version.

:func:`eot_warnings` words what the report must say about it. BPDA stays the way to attack a
non-differentiable purifier (``Defended(..., bpda=True)``); it is independent of EOT.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._validate import check_int
from ..attacks.defended import EOT
from .runner import AttackRun, AttackRunner

__all__ = ["RAND_EOT", "EotChoice", "check_eot_samples", "choose_eot", "eot_warnings"]

RAND_EOT = 20  # AutoAttack's "rand" version averages 20 gradients per step


class EotChoice(NamedTuple):
    """What :func:`choose_eot` decided."""

    random: bool  # two forward passes on the same images differed
    eot_samples: int | None  # gradients averaged per white-box step (None: not white-box)
    defaulted: bool  # eot_samples was not given and a random pipeline got RAND_EOT


def check_eot_samples(eot_samples: Any) -> int | None:
    """``eot_samples`` as an int >= 1, or None (choose by the pipeline's randomness)."""
    return check_int(eot_samples, "eot_samples", low=1, allow_none=True)


def choose_eot(
    runner: AttackRunner, threat: str, eot_samples: int | None, random: bool
) -> EotChoice:
    """Set what white-box attacks differentiate (``runner.attacked``) and say what was chosen.

    Args:
        runner: the evaluation's runner; its ``attacked`` becomes ``EOT(pipeline, count)`` when
            the white-box count differs from the pipeline's own.
        threat: "white", "gray" or "black" (only white-box attacks differentiate the pipeline).
        eot_samples: the count the user asked for, or None.
        random: whether the pipeline is random (``runner.probe()``).
    """
    if threat != "white":
        return EotChoice(random, None, False)
    own = int(getattr(runner.pipeline, "eot_samples", 1))
    defaulted = eot_samples is None and random and own == 1
    count = RAND_EOT if defaulted else (own if eot_samples is None else eot_samples)
    if count != own:
        runner.attacked = EOT(runner.pipeline, count)
    return EotChoice(random, count, defaulted)


def _single_draw(attack: Any) -> bool:
    """Whether a gradient attack (or any gradient part of an ensemble) uses one draw a step."""
    parts = getattr(attack, "attacks", [attack])
    return any(
        getattr(a, "uses_gradients", False) and getattr(a, "eot_iter", 1) == 1 for a in parts
    )


def eot_warnings(choice: EotChoice, runs: list[AttackRun]) -> list[str]:
    """The report's warnings about EOT on a random pipeline attacked white-box (none else).

    Args:
        choice: what :func:`choose_eot` decided.
        runs: every attack run of the evaluation (requested and sanity).
    """
    if not choice.random or choice.eot_samples is None:
        return []
    out = []
    if choice.defaulted:
        out.append(
            "the pipeline is random (two forward passes on the same images differ) and "
            f"eot_samples was not given: white-box attacks average {RAND_EOT} gradients per step "
            "(EOT, as AutoAttack's rand version)"
        )
    single = sorted({r.label for r in runs if r.kind != "black" and _single_draw(r.attack)})
    if single:
        out.append(
            "robustness likely overstated: the pipeline is random (two forward passes on the "
            f"same images differ) but {', '.join(single)} attacked it white-box with one draw "
            f"per gradient (eot_samples=1); use eot_samples={RAND_EOT} (AutoAttack's rand "
            "version) or more"
        )
    return out

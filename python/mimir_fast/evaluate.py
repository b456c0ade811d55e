"""Robustness evaluation that cannot flatter a defense.

:func:`evaluate` measures clean accuracy, robust accuracy and attack success rate per attack
and per eps, the per-sample worst case over all attacks, PSNR/SSIM for reconstruction attacks,
and runs gradient-masking sanity checks (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; :mod:`mimir_fast.evaluation.masking_checks`) whose failures are listed under
``warnings`` in the report. A difference counts when it exceeds ``max(0.02, 2 / n_images)``.

Every random draw (attack starts, random purifiers, masks) is seeded by ``seed``, the attack
and the index of the batch, so the report depends on ``batch_size`` but not on the number of
processes (:class:`~mimir_fast.evaluation.runner.AttackRunner`).

The attacks come from :mod:`mimir_fast.attacks.registry`; the report files are written by
:func:`mimir_fast.report.write_report`.

Norms: "linf", "l2" and "l1", the L1 ball intersected with [0, 1] (:mod:`mimir_fast.attacks.l1`).
Under L1 only the attacks of :data:`~mimir_fast.attacks.factory.L1_ATTACK_NAMES` and
"autoattack" (:class:`~mimir_fast.attacks.ensemble.AutoAttackL1`: APGD-CE with 5 restarts then
APGD-T with 5 target classes, on the radii 3, 2, then 1 eps, AutoAttack's L1 budgets) exist;
any other raises ValueError before anything runs. ``attacks=None`` runs "pgd", "apgd-ce" and
"apgd-t" there, and ``eps=None`` is 12, CIFAR-10's L1 radius (Croce & Hein 2021), on 32x32
images only (:func:`~mimir_fast.evaluation.threats.default_eps`; other sizes: pass eps). FGSM
has no L1 form: no FGSM sanity checks under L1. The large eps of the "falls toward 0" check is
0.5 on every pixel, in the norm: 0.5 (L-inf), 0.5 sqrt(C H W) (L2), 0.5 C H W (L1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import distributed
from ._validate import check_choice, check_int, check_positive
from .attacks import Defended
from .attacks.base import Attack, check_images, check_labels, num_classes_of
from .attacks.defended import check_threat, gray_box_target
from .attacks.ensemble import Ensemble
from .attacks.registry import (
    ATTACK_NAMES,
    DEFAULT_ATTACKS,
    NORMS,
    attack_from_spec,
    attack_kind,
    attack_specs,
    build_attack,
    check_specs_norm,
)
from .evaluation.corruptions import (
    SEVERITIES,
    corruption_plan,
    evaluate_corruptions,
    run_corruptions,
)
from .evaluation.inputs import device_of, load_data
from .evaluation.masking_checks import (
    LARGE_EPS_ATTACK,
    MORE_STEPS_FACTOR,
    masking_warnings,
    more_steps_label,
)
from .evaluation.randomness import EotChoice, check_eot_samples, choose_eot, eot_warnings
from .evaluation.resume import open_journal, write_samples
from .evaluation.runner import AttackRun, AttackRunner, check_same_images, slowest
from .evaluation.summary import ensemble_parts, robust_accuracy_table, worst_case
from .evaluation.threats import default_eps
from .report import write_corruption_report, write_report

__all__ = ["ATTACK_NAMES", "build_attack", "evaluate", "evaluate_corruptions"]

SANITY_SALT = 10_000  # the sanity attacks' salts start here, after the requested attacks'


# ---------------------------------------------------------------------- inputs
def _check_arguments(
    threat: str, norm: str, attacks: Any, eps: Any, corruptions: Any, severities: Any
) -> tuple[list[tuple[str, Any]], list[float] | None, list[tuple[str, int]] | None]:
    """Validate the arguments before any work: the attack specs (each with a form for
    ``norm``), the eps grid, sorted (None: the default, which depends on the images), and the
    (corruption, severity) pairs to evaluate (None without corruptions)."""
    check_threat(threat)
    check_choice(norm, "norm", NORMS)
    specs = attack_specs(DEFAULT_ATTACKS[norm] if attacks is None else attacks)
    check_specs_norm(specs, norm)
    eps_list = None
    if eps is not None:
        eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
        if not eps_list:
            raise ValueError("eps must hold at least one radius")
        eps_list = sorted(check_positive(e, "every eps") for e in eps_list)
    plan = None if corruptions is None else corruption_plan(corruptions, severities)
    return specs, eps_list, plan


# ---------------------------------------------------------------------- the attacks to run
def _attack_runs(
    specs: list[tuple[str, Any]],
    attacked: Any,
    eps_list: list[float],
    norm: str,
    seed: int,
    kernels: str,
    threat: str,
) -> list[AttackRun]:
    """Every requested attack at every eps (an attack instance once, at its own eps)."""
    runs = []
    for label, spec in specs:
        fixed = isinstance(spec, (Attack, Ensemble))
        for e in [None] if fixed else eps_list:
            attack, e_run = attack_from_spec(spec, attacked, e, norm, seed, kernels)
            kind = attack_kind(spec, attack)
            if threat == "black" and kind != "black":
                raise ValueError(
                    "threat='black' allows only gradient-free attacks (e.g. 'square'), "
                    f"got {label!r}"
                )
            runs.append(AttackRun(label, spec, e_run, attack, kind))
    return runs


def _sanity_runs(
    runs: list[AttackRun],
    runner: AttackRunner,
    eps_list: list[float],
    seed: int,
    kernels: str,
    large_eps: float | None,
) -> list[AttackRun]:
    """PGD at a large eps, FGSM at every eps unless a single-step attack was requested (or the
    norm is L1), and the first requested PGD again with :data:`MORE_STEPS_FACTOR` times its
    steps at the largest eps.

    Nothing when every requested attack is a reconstruction attack.
    """
    if not any(r.kind != "reconstruction" for r in runs):
        return []
    attacked, norm = runner.attacked, runner.norm
    if large_eps is None:  # the norm of 0.5 on every pixel: 0.5, 0.5 sqrt(d), 0.5 d
        d = runner.x[0].numel()
        large_eps = {"linf": 0.5, "l2": 0.5 * math.sqrt(d), "l1": 0.5 * d}[norm]
    pgd = build_attack("pgd", attacked, large_eps, norm, seed, kernels)
    extra = [AttackRun(LARGE_EPS_ATTACK, "pgd", large_eps, pgd, "iterative")]
    # FGSM has no L1 form (a single L1 step moves one pixel): no FGSM checks under L1
    if norm != "l1" and not any(r.kind == "single" for r in runs):
        for e in eps_list:
            fgsm = build_attack("fgsm", attacked, e, norm, seed, kernels)
            extra.append(AttackRun("fgsm", "fgsm", e, fgsm, "single"))
    return extra + _more_steps_runs(runs, attacked, max(eps_list), norm, seed, kernels)


def _more_steps_runs(
    runs: list[AttackRun], attacked: Any, eps: float, norm: str, seed: int, kernels: str
) -> list[AttackRun]:
    """The first PGD requested by name, again with more steps at ``eps`` (none without one).

    Its spec keeps the other overrides and names the compared run under "fewer_steps".
    """
    for run in runs:
        spec = {"name": run.spec} if isinstance(run.spec, str) else run.spec
        if isinstance(spec, dict) and spec["name"].lower() == "pgd" and run.eps == eps:
            steps = MORE_STEPS_FACTOR * run.attack.steps
            overrides = {k: v for k, v in spec.items() if k not in ("name", "label", "steps")}
            attack = build_attack(
                "pgd", attacked, eps, norm, seed, kernels, steps=steps, **overrides
            )
            more = {**overrides, "name": "pgd", "steps": steps, "fewer_steps": run.label}
            label = more_steps_label(run.label, steps)
            return [AttackRun(label, more, eps, attack, "iterative")]
    return []


# ---------------------------------------------------------------------- the evaluation
def evaluate(
    model: Any,
    data: Any,
    attacks: Any = None,
    eps: float | Sequence[float] | None = None,
    defense: Any = None,
    threat: str = "white",
    batch_size: int = 128,
    max_images: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    norm: str = "linf",
    sanity_checks: bool = True,
    large_eps: float | None = None,
    kernels: str = "auto",
    device: str | torch.device | None = None,
    shard: bool = True,
    eot_samples: int | None = None,
    resume: bool = True,
    corruptions: Any = None,
    severities: int | Sequence[int] = SEVERITIES,
    baseline: Any = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (optionally behind ``defense``) against ``attacks`` at every ``eps``.

    Args:
        model: a classifier ``model(x) -> logits`` on images in [0, 1]; a MaskedViT for "mim".
        data: a dataset of ``(image, label)``, an ``(x, y)`` tensor pair, or a DataLoader.
        attacks: names (:data:`ATTACK_NAMES`), specs (``{"name": "pgd", "steps": 50, "label":
            "pgd-50"}``), factories ``(model, eps) -> attack`` or instances (run at their eps).
            None: "pgd"; under L1 "pgd", "apgd-ce" and "apgd-t" (AutoAttack's L1 attacks).
        eps: the radii, each > 0; None: 2/255, 4/255, 8/255, or 12 under L1 (see above).
        defense: a :class:`~mimir_fast.attacks.Defended` pipeline, or a purifier callable
            (wrapped as ``Defended(model, defense)``).
        threat: "white" (attacks differentiate the whole pipeline, with its EOT setting),
            "gray" (attacks see the classifier alone; the pipeline is evaluated) or "black"
            (only gradient-free attacks, querying the pipeline).
        batch_size, max_images: batching and the number of images used.
        out_dir: where to write ``evaluation.json``, ``evaluation.md``,
            ``robust_accuracy_vs_eps.png``, the per-image ``samples.safetensors`` and every
            finished batch (:mod:`~mimir_fast.evaluation.resume`); nothing written when None.
        seed: seeds every attack and every evaluation of a random pipeline.
        progress, norm: show a progress bar; the threat model: "linf", "l2" or "l1" (see above).
        sanity_checks: run FGSM (not under L1), a large-eps PGD and PGD-4k for the masking checks.
        large_eps: eps of the "falls toward 0" check; default: 0.5 on every pixel, in the norm.
        kernels, device: the attacks' projected-step path; where to run (default: the model's).
        shard: in a process group (e.g. ``torchrun``), split the images over the ranks: every
            rank calls ``evaluate`` with the same data and arguments and attacks whole batches
            in turn (batch ``b`` on rank ``b % world_size``); every rank returns the report one
            process would, and rank 0 alone writes ``out_dir``. False: this process alone.
        eot_samples: gradients averaged per white-box step (EOT); None: the pipeline's own, or
            20 when it is random (:mod:`~mimir_fast.evaluation.randomness`; 1 is warned about).
        resume: read back the batches a run with the same arguments finished in ``out_dir``
            (a run with other arguments there: ValueError); False: delete them, start over.
        corruptions, severities, baseline: also the accuracy under common corruptions, CE and
            mCE: :func:`evaluate_corruptions`'s report under "corruptions", its files in out_dir.

    Returns:
        The report dict (also written as JSON): ``clean_accuracy``, ``results`` (one row per
        attack and eps: ``robust_accuracy``, ``attack_success_rate`` = fraction of clean-correct
        points flipped, ``seconds``), ``robust_accuracy`` (attack -> eps -> value),
        ``worst_case`` (per eps, a point counts as robust only if every attack failed),
        ``reconstruction`` (for "mim": PSNR/SSIM between x and x_adv, and between the
        reconstructions of x and of x_adv under the same mask), ``sanity``, ``more_steps``,
        ``random_pipeline``, ``eot_samples`` and ``warnings``.
    """
    specs, eps_list, plan = _check_arguments(threat, norm, attacks, eps, corruptions, severities)
    runner, eot = _runner(
        model, data, defense, threat, batch_size, max_images, seed, norm, device, shard, eot_samples
    )
    started, eps_list = time.perf_counter(), eps_list or default_eps(norm, runner.x.shape)
    runs, extra = _plan(specs, runner, eps_list, seed, kernels, threat, sanity_checks, large_eps)
    if out_dir is not None:  # every finished batch is recorded; a rerun reads them back
        runner.journal = open_journal(out_dir, resume, model, runner, runs, extra, threat)
    clean_correct = runner.clean_correct()  # (N,)
    rows = _run_all(runner, runs, extra, clean_correct, progress)
    report = _report(runner, rows, clean_correct, eps_list, threat, defense, runs, eot, started)
    _add_corruptions(report, runner, plan, baseline, progress)
    return _write(runner, report, out_dir, clean_correct, rows.robust)


def _add_corruptions(
    report: dict[str, Any],
    runner: AttackRunner,
    plan: list[tuple[str, int]] | None,
    baseline: Any,
    progress: bool,
) -> None:
    """The accuracy of the evaluated pipeline under the corruptions of ``plan`` (none: nothing),
    under "corruptions"; every process evaluates every image."""
    if plan is not None:
        report["corruptions"] = run_corruptions(
            runner.pipeline,
            runner.x,
            runner.y,
            plan,
            baseline=baseline,
            batch_size=runner.batch_size,
            seed=runner.seed,
            progress=progress,
            defense=report["defense"],
        )


def _write(
    runner: AttackRunner,
    report: dict[str, Any],
    out_dir: str | Path | None,
    clean_correct: torch.Tensor,
    robust: dict[tuple[str, float], torch.Tensor],
) -> dict[str, Any]:
    """Write the report files and the per-image results (rank 0), once every rank is done."""
    if out_dir is not None and runner.ctx.is_main:
        write_report(report, out_dir)
        write_samples(out_dir, clean_correct, robust)
        if "corruptions" in report:
            write_corruption_report(report["corruptions"], out_dir)
    distributed.barrier(runner.ctx)  # the files exist when any rank returns
    return report


def _plan(
    specs: list[tuple[str, Any]],
    runner: AttackRunner,
    eps_list: list[float],
    seed: int,
    kernels: str,
    threat: str,
    sanity_checks: bool,
    large_eps: float | None,
) -> tuple[list[AttackRun], list[AttackRun]]:
    """The requested attack runs, and the sanity-check runs (none when unchecked or black-box)."""
    runs = _attack_runs(specs, runner.attacked, eps_list, runner.norm, seed, kernels, threat)
    if not sanity_checks or threat == "black":
        return runs, []
    return runs, _sanity_runs(runs, runner, eps_list, seed, kernels, large_eps)


def _runner(
    model: Any,
    data: Any,
    defense: Any,
    threat: str,
    batch_size: int,
    max_images: int | None,
    seed: int,
    norm: str,
    device: str | torch.device | None,
    shard: bool,
    eot_samples: int | None,
) -> tuple[AttackRunner, EotChoice]:
    """The checked images and labels on the device, the pipeline and what the attacks see, and
    the EOT setting of white-box attacks (:func:`~mimir_fast.evaluation.randomness.choose_eot`).
    ``batch_size`` and ``eot_samples`` are checked first, before the data is read.
    """
    check_int(batch_size, "batch_size", low=1)
    eot_samples = check_eot_samples(eot_samples)
    x_all, y_all = load_data(data, max_images)
    check_images(x_all)
    device = device_of(model, device)
    x_all = x_all.to(device)  # (N, C, H, W)
    pipeline = model
    if defense is not None:
        pipeline = defense if isinstance(defense, Defended) else Defended(model, defense)
    y_all = check_labels(y_all, x_all.shape[0], num_classes_of(pipeline)).to(device)  # (N,)
    attacked = gray_box_target(pipeline) if threat == "gray" else pipeline
    ctx = distributed.current() if shard else distributed.DistContext()
    if ctx.enabled:
        check_same_images(ctx, x_all, y_all)
    runner = AttackRunner(pipeline, attacked, x_all, y_all, batch_size, seed, norm, ctx)
    random, classes = runner.probe()
    check_labels(y_all, x_all.shape[0], classes)  # the class count of any classifier
    return runner, choose_eot(runner, threat, eot_samples, random)


class _Rows(NamedTuple):
    """What the attack runs produced: the report's row lists and the robust images."""

    results: list[dict[str, Any]]  # classification attacks, one row per attack and eps
    reconstruction: list[dict[str, Any]]  # reconstruction attacks
    sanity: list[dict[str, Any]]  # the sanity attacks
    more_steps: list[dict[str, Any]]  # PGD again with more steps (a "fewer_steps" key each)
    robust: dict[tuple[str, float], torch.Tensor]  # (label, eps) -> robust images (N,)


def _run_all(
    runner: AttackRunner,
    runs: list[AttackRun],
    extra: list[AttackRun],
    clean_correct: torch.Tensor,
    progress: bool,
) -> _Rows:
    """Run the requested attacks (salts 1, 2, ...), then the sanity attacks."""
    rows = _Rows([], [], [], [], {})
    with runner.progress(progress, len(runs) + len(extra)):
        for salt, run in enumerate(runs, start=1):
            row, robust = runner.run(run, salt, clean_correct)
            (rows.reconstruction if run.kind == "reconstruction" else rows.results).append(row)
            if robust is not None:
                rows.robust[(run.label, run.eps)] = robust
        for salt, run in enumerate(extra, start=SANITY_SALT):
            row = runner.run(run, salt, clean_correct)[0]
            if isinstance(run.spec, dict) and "fewer_steps" in run.spec:
                rows.more_steps.append({**row, "fewer_steps": run.spec["fewer_steps"]})
            else:
                rows.sanity.append(row)
    return rows


def _report(
    runner: AttackRunner,
    rows: _Rows,
    clean_correct: torch.Tensor,
    eps_list: list[float],
    threat: str,
    defense: Any,
    runs: list[AttackRun],
    eot: EotChoice,
    started: float,
) -> dict[str, Any]:
    """The report dict :func:`evaluate` returns (its keys in the order they are written)."""
    pipeline, n = runner.pipeline, runner.n
    tol = max(0.02, 2.0 / n)
    clean = clean_correct.float().mean().item()
    if defense is not None:
        defense = repr(pipeline.purifier if isinstance(pipeline, Defended) else defense)
    warnings = masking_warnings(
        rows.results,
        rows.sanity,
        tol,
        threat,
        more_steps=rows.more_steps,
        parts=ensemble_parts(runs),
        clean=clean,
    )
    return {
        "clean_accuracy": clean,
        "n_images": n,
        "norm": runner.norm,
        "eps": eps_list,
        "threat": threat,
        "defense": defense,
        "random_pipeline": eot.random,
        "eot_samples": eot.eot_samples,
        "seed": runner.seed,
        "results": rows.results,
        "robust_accuracy": robust_accuracy_table(rows.results),
        "worst_case": worst_case(rows.robust, clean_correct),
        "reconstruction": rows.reconstruction,
        "sanity": rows.sanity,
        "more_steps": rows.more_steps,
        "warnings": eot_warnings(eot, runs) + warnings,
        "tolerance": tol,
        "seconds": round(slowest(runner.ctx, time.perf_counter() - started), 2),
        "attacks": [f"{run.label}: {run.attack!r}" for run in runs],
        "descriptions": {
            r.label: r.attack.describe() for r in runs if hasattr(r.attack, "describe")
        },
    }

"""Robust accuracy across threat models in one call: :func:`evaluate_threats`.

One row per norm (L-inf, L2, L1) at the radius a benchmark uses, each attacked by APGD-CE
then APGD-T on the points still robust (``attacks="apgd"``, the cheaper default: 1 restart,
9 target classes, for every norm; under L1 this is not AutoAttack's L1 budget), or by
AutoAttack's standard version for that norm (``attacks="autoattack"``: APGD-CE, APGD-T, FAB-T
and Square for L-inf and L2; for L1 :class:`~mimir_fast.attacks.ensemble.AutoAttackL1`,
APGD-CE with 5 restarts then APGD-T with 5 target classes, both starting on larger radii, the
AutoAttack release's L1 budgets without its FAB-T and Square, which have no L1 form here). L1
uses l1-APGD on the L1 ball intersected with [0, 1] (:mod:`mimir_fast.attacks.l1`).

Presets (:data:`THREAT_PRESETS`):

- "cifar" (32x32 RGB, RobustBench's CIFAR-10 radii): L-inf 8/255, L2 0.5, L1 12 (the L1
  radius of Croce & Hein 2021, "Mind the box").
- "imagenet" (224x224 RGB): L-inf 4/255 and L2 4/255, the radii the MIMIR paper states for
  its ImageNet results ("RobustBench protocols"). RobustBench's ImageNet board itself is L-inf
  4/255; an L2 radius of 4/255 over 150,528 pixels is a very weak threat, so pass e.g.
  ``eps={"l2": 2.0}`` for a stronger one. No L1 radius is preset for ImageNet: pass one in
  ``eps`` to evaluate L1 there.

:func:`default_eps` gives :func:`mimir_fast.evaluate` its radii when none are passed: under L1
the "cifar" preset's 12 for 32x32 images, and none for other sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._validate import check_choice, check_int, check_positive
from ..attacks.apgd import APGD, APGDT
from ..attacks.base import attack_mode, check_images, check_labels, num_classes_of
from ..attacks.ensemble import AutoAttack, AutoAttackL1, Ensemble
from ..attacks.l1 import l1_norms

__all__ = [
    "APGD_TARGETS",
    "DEFAULT_EPS",
    "THREAT_ATTACKS",
    "THREAT_NORMS",
    "THREAT_PRESETS",
    "default_eps",
    "evaluate_threats",
    "threat_table",
]

THREAT_NORMS = ("linf", "l2", "l1")
THREAT_ATTACKS = ("apgd", "autoattack")
APGD_TARGETS = 9  # APGD-T's target classes with attacks="apgd" when none are given
THREAT_PRESETS: dict[str, dict[str, float]] = {
    "cifar": {"linf": 8 / 255, "l2": 0.5, "l1": 12.0},
    "imagenet": {"linf": 4 / 255, "l2": 4 / 255},
}
_NORM_NAMES = {"linf": "L-inf", "l2": "L2", "l1": "L1"}
DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255)  # mimir_fast.evaluate's radii under L-inf and L2


def default_eps(norm: str, shape: Sequence[int]) -> list[float]:
    """:func:`mimir_fast.evaluate`'s radii when it is given none, for images of ``shape``
    (N, C, H, W): :data:`DEFAULT_EPS` under L-inf and L2; under L1 the "cifar" preset's 12 for
    32x32 images (the radius of Croce & Hein 2021).

    Raises:
        ValueError: L1 on images of another size: no published radius, pass one.
    """
    check_choice(norm, "norm", THREAT_NORMS)
    if norm != "l1":
        return list(DEFAULT_EPS)
    height, width = shape[-2:]
    if (height, width) != (32, 32):
        raise ValueError(
            f"norm 'l1' has a default eps ({THREAT_PRESETS['cifar']['l1']:g}, CIFAR-10's) for "
            f"32x32 images only, these are {height}x{width}: pass eps, the L1 radius to evaluate"
        )
    return [THREAT_PRESETS["cifar"]["l1"]]


def _suite(
    model: Any, norm: str, eps: float, attacks: str, steps: int, targets: int | None, seed: int
) -> tuple[Ensemble, str]:
    """The attack of one row, and its name with its budget (``targets`` None: the default of
    ``attacks``)."""
    if attacks == "autoattack":
        kind = AutoAttackL1 if norm == "l1" else AutoAttack
        aa = kind(model, eps, norm, steps=steps, n_target_classes=targets, seed=seed)
        if norm == "l1":  # describe() names the budgets and what differs from them
            return aa, aa.describe()
        targets = aa.attacks[1].n_target_classes
        return aa, f"{aa.describe()} (APGD and FAB {steps} iterations, {targets} targets)"
    targets = APGD_TARGETS if targets is None else targets
    common = {"norm": norm, "steps": steps, "seed": seed}
    parts = [
        APGD(model, eps, loss="ce", **common),
        APGDT(model, eps, n_target_classes=targets, **common),
    ]
    label = f"APGD-CE + APGD-T ({targets} targets), {steps} iterations each"
    return Ensemble(parts, model), label


def _distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv.float() - x.float()).flatten(1)
    if norm == "linf":
        return d.abs().amax(1)
    return torch.linalg.vector_norm(d, dim=1) if norm == "l2" else l1_norms(d)


def _attack_row(
    model: Any, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, norm: str, eps: float,
    suite: Ensemble, batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """Robust accuracy of one norm; raises RuntimeError if an attack left the threat model."""
    started, robust = time.perf_counter(), clean.clone()
    for i in range(0, x.shape[0], batch_size):
        idx = torch.arange(i, min(i + batch_size, x.shape[0]), device=x.device)[
            clean[i : i + batch_size]
        ]
        if idx.numel() == 0:
            continue
        x_adv = suite(x[idx], y[idx])
        dist = _distance(x_adv, x[idx], norm)
        if bool((dist > eps * (1 + 1e-5) + 1e-5).any()) or x_adv.min() < 0 or x_adv.max() > 1:
            raise RuntimeError(f"the {norm} attack left the threat model (a bug)")
        with torch.no_grad(), attack_mode(model):
            robust[idx] = model(x_adv).argmax(1) == y[idx]
    n_correct = int(clean.sum())
    return {
        "norm": norm,
        "eps": eps,
        "robust_accuracy": robust.float().mean().item(),
        "attack_success_rate": 1 - int(robust.sum()) / n_correct if n_correct else float("nan"),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _load(data: Any, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the first ``max_images`` items of ``data`` (all when None)."""
    limit = check_int(max_images, "max_images", low=1, allow_none=True)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data[0], torch.as_tensor(data[1])
    elif isinstance(data, torch.utils.data.DataLoader):
        batches = []
        for xb, yb in data:
            batches.append((xb, torch.as_tensor(yb)))
            if limit is not None and sum(len(b[0]) for b in batches) >= limit:
                break
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        items = [data[i] for i in range(len(data) if limit is None else min(len(data), limit))]
        x = torch.stack([torch.as_tensor(im) for im, _ in items])  # (N, C, H, W)
        y = torch.as_tensor([int(label) for _, label in items])  # (N,)
    else:
        raise ValueError(
            "data must be a dataset of (image, label), an (x, y) tensor pair or a DataLoader"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"mismatched batch sizes: {x.shape[0]} images but {y.shape[0]} labels")
    return (x, y) if limit is None else (x[:limit], y[:limit])


def _radii(
    preset: str, norms: Sequence[str] | None, eps: Mapping[str, float] | None
) -> dict[str, float]:
    check_choice(preset, "preset", tuple(THREAT_PRESETS))
    radii = dict(THREAT_PRESETS[preset])
    for norm, value in (eps or {}).items():
        check_choice(norm, "eps", THREAT_NORMS)
        radii[norm] = check_positive(value, f"eps[{norm!r}]")
    if norms is None:
        norms = [n for n in THREAT_NORMS if n in radii]
    if isinstance(norms, str) or not norms:
        raise ValueError(f"norms must be a non-empty sequence of {THREAT_NORMS}, got {norms!r}")
    for norm in norms:
        check_choice(norm, "norms", THREAT_NORMS)
        if norm not in radii:
            raise ValueError(
                f"norms: preset {preset!r} has no {norm} radius; give one in eps={{{norm!r}: ...}}"
            )
    return {norm: radii[norm] for norm in dict.fromkeys(norms)}


def evaluate_threats(
    model: Any,
    data: Any,
    preset: str = "cifar",
    norms: Sequence[str] | None = None,
    eps: Mapping[str, float] | None = None,
    attacks: str = "apgd",
    steps: int = 100,
    n_target_classes: int | None = None,
    batch_size: int = 128,
    max_images: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Clean accuracy and robust accuracy under L-inf, L2 and L1 attacks, one row per norm.

    Args:
        model: a classifier ``model(x) -> logits`` on images in [0, 1] (>= 4 classes: APGD-T).
        data: a dataset of ``(image, label)``, an ``(x, y)`` tensor pair, or a DataLoader.
        preset: "cifar" or "imagenet": the radii of :data:`THREAT_PRESETS`.
        norms: which of "linf", "l2", "l1" to evaluate, in this order (default: the preset's
            and those given in ``eps``).
        eps: radii that replace the preset's, e.g. ``{"l2": 1.0}``.
        attacks: "apgd" (APGD-CE then APGD-T, 1 restart each; for L1 cheaper than
            AutoAttack's L1 budget) or "autoattack" (AutoAttack standard; for L1
            :class:`~mimir_fast.attacks.ensemble.AutoAttackL1`'s standard version: APGD-CE
            with 5 restarts then APGD-T with 5 target classes, on the radii 3, 2, then 1 eps).
        steps: iterations of every APGD (and FAB) run.
        n_target_classes: APGD-T's (and FAB-T's) target classes; None: 9 with "apgd",
            AutoAttack's for "autoattack" (9; 5 for L1).
        batch_size, max_images, seed, device: batching, the images used, the attacks' seed,
            where to run (default: the model's device).
        out_dir: where to write ``threats.json`` and ``threats.md``; nothing written when None.

    Returns:
        ``{"preset", "n_images", "clean_accuracy", "rows", "table"}``; each row holds "norm",
        "eps", "attack" (its name and budget), "robust_accuracy", "attack_success_rate" (the
        share of clean-correct images flipped) and "seconds"; "table" is the markdown table.
    """
    radii = _radii(preset, norms, eps)
    check_choice(attacks, "attacks", THREAT_ATTACKS)
    steps = check_int(steps, "steps", low=1)
    n_target_classes = check_int(n_target_classes, "n_target_classes", low=1, allow_none=True)
    batch_size = check_int(batch_size, "batch_size", low=1)
    x, y = _load(data, max_images)
    check_images(x)
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else "cpu"
    x = x.to(device)
    y = check_labels(y, x.shape[0], num_classes_of(model)).to(device)
    with torch.no_grad(), attack_mode(model):
        clean = (
            torch.cat(
                [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
            )
            == y
        )
    rows = []
    for norm, e in radii.items():
        suite, label = _suite(model, norm, e, attacks, steps, n_target_classes, seed)
        row = _attack_row(model, x, y, clean, norm, e, suite, batch_size)
        rows.append({"norm": norm, "eps": e, "attack": label, **row})
    report = {
        "preset": preset,
        "n_images": int(x.shape[0]),
        "clean_accuracy": clean.float().mean().item(),
        "rows": rows,
    }
    report["table"] = threat_table(report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "threats.json").write_text(json.dumps(report, indent=2))
        (out / "threats.md").write_text(report["table"])
    return report


def _eps_text(norm: str, eps: float) -> str:
    scaled = eps * 255
    if norm == "linf" and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:g}"


def threat_table(report: Mapping[str, Any]) -> str:
    """The markdown table of an :func:`evaluate_threats` report: one row per norm."""
    lines = [
        f"Threat models ({report['preset']} preset), {report['n_images']} images, "
        f"clean accuracy {100 * report['clean_accuracy']:.2f}%",
        "",
        "| norm | eps | attack | robust accuracy | attack success rate |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {_NORM_NAMES[r['norm']]} | {_eps_text(r['norm'], r['eps'])} | {r['attack']} | "
            f"{100 * r['robust_accuracy']:.2f}% | {100 * r['attack_success_rate']:.2f}% |"
        )
    return "\n".join(lines) + "\n"

"""The demo's measurements after training: the held-out pretraining checks and the robustness
table (attacks, worst case, common corruptions) of every classifier and defense."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .attacks import AutoAttack, Defended
from .data import load_digits
from .defenses import IMPurePurifier, NIMDefense
from .demo_checks import denoising_check, masked_patch_check, regional_rebuild_check
from .evaluate import evaluate
from .evaluation.masking_checks import threat_model_warnings
from .models import MaskedViT

__all__ = ["attack_specs", "pretraining_checks", "robustness_rows"]


def _stack(split: str, size: int, n: int | None = None) -> torch.Tensor:
    data = load_digits(split, image_size=size)
    count = len(data) if n is None else min(n, len(data))
    return torch.stack([data[i][0] for i in range(count)])


def pretraining_checks(
    models: dict[str, MaskedViT], runs: dict[str, Any], size: int, n_images: int
) -> dict[str, dict[str, Any]]:
    """Held-out error of every pretraining beside its image-blind baseline
    (:mod:`mimir_fast.demo_checks`), on the first ``n_images`` test digits."""
    test, train = _stack("test", size, n_images), _stack("train", size)
    out = {}
    for name, cfg in runs.items():
        model = models[name]
        if cfg.method in ("mae", "mimir"):
            out[name] = masked_patch_check(model, test, train, cfg.mask_ratio)
            out[name]["measure"] = f"masked-patch MSE at mask ratio {cfg.mask_ratio:g}"
        elif cfg.method == "nim":
            out[name] = denoising_check(model, test, train, cfg.noise)
            out[name]["measure"] = f"denoising MSE, sigma ~ {cfg.noise}"
        elif cfg.method == "impure-pretrain":
            out[name] = regional_rebuild_check(model, test, train, cfg.impure_groups)
            out[name]["measure"] = f"rebuild MSE, each patch from the other {cfg.impure_groups - 1}"
            out[name]["measure"] += " groups"
    return out


def attack_specs(model: Any, eps: float, steps: int, aa: dict[str, int]) -> dict[str, Any]:
    """The table's attacks: PGD, MIMIR's adaptive PGD-MI, the AutoAttack ensemble at the budgets
    ``aa`` (labelled "AutoAttack"; its ``description`` is :meth:`AutoAttack.describe`, which
    names every reduced budget) and Square at the ensemble's query budget."""
    return {
        "pgd": {"name": "pgd", "steps": steps, "label": f"PGD-{steps}"},
        "pgd-mi": {"name": "pgd-mi", "steps": steps, "label": f"PGD-MI-{steps}"},
        "ensemble": {"name": "autoattack", **aa, "label": "AutoAttack"},
        "description": AutoAttack(model, eps=eps, **aa).describe(),
        "square": {"name": "square", "n_queries": aa["n_queries"], "label": "Square"},
    }


def _cases(models: dict[str, MaskedViT], specs: dict[str, Any], nim_sigma: float, eot: int):
    """(row name, classifier, defense, threat, attacks) of every row."""
    pgd, ensemble, square = specs["pgd"], specs["ensemble"], specs["square"]
    nim = Defended(models["nim-classifier"], NIMDefense(models["nim"], nim_sigma), eot_samples=eot)
    impure = Defended(models["plain"], IMPurePurifier(models["impure"]), eot_samples=eot)
    cases = [
        ("plain ViT (MAE + finetuning)", models["plain"], None, "white", [pgd, ensemble]),
        ("MAE + PGD-AT", models["mae-pgd-at"], None, "white", [pgd, ensemble]),
        ("MIMIR + PGD-AT", models["mimir-pgd-at"], None, "white", [pgd, specs["pgd-mi"], ensemble]),
    ]
    for name, defense in (("NIM defense", nim), ("IMPure purifier", impure)):
        cases += [
            (name, defense.classifier, defense, "white", [pgd, ensemble]),
            (name, defense.classifier, defense, "gray", [pgd, ensemble]),
            (name, defense.classifier, defense, "black", [square]),
        ]
    return cases


def robustness_rows(
    models: dict[str, MaskedViT], out_dir: Path, settings: dict[str, Any], progress: bool
) -> list[dict[str, Any]]:
    """One row per (model, threat model): clean, PGD, PGD-MI, AutoAttack, Square, the per-image
    worst case over the row's attacks, the mean accuracy under the corruptions (on each model's
    first row: corruptions do not depend on the threat model) and the warnings that fired.

    ``settings``: eps, steps, autoattack (budgets), nim_sigma, eot_samples, eval_images,
    img_size, corruptions (names), severities.
    """
    eps, steps = settings["eps"], settings["steps"]
    specs = attack_specs(models["plain"], eps, steps, settings["autoattack"])
    cases = _cases(models, specs, settings["nim_sigma"], settings["eot_samples"])
    test = load_digits("test", image_size=settings["img_size"])
    rows, reports, seen = [], {}, set()
    for k, (name, classifier, defense, threat, attacks) in enumerate(cases):
        print(f"    {name} [{threat}]")
        first = name not in seen
        seen.add(name)
        report = evaluate(
            classifier,
            test,
            attacks=attacks,
            eps=eps,
            defense=defense,
            threat=threat,
            max_images=settings["eval_images"],
            out_dir=out_dir / "robustness" / f"{k:02d}",
            seed=0,
            progress=progress,
            sanity_checks=threat == "white",
            resume=False,  # the demo retrains its models: never resume an older evaluation
            corruptions=settings["corruptions"] if first else None,
            severities=settings["severities"],
        )
        acc = {a: v[f"{eps:.6g}"] for a, v in report["robust_accuracy"].items()}
        reports.setdefault(name, []).append(report)
        corrupted = report.get("corruptions")
        rows.append(
            {
                "model": name,
                "threat": threat + ("-box, EOT" if threat == "white" and defense else "-box"),
                "clean": report["clean_accuracy"],
                f"PGD-{steps}": acc.get(f"PGD-{steps}"),
                f"PGD-MI-{steps}": acc.get(f"PGD-MI-{steps}"),
                "AutoAttack": acc.get("AutoAttack"),
                "Square": acc.get("Square"),
                "worst case": report["worst_case"][0]["robust_accuracy"],
                "corruptions": corrupted["mean_accuracy"] if corrupted else None,
                "warnings": len(report["warnings"]),
            }
        )
    for row in (r for r in rows if r["threat"] == "black-box"):  # across one model's reports
        across = threat_model_warnings(reports[row["model"]])
        row["warnings"] += len(across)
        for warning in across:
            print(f"    warning: {row['model']}: {warning}")
    return rows

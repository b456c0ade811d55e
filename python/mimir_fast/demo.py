"""The end-to-end demo: the papers' comparison at a small scale, on the embedded digits data.

Runs offline on the CPU and writes a report folder. Stages (each a ``train(...)`` run folder
with metrics, checkpoints and the model):

1. ``mae/``, ``mimir/``, ``nim/``: MAE, MIMIR and NIM pretraining of the same small ViT;
   ``mae-pixels/``: MAE predicting raw pixels (no per-patch normalisation), for IMPure.
2. ``plain/``: standard finetuning of the MAE encoder (the undefended classifier);
   ``mae-pgd-at/``, ``mimir-pgd-at/``: PGD-AT finetuning of the MAE and MIMIR encoders;
   ``nim-classifier/``: finetuning of the NIM encoder on denoised images (NIM's recipe).
3. ``impure/``: an IMPure purifier (started from the pixel MAE: it must rebuild hidden
   patches, which NIM's autoencoder never learned) trained on adversarial examples against
   the plain classifier.
4. ``robustness/``: one table of clean / PGD / ensemble / Square robust accuracy and the
   per-sample worst case over the row's attacks. Classifiers
   are attacked white-box; the two defenses (NIM: add noise and denoise, then the NIM
   classifier; IMPure: purify, then the plain classifier) white-box through the whole random
   pipeline with EOT, gray-box (attacks see the classifier alone) and black-box (Square).

Also ``reconstructions.png`` (MAE and MIMIR), ``purification.png`` (clean, adversarial,
denoised, purified), ``loss_curves.png``, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from .attacks import PGD, Defended
from .data import load_digits
from .defenses import IMPurePurifier, NIMDefense
from .evaluate import evaluate
from .evaluation.masking_checks import threat_model_warnings
from .models import MaskedViT
from .report import (
    format_table,
    plot_loss_curves,
    save_image_grid,
    save_reconstruction_grid,
    write_json,
)
from .training import TrainConfig, TrainResult, train

__all__ = ["DemoPlan", "demo_plan", "run_demo"]

# A small ViT for the 8x8 digits shown at 16x16: patch 4 -> 16 tokens, 4 visible at mask ratio 0.75.
DEMO_MODEL = "vit_tiny_patch4_32"
DEMO_MODEL_OVERRIDES = {
    "img_size": 16,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "decoder_embed_dim": 64,
    "decoder_depth": 1,
    "decoder_num_heads": 4,
}

EPS = 8 / 255  # the L-inf radius of every attack in the demo (training and evaluation)
ROBUSTNESS_IMAGES = 64  # held-out digits attacked per model
NIM_SIGMA = 50.0  # test-time noise of the NIM defense (0..255 scale)
EOT_SAMPLES = 4  # gradients averaged per white-box attack step on the random defenses
TRAIN_ATTACK = {
    "attack_eps": EPS,
    "attack_step": 3 / 255,
    "attack_steps": 3,
}  # PGD-AT / IMPure in the demo


@dataclasses.dataclass
class DemoPlan:
    """Every training run of the demo, in order, keyed by its folder name."""

    runs: dict[str, TrainConfig]
    eval_images: int
    attack_steps: int  # PGD iterations of the evaluation


def demo_plan(out_dir: Path, quick: bool = False) -> DemoPlan:
    """The demo's settings (``quick``: a few steps per stage, for a smoke test)."""
    pre_epochs, fine_epochs, impure_epochs = (1, 5, 1) if quick else (30, 15, 10)
    common = dict(
        data="digits",
        batch_size=64,
        weight_decay=0.05,
        augment="none",
        log_every=5,
        eval_every=0,
        checkpoint_every=5,
    )

    def pretrain(
        method: str, name: str | None = None, overrides: dict[str, Any] | None = None, **kw: Any
    ) -> TrainConfig:
        return TrainConfig(
            method=method,
            model=DEMO_MODEL,
            model_overrides={**DEMO_MODEL_OVERRIDES, **(overrides or {})},
            epochs=pre_epochs,
            blr=1.5e-3,
            warmup_epochs=1 if quick else 3,
            out_dir=str(out_dir / (name or method)),
            **common,
            **kw,
        )

    def finetune(name: str, start: str, **kw: Any) -> TrainConfig:
        return TrainConfig(
            method="finetune",
            pretrained=str(out_dir / start / "model.safetensors"),
            epochs=fine_epochs,
            blr=3e-3,
            warmup_epochs=0.5 if quick else 2,
            layer_decay=0.85,
            drop_path=0.1,
            label_smoothing=0.1,
            out_dir=str(out_dir / name),
            **common,
            **kw,
        )

    runs = {
        "mae": pretrain("mae"),
        "mimir": pretrain("mimir"),
        "nim": pretrain("nim"),
        "mae-pixels": pretrain("mae", "mae-pixels", {"norm_pix_loss": False}),
        "plain": finetune("plain", "mae"),
        "mae-pgd-at": finetune("mae-pgd-at", "mae", adversarial="pgd", **TRAIN_ATTACK),
        "mimir-pgd-at": finetune("mimir-pgd-at", "mimir", adversarial="pgd", **TRAIN_ATTACK),
        "nim-classifier": finetune(
            "nim-classifier",
            "nim",
            denoiser=str(out_dir / "nim" / "model.safetensors"),
            denoise_noise=f"uniform:0,{NIM_SIGMA:g}",
        ),
        "impure": TrainConfig(
            method="impure",
            pretrained=str(out_dir / "mae-pixels" / "model.safetensors"),
            classifier=str(out_dir / "plain" / "model.safetensors"),
            epochs=impure_epochs,
            blr=1e-3,
            warmup_epochs=1 if quick else 0.5,
            out_dir=str(out_dir / "impure"),
            **TRAIN_ATTACK,
            **common,
        ),
    }
    return DemoPlan(
        runs, eval_images=16 if quick else ROBUSTNESS_IMAGES, attack_steps=3 if quick else 10
    )


def _robustness(
    models: dict[str, MaskedViT], plan: DemoPlan, out_dir: Path, progress: bool
) -> list[dict[str, Any]]:
    """Evaluate every classifier and defense; one row per (model, threat model)."""
    steps = plan.attack_steps
    pgd = {"name": "pgd", "steps": steps, "label": f"PGD-{steps}"}
    ensemble = {
        "name": "autoattack",
        "steps": 5,
        "n_target_classes": 3,
        "n_queries": 100,
        "label": "ensemble",
    }
    square = {"name": "square", "n_queries": 100, "label": "Square"}
    nim = Defended(
        models["nim-classifier"], NIMDefense(models["nim"], NIM_SIGMA), eot_samples=EOT_SAMPLES
    )
    impure = Defended(models["plain"], IMPurePurifier(models["impure"]), eot_samples=EOT_SAMPLES)
    cases = [  # (row name, classifier, defense, threat, attacks)
        ("plain ViT (MAE + finetuning)", models["plain"], None, "white", [pgd, ensemble]),
        ("MAE + PGD-AT", models["mae-pgd-at"], None, "white", [pgd, ensemble]),
        ("MIMIR + PGD-AT", models["mimir-pgd-at"], None, "white", [pgd, ensemble]),
    ]
    for name, defense in (("NIM defense", nim), ("IMPure purifier", impure)):
        cases += [
            (name, defense.classifier, defense, "white", [pgd, ensemble]),
            (name, defense.classifier, defense, "gray", [pgd, ensemble]),
            (name, defense.classifier, defense, "black", [square]),
        ]
    rows, reports = [], {}
    test = load_digits("test", image_size=DEMO_MODEL_OVERRIDES["img_size"])
    for k, (name, classifier, defense, threat, attacks) in enumerate(cases):
        label = f"{name} [{threat}]"
        print(f"    {label}")
        report = evaluate(
            classifier,
            test,
            attacks=attacks,
            eps=EPS,
            defense=defense,
            threat=threat,
            max_images=plan.eval_images,
            out_dir=out_dir / "robustness" / f"{k:02d}",
            seed=0,
            progress=progress,
            sanity_checks=threat == "white",
            resume=False,  # the demo retrains its models: never resume an older evaluation
        )
        acc = {a: v[f"{EPS:.6g}"] for a, v in report["robust_accuracy"].items()}
        reports.setdefault(name, []).append(report)
        rows.append(
            {
                "model": name,
                "threat": threat + ("-box, EOT" if threat == "white" and defense else "-box"),
                "clean": report["clean_accuracy"],
                f"PGD-{steps}": acc.get(f"PGD-{steps}"),
                "ensemble": acc.get("ensemble"),
                "Square": acc.get("Square"),
                "worst case": report["worst_case"][0]["robust_accuracy"],
                "warnings": len(report["warnings"]),
            }
        )
    for row in (r for r in rows if r["threat"] == "black-box"):  # across one model's reports
        across = threat_model_warnings(reports[row["model"]])
        row["warnings"] += len(across)
        for warning in across:
            print(f"    warning: {row['model']}: {warning}")
    return rows


def _percent(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _train_runs(
    plan: DemoPlan, progress: bool
) -> tuple[dict[str, TrainResult], dict[str, MaskedViT], dict[str, float]]:
    """Every training run of the plan, in order: (results, models on the CPU, seconds)."""
    results, models, seconds = {}, {}, {}
    for k, (name, cfg) in enumerate(plan.runs.items()):
        print(f"[{k + 1}/{len(plan.runs) + 1}] {cfg.method} -> {cfg.out_dir} ({cfg.epochs} epochs)")
        t0 = time.perf_counter()
        results[name] = train(dataclasses.replace(cfg, progress=progress))
        seconds[name] = round(time.perf_counter() - t0, 1)
        models[name] = results[name].model.cpu().eval()
    return results, models, seconds


def _save_figures(
    models: dict[str, MaskedViT], results: dict[str, TrainResult], out_dir: Path
) -> None:
    """MAE vs MIMIR reconstructions, what the two defenses make of an attacked digit, and the
    loss curves."""
    test = load_digits("test", image_size=DEMO_MODEL_OVERRIDES["img_size"])
    images = torch.stack([test[i][0] for i in range(8)])  # (8, 1, 16, 16)
    labels = torch.tensor([test[i][1] for i in range(8)])  # (8,)
    for name in ("mae", "mimir"):
        save_reconstruction_grid(
            models[name], images, out_dir / f"reconstructions-{name}.png", mask_ratio=0.75
        )
    torch.manual_seed(0)
    x_adv = PGD(models["plain"], eps=EPS, alpha=2 / 255, steps=10)(images, labels)
    with torch.no_grad():
        denoised = NIMDefense(models["nim"], NIM_SIGMA)(x_adv)
        purified = IMPurePurifier(models["impure"])(x_adv)
    save_image_grid(
        [("clean", images), ("PGD-10", x_adv), ("NIM denoised", denoised), ("IMPure", purified)],
        out_dir / "purification.png",
        title=f"attacked at eps {EPS * 255:.0f}/255",
    )
    plot_loss_curves({name: r.history for name, r in results.items()}, out_dir / "loss_curves.png")


def _summary_text(
    plan: DemoPlan,
    rows: list[dict[str, Any]],
    results: dict[str, TrainResult],
    seconds: dict[str, float],
) -> str:
    """The report's two tables: robust accuracy, and the training runs."""
    table_rows = [
        {
            **r,
            **{
                c: _percent(r[c])
                for c in ("clean", f"PGD-{plan.attack_steps}", "ensemble", "Square", "worst case")
            },
        }
        for r in rows
    ]
    training = [
        {
            "run": name,
            "method": plan.runs[name].method,
            "epochs": plan.runs[name].epochs,
            "seconds": seconds[name],
            "held-out": ", ".join(f"{k} {v:.4g}" for k, v in results[name].final_metrics.items()),
        }
        for name in plan.runs
    ]
    return (
        f"Robust accuracy at eps {EPS * 255:.0f}/255 (L-inf) on {plan.eval_images} held-out "
        "digits\n\n" + format_table(table_rows) + "\n\nTraining runs\n\n" + format_table(training)
    )


def _summary(
    plan: DemoPlan,
    rows: list[dict[str, Any]],
    results: dict[str, TrainResult],
    seconds: dict[str, float],
    quick: bool,
    total_seconds: float,
) -> dict[str, Any]:
    """What ``summary.json`` holds."""
    return {
        "robustness": rows,
        "training": {n: r.final_metrics for n, r in results.items()},
        "test_accuracy": results["plain"].final_metrics["accuracy"],
        "chance_accuracy": 0.1,
        "seconds": total_seconds,
        "stage_seconds": seconds,
        "quick": quick,
        "settings": {
            "model": DEMO_MODEL,
            "model_overrides": DEMO_MODEL_OVERRIDES,
            "eps": EPS,
            "eval_images": plan.eval_images,
            "eval_pgd_steps": plan.attack_steps,
            "nim_sigma": NIM_SIGMA,
            "eot_samples": EOT_SAMPLES,
            "runs": {n: c.to_dict() for n, c in plan.runs.items()},
        },
    }


def run_demo(
    out_dir: str | Path = "mimir-fast-demo", quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run every stage of the comparison on the digits and write and print the report.

    Args:
        out_dir: the report folder (each training run gets a subfolder).
        quick: a few steps per stage, for a smoke test.
        progress: show progress bars.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = demo_plan(out_dir, quick)
    started = time.perf_counter()
    results, models, seconds = _train_runs(plan, progress)

    print(
        f"[{len(plan.runs) + 1}/{len(plan.runs) + 1}] robustness at eps {EPS * 255:.0f}/255 on "
        f"{plan.eval_images} held-out digits"
    )
    t0 = time.perf_counter()
    rows = _robustness(models, plan, out_dir, progress)
    seconds["robustness"] = round(time.perf_counter() - t0, 1)
    _save_figures(models, results, out_dir)

    total_seconds = round(time.perf_counter() - started, 1)
    summary = _summary(plan, rows, results, seconds, quick, total_seconds)
    write_json(summary, out_dir / "summary.json")
    text = _summary_text(plan, rows, results, seconds)
    (out_dir / "summary.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\n{summary['seconds']:.0f} s; report in {out_dir}/")
    return summary

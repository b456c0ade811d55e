"""The end-to-end demo: the papers' comparison at a small scale, on the embedded digits data.

Runs offline on the CPU and writes a report folder. Stages (each a ``train(...)`` run folder
with metrics, checkpoints and the model):

1. ``mae/``, ``mimir/``, ``nim/``: MAE, MIMIR and NIM pretraining of the same small ViT;
   ``impure-pretrain/``: IMPure's autoencoder pretraining (every patch group rebuilt from the
   others, pixel L1).
2. ``plain/``: standard finetuning of the MAE encoder (the undefended classifier);
   ``mae-pgd-at/``, ``mimir-pgd-at/``: PGD-AT finetuning of the MAE and MIMIR encoders;
   ``nim-classifier/``: finetuning of the NIM encoder on denoised images (NIM's recipe).
3. ``impure/``: the IMPure purifier, from ``impure-pretrain``, trained on IMPure's attack mix
   (eps 16/255) against the plain classifier.
4. Pretraining checks: each pretraining's held-out error beside an image-blind baseline
   (:mod:`mimir_fast.demo_checks`).
5. ``robustness/``: one table of clean / PGD / PGD-MI (MIMIR's adaptive attack, on the MIMIR
   model) / AutoAttack (its reduced budgets named) / Square robust accuracy, the per-sample
   worst case over the row's attacks and the mean accuracy under the 14 common corruptions.
   Classifiers are attacked white-box; the two defenses (NIM: add noise and denoise, then the
   NIM classifier; IMPure: purify, then the plain classifier) white-box through the whole
   random pipeline with EOT, gray-box (attacks see the classifier alone) and black-box
   (Square).

Also ``reconstructions-*.png`` (original, masked, rebuilt: MAE, MIMIR, IMPure's autoencoder),
``purification.png`` (clean, adversarial, denoised, purified), ``loss_curves.png``,
``summary.json`` and ``summary.md`` (every setting, the pretraining checks, stage seconds).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from ._validate import check_int
from .attacks import PGD
from .data import CORRUPTIONS, load_digits
from .defenses import IMPurePurifier, NIMDefense
from .demo_eval import attack_specs, pretraining_checks, robustness_rows
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

EPS = 8 / 255  # the L-inf radius of every evaluation attack and of PGD-AT
ROBUSTNESS_IMAGES = 64  # held-out digits attacked per model
CHECK_IMAGES = 364  # held-out digits of the pretraining checks (the whole test split)
NIM_SIGMA = 50.0  # test-time noise of the NIM defense (0..255 scale)
EOT_SAMPLES = 4  # gradients averaged per white-box attack step on the random defenses
PRETRAIN_BLR = 6e-3  # 4x MAE's 1.5e-3: at 1.5e-3 the short runs stay near the mean patch
TRAIN_ATTACK = {
    "attack_eps": EPS,
    "attack_step": 3 / 255,
    "attack_steps": 3,
}  # PGD-AT in the demo (the papers: 10 steps of 2/255)
# IMPure's training attacks: the paper's eps 16/255 and its mix less CW-L2 (50 Adam steps per
# image, the mix's costliest) and DeepFool (not in the library); 4 iterations of 4/255
IMPURE_ATTACKS = ["clean", "fgsm", "pgd", "mifgsm", "difgsm", "mdifgsm", "apgd-ce", "apgd-dlr"]
IMPURE_TRAIN = {"impure_attacks": IMPURE_ATTACKS, "attack_steps": 4}
# the AutoAttack budgets of the table (the standard version: 100 iterations, 9 targets,
# 5000 Square queries); AutoAttack.describe() names each reduction in the table's label
AUTOATTACK = {"steps": 10, "n_target_classes": 3, "n_queries": 200}
CORRUPTION_SEVERITIES = [3]  # every corruption of mimir_fast.data.CORRUPTIONS at severity 3
# epochs of the full demo (quick: 1 epoch of at most 3 steps per run)
EPOCHS = {"mae": 40, "mimir": 40, "nim": 20, "impure-pretrain": 25, "finetune": 10, "impure": 4}


@dataclasses.dataclass
class DemoPlan:
    """Every training run of the demo, in order, keyed by its folder name."""

    runs: dict[str, TrainConfig]
    eval_images: int
    attack_steps: int  # PGD iterations of the evaluation
    autoattack: dict[str, int]
    check_images: int  # held-out digits of the pretraining checks


def demo_plan(out_dir: Path, quick: bool = False) -> DemoPlan:
    """The demo's settings (``quick``: a few steps per stage, a smoke test of every stage)."""
    epochs = dict.fromkeys(EPOCHS, 1) if quick else EPOCHS
    common = dict(
        data="digits",
        batch_size=64,
        weight_decay=0.05,
        augment="none",
        log_every=5,
        eval_every=0,
        checkpoint_every=5,
        max_steps=3 if quick else None,
    )

    def pretrain(method: str, epochs: int, **kw: Any) -> TrainConfig:
        return TrainConfig(
            method=method,
            model=DEMO_MODEL,
            model_overrides=DEMO_MODEL_OVERRIDES,
            epochs=epochs,
            blr=PRETRAIN_BLR,
            warmup_epochs=0.5 if quick else 3,
            out_dir=str(out_dir / method),
            **{**common, **kw},
        )

    def finetune(name: str, start: str, **kw: Any) -> TrainConfig:
        return TrainConfig(
            method="finetune",
            pretrained=str(out_dir / start / "model.safetensors"),
            epochs=epochs["finetune"],
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
        "mae": pretrain("mae", epochs["mae"]),
        "mimir": pretrain("mimir", epochs["mimir"]),
        "nim": pretrain("nim", epochs["nim"]),
        # batch 16 at lr 1.5e-3: 4x the steps of batch 64 for the same compute (at batch 64
        # the rebuild stayed above the mean image's error after 12 epochs)
        "impure-pretrain": pretrain(
            "impure-pretrain", epochs["impure-pretrain"], batch_size=16, lr=1.5e-3
        ),
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
            pretrained=str(out_dir / "impure-pretrain" / "model.safetensors"),
            classifier=str(out_dir / "plain" / "model.safetensors"),
            epochs=epochs["impure"],
            blr=1e-3,
            warmup_epochs=0.5,
            out_dir=str(out_dir / "impure"),
            **IMPURE_TRAIN,
            **common,
        ),
    }
    small = {"steps": 2, "n_target_classes": 2, "n_queries": 10}
    return DemoPlan(
        runs,
        eval_images=8 if quick else ROBUSTNESS_IMAGES,
        attack_steps=2 if quick else 10,
        autoattack=small if quick else AUTOATTACK,
        check_images=32 if quick else CHECK_IMAGES,
    )


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
    # IMPure's autoencoder at the purifier's share hidden: 1/k of the patches
    save_reconstruction_grid(
        models["impure-pretrain"], images, out_dir / "reconstructions-impure-pretrain.png", 0.25
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


def _table_columns(plan: DemoPlan) -> tuple[str, ...]:
    steps = plan.attack_steps
    return (
        "clean",
        f"PGD-{steps}",
        f"PGD-MI-{steps}",
        "AutoAttack",
        "Square",
        "worst case",
        "corruptions",
    )


def _checks_table(checks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "run": name,
            "held-out measure": c["measure"],
            "model": f"{c['mse']:.4f}",
            "baseline": f"{c['baseline_mse']:.4f} ({c['baseline']})",
            "model / baseline": f"{c['ratio']:.2f}",
        }
        for name, c in checks.items()
    ]


def _summary_text(
    plan: DemoPlan,
    rows: list[dict[str, Any]],
    results: dict[str, TrainResult],
    seconds: dict[str, float],
    checks: dict[str, dict[str, Any]],
    aa_label: str,
) -> str:
    """The report's tables: robust accuracy, the pretraining checks and the training runs."""
    table_rows = [{**r, **{c: _percent(r[c]) for c in _table_columns(plan)}} for r in rows]
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
    severities = ", ".join(str(s) for s in CORRUPTION_SEVERITIES)
    return (
        f"Robust accuracy at eps {EPS * 255:.0f}/255 (L-inf) on {plan.eval_images} held-out "
        f"digits. AutoAttack: {aa_label}. corruptions: mean accuracy over "
        f"{len(CORRUPTIONS)} corruptions at severity {severities}.\n\n"
        + format_table(table_rows)
        + f"\n\nPretraining checks on {plan.check_images} held-out digits (MSE; the baseline "
        "ignores the image)\n\n"
        + format_table(_checks_table(checks))
        + "\n\nTraining runs\n\n"
        + format_table(training)
    )


def _settings(plan: DemoPlan, aa_label: str) -> dict[str, Any]:
    return {
        "model": DEMO_MODEL,
        "model_overrides": DEMO_MODEL_OVERRIDES,
        "eps": EPS,
        "eval_images": plan.eval_images,
        "eval_pgd_steps": plan.attack_steps,
        "autoattack": {**plan.autoattack, "label": aa_label},
        "corruptions": list(CORRUPTIONS),
        "corruption_severities": CORRUPTION_SEVERITIES,
        "check_images": plan.check_images,
        "nim_sigma": NIM_SIGMA,
        "eot_samples": EOT_SAMPLES,
        "impure_training_attacks": {
            "attacks": IMPURE_ATTACKS,
            "left_out": {"cw": "for time", "deepfool": "not in the library"},
        },
        "runs": {n: c.to_dict() for n, c in plan.runs.items()},
    }


def run_demo(
    out_dir: str | Path = "mimir-fast-demo",
    quick: bool = False,
    progress: bool = True,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Run every stage of the comparison on the digits and write and print the report.

    Args:
        out_dir: the report folder (each training run gets a subfolder).
        quick: a few steps per stage, for a smoke test.
        progress: show progress bars.
        threads: PyTorch's CPU threads during the demo (restored after); None keeps the
            current setting. One by default: float sums depend on the thread count, so one
            thread gives the README's table on any machine, and on 2 shared cores it trained
            about 10x faster than PyTorch's default of 2.
    """
    if threads is None:
        return _run_demo(Path(out_dir), quick, progress)
    before = torch.get_num_threads()
    torch.set_num_threads(check_int(threads, "threads", 1))
    try:
        return _run_demo(Path(out_dir), quick, progress)
    finally:
        torch.set_num_threads(before)


def _run_demo(out_dir: Path, quick: bool, progress: bool) -> dict[str, Any]:
    """:func:`run_demo` at the thread count already set."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = demo_plan(out_dir, quick)
    started = time.perf_counter()
    results, models, seconds = _train_runs(plan, progress)
    size = DEMO_MODEL_OVERRIDES["img_size"]

    stages = len(plan.runs) + 1
    print(f"[{stages}/{stages}] checks and robustness at eps {EPS * 255:.0f}/255")
    t0 = time.perf_counter()
    pretrained = {n: c for n, c in plan.runs.items() if c.method != "finetune" and n != "impure"}
    checks = pretraining_checks(models, pretrained, size, plan.check_images)
    seconds["pretraining checks"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    settings = {
        "eps": EPS,
        "steps": plan.attack_steps,
        "autoattack": plan.autoattack,
        "nim_sigma": NIM_SIGMA,
        "eot_samples": EOT_SAMPLES,
        "eval_images": plan.eval_images,
        "img_size": size,
        "corruptions": list(CORRUPTIONS),
        "severities": CORRUPTION_SEVERITIES,
    }
    rows = robustness_rows(models, out_dir, settings, progress)
    seconds["robustness"] = round(time.perf_counter() - t0, 1)
    _save_figures(models, results, out_dir)

    aa_label = attack_specs(models["plain"], EPS, plan.attack_steps, plan.autoattack)
    aa_label = aa_label["description"]
    summary = {
        "robustness": rows,
        "pretraining_checks": checks,
        "training": {n: r.final_metrics for n, r in results.items()},
        "test_accuracy": results["plain"].final_metrics["accuracy"],
        "chance_accuracy": 0.1,
        "seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": seconds,
        "quick": quick,
        "settings": _settings(plan, aa_label),
    }
    write_json(summary, out_dir / "summary.json")
    text = _summary_text(plan, rows, results, seconds, checks, aa_label)
    (out_dir / "summary.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\n{summary['seconds']:.0f} s; report in {out_dir}/")
    return summary

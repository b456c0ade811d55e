"""The end-to-end demo: MAE pretraining, finetuning and a robustness evaluation, on the
embedded digits data.

Runs offline in a few minutes on 2 CPU cores and writes a report folder:
``pretrain/`` and ``finetune/`` run folders (metrics, checkpoints, models), ``robustness/``
(evaluation JSON, markdown and robust-accuracy-versus-eps plot), ``reconstructions.png``,
``loss_curves.png``, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .data import load_digits
from .evaluate import evaluate
from .report import format_table, plot_loss_curves, save_reconstruction_grid, write_json
from .train import TrainConfig, train

# A small ViT for 32x32 single-channel digits: patch 4 -> 64 tokens, 16 visible at mask ratio 0.75.
DEMO_MODEL = "vit_tiny_patch4_32"
# The decoder is smaller than MIMIR's (128 wide, 2 deep) to keep the demo within minutes.
DEMO_MODEL_OVERRIDES = {"embed_dim": 128, "depth": 4, "num_heads": 4,
                        "decoder_embed_dim": 64, "decoder_depth": 1, "decoder_num_heads": 4}


# The robustness check: L-inf radii and how many held-out digits are attacked.
ROBUSTNESS_EPS = (2 / 255, 8 / 255)
ROBUSTNESS_IMAGES = 64


def demo_configs(out_dir: Path, quick: bool = False) -> tuple[TrainConfig, TrainConfig]:
    """The pretraining and finetuning settings of the demo (``quick``: a smoke-test version)."""
    pretrain = TrainConfig(
        method="mae", model=DEMO_MODEL, model_overrides=DEMO_MODEL_OVERRIDES, data="digits",
        epochs=2 if quick else 20, batch_size=64, blr=1.5e-3, warmup_epochs=1 if quick else 3,
        weight_decay=0.05, mask_ratio=0.75, augment="crop",
        out_dir=str(out_dir / "pretrain"), log_every=5, eval_every=5, checkpoint_every=5,
    )
    finetune = TrainConfig(
        method="finetune", pretrained=str(out_dir / "pretrain" / "model.safetensors"), data="digits",
        epochs=2 if quick else 15, batch_size=64, blr=3e-3, warmup_epochs=1 if quick else 2,
        weight_decay=0.05, layer_decay=0.85, drop_path=0.1, label_smoothing=0.1, augment="crop",
        out_dir=str(out_dir / "finetune"), log_every=5, eval_every=1, checkpoint_every=5,
    )
    return pretrain, finetune


def run_demo(out_dir: str | Path = "mimir-fast-demo", quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pretrain an MAE and finetune it as a classifier on the digits; write and print a report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pretrain_cfg, finetune_cfg = demo_configs(out_dir, quick)
    pretrain_cfg.progress = finetune_cfg.progress = progress
    started = time.perf_counter()

    print(f"[1/3] MAE pretraining on digits ({pretrain_cfg.epochs} epochs) -> {pretrain_cfg.out_dir}")
    pre = train(pretrain_cfg)
    print(f"[2/3] finetuning the pretrained encoder ({finetune_cfg.epochs} epochs) -> {finetune_cfg.out_dir}")
    fin = train(finetune_cfg)

    print("[3/3] robustness of the finetuned classifier: clean vs PGD-10 vs the AutoAttack-style ensemble")
    robust = evaluate(
        fin.model.cpu(), load_digits("test"),
        attacks=[{"name": "pgd", "steps": 10, "label": "PGD-10"},
                 {"name": "autoattack", "steps": 5, "n_target_classes": 3, "n_queries": 100,
                  "label": "ensemble (APGD-CE, APGD-T, Square)"}],
        eps=ROBUSTNESS_EPS, max_images=32 if quick else ROBUSTNESS_IMAGES, out_dir=out_dir / "robustness",
        progress=progress, seed=0)

    test_images = torch.stack([load_digits("test")[i][0] for i in range(8)])
    save_reconstruction_grid(pre.model.cpu(), test_images, out_dir / "reconstructions.png",
                             mask_ratio=pretrain_cfg.mask_ratio)
    plot_loss_curves({"MAE pretraining": pre.history, "finetuning": fin.history}, out_dir / "loss_curves.png")

    rows = [
        {"stage": "MAE pretraining", "epochs": pretrain_cfg.epochs,
         "held-out masked-patch loss": pre.final_metrics["loss"], "held-out accuracy": "-"},
        {"stage": "finetuning", "epochs": finetune_cfg.epochs,
         "held-out masked-patch loss": "-", "held-out accuracy": f"{100 * fin.final_metrics['accuracy']:.1f}%"},
    ]
    for name, accs in robust["robust_accuracy"].items():
        rows.append({"stage": f"robust accuracy: {name}", "epochs": "-", "held-out masked-patch loss": "-",
                     "held-out accuracy": ", ".join(f"{100 * acc:.1f}% at {float(eps) * 255:.0f}/255"
                                                   for eps, acc in accs.items())})
    summary = {
        "pretrain": pre.final_metrics, "finetune": fin.final_metrics,
        "test_accuracy": fin.final_metrics["accuracy"], "chance_accuracy": 0.1,
        "robustness": {"images": robust["n_images"], "clean": robust["clean_accuracy"],
                       "robust_accuracy": robust["robust_accuracy"], "warnings": robust["warnings"]},
        "seconds": round(time.perf_counter() - started, 1), "quick": quick,
        "settings": {"model": DEMO_MODEL, "model_overrides": DEMO_MODEL_OVERRIDES,
                     "pretrain": pretrain_cfg.to_dict(), "finetune": finetune_cfg.to_dict()},
    }
    write_json(summary, out_dir / "summary.json")
    table = format_table(rows)
    (out_dir / "summary.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nheld-out accuracy {100 * summary['test_accuracy']:.1f}% (chance 10%), "
          f"{summary['seconds']:.0f} s; report in {out_dir}/")
    return summary

"""``TrainConfig``: every setting of a training run, each field's type and range checked once.

Every field is also a ``mimir-fast`` command-line flag; its ``metadata["help"]`` is the flag's
help text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._config_types import check_field_types, option
from .._validate import check_choice
from ..data.augmentations import AUGMENTATIONS
from ..hsic import ESTIMATORS as HSIC_ESTIMATORS
from ..methods.impure_mix import DEFAULT_IMPURE_ATTACKS, IMPURE_ATTACKS
from ..methods.mimir import ATTACK_TARGETS
from ..noise import parse_sigma_spec

__all__ = ["ADVERSARIAL", "AMP", "DISTRIBUTED", "LOADERS", "TrainConfig"]

LOADERS = ("auto", "native", "torch")
ADVERSARIAL = ("none", "pgd", "trades")
DISTRIBUTED = ("ddp", "fsdp")
AMP = ("auto", "bf16", "off")


@dataclass
class TrainConfig:
    """Everything a training run needs. Every field is also a ``mimir-fast`` CLI flag."""

    method: str = option(
        "mae",
        '"mae", "mimir", "nim" or "impure-pretrain" (pretraining), "finetune", "impure" '
        "(purifier training)",
    )
    model: str = option("vit_tiny_patch4_32", "preset name (see mimir_fast.list_models())")
    model_overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "MaskedViTConfig fields to change"}
    )
    pretrained: str | None = option(None, "MaskedViT file or checkpoint to start from (finetuning)")
    data: str = option(
        "digits", '"digits", "cifar:PATH", "imagefolder:PATH" or "npy:IMAGES[,LABELS]"'
    )
    epochs: int = option(10, "passes over the training set")
    batch_size: int = option(
        64,
        "images per optimizer step on each process (torchrun: the global batch is N times this)",
    )
    lr: float | None = option(None, "peak learning rate; None: blr * global batch size / 256")
    blr: float = option(1.5e-4, "base learning rate (MAE's linear scaling rule)")
    min_lr: float = option(0.0, "floor of the cosine schedule")
    warmup_epochs: float = option(1.0, "linear lr warmup length, in epochs (may be fractional)")
    weight_decay: float = option(0.05, "AdamW decay (none on norms, biases, tokens)")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas (MAE's)")
    layer_decay: float = option(1.0, "layer-wise lr decay (0.65 is MIMIR's finetuning value)")
    clip_grad: float | None = option(None, "max gradient norm; None disables clipping")
    mask_ratio: float = option(0.75, "fraction of patches removed (MAE)")
    noise: str = option(
        "gamma:25,3",
        'NIM sigma per image, 0..255 scale: "gamma:K,THETA", "uniform:A,B", "constant:V"',
    )
    drop_path: float = option(0.0, "stochastic depth while finetuning")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing while finetuning")
    denoiser: str | None = option(
        None, "NIM autoencoder file: finetune on its denoised images (NIM's recipe)"
    )
    denoise_noise: str = option(
        "uniform:0,30", "sigma of the noise added before denoising, while finetuning"
    )
    adversarial: str = option(
        "none",
        'finetuning on adversarial examples: "none", "pgd" (PGD-AT, Madry) or "trades" (TRADES)',
    )
    attack_eps: float = option(
        8 / 255,
        "L-inf budget of the training-time attack (MIMIR, PGD-AT, TRADES; IMPure: impure_eps)",
    )
    attack_step: float | None = option(
        None,
        "its step size; None: the method's default (MIMIR 10/255, IMPure impure_eps/4, others "
        "2/255)",
    )
    attack_steps: int | None = option(
        None, "its iterations; None: the method's default (MIMIR 1, others 10)"
    )
    attack_target: str = option(
        "adversarial",
        'MIMIR: the attack reconstructs "adversarial" (the attacked image itself, as the '
        'authors\' code: every pixel is attacked) or "clean" (masked pixels keep their random '
        "start)",
    )
    trades_beta: float = option(6.0, "TRADES weight of the KL(clean || adversarial) term")
    hsic_weight: float = option(1e-5, "MIMIR's lambda on HSIC(x_adv, latent); 0 disables the term")
    hsic_estimator: str = option("nocca", '"nocca" (MIMIR\'s), "biased", "unbiased" or "cka"')
    hsic_gather: bool = option(
        False,
        "distributed: HSIC over the batch gathered from all ranks (default: per rank, as MIMIR)",
    )
    distributed: str = option(
        "ddp",
        'under torchrun: "ddp" (whole model on every rank) or "fsdp" (weights, gradients, '
        "optimizer state sharded)",
    )
    classifier: str | None = option(
        None,
        "IMPure: the classifier (MaskedViT file) whose adversarial examples train the purifier",
    )
    impure_groups: int = option(4, "IMPure: patch groups k of the regional intersection")
    impure_eps: float = option(
        16 / 255, "IMPure: L-inf budget of the training attacks (the paper's 16/255)"
    )
    impure_attacks: list[str] = field(
        default_factory=lambda: list(DEFAULT_IMPURE_ATTACKS),
        metadata={
            "help": "IMPure: the attacks drawn per training image, uniformly (the authors' mix "
            f"less DeepFool); any of {', '.join(IMPURE_ATTACKS)}"
        },
    )
    impure_pixel_weight: float = option(1.0, "IMPure: weight of the pixel L1 loss")
    impure_feature_weights: list[float] = field(
        default_factory=lambda: [30.0, 10.0, 10.0],
        metadata={
            "help": "IMPure: perceptual L1 weights, one per tensor of the feature network, or one "
            "for all (the paper: 30 10 10 on three VGG19-BN layers)"
        },
    )
    impure_features: str | None = option(
        None,
        "IMPure: the frozen perceptual network: none (the classifier's three taps), a MaskedViT "
        'file, "timm:NAME:WEIGHTS_FILE" (local weights, no download) or a registered name',
    )
    augment: str = option(
        "crop_flip",
        '"crop_flip" (random crop, 4 px padding, + h-flip), "crop", "flip", "rrc_flip", "rrc" '
        '(random-resized-crop: native loader only), "none"',
    )
    loader: str = option(
        "auto",
        '"native" (the Rust loader), "torch" (plain PyTorch), "auto": native where the data allows',
    )
    amp: str = option("auto", '"auto": bf16 autocast on CUDA, fp32 on CPU; "bf16"; "off"')
    device: str = option("auto", '"auto", "cpu", "cuda", "cuda:1", ...')
    kernels: str = option("auto", 'MaskedViT fast path: "auto", "torch" or "triton"')
    seed: int = option(0, "seeds weights, data order, masks and augmentation")
    num_workers: int = option(0, "DataLoader worker processes")
    out_dir: str = option("runs/mae", "folder for metrics, checkpoints and the final model")
    log_every: int = option(10, "steps between metric records")
    eval_every: int = option(1, "epochs between held-out evaluations (0: only at the end)")
    checkpoint_every: int = option(1, "epochs between checkpoints (0: only at the end)")
    checkpoint_steps: int = option(0, "also checkpoint every this many steps (0: off)")
    resume: str | None = option(
        None, 'checkpoint path, or "auto" for OUT_DIR/checkpoint-last.safetensors'
    )
    max_steps: int | None = option(
        None, "stop after this many steps (the schedule still spans all epochs)"
    )
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_field_types(self)
        self.betas = tuple(self.betas)  # JSON/TOML give lists
        self.impure_attacks = _name_list(self.impure_attacks)
        if isinstance(self.impure_feature_weights, (int, float)):
            self.impure_feature_weights = [self.impure_feature_weights]
        elif isinstance(self.impure_feature_weights, tuple):
            self.impure_feature_weights = list(self.impure_feature_weights)
        problems = _optimizer_problems(self) + _method_problems(self) + _run_problems(self)
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}; known: {sorted(known)}")
        return cls(**d)


def _name_list(value: Any) -> Any:
    """A list of names from a list, a tuple or a comma-separated string (else unchanged)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value) if isinstance(value, tuple) else value


def _problem(check: Callable[..., Any], *args: Any) -> list[str]:
    """The message of the ValueError ``check(*args)`` raises, as a one-item list, or []."""
    try:
        check(*args)
    except ValueError as e:
        return [str(e)]
    return []


def _optimizer_problems(c: TrainConfig) -> list[str]:
    """Problems with the length of the run, the learning-rate schedule and AdamW."""
    problems = []
    if c.epochs < 1:
        problems.append(f"epochs must be >= 1, got {c.epochs}")
    if c.batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {c.batch_size}")
    if c.lr is not None and not c.lr > 0:
        problems.append(f"lr must be > 0, got {c.lr}")
    if not c.blr > 0:
        problems.append(f"blr must be > 0, got {c.blr}")
    if c.min_lr < 0 or c.weight_decay < 0 or c.warmup_epochs < 0:
        problems.append("min_lr, weight_decay and warmup_epochs must be >= 0")
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        problems.append(f"betas must be two numbers in [0, 1), got {c.betas}")
    if not 0 < c.layer_decay <= 1:
        problems.append(f"layer_decay must be in (0, 1], got {c.layer_decay}")
    if c.clip_grad is not None and not c.clip_grad > 0:
        problems.append(f"clip_grad must be > 0 or None, got {c.clip_grad}")
    return problems


def _method_problems(c: TrainConfig) -> list[str]:
    """Problems with the settings the methods read (masking, noise, attacks, HSIC, IMPure)."""
    problems = []
    if not 0 <= c.mask_ratio < 1:
        problems.append(f"mask_ratio must be in [0, 1), got {c.mask_ratio}")
    for spec in (c.noise, c.denoise_noise):
        problems += _problem(parse_sigma_spec, spec)
    if not 0 <= c.drop_path < 1:
        problems.append(f"drop_path must be in [0, 1), got {c.drop_path}")
    if not 0 <= c.label_smoothing < 1:
        problems.append(f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    problems += _problem(check_choice, c.adversarial, "adversarial", ADVERSARIAL)
    if not 0 <= c.attack_eps <= 1:
        problems.append(f"attack_eps must be in [0, 1] (images are in [0, 1]), got {c.attack_eps}")
    if c.attack_step is not None and not 0 < c.attack_step <= 1:
        problems.append(f"attack_step must be in (0, 1] or None, got {c.attack_step}")
    if c.attack_steps is not None and c.attack_steps < 1:
        problems.append(f"attack_steps must be >= 1 or None, got {c.attack_steps}")
    if not c.trades_beta >= 0 or not c.hsic_weight >= 0:
        problems.append(
            f"trades_beta and hsic_weight must be >= 0, got {c.trades_beta}, {c.hsic_weight}"
        )
    problems += _problem(check_choice, c.hsic_estimator, "hsic_estimator", HSIC_ESTIMATORS)
    problems += _problem(check_choice, c.attack_target, "attack_target", ATTACK_TARGETS)
    return problems + _impure_problems(c)


def _impure_problems(c: TrainConfig) -> list[str]:
    """Problems with IMPure's settings (groups, attacks, loss weights)."""
    problems = []
    if c.impure_groups < 2:
        problems.append(f"impure_groups must be >= 2, got {c.impure_groups}")
    if not 0 < c.impure_eps <= 1:
        problems.append(f"impure_eps must be in (0, 1] (images are in [0, 1]), got {c.impure_eps}")
    attacks = list(c.impure_attacks) if isinstance(c.impure_attacks, (list, tuple)) else None
    if not attacks or any(a not in IMPURE_ATTACKS for a in attacks):
        problems.append(
            f"impure_attacks must be a non-empty list of {IMPURE_ATTACKS}, got {c.impure_attacks!r}"
        )
    if not (isinstance(c.impure_pixel_weight, (int, float)) and c.impure_pixel_weight >= 0):
        problems.append(f"impure_pixel_weight must be >= 0, got {c.impure_pixel_weight!r}")
    weights = c.impure_feature_weights
    if (
        not isinstance(weights, (list, tuple))
        or not weights
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
        or not all(w >= 0 for w in weights)
    ):
        problems.append(
            f"impure_feature_weights must be a non-empty list of numbers >= 0, got {weights!r}"
        )
    return problems


def _run_problems(c: TrainConfig) -> list[str]:
    """Problems with how the run is carried out: processes, data path, logging, checkpoints."""
    problems = []
    problems += _problem(check_choice, c.distributed, "distributed", DISTRIBUTED)
    problems += _problem(check_choice, c.augment, "augment", AUGMENTATIONS)
    problems += _problem(check_choice, c.loader, "loader", LOADERS)
    problems += _problem(check_choice, c.amp, "amp", AMP)
    if c.log_every < 1 or c.eval_every < 0 or c.checkpoint_every < 0 or c.checkpoint_steps < 0:
        problems.append(
            "log_every must be >= 1; eval_every, checkpoint_every, checkpoint_steps >= 0"
        )
    if c.max_steps is not None and c.max_steps < 1:
        problems.append(f"max_steps must be >= 1 or None, got {c.max_steps}")
    if c.num_workers < 0:
        problems.append(f"num_workers must be >= 0, got {c.num_workers}")
    return problems

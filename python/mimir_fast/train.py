"""``mimir_fast.train``: one loop for pretraining and finetuning every method.

The loop owns data order, AdamW with no-decay groups and layer-wise lr decay, per-iteration
warmup + cosine, AMP (bf16 on CUDA), gradient clipping, logging, atomic checkpoints and
resume; a :class:`~mimir_fast.methods.Method` owns the per-step loss.

Determinism: every step reseeds torch from ``(seed, step)`` and every epoch shuffles from
``(seed, epoch)``, so a resumed run sees the same batches, masks and augmentations as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from . import distributed
from ._io import atomic_save_tensors, atomic_write, load_tensors
from .data import build_dataset
from .data.augmentations import crop_with_padding_and_flip
from .hsic import ESTIMATORS as HSIC_ESTIMATORS
from .methods import Batch, Method, get_method
from .models import MaskedViT, create_model
from .noise import parse_sigma_spec

CHECKPOINT_FORMAT = "mimir_fast.checkpoint/1"
CHECKPOINT_NAME = "checkpoint-last.safetensors"
MODEL_NAME = "model.safetensors"
AUGMENTATIONS = (
    "crop_flip",
    "crop",
    "flip",
    "rrc_flip",
    "none",
)  # rrc_flip: random-resized-crop, native only
LOADERS = ("auto", "native", "torch")
ADVERSARIAL = ("none", "pgd", "trades")
DISTRIBUTED = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """Everything a training run needs. Every field is also a ``mimir-fast`` CLI flag."""

    method: str = (
        "mae"  # "mae", "mimir" or "nim" (pretraining), "finetune", "impure" (purifier training)
    )
    model: str = "vit_tiny_patch4_32"  # preset name (see mimir_fast.list_models())
    model_overrides: dict[str, Any] = field(
        default_factory=dict
    )  # MaskedViTConfig fields to change
    pretrained: str | None = None  # MaskedViT file or checkpoint to start from (finetuning)
    data: str = "digits"  # "digits", "cifar:PATH", "imagefolder:PATH" or "npy:IMAGES[,LABELS]"
    epochs: int = 10  # passes over the training set
    batch_size: int = (
        64  # images per optimizer step on each process (torchrun: the global batch is N times this)
    )
    lr: float | None = None  # peak learning rate; None: blr * global batch size / 256
    blr: float = 1.5e-4  # base learning rate (MAE's linear scaling rule)
    min_lr: float = 0.0  # floor of the cosine schedule
    warmup_epochs: float = 1.0  # linear lr warmup length, in epochs (may be fractional)
    weight_decay: float = 0.05  # AdamW decay (none on norms, biases, tokens)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (MAE's)
    layer_decay: float = 1.0  # layer-wise lr decay (0.65 is MIMIR's finetuning value)
    clip_grad: float | None = None  # max gradient norm; None disables clipping
    mask_ratio: float = 0.75  # fraction of patches removed (MAE)
    noise: str = "gamma:25,3"  # NIM sigma per image, 0..255 scale: "gamma:K,THETA", "uniform:A,B", "constant:V"
    drop_path: float = 0.0  # stochastic depth while finetuning
    label_smoothing: float = 0.0  # cross-entropy label smoothing while finetuning
    denoiser: str | None = (
        None  # NIM autoencoder file: finetune on its denoised images (NIM's recipe)
    )
    denoise_noise: str = (
        "uniform:0,30"  # sigma of the noise added before denoising, while finetuning
    )
    adversarial: str = "none"  # finetuning on adversarial examples: "none", "pgd" (PGD-AT, Madry) or "trades" (TRADES)
    attack_eps: float = (
        8 / 255
    )  # L-inf budget of the training-time attack (MIMIR, PGD-AT, TRADES, IMPure)
    attack_step: float | None = (
        None  # its step size; None: the method's default (MIMIR 10/255, others 2/255)
    )
    attack_steps: int | None = (
        None  # its iterations; None: the method's default (MIMIR 1, others 10)
    )
    trades_beta: float = 6.0  # TRADES weight of the KL(clean || adversarial) term
    hsic_weight: float = 1e-5  # MIMIR's lambda on HSIC(x_adv, latent); 0 disables the term
    hsic_estimator: str = "nocca"  # "nocca" (MIMIR's), "biased", "unbiased" or "cka"
    hsic_gather: bool = False  # distributed: HSIC over the batch gathered from all ranks (default: per rank, as MIMIR)
    distributed: str = "ddp"  # under torchrun: "ddp" (whole model on every rank) or "fsdp" (weights, gradients, optimizer state sharded)
    classifier: str | None = (
        None  # IMPure: the classifier (MaskedViT file) whose adversarial examples train the purifier
    )
    impure_groups: int = 4  # IMPure: patch groups k of the regional intersection
    augment: str = "crop_flip"  # "crop_flip" (random crop, 4 px padding, + h-flip), "crop", "flip", "rrc_flip", "none"
    loader: str = "auto"  # "native" (the Rust loader), "torch" (plain PyTorch), "auto": native where the data allows
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16"; "off"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    kernels: str = "auto"  # MaskedViT fast path: "auto", "torch" or "triton"
    seed: int = 0  # seeds weights, data order, masks and augmentation
    num_workers: int = 0  # DataLoader worker processes
    out_dir: str = "runs/mae"  # folder for metrics, checkpoints and the final model
    log_every: int = 10  # steps between metric records
    eval_every: int = 1  # epochs between held-out evaluations (0: only at the end)
    checkpoint_every: int = 1  # epochs between checkpoints (0: only at the end)
    checkpoint_steps: int = 0  # also checkpoint every this many steps (0: off)
    resume: str | None = None  # checkpoint path, or "auto" for OUT_DIR/checkpoint-last.safetensors
    max_steps: int | None = None  # stop after this many steps (the schedule still spans all epochs)
    progress: bool = True  # show a progress bar

    def __post_init__(self) -> None:
        _check_field_types(self)
        self.betas = tuple(self.betas)  # JSON/TOML give lists
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not self.blr > 0:
            problems.append(f"blr must be > 0, got {self.blr}")
        if self.min_lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            problems.append("min_lr, weight_decay and warmup_epochs must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.layer_decay <= 1:
            problems.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            problems.append(f"clip_grad must be > 0 or None, got {self.clip_grad}")
        if not 0 <= self.mask_ratio < 1:
            problems.append(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for spec in (self.noise, self.denoise_noise):
            try:
                parse_sigma_spec(spec)
            except ValueError as e:
                problems.append(str(e))
        if not 0 <= self.drop_path < 1:
            problems.append(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.adversarial not in ADVERSARIAL:
            problems.append(f"adversarial must be one of {ADVERSARIAL}, got {self.adversarial!r}")
        if not 0 <= self.attack_eps <= 1:
            problems.append(
                f"attack_eps must be in [0, 1] (images are in [0, 1]), got {self.attack_eps}"
            )
        if self.attack_step is not None and not 0 < self.attack_step <= 1:
            problems.append(f"attack_step must be in (0, 1] or None, got {self.attack_step}")
        if self.attack_steps is not None and self.attack_steps < 1:
            problems.append(f"attack_steps must be >= 1 or None, got {self.attack_steps}")
        if not self.trades_beta >= 0 or not self.hsic_weight >= 0:
            problems.append(
                f"trades_beta and hsic_weight must be >= 0, got {self.trades_beta}, {self.hsic_weight}"
            )
        if self.hsic_estimator not in HSIC_ESTIMATORS:
            problems.append(
                f"hsic_estimator must be one of {HSIC_ESTIMATORS}, got {self.hsic_estimator!r}"
            )
        if self.impure_groups < 2:
            problems.append(f"impure_groups must be >= 2, got {self.impure_groups}")
        if self.distributed not in DISTRIBUTED:
            problems.append(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.loader not in LOADERS:
            problems.append(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.amp not in ("auto", "bf16", "off"):
            problems.append(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        if (
            self.log_every < 1
            or self.eval_every < 0
            or self.checkpoint_every < 0
            or self.checkpoint_steps < 0
        ):
            problems.append(
                "log_every must be >= 1; eval_every, checkpoint_every, checkpoint_steps >= 0"
            )
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
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


def _check_field_types(config: TrainConfig) -> None:
    """Every field holds a value of its annotated type (ints are accepted for floats; no NaN/inf)."""
    from .cli import parse_annotation  # the CLI reads the same annotations to build its flags

    kinds = {
        "int": (int,),
        "float": (int, float),
        "str": (str,),
        "bool": (bool,),
        "dict": (dict,),
        "tuple": (tuple, list),
    }
    problems = []
    for f in dataclasses.fields(config):
        value, flag = getattr(config, f.name), parse_annotation(f.type)
        allowed = kinds.get(flag.base)
        if allowed is None or (value is None and flag.optional):
            continue
        ok = isinstance(value, allowed) and (flag.base == "bool" or not isinstance(value, bool))
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if ok and flag.base == "tuple":
            ok = len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
        if not ok:
            problems.append(f"{f.name} must be {str(f.type).replace('|', 'or')}, got {value!r}")
    if problems:
        raise ValueError("invalid TrainConfig: " + "; ".join(problems))


@dataclass
class TrainResult:
    model: MaskedViT
    history: list[dict[str, Any]]  # every record written to metrics.jsonl
    final_metrics: dict[str, float]  # held-out metrics at the end
    out_dir: Path
    steps: int


# ---------------------------------------------------------------------- schedule
def learning_rate(
    step: int, total_steps: int, warmup_steps: int, peak: float, floor: float
) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then half-cosine down to ``floor``."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The torch seed used for step ``step`` of a run seeded ``seed``, on process ``rank``."""
    return (seed * 1_000_003 + step + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: Path,
    model: MaskedViT,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    epoch: int,
) -> Path:
    """Write model + optimizer state + progress to one safetensors file, atomically."""
    return _write_checkpoint(
        path, model.state_dict(), optimizer.state_dict(), model, config, step, epoch
    )


def _write_checkpoint(
    path: Path,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    model: MaskedViT,
    config: TrainConfig,
    step: int,
    epoch: int,
) -> Path:
    """The checkpoint file of full state dicts (optimizer state keyed by parameter index)."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    for idx, state in optim_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: v for k, v in g.items()} for g in optim_state["param_groups"]]
    return atomic_save_tensors(
        tensors,
        path,
        metadata={
            "format": CHECKPOINT_FORMAT,
            "config": model.config.to_dict(),
            "train_config": config.to_dict(),
            "step": step,
            "epoch": epoch,
            "optimizer_groups": groups,
        },
    )


def load_checkpoint(
    path: str | os.PathLike, model: MaskedViT, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> int:
    """Restore model and optimizer from ``path``; returns the step to continue from.

    Raises:
        ValueError: the file is corrupt, or was written by a run with another method, model
            architecture or optimizer layout.
    """
    model_state, optim_state, step = _read_checkpoint(path, model, config)
    model.load_weights(model_state, source=str(path))
    _load_optimizer_state(path, optimizer, optim_state)
    return step


def _read_checkpoint(
    path: str | os.PathLike, model: MaskedViT, config: TrainConfig
) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """(model state, optimizer state keyed by parameter index, step) of a checkpoint this run may
    resume from."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a mimir-fast training checkpoint (format {meta.get('format')!r})"
        )
    missing = [k for k in ("train_config", "config", "step", "optimizer_groups") if k not in meta]
    if (
        missing
        or not isinstance(meta["train_config"], dict)
        or not isinstance(meta["optimizer_groups"], list)
        or not all(isinstance(g, dict) and "params" in g for g in meta["optimizer_groups"])
    ):
        raise ValueError(
            f"checkpoint {path} is damaged: its metadata lacks {missing or 'a valid optimizer layout'}"
        )
    saved = meta["train_config"]
    for key in ("method", "batch_size", "epochs"):
        if saved.get(key) != getattr(config, key):
            raise ValueError(
                f"checkpoint {path} was written with {key}={saved.get(key)!r} but this run has "
                f"{key}={getattr(config, key)!r}; resume with the same settings or start afresh"
            )
    if meta["config"] != model.config.to_dict():
        diff = {
            k: (v, model.config.to_dict().get(k))
            for k, v in meta["config"].items()
            if model.config.to_dict().get(k) != v
        }
        raise ValueError(
            f"checkpoint {path} holds a different model architecture: {diff} (file vs run)"
        )
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = (key.split(".", 2) + ["", ""])[:3]
            if not idx.isdigit() or not name:
                raise ValueError(
                    f"checkpoint {path} is damaged: unexpected optimizer entry {key!r}"
                )
            state.setdefault(int(idx), {})[name] = value
    optim_state = {"state": state, "param_groups": meta["optimizer_groups"]}
    return _strip_prefix(tensors), optim_state, int(meta["step"])


def _check_optimizer_layout(
    path: str | os.PathLike, optim_state: dict[str, Any], optimizer: torch.optim.Optimizer
) -> None:
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in optim_state["param_groups"]] != [
        len(g["params"]) for g in current
    ]:
        raise ValueError(
            f"checkpoint {path} has an optimizer layout that does not match this model"
        )
    # Every parameter's state holds the same entries (AdamW: step, exp_avg, exp_avg_sq).
    entries = {frozenset(v) for v in optim_state["state"].values()}
    n_params = sum(len(g["params"]) for g in current)
    if (
        len(entries) > 1
        or any("step" not in e for e in entries)
        or any(i >= n_params for i in optim_state["state"])
    ):
        raise ValueError(
            f"checkpoint {path} is damaged: inconsistent optimizer state entries "
            f"{sorted(sorted(e) for e in entries)}"
        )


def _load_optimizer_state(
    path: str | os.PathLike, optimizer: torch.optim.Optimizer, optim_state: dict[str, Any]
) -> None:
    """Check a checkpoint's optimizer state (keyed by parameter index) and load it."""
    _check_optimizer_layout(path, optim_state, optimizer)
    try:
        optimizer.load_state_dict(optim_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ValueError(
            f"checkpoint {path} has damaged optimizer state: {type(e).__name__}: {e}"
        ) from e


# ---------------------------------------------------------------------- data
def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([s[0] for s in samples])
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)
    return images, labels


def _epoch_batches(
    dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    skip: int,
    num_workers: int,
    shuffle: bool = True,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of one epoch in an order fixed by (seed, epoch), starting after ``skip`` batches.

    With ``world_size > 1`` rank ``r`` takes every ``world_size``-th sample of the order: equal
    shards of ``n // world_size`` when training (``drop_last``), all samples when evaluating.
    """
    n = len(dataset)
    if shuffle:
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)
        ).tolist()
    else:
        order = list(range(n))
    if world_size > 1:
        order = order[: n - n % world_size if drop_last else n][rank::world_size]
        n = len(order)
    stop = n - n % batch_size if drop_last else n
    batches = [order[i : i + batch_size] for i in range(0, stop, batch_size)][skip:]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate
    )
    yield from loader


def _native_loader(
    dataset,
    config: TrainConfig,
    method: Method,
    model: MaskedViT,
    device: torch.device,
    ctx: distributed.DistContext,
):
    """The Rust loader for ``dataset``, or None where the plain PyTorch path must serve."""
    from .data import ArrayDataset, ImageFolder
    from .data.loader import Loader

    native_ok = isinstance(dataset, (ArrayDataset, ImageFolder))
    if config.loader == "torch" or (config.loader == "auto" and not native_ok):
        if config.augment == "rrc_flip":
            raise ValueError(
                "augment='rrc_flip' needs the native loader (loader='native' or 'auto' with "
                "array or image-folder data)"
            )
        return None
    if not native_ok:
        raise ValueError(
            f"loader='native' reads arrays (ArrayDataset, CIFAR, digits, .npy) and image folders, "
            f"not {type(dataset).__name__}; use loader='torch'"
        )
    sigma = parse_sigma_spec(config.noise) if method.loader_sigma else None
    threads = config.num_workers or None
    if threads is None and ctx.enabled:  # share the cores between the processes of this node
        threads = max(
            1,
            (os.cpu_count() or 1)
            // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))),
        )
    return Loader.from_dataset(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        drop_last=True,
        augment=config.augment,
        num_masks=method.loader_masks,
        mask_ratio=config.mask_ratio,
        patch_size=model.config.patch_size,
        sigma=sigma,
        output="uint8" if device.type == "cuda" else "float",
        pin_memory=device.type == "cuda",
        num_threads=threads,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )


def _train_batches(
    loader,
    dataset,
    config: TrainConfig,
    epoch: int,
    skip: int,
    device: torch.device,
    ctx: distributed.DistContext,
) -> Iterator[Batch]:
    """The training batches of ``epoch`` after the first ``skip``, on ``device``, augmented."""
    if loader is not None:
        loader.set_epoch(epoch, start_batch=skip)
        for b in loader:
            images = b.images.to(device, non_blocking=True)
            if images.dtype == torch.uint8:
                images = images.float().div_(255.0)
            extras = {}
            for i, (ids_keep, _, _) in enumerate(
                b.masks
            ):  # masks for the method: ids_keep, ids_keep_1, ...
                extras["ids_keep" if i == 0 else f"ids_keep_{i}"] = ids_keep.to(
                    device, non_blocking=True
                )
            if b.sigma is not None:
                extras["sigma"] = b.sigma.to(device, non_blocking=True)
            yield Batch(images, b.labels.to(device, non_blocking=True), extras)
        return
    for images, labels in _epoch_batches(
        dataset,
        config.batch_size,
        config.seed,
        epoch,
        skip,
        config.num_workers,
        rank=ctx.rank,
        world_size=ctx.world_size,
    ):
        yield Batch(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device, got {name!r} ({e})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={name!r} was asked for but CUDA is not available; use device='cpu'"
        )
    return device


def _autocast(config: TrainConfig, device: torch.device):
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def build_model(config: TrainConfig, dataset) -> MaskedViT:
    """The model a run starts from: a pretrained file if given, else a fresh preset sized to the data."""
    if config.pretrained:
        model = MaskedViT.load(config.pretrained, kernels=config.kernels)
        if config.model_overrides:
            raise ValueError("model_overrides cannot change a pretrained model's architecture")
    else:
        overrides = {
            "in_chans": dataset.in_chans,
            "num_classes": dataset.num_classes,
            **config.model_overrides,
        }
        model = create_model(config.model, kernels=config.kernels, **overrides)
    return model


def _check_fits(model: MaskedViT, dataset) -> None:
    c = model.config
    if c.in_chans != dataset.in_chans or c.img_size != dataset.image_size:
        raise ValueError(
            f"the data has {dataset.in_chans}-channel {dataset.image_size}px images but the model "
            f"expects {c.in_chans}-channel {c.img_size}px ones"
        )


def _model_image_size(config: TrainConfig, model: MaskedViT | None) -> int | None:
    """The image size the run's model expects, read without building it."""
    from .models.presets import PRESETS

    if model is not None:
        return model.config.img_size
    if config.pretrained:
        return load_tensors(config.pretrained)[1].get("config", {}).get("img_size")
    if config.model in PRESETS:
        return config.model_overrides.get("img_size", PRESETS[config.model].img_size)
    return None


def _write_csv(records: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)

    atomic_write(path, write)


def _read_log(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Records of an earlier run up to ``up_to_step`` (later ones are redone after a resume)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record.get("step", 0) <= up_to_step:
            records.append(record)
    return records


# ---------------------------------------------------------------------- the loop
def train(
    config: TrainConfig | None = None,
    *,
    model: MaskedViT | str | None = None,
    train_data=None,
    test_data=None,
    **overrides: Any,
) -> TrainResult:
    """Pretrain or finetune a MaskedViT.

    Args:
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields, so
            ``train(method="mae", epochs=5)`` works without building one.
        model: a preset name (sets ``config.model``), or a MaskedViT instance to train instead of
            ``config.model`` / ``config.pretrained``.
        train_data, test_data: datasets to use instead of ``config.data`` (``(image, label)``
            items with ``num_classes``, ``in_chans`` and ``image_size`` attributes).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process trains on its own shard of each epoch
    (``batch_size`` images per process and step) a DistributedDataParallel copy of the model, or
    with ``distributed="fsdp"`` its share of the weights, gradients and optimizer state (PyTorch's
    ``fully_shard``, one unit per transformer block). The learning rate follows the global
    batch, held-out metrics are averaged over all ranks, and rank 0 alone writes logs,
    checkpoints and the model; checkpoints always hold the whole, unsharded state, so any run
    (one process, DDP or FSDP) can load them.

    Returns:
        A :class:`TrainResult` with the trained model, the metric history and held-out metrics.
        ``OUT_DIR`` holds ``metrics.jsonl``, ``metrics.csv``, ``checkpoint-last.safetensors``,
        ``model.safetensors`` and ``summary.json``.
    """
    if isinstance(model, str):
        overrides["model"], model = model, None
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    method: Method = get_method(config.method)(config)
    ctx, device = distributed.setup(_resolve_device(config.device))
    try:
        return _run(config, method, ctx, device, model, train_data, test_data)
    finally:
        distributed.teardown(ctx)


class _TrainingStep(torch.nn.Module):
    """``method.training_step`` as a module's forward, so DistributedDataParallel or FSDP can wrap
    the whole step (methods call ``forward_mae``, ``forward_encoder``... rather than ``forward``).

    With ``held_out`` batches it returns ``method.evaluate``'s metrics instead: FSDP gathers the
    weights outside the blocks only inside this forward.
    """

    def __init__(self, method: Method, model: MaskedViT):
        super().__init__()
        self.method, self.model = method, model

    def forward(
        self,
        images: torch.Tensor | None,
        labels: torch.Tensor | None,
        extras: dict[str, torch.Tensor] | None,
        held_out: Iterator[Batch] | None = None,
    ):
        if held_out is not None:
            return self.method.evaluate(self.model, held_out)
        out = self.method.training_step(self.model, Batch(images, labels, extras))
        return out.loss, out.metrics


def _strip_prefix(
    state: dict[str, torch.Tensor], prefix: str = "model."
) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _keyed_by_name(optim_state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter index, keyed by parameter name instead."""
    return {
        "state": {names[int(i)]: s for i, s in optim_state["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]}
            for g in optim_state["param_groups"]
        ],
    }


def _keyed_by_index(optim_state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`_keyed_by_name`: the layout a plain ``optimizer.state_dict()`` has."""
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(optim_state["state"]) - set(index))
    if unknown:
        raise RuntimeError(
            f"the sharded optimizer state names parameters the optimizer lacks: {unknown[:4]}"
        )
    return {
        "state": {index[n]: s for n, s in optim_state["state"].items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in optim_state["param_groups"]
        ],
    }


def _unsharded_copy(
    cls: type[MaskedViT], sharded: MaskedViT, state: dict[str, torch.Tensor]
) -> MaskedViT:
    """A plain ``cls`` model with the architecture of ``sharded`` holding the full ``state``."""
    model = cls(
        sharded.config, kernels=sharded.kernels
    )  # on the CPU; ``state``'s tensors replace its own
    model.load_state_dict(_strip_prefix(state), assign=True)
    model.check_inputs = sharded.check_inputs
    model.train(sharded.training)
    return model


def _run(
    config: TrainConfig,
    method: Method,
    ctx: distributed.DistContext,
    device: torch.device,
    model: MaskedViT | None,
    train_data,
    test_data,
) -> TrainResult:
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if train_data is None:
        image_size = _model_image_size(config, model)
        train_data = build_dataset(config.data, "train", image_size=image_size)
        test_data = (
            build_dataset(config.data, "test", image_size=image_size)
            if test_data is None
            else test_data
        )
    elif test_data is None:
        raise ValueError(
            "train_data was given without test_data: pass a held-out dataset as test_data"
        )
    if model is None:
        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        model = build_model(config, train_data)
    _check_fits(model, train_data)
    _check_fits(model, test_data)
    model = method.prepare_model(model, train_data.num_classes).to(device)

    steps_per_epoch = len(train_data) // ctx.world_size // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training set ({len(train_data)} images"
            + (f" over {ctx.world_size} processes)" if ctx.enabled else ")")
        )
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    peak_lr = (
        config.lr
        if config.lr is not None
        else config.blr * config.batch_size * ctx.world_size / 256
    )
    groups = model.param_groups(
        config.weight_decay, config.layer_decay
    )  # of the whole weights, before sharding

    start_step = 0
    resume = config.resume
    if resume == "auto":
        resume = str(out_dir / CHECKPOINT_NAME) if (out_dir / CHECKPOINT_NAME).exists() else None
    resumed = _read_checkpoint(resume, model, config) if resume else None
    if resumed is not None:
        model.load_weights(resumed[0], source=str(resume))

    sharded = ctx.enabled and config.distributed == "fsdp"
    model_cls = type(model)
    run_step: torch.nn.Module = _TrainingStep(method, model)
    if sharded:  # each rank keeps 1/N of the weights, gradients and optimizer state
        run_step = distributed.fsdp_wrap(run_step, [*model.blocks, *model.decoder_blocks])
        current = dict(model.named_parameters())  # the sharded parameters, under their names
        groups = [{**g, "params": [current[n] for n in g["param_names"]]} for g in groups]
    elif ctx.enabled:  # gradients are averaged over the ranks inside backward()
        run_step = torch.nn.parallel.DistributedDataParallel(
            run_step,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )  # pretraining leaves the head unused, finetuning the decoder
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=config.betas)
    # the parameter of each optimizer index, by its name in run_step's state dict
    param_names = [f"model.{n}" for g in groups for n in g["param_names"]]
    if resumed is not None:
        if sharded:
            _check_optimizer_layout(resume, resumed[1], optimizer)
            distributed.fsdp_load_optimizer(
                run_step, optimizer, _keyed_by_name(resumed[1], param_names)
            )
        else:
            _load_optimizer_state(resume, optimizer, resumed[1])
        start_step = resumed[2]
        del resumed
    distributed.barrier(ctx)  # every rank has read the checkpoint before rank 0 may overwrite it
    log_path = out_dir / "metrics.jsonl"
    history = _read_log(log_path, start_step) if start_step else []
    if ctx.is_main:
        with open(log_path, "w") as f:  # rewrite: drop records past the checkpoint we resumed from
            f.writelines(json.dumps(r) + "\n" for r in history)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    end_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)
    step = start_step

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        if ctx.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(epoch: int) -> dict[str, float]:
        model.eval()
        torch.manual_seed(
            step_seed(config.seed, 2**40, ctx.rank)
        )  # same held-out masks at every evaluation
        shard = _epoch_batches(
            test_data,
            config.batch_size,
            config.seed,
            0,
            0,
            config.num_workers,
            shuffle=False,
            drop_last=False,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        count = 0

        def batches() -> Iterator[Batch]:
            nonlocal count
            for x, y in shard:
                count += x.shape[0]
                yield Batch(x.to(device), y.to(device))

        with torch.no_grad(), _autocast(config, device):
            if sharded:  # inside the root's forward, where FSDP gathers its weights
                metrics = run_step(None, None, None, held_out=batches())
                distributed.fsdp_reshard(run_step)
            else:
                metrics = method.evaluate(model, batches())
        metrics = distributed.mean_over_ranks(ctx, metrics, count)
        model.train()
        log({"step": step, "epoch": epoch, "split": "test", **metrics})
        return metrics

    def checkpoint(epoch: int) -> None:
        if sharded:  # every rank sends its shards; rank 0 writes the whole state
            model_state, optim_state = distributed.fsdp_full_state(run_step, optimizer)
            if ctx.is_main:
                _write_checkpoint(
                    out_dir / CHECKPOINT_NAME,
                    _strip_prefix(model_state),
                    _keyed_by_index(optim_state, param_names),
                    model,
                    config,
                    step,
                    epoch,
                )
        elif ctx.is_main:
            save_checkpoint(out_dir / CHECKPOINT_NAME, model, optimizer, config, step, epoch)

    loader = _native_loader(train_data, config, method, model, device, ctx)
    model.train()
    checks = model.check_inputs
    model.check_inputs = (
        device.type != "cuda"
    )  # loader data is checked already; on CUDA the check would sync
    bar = tqdm(
        total=end_step,
        initial=start_step,
        disable=not config.progress or not ctx.is_main,
        desc=f"{config.method}",
        unit="step",
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    final_metrics: dict[str, float] = {}
    epoch = start_step // steps_per_epoch
    while step < end_step:
        skip = step - epoch * steps_per_epoch
        for batch in _train_batches(loader, train_data, config, epoch, skip, device, ctx):
            torch.manual_seed(step_seed(config.seed, step, ctx.rank))
            if loader is None and config.augment != "none":  # the native loader augments by itself
                batch.images = crop_with_padding_and_flip(
                    batch.images,
                    padding=0 if config.augment == "flip" else 4,
                    flip=config.augment != "crop",
                )
            lr = learning_rate(step, total_steps, warmup_steps, peak_lr, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with _autocast(config, device):
                loss, step_metrics = run_step(batch.images, batch.labels, batch.extras)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad is not None and sharded:
                distributed.fsdp_clip_grad_norm(optimizer, config.clip_grad)
            elif config.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            if sharded:
                distributed.fsdp_reshard(run_step)
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == end_step:
                values = {k: float(v) for k, v in step_metrics.items()}
                values = distributed.mean_over_ranks(ctx, values, batch.images.shape[0])
                if not math.isfinite(values.get("loss", 0.0)):
                    raise FloatingPointError(
                        f"loss became {values['loss']} at step {step}; lower the "
                        "learning rate or enable clip_grad"
                    )
                log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "split": "train",
                        "lr": lr,
                        "images_per_s": round(
                            config.batch_size
                            * ctx.world_size
                            * (step - start_step)
                            / (time.perf_counter() - started),
                            2,
                        ),
                        **values,
                    }
                )
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
            if config.checkpoint_steps and step % config.checkpoint_steps == 0:
                checkpoint(epoch)
            if step >= end_step:
                break
        else:  # the epoch ran to its end
            epoch += 1
            if config.eval_every and epoch % config.eval_every == 0 and step < end_step:
                evaluate(epoch)
            if config.checkpoint_every and epoch % config.checkpoint_every == 0:
                checkpoint(epoch)
            if ctx.is_main:
                _write_csv(history, out_dir / "metrics.csv")
    bar.close()
    model.check_inputs = checks
    if loader is not None:
        loader.close()
    epoch = step // steps_per_epoch  # epochs completed
    final_metrics = evaluate(epoch)
    checkpoint(epoch)
    if sharded:  # every rank returns (and rank 0 saves) a plain model holding the whole weights
        model = _unsharded_copy(
            model_cls, model, distributed.fsdp_full_state(run_step, rank0_only=False)[0]
        )
    if ctx.is_main:
        model.save(out_dir / MODEL_NAME)
        _write_csv(history, out_dir / "metrics.csv")
        summary = {
            "method": config.method,
            "steps": step,
            "epochs_done": step / steps_per_epoch,
            "train_images": len(train_data),
            "test_images": len(test_data),
            "seconds": round(time.perf_counter() - started, 2),
            "test": final_metrics,
            "device": str(device),
            "world_size": ctx.world_size,
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(model, history, final_metrics, out_dir, step)

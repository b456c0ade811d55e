"""The training checkpoint: model and AdamW state plus progress, in one safetensors file.

Tensors are stored as ``model.<name>`` and ``optim.<parameter index>.<entry>``; the metadata
holds the format tag, the model's architecture, the run's :class:`TrainConfig`, the step, the
epoch and the optimizer's parameter groups. Checkpoints always hold the whole, unsharded state,
so any run (one process, DDP or FSDP) can load them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_save_tensors, load_tensors
from ..models import MaskedViT
from .config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "MODEL_NAME",
    "check_optimizer_layout",
    "keyed_by_index",
    "keyed_by_name",
    "load_checkpoint",
    "load_optimizer_state",
    "read_checkpoint",
    "save_checkpoint",
    "strip_prefix",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "mimir_fast.checkpoint/1"
CHECKPOINT_NAME = "checkpoint-last.safetensors"
MODEL_NAME = "model.safetensors"


def save_checkpoint(
    path: Path,
    model: MaskedViT,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    epoch: int,
) -> Path:
    """Write model + optimizer state + progress to one safetensors file, atomically."""
    return write_checkpoint(
        path, model.state_dict(), optimizer.state_dict(), model, config, step, epoch
    )


def write_checkpoint(
    path: Path,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    model: MaskedViT,
    config: TrainConfig,
    step: int,
    epoch: int,
) -> Path:
    """The checkpoint file of full state dicts (optimizer state keyed by parameter index).

    Args:
        path: the file to write (atomically: a failed write keeps the previous file).
        model_state: the model's whole state dict.
        optim_state: the optimizer's whole state dict, keyed by parameter index.
        model: the model (its architecture goes into the metadata).
        config: the run's settings.
        step, epoch: the progress to resume from.
    """
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
    model_state, optim_state, step = read_checkpoint(path, model, config)
    model.load_weights(model_state, source=str(path))
    load_optimizer_state(path, optimizer, optim_state)
    return step


def _check_metadata(
    path: str | os.PathLike, meta: dict[str, Any], model: MaskedViT, config: TrainConfig
) -> None:
    """The checkpoint's metadata is whole and was written by a run this one may continue."""
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
            f"checkpoint {path} is damaged: its metadata lacks "
            f"{missing or 'a valid optimizer layout'}"
        )
    saved = meta["train_config"]
    for key in ("method", "batch_size", "epochs"):
        if saved.get(key) != getattr(config, key):
            raise ValueError(
                f"checkpoint {path} was written with {key}={saved.get(key)!r} but this run has "
                f"{key}={getattr(config, key)!r}; resume with the same settings or start afresh"
            )
    architecture = model.config.to_dict()
    if meta["config"] != architecture:
        diff = {
            k: (v, architecture.get(k))
            for k, v in meta["config"].items()
            if architecture.get(k) != v
        }
        raise ValueError(
            f"checkpoint {path} holds a different model architecture: {diff} (file vs run)"
        )


def read_checkpoint(
    path: str | os.PathLike, model: MaskedViT, config: TrainConfig
) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """(model state, optimizer state keyed by parameter index, step) of a checkpoint this run may
    resume from.

    Raises:
        ValueError: the file is not a training checkpoint, is damaged, or was written by a run
            with other settings or another architecture.
    """
    tensors, meta = load_tensors(path)
    _check_metadata(path, meta, model, config)
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
    return strip_prefix(tensors), optim_state, int(meta["step"])


def check_optimizer_layout(
    path: str | os.PathLike, optim_state: dict[str, Any], optimizer: torch.optim.Optimizer
) -> None:
    """A checkpoint's optimizer state fits ``optimizer``: same groups, consistent entries."""
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


def load_optimizer_state(
    path: str | os.PathLike, optimizer: torch.optim.Optimizer, optim_state: dict[str, Any]
) -> None:
    """Check a checkpoint's optimizer state (keyed by parameter index) and load it."""
    check_optimizer_layout(path, optim_state, optimizer)
    try:
        optimizer.load_state_dict(optim_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ValueError(
            f"checkpoint {path} has damaged optimizer state: {type(e).__name__}: {e}"
        ) from e


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose key starts with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def keyed_by_name(optim_state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter index, keyed by parameter name instead."""
    return {
        "state": {names[int(i)]: s for i, s in optim_state["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]}
            for g in optim_state["param_groups"]
        ],
    }


def keyed_by_index(optim_state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`keyed_by_name`: the layout a plain ``optimizer.state_dict()`` has."""
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

"""What a run starts from: its device, its datasets and its model, checked against each other."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .._io import load_tensors
from ..data import build_dataset
from ..models import MaskedViT, create_model
from ..models.presets import PRESETS
from .config import TrainConfig

__all__ = ["autocast", "build_model", "check_fits", "load_datasets", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The torch device called ``name`` ("auto": CUDA when available, else the CPU).

    Raises:
        ValueError: an unknown device name, or CUDA asked for where it is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device, "
            f"got {name!r} ({e})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={name!r} was asked for but CUDA is not available; use device='cpu'"
        )
    return device


def autocast(config: TrainConfig, device: torch.device) -> Any:
    """The run's mixed-precision context: bf16 autocast, or nothing (fp32)."""
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def load_datasets(config: TrainConfig, model: MaskedViT | None, train_data, test_data) -> tuple:
    """``(train_data, test_data)``: the given datasets, or those of ``config.data`` at the
    image size of the run's model.

    Raises:
        ValueError: ``train_data`` given without ``test_data``.
    """
    if train_data is not None:
        if test_data is None:
            raise ValueError(
                "train_data was given without test_data: pass a held-out dataset as test_data"
            )
        return train_data, test_data
    image_size = _model_image_size(config, model)
    train_data = build_dataset(config.data, "train", image_size=image_size)
    if test_data is None:
        test_data = build_dataset(config.data, "test", image_size=image_size)
    return train_data, test_data


def build_model(config: TrainConfig, dataset) -> MaskedViT:
    """The model a run starts from: a pretrained file if given, else a fresh preset sized to the
    data."""
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


def check_fits(model: MaskedViT, dataset) -> None:
    """The model reads the dataset's images (channels and size).

    Raises:
        ValueError: naming both shapes.
    """
    c = model.config
    if c.in_chans != dataset.in_chans or c.img_size != dataset.image_size:
        raise ValueError(
            f"the data has {dataset.in_chans}-channel {dataset.image_size}px images but the model "
            f"expects {c.in_chans}-channel {c.img_size}px ones"
        )


def _model_image_size(config: TrainConfig, model: MaskedViT | None) -> int | None:
    """The image size the run's model expects, read without building it."""
    if model is not None:
        return model.config.img_size
    if config.pretrained:
        return load_tensors(config.pretrained)[1].get("config", {}).get("img_size")
    if config.model in PRESETS:
        return config.model_overrides.get("img_size", PRESETS[config.model].img_size)
    return None

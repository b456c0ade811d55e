"""The seam every training method plugs into.

A method owns its per-step loss: the trainer hands it a :class:`Batch` and the model, and
gets back a :class:`StepOutput`. Everything else (data order, optimiser, schedule, AMP,
clipping, logging, checkpoints, resume) is the trainer's. Methods that need more than images
and labels (a second mask, a noise level, adversarial inputs) read them from ``Batch.extras``
or make them inside their step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:  # annotations only: the trainer imports the methods
    from ..models import MaskedViT
    from ..training.config import TrainConfig

__all__ = ["METHODS", "Batch", "Method", "StepOutput", "get_method", "register_method"]


@dataclass
class Batch:
    images: torch.Tensor  # (N, C, H, W) float in [0, 1], on the training device
    labels: torch.Tensor  # (N,) int64
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. "ids_keep", "sigma"


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to backpropagate
    metrics: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # detached scalars, logged lazily


class Method(ABC):
    """Base class of training methods. Subclasses set ``name`` and ``task`` and register."""

    name: ClassVar[str]
    task: ClassVar[str]  # "pretrain" (self-supervised) or "finetune" (uses labels)
    # the metric the trainer reports as the method's headline, and whether higher is better
    headline: ClassVar[tuple[str, bool]] = ("loss", False)
    # what the data loader should prepare per sample: independent patch masks (delivered as
    # batch.extras["ids_keep"], ["ids_keep_1"], ...) and a noise level (batch.extras["sigma"])
    loader_masks: ClassVar[int] = 0
    loader_sigma: ClassVar[bool] = False

    def __init__(self, config: TrainConfig):
        self.config = config

    def prepare_model(self, model: MaskedViT, num_classes: int) -> MaskedViT:
        """Adjust a freshly built or loaded model before training (head, drop path...)."""
        return model

    @abstractmethod
    def training_step(self, model: MaskedViT, batch: Batch) -> StepOutput:
        """The loss of one training batch (the model is in train mode, under the trainer's AMP)."""

    @abstractmethod
    def evaluate(self, model: MaskedViT, batches: Any) -> dict[str, float]:
        """Metrics on held-out batches (an iterable of :class:`Batch`), model in eval mode, no
        grad."""


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available as ``train(method=cls.name)``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``.

    Raises:
        ValueError: no method has that name.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]

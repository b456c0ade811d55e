"""The training step as a module, and its wrapping for a multi-process run (DDP or FSDP)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .. import distributed
from ..distributed import DistContext
from ..methods import Batch, Method
from ..models import MaskedViT
from .checkpoint import strip_prefix

__all__ = ["TrainingStep", "unsharded_copy", "wrap_for_processes"]


class TrainingStep(torch.nn.Module):
    """``method.training_step`` as a module's forward, so DistributedDataParallel or FSDP can wrap
    the whole step (methods call ``forward_mae``, ``forward_encoder``... rather than ``forward``).

    With ``held_out`` batches it returns ``method.evaluate``'s metrics instead: FSDP gathers the
    weights outside the blocks only inside this forward.

    Args:
        method: the training method.
        model: the model it trains.
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
    ) -> Any:
        if held_out is not None:
            return self.method.evaluate(self.model, held_out)
        out = self.method.training_step(self.model, Batch(images, labels, extras))
        return out.loss, out.metrics


def wrap_for_processes(
    step: TrainingStep,
    groups: list[dict[str, Any]],
    ctx: DistContext,
    sharded: bool,
    device: torch.device,
) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """``(module to run each step with, the optimizer's parameter groups)`` for this process.

    Args:
        step: the training step around the model.
        groups: the model's parameter groups (with their ``param_names``), built before sharding.
        ctx: this process's place in the run.
        sharded: FSDP: each rank keeps 1/N of the weights, gradients and optimizer state.
        device: the training device.
    """
    model = step.model
    if sharded:
        run_step = distributed.fsdp_wrap(step, [*model.blocks, *model.decoder_blocks])
        current = dict(model.named_parameters())  # the sharded parameters, under their names
        groups = [{**g, "params": [current[n] for n in g["param_names"]]} for g in groups]
        return run_step, groups
    if ctx.enabled:  # gradients are averaged over the ranks inside backward()
        ddp = torch.nn.parallel.DistributedDataParallel(
            step,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )  # pretraining leaves the head unused, finetuning the decoder
        return ddp, groups
    return step, groups


def unsharded_copy(
    cls: type[MaskedViT], sharded: MaskedViT, state: dict[str, torch.Tensor]
) -> MaskedViT:
    """A plain ``cls`` model with the architecture of ``sharded`` holding the full ``state``."""
    # on the CPU; ``state``'s tensors replace its own
    model = cls(sharded.config, kernels=sharded.kernels)
    model.load_state_dict(strip_prefix(state), assign=True)
    model.check_inputs = sharded.check_inputs
    model.train(sharded.training)
    return model

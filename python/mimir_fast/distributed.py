"""Multi-process training under ``torchrun``: process-group setup and the collectives the
trainer needs.

``torchrun --nproc_per_node N -m mimir_fast pretrain ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` reads them, starts the process group (NCCL on CUDA, gloo on the
CPU) and pins each process to its GPU. A run without those variables is a single process and
none of this costs anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "all_reduce",
    "barrier",
    "current",
    "fsdp_clip_grad_norm",
    "fsdp_full_state",
    "fsdp_load_optimizer",
    "fsdp_reshard",
    "fsdp_wrap",
    "gather_batch",
    "mean_over_ranks",
    "setup",
    "teardown",
]


@dataclass(frozen=True)
class DistContext:
    """This process's place in a run: its rank, the number of processes, its GPU index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process started the group (and tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join (or start) the process group described by torchrun's environment variables.

    Returns the context and the device this process trains on (``cuda:LOCAL_RANK`` when the
    run asked for CUDA).
    """
    if dist.is_available() and dist.is_initialized():  # the user started the group already
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), False)
    else:
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return DistContext(), device
        rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        ctx = DistContext(rank, world_size, local_rank, True)
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    return ctx, device


def teardown(ctx: DistContext) -> None:
    """Leave the process group, if :func:`setup` started it."""
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (nothing on one process)."""
    if ctx.enabled:
        dist.barrier()


def mean_over_ranks(ctx: DistContext, values: dict[str, float], count: int) -> dict[str, float]:
    """Count-weighted mean of per-rank averages (exact for means over disjoint shards)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([values[k] * count for k in keys] + [float(count)], dtype=torch.float64)
    packed = all_reduce(ctx, packed)
    total = max(float(packed[-1]), 1.0)
    return {k: float(v) / total for k, v in zip(keys, packed[:-1].tolist())}


def gather_batch(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (batch first) from every rank, with gradients flowing back to each
    rank's own part (``torch.distributed.nn.all_gather``); the identity on one process."""
    if not ctx.enabled:
        return t
    from torch.distributed.nn import all_gather

    return torch.cat(all_gather(t.contiguous()), dim=0)


def current() -> DistContext:
    """The context of an already running process group (single-process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), False)
    return DistContext()


def all_reduce(ctx: DistContext, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over the ranks ("sum" or "max"), on ``t``'s device; ``t`` itself on one
    process."""
    if not ctx.enabled:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    out = t.clone()
    if dist.get_backend() == "nccl" and out.device.type != "cuda":
        out = out.cuda()
    dist.all_reduce(out, op=ops[op])
    return out.to(t.device)


# ---------------------------------------------------------------------- FSDP
def _fully_shard_api():
    """PyTorch's per-parameter FSDP (``fully_shard``, "FSDP2"), or None where this build lacks
    it."""
    try:
        from torch.distributed.fsdp import fully_shard  # PyTorch >= 2.6
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # PyTorch 2.4, 2.5
        except ImportError:
            return None
    return fully_shard


def fsdp_wrap(root: torch.nn.Module, blocks: list[torch.nn.Module]) -> torch.nn.Module:
    """Shard ``root``'s weights over the ranks with PyTorch's ``fully_shard`` (FSDP2): each of
    ``blocks`` is a unit of its own, gathered only for its forward and its backward; the other
    weights (embeddings, norms, heads) form the root's unit, gathered for the whole step.

    Call it once the weights are on the training device, and build the optimizer afterwards
    (``fully_shard`` replaces the parameters by sharded ones). Returns ``root``, sharded in place.

    Raises:
        RuntimeError: this PyTorch's ``fully_shard`` is missing or too old.
    """
    fully_shard = _fully_shard_api()
    too_old = RuntimeError(
        f"distributed='fsdp' needs PyTorch's fully_shard with reshard control (PyTorch >= 2.4), "
        f"which PyTorch {torch.__version__} lacks; use distributed='ddp' or a newer PyTorch"
    )
    if fully_shard is None:
        raise too_old
    for block in blocks:
        fully_shard(block)
    fully_shard(root, reshard_after_forward=False)
    if not (hasattr(root, "set_reshard_after_backward") and hasattr(root, "reshard")):
        raise too_old
    # Methods may differentiate inside the step (MIMIR's attack, adversarial finetuning): the end of
    # that inner backward must not reshard the root's weights in the middle of the root's forward.
    # fsdp_reshard() drops them after each optimizer step instead.
    root.set_reshard_after_backward(False, recurse=False)
    return root


def fsdp_reshard(root: torch.nn.Module) -> None:
    """Drop the root's gathered weights (after an optimizer step they are stale), so that its next
    forward gathers the current shards."""
    root.reshard()


def fsdp_clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Clip the norm of the full gradient of a sharded model, whose sharded parameters are the
    optimizer's (between backward and :func:`fsdp_reshard` the root module holds gathered copies
    instead); their DTensor gradients' norms reduce over the ranks."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def fsdp_full_state(
    root: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    rank0_only: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The full (unsharded) model state dict of a sharded ``root``, and the full optimizer state
    dict keyed by parameter name. A collective: every rank calls it. With ``rank0_only`` the
    tensors are gathered to rank 0's CPU memory and the other ranks get empty dicts; otherwise
    every rank gets them, on its device.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    model_state = get_model_state_dict(root, options=options)
    optim_state = (
        None if optimizer is None else get_optimizer_state_dict(root, optimizer, options=options)
    )
    return model_state, optim_state


def fsdp_load_optimizer(
    root: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state dict keyed by parameter name (as :func:`fsdp_full_state`
    returns it, given on every rank) into the optimizer of a sharded ``root``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # not strict: parameters that never had a gradient (the head while pretraining) have no state
    set_optimizer_state_dict(
        root, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False)
    )

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

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
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
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def mean_over_ranks(ctx: DistContext, values: dict[str, float], count: int) -> dict[str, float]:
    """Count-weighted mean of per-rank averages (exact for means over disjoint shards)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([values[k] * count for k in keys] + [float(count)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        packed = packed.cuda()
    dist.all_reduce(packed)
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

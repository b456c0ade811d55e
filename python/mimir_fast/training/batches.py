"""Batches for training and evaluation, from the native (Rust) loader or plain PyTorch.

Both paths give the same thing: :class:`~mimir_fast.methods.Batch` es on the training device,
images as floats in [0, 1], in an order fixed by ``(seed, epoch)``, each rank of a distributed
run taking its own shard. The native loader augments, masks and draws noise levels itself;
on the PyTorch path :meth:`TrainBatches.augment` applies the same crop-and-flip to the batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from ..data import ArrayDataset, ImageFolder
from ..data.augmentations import crop_with_padding_and_flip
from ..data.loader import Loader
from ..distributed import DistContext
from ..methods import Batch, Method
from ..models import MaskedViT
from ..noise import parse_sigma_spec
from .config import TrainConfig

__all__ = ["TrainBatches", "collate", "epoch_batches", "native_loader"]

NATIVE_ONLY = ("rrc_flip", "rrc")  # augmentations the PyTorch path does not offer
CROP_PADDING = 4  # pixels of zero border around the image before the random crop


def collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, label)`` samples as an ``(N, C, H, W)`` image batch and ``(N,)`` int64 labels."""
    images = torch.stack([s[0] for s in samples])  # (N, C, H, W)
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)  # (N,)
    return images, labels


def epoch_batches(
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

    Args:
        dataset: ``(image, label)`` items.
        batch_size: images per batch.
        seed, epoch: fix the shuffled order.
        skip: batches of the epoch already done (a resumed run starts after them).
        num_workers: DataLoader worker processes.
        shuffle: shuffle (training) or keep the dataset's order (evaluation).
        drop_last: drop the last, incomplete batch (and uneven shards).
        rank, world_size: this process and the number of processes.
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
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate
    )
    yield from loader


def _loader_threads(config: TrainConfig, ctx: DistContext) -> int | None:
    """The native loader's threads: ``num_workers``, or this process's share of the node's cores
    in a distributed run (None: the loader's own choice)."""
    threads = config.num_workers or None
    if threads is None and ctx.enabled:  # share the cores between the processes of this node
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        threads = max(1, (os.cpu_count() or 1) // max(1, local_processes))
    return threads


def native_loader(
    dataset,
    config: TrainConfig,
    method: Method,
    model: MaskedViT,
    device: torch.device,
    ctx: DistContext,
) -> Loader | None:
    """The Rust loader for ``dataset``, or None where the plain PyTorch path must serve.

    Raises:
        ValueError: the settings need the native loader but the data cannot use it, or the
            other way round.
    """
    native_ok = isinstance(dataset, (ArrayDataset, ImageFolder))
    if config.loader == "torch" or (config.loader == "auto" and not native_ok):
        if config.augment in NATIVE_ONLY:
            raise ValueError(
                f"augment={config.augment!r} needs the native loader (loader='native' or 'auto' "
                "with array or image-folder data)"
            )
        return None
    if not native_ok:
        raise ValueError(
            f"loader='native' reads arrays (ArrayDataset, CIFAR, digits, .npy) and image folders, "
            f"not {type(dataset).__name__}; use loader='torch'"
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
        sigma=parse_sigma_spec(config.noise) if method.loader_sigma else None,
        output="uint8" if device.type == "cuda" else "float",
        pin_memory=device.type == "cuda",
        num_threads=_loader_threads(config, ctx),
        rank=ctx.rank,
        world_size=ctx.world_size,
    )


class TrainBatches:
    """The training batches of a run, from the native loader where it serves, else PyTorch.

    Args:
        dataset: the training set.
        config: the run's settings (loader, augmentation, batch size, seed, workers).
        method: the training method (what the native loader prepares: masks, noise levels).
        model: the model (its patch size, for the loader's masks).
        device: the training device.
        ctx: this process's place in a distributed run.
    """

    def __init__(
        self,
        dataset,
        config: TrainConfig,
        method: Method,
        model: MaskedViT,
        device: torch.device,
        ctx: DistContext,
    ):
        self.dataset, self.config, self.device, self.ctx = dataset, config, device, ctx
        self.loader = native_loader(dataset, config, method, model, device, ctx)

    def epoch(self, epoch: int, skip: int) -> Iterator[Batch]:
        """The batches of ``epoch`` after the first ``skip``, on the device (not yet augmented
        on the PyTorch path: see :meth:`augment`)."""
        if self.loader is not None:
            yield from self._native_epoch(epoch, skip)
            return
        c = self.config
        for images, labels in epoch_batches(
            self.dataset,
            c.batch_size,
            c.seed,
            epoch,
            skip,
            c.num_workers,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        ):
            yield Batch(self._to_device(images), self._to_device(labels))

    def _native_epoch(self, epoch: int, skip: int) -> Iterator[Batch]:
        self.loader.set_epoch(epoch, start_batch=skip)
        for b in self.loader:
            images = self._to_device(b.images)  # (N, C, H, W) uint8 on CUDA, float on the CPU
            if images.dtype == torch.uint8:
                images = images.float().div_(255.0)
            extras: dict[str, Any] = {}
            for i, (ids_keep, _, _) in enumerate(b.masks):  # "ids_keep", "ids_keep_1", ...
                extras["ids_keep" if i == 0 else f"ids_keep_{i}"] = self._to_device(ids_keep)
            if b.sigma is not None:
                extras["sigma"] = self._to_device(b.sigma)  # (N,)
            yield Batch(images, self._to_device(b.labels), extras)

    def augment(self, batch: Batch) -> Batch:
        """``batch`` with the run's augmentation applied, drawn from torch's global generator.

        The native loader's batches are augmented already and come back as they are.
        """
        augment = self.config.augment
        if self.loader is None and augment != "none":
            batch.images = crop_with_padding_and_flip(
                batch.images,
                padding=0 if augment == "flip" else CROP_PADDING,
                flip=augment != "crop",
            )
        return batch

    def close(self) -> None:
        """Stop the native loader's threads."""
        if self.loader is not None:
            self.loader.close()

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

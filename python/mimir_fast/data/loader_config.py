"""The native loader's options, checked once: the typed contract with the Rust side.

:class:`LoaderConfig` checks every option that can be judged on its own (types, ranges,
choices, the noise spec) and stores it in the form the Rust side reads
(``#[derive(FromPyObject)]`` in ``rust/src/config.rs`` reads these attributes by name). The
Rust side checks only what needs the images: their size against ``image_size`` and
``patch_size``, the label count, and whether a mask keeps any patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimir_fast._validate import check_choice, check_int, check_number, check_pair
from mimir_fast.data.augmentations import AUGMENTATIONS
from mimir_fast.data.corruptions import parse_corruption
from mimir_fast.noise import parse_sigma_spec

__all__ = ["LoaderConfig", "OUTPUTS"]

OUTPUTS = ("float", "uint8")
# Upper bounds of options whose absurd values would make the native side allocate without end.
_MAX_SIZE = 1 << 16  # image_size, patch_size, padding
_MAX_COUNT = 1024  # num_masks, num_threads, prefetch


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """Everything a :class:`~mimir_fast.data.Loader` is told, checked when built.

    Attributes:
        batch_size: Samples per batch.
        shuffle: Permute the dataset each epoch (seeded by ``seed`` and the epoch).
        seed: Seed of every random draw (any integer; kept modulo 2**64).
        drop_last: Drop this rank's last incomplete batch.
        rank, world_size: Distributed shard: the epoch's permutation is cut to
            ``N // world_size * world_size`` samples and rank ``r`` takes every
            ``world_size``-th one from ``r`` (equal, disjoint shards).
        augment: One of ``AUGMENTATIONS``: ``"crop_flip"`` (random crop of the zero-padded
            image + horizontal flip), ``"crop"``, ``"flip"``, ``"rrc_flip"`` / ``"rrc"``
            (torchvision's random-resized-crop, antialiased bilinear resize to ``image_size``)
            or ``"none"``.
        padding: Zero padding of the random crop (at most 65536).
        rrc_scale, rrc_ratio: Area fraction (within (0, 1]) and aspect-ratio ranges of
            random-resized-crop, as ``(lo, hi)``.
        image_size: Output size; defaults to the images' size (arrays) or 224 (folders).
            Arrays need ``image_size`` equal to their size unless ``augment`` is rrc.
        num_masks: Independent patch masks per sample (MIMIR uses 2).
        mask_ratio: Fraction of patches removed, in [0, 1);
            ``len_keep = int(L * (1 - mask_ratio))``.
        patch_size: The ViT's patch size (needed when ``num_masks > 0``).
        sigma: Per-sample noise level on the 0..255 scale: None or a spec that
            :func:`mimir_fast.noise.parse_sigma_spec` reads (``("gamma", k, theta)``,
            ``"gamma"`` alone for NIM's Gamma(25, 3), ``("uniform", a, b)``,
            ``("constant", v)`` or ``"gamma:K,THETA"``-style strings); stored parsed.
        noisy: Also return ``images + sigma / 255 * z`` made on the host (needs ``sigma``).
        output: ``"float"`` (float32 in [0, 1]) or ``"uint8"`` (convert on the device).
        num_threads: Worker threads; None = available cores.
        prefetch: Ready batches kept in the queue.
        pin_memory: Pin batch tensors when CUDA is available (no-op otherwise).
        skip_corrupt: Drop unreadable samples from their batch (which is then shorter) and
            count them in ``skipped``, instead of raising ``ValueError``.
        partial_decode: Decode a sequential JPEG only down to the rows its random-resized-crop
            reads (the output is identical; off only to test that).
        corruption: A common corruption applied to every sample after the other transforms:
            ``"name:severity"`` (e.g. ``"fog:3"``), ``(name, severity)`` or None; the names are
            :data:`mimir_fast.data.CORRUPTIONS`, severities 1..5. Sample ``i`` of epoch ``e``
            draws from a generator keyed on ``(seed, e, i)``: with ``augment="none"`` and
            epoch 0 it equals ``corrupt(images, name, severity, seed)``. Stored as
            ``(name, severity)``.

    Raises:
        ValueError: An option of the wrong type or out of its range (``image_size``,
            ``patch_size`` and ``padding`` are at most 65536; ``num_masks``,
            ``num_threads`` and ``prefetch`` at most 1024).
    """

    batch_size: int
    shuffle: bool = True
    seed: int = 0
    drop_last: bool = True
    rank: int = 0
    world_size: int = 1
    augment: str = "crop_flip"
    padding: int = 4
    rrc_scale: tuple[float, float] = (0.2, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    image_size: int | None = None
    num_masks: int = 0
    mask_ratio: float = 0.75
    patch_size: int | None = None
    sigma: tuple | str | None = None
    noisy: bool = False
    output: str = "float"
    num_threads: int | None = None
    prefetch: int = 2
    pin_memory: bool = False
    skip_corrupt: bool = False
    partial_decode: bool = True
    corruption: str | tuple | None = None

    def __post_init__(self) -> None:
        for name, value in self._checked().items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def _checked(self) -> dict[str, Any]:
        """Every option checked, in the types the Rust side reads."""
        world_size = check_int(self.world_size, "world_size", 1)
        rank = check_int(self.rank, "rank", 0)
        if rank >= world_size:
            raise ValueError(
                f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
            )
        scale = check_pair(self.rrc_scale, "rrc_scale")
        if scale[1] > 1.0:
            raise ValueError(f"rrc_scale must lie in (0, 1], got {self.rrc_scale!r}")
        sigma = None if self.sigma is None else parse_sigma_spec(self.sigma, "sigma")
        if self.noisy and sigma is None:
            raise ValueError("noisy=True needs sigma (e.g. ('gamma', 25, 3))")
        return {
            "augment": check_choice(self.augment, "augment", AUGMENTATIONS),
            "output": check_choice(self.output, "output", OUTPUTS),
            "seed": check_int(self.seed, "seed") % (1 << 64),
            "mask_ratio": check_number(self.mask_ratio, "mask_ratio", 0.0, 1.0, high_open=True),
            "world_size": world_size,
            "rank": rank,
            "rrc_scale": scale,
            "rrc_ratio": check_pair(self.rrc_ratio, "rrc_ratio"),
            "batch_size": check_int(self.batch_size, "batch_size", 1),
            "padding": _bounded(self.padding, "padding", 0, _MAX_SIZE),
            "image_size": _bounded(self.image_size, "image_size", 1, _MAX_SIZE, allow_none=True),
            "patch_size": _bounded(self.patch_size, "patch_size", 1, _MAX_SIZE, allow_none=True),
            "num_masks": _bounded(self.num_masks, "num_masks", 0, _MAX_COUNT),
            "num_threads": _bounded(
                self.num_threads, "num_threads", 1, _MAX_COUNT, allow_none=True
            ),
            "prefetch": _bounded(self.prefetch, "prefetch", 0, _MAX_COUNT),
            "sigma": sigma,
            "shuffle": bool(self.shuffle),
            "drop_last": bool(self.drop_last),
            "noisy": bool(self.noisy),
            "pin_memory": bool(self.pin_memory),
            "skip_corrupt": bool(self.skip_corrupt),
            "partial_decode": bool(self.partial_decode),
            "corruption": parse_corruption(self.corruption),
        }


def _bounded(value: Any, name: str, low: int, high: int, allow_none: bool = False) -> int | None:
    """An integer in ``low..=high`` (or None when allowed); the upper bound's message is
    ``"<name> must be <= <high>"``."""
    value = check_int(value, name, low, allow_none=allow_none)
    if value is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value

"""The native (Rust) data loader: augmentation, patch masks and noise levels off the GIL.

``Loader`` reads uint8 images from memory, a memory-mapped ``.npy`` file, CIFAR batches or an
image folder (JPEG/PNG decoded in Rust), and yields :class:`LoaderBatch` objects of torch
tensors. Per-sample work runs on a pool of Rust threads with the GIL released; a producer
thread keeps ``prefetch`` ready batches in a bounded queue. Every random draw of a sample is
keyed on ``(seed, epoch, dataset index, purpose)``, so a batch depends only on the seed, the
epoch and its position in the epoch: not on the number of threads, on prefetching or on
where iteration started (``set_epoch(e, start_batch=k)`` resumes bit for bit).

Example::

    loader = Loader.from_cifar("data/cifar-10-batches-py", batch_size=256, num_masks=2,
                               patch_size=2, sigma=("gamma", 25, 3))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            ids_keep, mask, ids_restore = batch.masks[0]
            latent, mask, ids_restore = model.forward_encoder(batch.images, ids_keep=ids_keep)
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimir_fast import _native

__all__ = ["Loader", "LoaderBatch"]

PathLike = str | os.PathLike
SigmaArg = tuple | str | None

_AUGMENTS = ("crop_flip", "crop", "flip", "rrc_flip", "rrc", "none")
_NIM_GAMMA = (25.0, 3.0)  # NIM's default noise-level distribution, Gamma(k=25, theta=3)
# Upper bounds of options whose absurd values would make the native side allocate without end.
_MAX_IMAGE_SIZE = 1 << 16
_MAX_NUM_MASKS = 1024
_MAX_PREFETCH = 1024
_MAX_THREADS = 1024


@dataclass
class LoaderBatch:
    """One batch of the native loader (all tensors on the CPU, zero-copy from Rust).

    Attributes:
        images: (N, C, H, W) float32 in [0, 1], or uint8 with ``output="uint8"``.
        labels: (N,) int64.
        indices: (N,) int64 dataset indices of the samples.
        masks: ``num_masks`` tuples ``(ids_keep (N, len_keep) int64, mask (N, L) float32
            with 1 = removed, ids_restore (N, L) int64)``, as MAE's ``random_masking``.
        sigma: (N,) float32 noise levels on the 0..255 scale, or None without ``sigma``.
        noise_seed: (N,) int64 non-negative per-sample seeds for drawing the noise on the
            device, or None without ``sigma``.
        noisy: (N, C, H, W) float32 ``images + sigma / 255 * z`` (z standard normal drawn on
            the host from ``noise_seed``, not clamped) with ``noisy=True``, else None.
        skipped: samples of this batch dropped as unreadable (``skip_corrupt=True``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    masks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    sigma: torch.Tensor | None = None
    noise_seed: torch.Tensor | None = None
    noisy: torch.Tensor | None = None
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pin_memory(self) -> LoaderBatch:
        """Page-locked copies of every tensor (only meaningful with CUDA)."""

        def pin(t):
            return None if t is None else t.pin_memory()

        return LoaderBatch(
            pin(self.images),
            pin(self.labels),
            pin(self.indices),
            [tuple(pin(t) for t in m) for m in self.masks],
            pin(self.sigma),
            pin(self.noise_seed),
            pin(self.noisy),
            self.skipped,
        )


def _check_int(
    name: str, v: Any, lo: int, allow_none: bool = False, hi: int | None = None
) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return int(v)


def _check_pair(name: str, v: Any) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (lo, hi), got {v!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and 0 < a <= b):
        raise ValueError(f"{name} must satisfy 0 < lo <= hi, got {v!r}")
    return a, b


def _parse_sigma(sigma: SigmaArg) -> tuple[str, float, float] | None:
    """None, "gamma" (NIM's Gamma(25, 3)), ("gamma", k, theta), ("uniform", a, b), ("constant", v)."""
    if sigma is None:
        return None
    if isinstance(sigma, str):
        sigma = (sigma,)
    if not isinstance(sigma, (tuple, list)) or not sigma or not isinstance(sigma[0], str):
        raise ValueError(
            "sigma must be None, ('gamma', k, theta), ('uniform', a, b) or ('constant', v), "
            f"got {sigma!r}"
        )
    try:
        kind, args = sigma[0].lower(), [float(a) for a in sigma[1:]]
    except (TypeError, ValueError):
        raise ValueError(f"sigma parameters must be numbers, got {sigma!r}") from None
    if kind == "gamma" and not args:
        args = list(_NIM_GAMMA)
    want = {"gamma": 2, "uniform": 2, "constant": 1}
    if kind not in want:
        raise ValueError(f"sigma kind must be 'gamma', 'uniform' or 'constant', got {sigma[0]!r}")
    if len(args) != want[kind]:
        raise ValueError(f"sigma=({kind!r}, ...) takes {want[kind]} number(s), got {sigma!r}")
    if kind == "constant":
        args.append(0.0)
    return kind, args[0], args[1]


def _make_config(
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    augment: str = "crop_flip",
    padding: int = 4,
    rrc_scale: Sequence[float] = (0.2, 1.0),
    rrc_ratio: Sequence[float] = (3 / 4, 4 / 3),
    image_size: int | None = None,
    num_masks: int = 0,
    mask_ratio: float = 0.75,
    patch_size: int | None = None,
    sigma: SigmaArg = None,
    noisy: bool = False,
    output: str = "float",
    num_threads: int | None = None,
    prefetch: int = 2,
    pin_memory: bool = False,
    skip_corrupt: bool = False,
) -> tuple[dict, bool]:
    if augment not in _AUGMENTS:
        raise ValueError(f"augment must be one of {_AUGMENTS}, got {augment!r}")
    if output not in ("float", "uint8"):
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not isinstance(mask_ratio, (int, float)) or not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(
            f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
        )
    scale = _check_pair("rrc_scale", rrc_scale)
    if scale[1] > 1.0:
        raise ValueError(f"rrc_scale must lie in (0, 1], got {rrc_scale!r}")
    cfg = {
        "batch_size": _check_int("batch_size", batch_size, 1),
        "shuffle": bool(shuffle),
        "seed": int(seed) % (1 << 64),
        "drop_last": bool(drop_last),
        "rank": rank,
        "world_size": world_size,
        "augment": augment,
        "padding": _check_int("padding", padding, 0),
        "rrc_scale": scale,
        "rrc_ratio": _check_pair("rrc_ratio", rrc_ratio),
        "image_size": _check_int("image_size", image_size, 1, allow_none=True, hi=_MAX_IMAGE_SIZE),
        "num_masks": _check_int("num_masks", num_masks, 0, hi=_MAX_NUM_MASKS),
        "mask_ratio": float(mask_ratio),
        "patch_size": _check_int("patch_size", patch_size, 1, allow_none=True, hi=_MAX_IMAGE_SIZE),
        "sigma": _parse_sigma(sigma),
        "noisy": bool(noisy),
        "output": output,
        "num_threads": _check_int("num_threads", num_threads, 1, allow_none=True, hi=_MAX_THREADS),
        "prefetch": _check_int("prefetch", prefetch, 0, hi=_MAX_PREFETCH),
        "skip_corrupt": bool(skip_corrupt),
    }
    return cfg, bool(pin_memory)


def _labels_array(labels: Any, what: str = "labels") -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(
            f"{what} must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _uint8_images(images: Any) -> np.ndarray:
    """uint8 C-contiguous (N, H, W[, C]) without copying when it already is (memmaps stay mapped).

    Float images in [0, 1] are converted once to uint8 with ``round(x * 255)`` (a copy).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if arr.ndim not in (3, 4):
        raise ValueError(f"images must have shape (N, H, W, C) or (N, H, W), got {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"unsupported image dtype {arr.dtype}; use uint8 or float in [0, 1]")
        if arr.size:
            from mimir_fast.data.datasets import _check_float_range

            _check_float_range(
                arr
            )  # NaN, inf or values outside [0, 1] raise (they were clipped silently)
        arr = np.rint(np.clip(np.asarray(arr, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return None


def _check_batch_memory(native: Any, cfg: dict) -> None:
    """Raise ValueError when one batch could not fit in this machine's memory (instead of the
    native side failing to allocate it)."""
    limit = _physical_memory()
    if limit is None:
        return
    n = min(cfg["batch_size"], native.samples_per_rank)
    pixels = n * native.channels * native.image_size**2
    need = pixels * (1 if cfg["output"] == "uint8" else 4) + (4 * pixels if cfg["noisy"] else 0)
    need += cfg["num_masks"] * n * (8 * native.len_keep + 12 * native.num_patches)
    if need > limit:
        raise ValueError(
            f"one batch would need {need / 2**30:.1f} GiB ({n} images of {native.channels}x{native.image_size}x"
            f"{native.image_size}) but this machine has {limit / 2**30:.1f} GiB; lower batch_size or image_size"
        )


def _check_npy_file(path: Path) -> None:
    """Check a ``.npy`` file's header, dtype and size before the native side maps it.

    Raises:
        ValueError: naming the file.
    """
    from mimir_fast.data.datasets import _npy_header

    _, dtype = _npy_header(path)
    if dtype != np.uint8:
        raise ValueError(
            f"{path}: only uint8 .npy images are supported, got dtype {dtype}; convert with "
            "(x * 255).round().astype(np.uint8)"
        )


class _EpochIterator(Iterator[LoaderBatch]):
    """Iterator over one epoch; closing or dropping it stops the producer thread."""

    def __init__(self, loader: Loader, native_iter: Any):
        self._loader = loader
        self._it = native_iter

    def __iter__(self) -> _EpochIterator:
        return self

    def __next__(self) -> LoaderBatch:
        if self._it is None:
            raise StopIteration
        try:
            raw = next(self._it)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise
        return self._loader._wrap(raw)

    def close(self) -> None:
        """Stop the producer thread and wait for it (idempotent)."""
        it, self._it = self._it, None
        if it is not None:
            it.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Loader:
    """Batches from uint8 images with augmentation, patch masks and noise levels done in Rust.

    Args:
        images: (N, H, W, C) or (N, H, W) uint8 array (a ``np.memmap`` stays mapped; the
            buffer is borrowed, not copied, and must not be modified while the loader lives)
            or float in [0, 1] (converted to uint8 once, a copy).
        labels: (N,) integer labels; None means all zeros.
        batch_size: Samples per batch.
        shuffle: Permute the dataset each epoch (seeded by ``seed`` and the epoch).
        seed: Seed of every random draw.
        drop_last: Drop this rank's last incomplete batch.
        rank, world_size: Distributed shard: the epoch's permutation is cut to
            ``N // world_size * world_size`` samples and rank ``r`` takes every
            ``world_size``-th one from ``r`` (equal, disjoint shards).
        augment: ``"crop_flip"`` (random crop of the zero-padded image + horizontal flip),
            ``"crop"``, ``"flip"``, ``"rrc_flip"`` / ``"rrc"`` (torchvision's
            random-resized-crop, antialiased bilinear resize to ``image_size``) or ``"none"``.
        padding: Zero padding of the random crop.
        rrc_scale, rrc_ratio: Area fraction and aspect-ratio ranges of random-resized-crop.
        image_size: Output size; defaults to the images' size (arrays) or 224 (folders).
            Arrays need ``image_size`` equal to their size unless ``augment`` is rrc.
        num_masks: Independent patch masks per sample (MIMIR uses 2).
        mask_ratio: Fraction of patches removed; ``len_keep = int(L * (1 - mask_ratio))``.
        patch_size: The ViT's patch size (needed when ``num_masks > 0``).
        sigma: Per-sample noise level on the 0..255 scale: None, ``("gamma", k, theta)``
            (``"gamma"`` alone is NIM's Gamma(25, 3)), ``("uniform", a, b)`` or ``("constant", v)``.
        noisy: Also return ``images + sigma / 255 * z`` made on the host (needs ``sigma``).
        output: ``"float"`` (float32 in [0, 1]) or ``"uint8"`` (convert on the device).
        num_threads: Worker threads; None = available cores.
        prefetch: Ready batches kept in the queue.
        pin_memory: Pin batch tensors when CUDA is available (no-op otherwise).
        skip_corrupt: Drop unreadable samples from their batch (which is then shorter) and
            count them in ``skipped``, instead of raising ``ValueError``.

    Raises:
        ValueError: A bad configuration (integer options have upper bounds: ``image_size`` and
            ``patch_size`` 65536, ``num_masks``, ``num_threads`` and ``prefetch`` 1024), a batch
            larger than the machine's memory, float images with NaN or values outside [0, 1], or
            shapes/dtypes the loader does not support.
    """

    def __init__(self, images: Any, labels: Any = None, **kw: Any):
        cfg, pin = _make_config(**kw)
        arr = _uint8_images(images)
        native = _native.NativeLoader.from_array(arr, _labels_array(labels), cfg)
        self._setup(native, cfg, pin)

    # --- constructors ---------------------------------------------------------------------

    @classmethod
    def _from_native(cls, native: Any, cfg: dict, pin: bool) -> Loader:
        self = cls.__new__(cls)
        self._setup(native, cfg, pin)
        return self

    @classmethod
    def from_npy(
        cls, images_path: PathLike, labels_path: PathLike | None = None, **kw: Any
    ) -> Loader:
        """Memory-map a uint8 (N, H, W[, C]) ``.npy`` file in Rust (not read up front).

        Raises:
            FileNotFoundError: A file does not exist.
            ValueError: The file is not a C-order uint8 ``.npy`` array (the message names it).
        """
        cfg, pin = _make_config(**kw)
        path = Path(images_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"npy file not found: {path}")
        _check_npy_file(path)
        labels = None
        if labels_path is not None:
            lp = Path(labels_path).expanduser()
            if not lp.is_file():
                raise FileNotFoundError(f"npy file not found: {lp}")
            from mimir_fast.data.datasets import _load_npy_file

            labels = _labels_array(np.asarray(_load_npy_file(lp, mmap=False)), f"labels in {lp}")
        return cls._from_native(_native.NativeLoader.from_npy(str(path), labels, cfg), cfg, pin)

    @classmethod
    def from_cifar(cls, root: PathLike, train: bool = True, **kw: Any) -> Loader:
        """CIFAR-10/100 python batches, read with ``mimir_fast.data.CIFAR``'s safe unpickler
        (in Python, once) and handed to Rust as a uint8 array."""
        from mimir_fast.data.datasets import CIFAR

        return cls.from_dataset(CIFAR(root, train=train), **kw)

    @classmethod
    def from_image_folder(cls, root: PathLike, image_size: int = 224, **kw: Any) -> Loader:
        """``root/<class>/<image>`` JPEG/PNG files decoded in Rust (``augment`` defaults to
        ``"rrc_flip"``; other augments resize the central square to ``image_size`` first)."""
        from mimir_fast.data.datasets import ImageFolder

        ds = ImageFolder(root, image_size=image_size, extensions=(".jpg", ".jpeg", ".png"))
        return cls.from_dataset(ds, **kw)

    @classmethod
    def from_dataset(cls, dataset: Any, **kw: Any) -> Loader:
        """From ``ArrayDataset``/``CIFAR``/``load_digits`` (their ``.images``, borrowed; a float
        array is converted to uint8 once) or ``ImageFolder`` (its ``.samples``). The dataset's
        own ``transform`` is not used: the loader's ``augment`` replaces it."""
        if hasattr(dataset, "samples") and hasattr(dataset, "root"):
            kw.setdefault("image_size", dataset.image_size)
            kw.setdefault("augment", "rrc_flip")
            cfg, pin = _make_config(**kw)
            paths = [str(p) for p, _ in dataset.samples]
            labels = np.asarray([int(y) for _, y in dataset.samples], dtype=np.int64)
            native = _native.NativeLoader.from_files(paths, labels, cfg)
            return cls._from_native(native, cfg, pin)
        if hasattr(dataset, "images"):
            return cls(dataset.images, getattr(dataset, "labels", None), **kw)
        raise TypeError(
            f"from_dataset needs an ArrayDataset/CIFAR/digits dataset (with .images) or an "
            f"ImageFolder (with .samples), got {type(dataset).__name__}"
        )

    # --- state ----------------------------------------------------------------------------

    def _setup(self, native: Any, cfg: dict, pin: bool) -> None:
        _check_batch_memory(native, cfg)
        self._native = native
        self._cfg = cfg
        self._pin = pin and torch.cuda.is_available()  # pinning needs CUDA; no-op otherwise
        self._epoch = 0
        self._start_batch = 0
        self._active: weakref.ref | None = None
        self.skipped = 0  # samples dropped as unreadable so far (skip_corrupt=True)
        self.batch_size = cfg["batch_size"]
        self.image_size = native.image_size
        self.in_chans = native.channels
        self.num_patches = native.num_patches
        self.len_keep = native.len_keep
        self.num_threads = native.num_threads

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def num_samples(self) -> int:
        """Samples in the dataset (all ranks)."""
        return self._native.num_samples

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return len(self._native)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch of the next iteration, optionally resuming at batch ``start_batch``
        (only for that next iteration). Stops an iteration still running."""
        epoch = _check_int("epoch", epoch, 0)
        start_batch = _check_int("start_batch", start_batch, 0)
        if start_batch > len(self):
            raise ValueError(
                f"start_batch={start_batch} is past the end of the epoch ({len(self)} batches)"
            )
        self.close()
        self._epoch, self._start_batch = epoch, start_batch

    def iter_from(self, start_batch: int) -> _EpochIterator:
        """Iterate the current epoch from batch ``start_batch``."""
        self.set_epoch(self._epoch, start_batch)
        return iter(self)

    def __iter__(self) -> _EpochIterator:
        self.close()
        it = _EpochIterator(self, self._native.iter_epoch(self._epoch, self._start_batch))
        self._start_batch = 0
        self._active = weakref.ref(it)
        return it

    def close(self) -> None:
        """Stop the running iteration (if any) and join its producer thread."""
        it = self._active() if self._active is not None else None
        self._active = None
        if it is not None:
            it.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's dataset indices for ``epoch`` (default: the current one), in order."""
        return self._native.rank_indices(
            self._epoch if epoch is None else _check_int("epoch", epoch, 0)
        )

    def debug_params(self, index: int, epoch: int | None = None) -> dict:
        """Augmentation parameters of dataset ``index``: ``top``, ``left`` (crop corner in the
        padded image, or the rrc box corner in the source), ``height``, ``width``, ``flip``."""
        return self._native.debug_params(
            _check_int("index", index, 0),
            self._epoch if epoch is None else _check_int("epoch", epoch, 0),
        )

    # --- batches --------------------------------------------------------------------------

    def _wrap(self, raw: tuple) -> LoaderBatch:
        n, images, labels, indices, masks, sigma, seeds, noisy, skipped = raw
        c, s = self.in_chans, self.image_size
        lk, L = self.len_keep, self.num_patches

        def t(a):
            return None if a is None else torch.from_numpy(a)

        batch = LoaderBatch(
            images=torch.from_numpy(images.reshape(n, c, s, s)),
            labels=t(labels),
            indices=t(indices),
            masks=[
                (t(k.reshape(n, lk)), t(m.reshape(n, L)), t(r.reshape(n, L))) for k, m, r in masks
            ],
            sigma=t(sigma),
            noise_seed=t(seeds),
            noisy=None if noisy is None else torch.from_numpy(noisy.reshape(n, c, s, s)),
            skipped=int(skipped),
        )
        self.skipped += batch.skipped
        return batch.pin_memory() if self._pin else batch

    def __repr__(self) -> str:
        c = self._cfg
        return (
            f"Loader(num_samples={self.num_samples}, batch_size={c['batch_size']}, "
            f"image_size={self.image_size}, in_chans={self.in_chans}, augment={c['augment']!r}, "
            f"num_masks={c['num_masks']}, sigma={c['sigma']}, rank={c['rank']}/{c['world_size']}, "
            f"threads={self.num_threads})"
        )

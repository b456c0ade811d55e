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

import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimir_fast import _native
from mimir_fast._validate import check_int
from mimir_fast.data.arrays import PathLike, _check_float_range, _load_npy_file, _npy_header
from mimir_fast.data.cifar import CIFAR
from mimir_fast.data.image_folder import ImageFolder
from mimir_fast.data.loader_config import LoaderConfig

__all__ = ["Loader", "LoaderBatch"]


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
        if arr.size:  # NaN, inf or values outside [0, 1] raise (they were clipped silently)
            _check_float_range(arr)
        arr = np.rint(np.clip(np.asarray(arr, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return None


def _check_batch_memory(native: Any, cfg: LoaderConfig) -> None:
    """Raise ValueError when one batch could not fit in this machine's memory (instead of the
    native side failing to allocate it)."""
    limit = _physical_memory()
    if limit is None:
        return
    n = min(cfg.batch_size, native.samples_per_rank)
    c, s = native.channels, native.image_size
    pixels = n * c * s**2
    need = pixels * (1 if cfg.output == "uint8" else 4) + (4 * pixels if cfg.noisy else 0)
    need += cfg.num_masks * n * (8 * native.len_keep + 12 * native.num_patches)
    if need > limit:
        raise ValueError(
            f"one batch would need {need / 2**30:.1f} GiB ({n} images of {c}x{s}x{s}) but this "
            f"machine has {limit / 2**30:.1f} GiB; lower batch_size or image_size"
        )


def _check_npy_file(path: Path) -> None:
    """Check a ``.npy`` file's header, dtype and size before the native side maps it.

    Raises:
        ValueError: naming the file.
    """
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
        except BaseException:  # the end of the epoch (StopIteration) or a failure
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
        **options: The options of :class:`LoaderConfig` (``batch_size`` is required; also
            ``shuffle``, ``seed``, ``drop_last``, ``rank``, ``world_size``, ``augment``,
            ``padding``, ``rrc_scale``, ``rrc_ratio``, ``image_size``, ``num_masks``,
            ``mask_ratio``, ``patch_size``, ``sigma``, ``noisy``, ``output``, ``num_threads``,
            ``prefetch``, ``pin_memory``, ``skip_corrupt``, ``corruption``), documented there.

    Raises:
        ValueError: A bad option (see :class:`LoaderConfig`), options that do not fit the images
            (``image_size``, ``patch_size``, a mask that keeps no patch), a batch larger than
            the machine's memory, float images with NaN or values outside [0, 1], or
            shapes/dtypes the loader does not support.
    """

    def __init__(self, images: Any, labels: Any = None, **options: Any):
        cfg = LoaderConfig(**options)
        arr = _uint8_images(images)
        self._setup(_native.NativeLoader.from_array(arr, _labels_array(labels), cfg), cfg)

    # --- constructors ---------------------------------------------------------------------

    @classmethod
    def _from_native(cls, native: Any, cfg: LoaderConfig) -> Loader:
        self = cls.__new__(cls)
        self._setup(native, cfg)
        return self

    @classmethod
    def from_npy(
        cls, images_path: PathLike, labels_path: PathLike | None = None, **options: Any
    ) -> Loader:
        """Memory-map a uint8 (N, H, W[, C]) ``.npy`` file in Rust (not read up front).

        Raises:
            FileNotFoundError: A file does not exist.
            ValueError: The file is not a C-order uint8 ``.npy`` array (the message names it).
        """
        cfg = LoaderConfig(**options)
        path = Path(images_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"npy file not found: {path}")
        _check_npy_file(path)
        labels = None
        if labels_path is not None:
            lp = Path(labels_path).expanduser()
            if not lp.is_file():
                raise FileNotFoundError(f"npy file not found: {lp}")
            labels = _labels_array(np.asarray(_load_npy_file(lp, mmap=False)), f"labels in {lp}")
        return cls._from_native(_native.NativeLoader.from_npy(str(path), labels, cfg), cfg)

    @classmethod
    def from_cifar(cls, root: PathLike, train: bool = True, **options: Any) -> Loader:
        """CIFAR-10/100 python batches, read with ``mimir_fast.data.CIFAR``'s safe unpickler
        (in Python, once) and handed to Rust as a uint8 array."""
        return cls.from_dataset(CIFAR(root, train=train), **options)

    @classmethod
    def from_image_folder(cls, root: PathLike, image_size: int = 224, **options: Any) -> Loader:
        """``root/<class>/<image>`` JPEG/PNG files decoded in Rust (``augment`` defaults to
        ``"rrc_flip"``; other augments resize the central square to ``image_size`` first)."""
        ds = ImageFolder(root, image_size=image_size, extensions=(".jpg", ".jpeg", ".png"))
        return cls.from_dataset(ds, **options)

    @classmethod
    def from_dataset(cls, dataset: Any, **options: Any) -> Loader:
        """From ``ArrayDataset``/``CIFAR``/``load_digits`` (their ``.images``, borrowed; a float
        array is converted to uint8 once) or ``ImageFolder`` (its ``.samples``). The dataset's
        own ``transform`` is not used: the loader's ``augment`` replaces it."""
        if hasattr(dataset, "samples") and hasattr(dataset, "root"):
            options.setdefault("image_size", dataset.image_size)
            options.setdefault("augment", "rrc_flip")
            cfg = LoaderConfig(**options)
            paths = [str(p) for p, _ in dataset.samples]
            labels = np.asarray([int(y) for _, y in dataset.samples], dtype=np.int64)
            return cls._from_native(_native.NativeLoader.from_files(paths, labels, cfg), cfg)
        if hasattr(dataset, "images"):
            return cls(dataset.images, getattr(dataset, "labels", None), **options)
        raise TypeError(
            f"from_dataset needs an ArrayDataset/CIFAR/digits dataset (with .images) or an "
            f"ImageFolder (with .samples), got {type(dataset).__name__}"
        )

    # --- state ----------------------------------------------------------------------------

    def _setup(self, native: Any, cfg: LoaderConfig) -> None:
        _check_batch_memory(native, cfg)
        self._native = native
        self._cfg = cfg
        self._pin = cfg.pin_memory and torch.cuda.is_available()  # needs CUDA; no-op otherwise
        self._epoch = 0
        self._start_batch = 0
        self._active: weakref.ref | None = None
        self.skipped = 0  # samples dropped as unreadable so far (skip_corrupt=True)
        self.batch_size = cfg.batch_size
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
        epoch = check_int(epoch, "epoch", 0)
        start_batch = check_int(start_batch, "start_batch", 0)
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
            self._epoch if epoch is None else check_int(epoch, "epoch", 0)
        )

    def debug_params(self, index: int, epoch: int | None = None) -> dict:
        """Augmentation parameters of dataset ``index``: ``top``, ``left`` (crop corner in the
        padded image, or the rrc box corner in the source), ``height``, ``width``, ``flip``."""
        return self._native.debug_params(
            check_int(index, "index", 0),
            self._epoch if epoch is None else check_int(epoch, "epoch", 0),
        )

    # --- batches --------------------------------------------------------------------------

    def _wrap(self, raw: Any) -> LoaderBatch:
        """A ``_native.NativeBatch`` (flat numpy arrays) as a ``LoaderBatch`` of shaped tensors
        over the same memory."""
        n, c, s = raw.n, self.in_chans, self.image_size
        lk, L = self.len_keep, self.num_patches

        def tensor(a: np.ndarray | None, *shape: int) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a.reshape(n, *shape))

        batch = LoaderBatch(
            images=tensor(raw.images, c, s, s),  # (N, C, S, S)
            labels=tensor(raw.labels),  # (N,)
            indices=tensor(raw.indices),  # (N,)
            masks=[  # (N, len_keep), (N, L), (N, L) each
                (tensor(keep, lk), tensor(mask, L), tensor(restore, L))
                for keep, mask, restore in raw.masks
            ],
            sigma=tensor(raw.sigma),  # (N,)
            noise_seed=tensor(raw.noise_seed),  # (N,)
            noisy=tensor(raw.noisy, c, s, s),  # (N, C, S, S)
            skipped=raw.skipped,
        )
        self.skipped += batch.skipped
        return batch.pin_memory() if self._pin else batch

    def __repr__(self) -> str:
        c = self._cfg
        return (
            f"Loader(num_samples={self.num_samples}, batch_size={c.batch_size}, "
            f"image_size={self.image_size}, in_chans={self.in_chans}, augment={c.augment!r}, "
            f"num_masks={c.num_masks}, sigma={c.sigma}, rank={c.rank}/{c.world_size}, "
            f"threads={self.num_threads})"
        )

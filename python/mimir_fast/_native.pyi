"""Type stubs for the Rust extension module ``mimir_fast._native``."""

__version__: str

def build_profile() -> str:
    """``"release"`` or ``"debug"``: the Cargo profile the module was compiled with."""

def build_info() -> dict[str, str | bool]:
    """Version, profile, target architecture and OS, and whether debug assertions are on."""

# --- the native data loader (wrapped by mimir_fast.data.loader.Loader) ----------------------

from os import PathLike
from typing import Any

import numpy as np

class NativeLoader:
    """Rust loader state: source, validated configuration and the worker thread pool.

    ``config`` is the dict built by ``mimir_fast.data.loader._make_config`` (keys:
    batch_size, shuffle, seed, drop_last, rank, world_size, augment, padding, rrc_scale,
    rrc_ratio, image_size, num_masks, mask_ratio, patch_size, sigma, noisy, output,
    num_threads, prefetch, skip_corrupt; optional: partial_decode, default True, which decodes a
    sequential JPEG only down to the rows its random-resized-crop reads, with identical output).
    Bad values raise ``ValueError``.
    """

    @staticmethod
    def from_array(
        images: np.ndarray, labels: np.ndarray | None, config: dict[str, Any]
    ) -> NativeLoader:
        """Borrow a C-contiguous uint8 (N, H, W[, C]) array (no copy; must not be modified)."""
    @staticmethod
    def from_npy(
        path: str | PathLike[str], labels: np.ndarray | None, config: dict[str, Any]
    ) -> NativeLoader:
        """Memory-map a C-order uint8 ``.npy`` file."""
    @staticmethod
    def from_files(
        paths: list[str], labels: np.ndarray | None, config: dict[str, Any]
    ) -> NativeLoader:
        """JPEG/PNG files decoded as RGB on the worker threads."""
    def __len__(self) -> int:
        """Batches per epoch for this rank."""
    @property
    def num_samples(self) -> int: ...
    @property
    def samples_per_rank(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def channels(self) -> int: ...
    @property
    def num_patches(self) -> int: ...
    @property
    def len_keep(self) -> int: ...
    @property
    def num_threads(self) -> int: ...
    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's int64 dataset indices for ``epoch``, in delivery order."""
    def debug_params(self, index: int, epoch: int) -> dict[str, int | bool]:
        """``top``, ``left``, ``height``, ``width``, ``flip`` of a sample's augmentation."""
    def iter_epoch(self, epoch: int, start_batch: int) -> NativeIter:
        """Start a producer thread for ``epoch`` from batch ``start_batch``."""

class PixelBuffer:
    """Base object of a batch's image array; its memory returns to the loader for reuse when
    the array is freed."""

class NativeIter:
    """A running epoch; ``__next__`` waits with the GIL released. Dropping it joins the producer."""

    def __iter__(self) -> NativeIter: ...
    def __next__(
        self,
    ) -> tuple[
        int,
        np.ndarray,
        np.ndarray,
        np.ndarray,
        list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        np.ndarray | None,
        np.ndarray | None,
        np.ndarray | None,
        int,
    ]:
        """``(n, images, labels, indices, masks, sigma, noise_seed, noisy, skipped)``, all 1-D."""
    def close(self) -> None:
        """Stop the producer thread and wait for it."""

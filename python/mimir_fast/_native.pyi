"""Type stubs for the Rust extension module ``mimir_fast._native``."""

from os import PathLike
from typing import final

import numpy as np

from mimir_fast.data.loader_config import LoaderConfig

__all__ = [
    "NativeBatch",
    "NativeIter",
    "NativeLoader",
    "build_profile",
    "build_info",
    "corrupt_f32",
    "corrupt_u8",
    "corruption_names",
    "__version__",
]

__version__: str

def build_profile() -> str:
    """``"release"`` or ``"debug"``: the Cargo profile the module was compiled with."""

def build_info() -> dict[str, str | bool]:
    """Version, profile, target architecture and OS, and whether debug assertions are on."""

# --- common corruptions (wrapped by mimir_fast.data.corrupt) --------------------------------

def corrupt_u8(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """A corrupted copy of a C-contiguous uint8 (N, H, W, C) batch (ValueError for a bad
    name or severity)."""

def corrupt_f32(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """A corrupted copy of a C-contiguous float32 (N, C, H, W) batch in [0, 1]."""

def corruption_names() -> list[str]:
    """The corruption names, in the paper's order (frost left out)."""

# --- the native data loader (wrapped by mimir_fast.data.loader.Loader) ----------------------

@final
class NativeLoader:
    """Rust loader state: source, configuration and the worker thread pool.

    ``config`` is a checked :class:`~mimir_fast.data.LoaderConfig`; the Rust side reads its
    attributes by name (any object with them will do) and checks only what needs the
    images, raising ``ValueError``.
    """

    @staticmethod
    def from_array(
        images: np.ndarray, labels: np.ndarray | None, config: LoaderConfig
    ) -> NativeLoader:
        """Borrow a C-contiguous uint8 (N, H, W[, C]) array (no copy; must not be modified)."""
    @staticmethod
    def from_npy(
        path: str | PathLike[str], labels: np.ndarray | None, config: LoaderConfig
    ) -> NativeLoader:
        """Memory-map a C-order uint8 ``.npy`` file."""
    @staticmethod
    def from_files(
        paths: list[str], labels: np.ndarray | None, config: LoaderConfig
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

@final
class NativeBatch:
    """One batch; every array is 1-D and ``mimir_fast.data.loader`` reshapes it.

    The images' memory returns to the loader for reuse once the array is freed.
    """

    @property
    def n(self) -> int:
        """Samples in the batch."""
    @property
    def images(self) -> np.ndarray:
        """(n * C * S * S,) float32 in [0, 1], or uint8 with ``output="uint8"``."""
    @property
    def labels(self) -> np.ndarray:
        """(n,) int64."""
    @property
    def indices(self) -> np.ndarray:
        """(n,) int64 dataset indices."""
    @property
    def masks(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per mask: ids_keep (n * len_keep,) int64, mask (n * L,) float32, ids_restore
        (n * L,) int64."""
    @property
    def sigma(self) -> np.ndarray | None:
        """(n,) float32 noise levels, or None without ``sigma``."""
    @property
    def noise_seed(self) -> np.ndarray | None:
        """(n,) int64 per-sample noise seeds, or None without ``sigma``."""
    @property
    def noisy(self) -> np.ndarray | None:
        """(n * C * S * S,) float32 noisy images with ``noisy=True``, else None."""
    @property
    def skipped(self) -> int:
        """Samples of this batch dropped as unreadable."""

@final
class NativeIter:
    """A running epoch; ``__next__`` waits with the GIL released. Dropping it joins the producer."""

    def __iter__(self) -> NativeIter: ...
    def __next__(self) -> NativeBatch:
        """The next batch; raises ``StopIteration`` at the end of the epoch."""
    def close(self) -> None:
        """Stop the producer thread and wait for it."""

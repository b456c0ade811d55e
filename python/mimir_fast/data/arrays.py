"""Images held in an array (in memory or memory-mapped) and images read from ``.npy`` files.

Every dataset of the package returns ``(image, label)`` with ``image`` a float32 (C, H, W)
tensor in [0, 1] and ``label`` a python int, and exposes ``num_classes``, ``in_chans``,
``image_size`` (square images) and ``labels`` (int64 array of all labels).
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "PathLike", "Transform", "load_npy"]

Transform = Callable[[torch.Tensor], torch.Tensor]
PathLike = str | os.PathLike

_CHUNK_BYTES = 64 << 20  # validate float memmaps in chunks of about this size


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """Return ``x`` as a numpy array without copying numpy inputs (memmaps stay memmaps)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:
            raise ValueError(
                f"{what}: unsupported dtype torch.bfloat16; convert to float32 or uint8"
            )
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ArrayDataset(Dataset):
    """Images held in an array (in memory or memory-mapped).

    Args:
        images: (N, H, W, C) channels-last or (N, H, W) grayscale array or tensor;
            uint8 in 0..255 or float already in [0, 1]. A ``np.memmap`` is kept
            mapped and converted one item at a time.
        labels: (N,) integer labels; ``None`` means all zeros.
        num_classes: Number of classes; defaults to ``max(labels) + 1`` (1 when
            ``labels`` is ``None``).
        transform: Optional callable applied to each (C, H, W) float image.
        classes: Optional class names, ``classes[k]`` naming label ``k``.

    Raises:
        ValueError: On a wrong shape, dtype, value range or label.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | Sequence[int] | None = None,
        num_classes: int | None = None,
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
    ):
        images = _to_numpy(images, "images")
        if images.ndim not in (3, 4):
            raise ValueError(
                f"images must have shape (N, H, W, C) or (N, H, W), got ndim={images.ndim} "
                f"with shape {images.shape}"
            )
        n, h, w = images.shape[:3]
        if n == 0:
            raise ValueError("images is empty (N=0); a dataset needs at least one image")
        if h != w:
            hint = ""
            if images.ndim == 4 and h in (1, 3) and images.shape[3] not in (1, 3):
                hint = "; it looks channels-first, transpose it to (N, H, W, C)"
            raise ValueError(f"images must be square (H == W), got shape {images.shape}{hint}")
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise ValueError(
                f"unsupported image dtype {images.dtype}; use uint8 (0..255) or float in [0, 1]"
            )
        if images.dtype != np.uint8:
            _check_float_range(images)

        if labels is None:
            labels_arr = np.zeros(n, dtype=np.int64)
            if num_classes is None:
                num_classes = 1
        else:
            raw = _to_numpy(labels, "labels")
            if raw.ndim != 1:
                raise ValueError(f"labels must be 1-D (N,), got shape {raw.shape}")
            if raw.dtype.kind not in "iu":
                raise ValueError(f"labels must be integers, got dtype {raw.dtype}")
            if len(raw) != n:
                raise ValueError(f"got {n} images but {len(raw)} labels; the counts must match")
            labels_arr = raw.astype(np.int64)
            if labels_arr.min() < 0:
                raise ValueError(f"labels must be non-negative, found {labels_arr.min()}")
            if num_classes is None:
                num_classes = int(labels_arr.max()) + 1
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if labels_arr.max() >= num_classes:
            raise ValueError(
                f"label {labels_arr.max()} is out of range for num_classes={num_classes} "
                f"(labels must be < num_classes)"
            )
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"got {len(classes)} class names for num_classes={num_classes}")

        self.images = images
        self.labels = labels_arr
        self.num_classes = int(num_classes)
        self.in_chans = 1 if images.ndim == 3 else int(images.shape[3])
        self.image_size = int(h)
        self.transform = transform
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = np.array(self.images[i])  # (H, W, C) or (H, W); small per-item copy
        if x.dtype == np.uint8:
            img = torch.from_numpy(x).float().div_(255.0)
        else:
            img = torch.from_numpy(x.astype(np.float32, copy=False))
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1).contiguous()  # (C, H, W)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])


def _check_float_range(images: np.ndarray) -> None:
    """Raise ValueError unless all values are finite and in [0, 1] (chunked scan)."""
    per_item = max(1, images[0].nbytes)
    step = max(1, _CHUNK_BYTES // per_item)
    for start in range(0, len(images), step):
        chunk = np.asarray(images[start : start + step])
        if not np.isfinite(chunk).all():
            raise ValueError("float images contain NaN or inf; clean the data first")
        lo, hi = chunk.min(), chunk.max()
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images must be in [0, 1], found values in [{lo}, {hi}]; "
                f"divide by 255 or pass uint8"
            )


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, checked against the file's size (nothing else is
    read, so a header claiming a huge array cannot make the reader allocate it).

    Raises:
        ValueError: naming the file: not a ``.npy`` file, a corrupt header, or truncated data.
    """
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
            offset = f.tell()
    except Exception as e:  # numpy's header parser raises many types (ValueError, TokenError, ...)
        why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot read {path} as a .npy array: {why}") from None
    if not dtype.hasobject:
        need = math.prod(shape) * dtype.itemsize
        have = path.stat().st_size - offset
        if have < need:
            raise ValueError(
                f"{path} is truncated: its header says {dtype} {shape} ({need} bytes) but it "
                f"holds {have} bytes of data"
            )
    return tuple(shape), dtype


def _load_npy_file(path: PathLike, mmap: bool) -> np.ndarray:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"npy file not found: {path}")
    _npy_header(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError, OverflowError, MemoryError, pickle.UnpicklingError) as e:
        raise ValueError(f"cannot read {path} as a .npy array: {e}") from e
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise ValueError(f"{path} is not a single .npy array (got {type(arr).__name__})")
    return arr


def load_npy(
    images_path: PathLike, labels_path: PathLike | None = None, mmap: bool = True, **kw: Any
) -> ArrayDataset:
    """Load images (and optional labels) from ``.npy`` files.

    Args:
        images_path: (N, H, W, C) or (N, H, W) uint8/float array file.
        labels_path: Optional (N,) integer label file; without it all labels are 0.
        mmap: Memory-map the image file instead of reading it into memory.
        **kw: Forwarded to ``ArrayDataset`` (``num_classes``, ``transform``, ``classes``).

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: A file is not a readable ``.npy`` array, or the data is invalid.
    """
    images = _load_npy_file(images_path, mmap)
    labels = None if labels_path is None else np.asarray(_load_npy_file(labels_path, mmap=False))
    try:
        return ArrayDataset(images, labels, **kw)
    except ValueError as e:
        files = str(images_path) if labels_path is None else f"{images_path}, {labels_path}"
        raise ValueError(f"{files}: {e}") from e

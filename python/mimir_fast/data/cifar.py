"""Local CIFAR-10 and CIFAR-100 python-pickle batches, read with a restricted unpickler."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mimir_fast.data.arrays import ArrayDataset, PathLike, Transform

__all__ = ["CIFAR"]


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed to rebuild numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise ValueError(
                f"refusing to load global {module}.{name} (not needed by CIFAR batches)"
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def _load_pickle(path: Path) -> dict:
    """Load a CIFAR pickle with the restricted unpickler; ValueError names the file."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except Exception as e:  # malformed pickles raise many exception types
        raise ValueError(f"cannot read CIFAR file {path}: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR file {path} does not hold a dict (got {type(obj).__name__})")
    return obj


def _get(d: dict, key: str) -> Any:
    """Look up a key stored as bytes (python-2 pickles) or str."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


_CIFAR_LAYOUTS = (
    "expected a CIFAR-10 folder (data_batch_1..data_batch_5, test_batch, batches.meta) "
    "or a CIFAR-100 folder (train, test, meta), or a parent folder containing "
    "cifar-10-batches-py or cifar-100-python"
)


class CIFAR(ArrayDataset):
    """Local CIFAR-10 or CIFAR-100 python-pickle batches (auto-detected).

    Pickles are read with a restricted unpickler that only rebuilds numpy arrays.
    Attributes ``variant`` (``"cifar10"``/``"cifar100"``) and ``classes`` (names
    from the meta file, or ``None`` without one) are set.

    Args:
        root: The batch folder, or its parent containing ``cifar-10-batches-py``
            or ``cifar-100-python``.
        train: Training batches if True, else the test batch.
        transform: Optional callable applied to each (3, 32, 32) image.

    Raises:
        FileNotFoundError: The folder or a batch file is missing.
        ValueError: A batch file is corrupt, malformed or contains disallowed globals.
    """

    def __init__(self, root: PathLike, train: bool = True, transform: Transform | None = None):
        folder, variant = self._detect(Path(root).expanduser())
        if variant == "cifar10":
            names = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
            label_key, meta_name, names_key, num_classes = (
                "labels",
                "batches.meta",
                "label_names",
                10,
            )
        else:
            names = ["train"] if train else ["test"]
            label_key, meta_name, names_key, num_classes = (
                "fine_labels",
                "meta",
                "fine_label_names",
                100,
            )
        for name in names:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"missing CIFAR file {folder / name}; {_CIFAR_LAYOUTS}")

        data, labels = [], []
        for name in names:
            path = folder / name
            batch = _load_pickle(path)
            x, y = _get(batch, "data"), _get(batch, label_key)
            if (
                not isinstance(x, np.ndarray)
                or x.dtype != np.uint8
                or x.ndim != 2
                or x.shape[1] != 3072
            ):
                desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
                raise ValueError(
                    f"CIFAR file {path}: 'data' must be a uint8 (N, 3072) array, got {desc}"
                )
            if not isinstance(y, (list, np.ndarray)) or len(y) != len(x):
                raise ValueError(
                    f"CIFAR file {path}: '{label_key}' missing or not one label per image"
                )
            data.append(x)
            labels.append(np.asarray(y, dtype=np.int64))

        # (N, 3072) row-major RGB planes -> (N, 3, 32, 32) -> channels-last (N, 32, 32, 3)
        images = np.ascontiguousarray(
            np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        )
        classes = None
        if (folder / meta_name).is_file():
            raw = _get(_load_pickle(folder / meta_name), names_key)
            if raw is not None:
                classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
        super().__init__(images, np.concatenate(labels), num_classes, transform, classes)
        self.variant = variant

    @staticmethod
    def _detect(root: Path) -> tuple[Path, str]:
        if not root.is_dir():
            raise FileNotFoundError(f"CIFAR folder not found: {root}; {_CIFAR_LAYOUTS}")
        for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
            if not folder.is_dir():
                continue
            if any((folder / n).is_file() for n in ("batches.meta", "data_batch_1", "test_batch")):
                return folder, "cifar10"
            if any((folder / n).is_file() for n in ("meta", "train", "test")):
                return folder, "cifar100"
        raise FileNotFoundError(f"no CIFAR batch files found under {root}; {_CIFAR_LAYOUTS}")

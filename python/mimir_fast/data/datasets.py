"""Plain PyTorch datasets: in-memory arrays, .npy files, bundled digits, CIFAR, image folders.

Every dataset returns ``(image, label)`` with ``image`` a float32 (C, H, W) tensor in
[0, 1] and ``label`` a python int, and exposes ``num_classes``, ``in_chans``,
``image_size`` (square images) and ``labels`` (int64 array of all labels).
"""

from __future__ import annotations

import functools
import math
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "CIFAR", "ImageFolder", "build_dataset", "load_digits", "load_npy"]

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


@functools.lru_cache(maxsize=4)
def _digits_upscaled(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 sklearn digits as read-only uint8 (N, S, S) plus int64 (N,) labels."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (x[:, 0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()  # (N, S, S)
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: shuffle with ``Generator(seed)``, first ceil(fraction * n) go to test."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: math.ceil(test_fraction * len(idx))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def load_digits(
    split: str = "train",
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
    transform: Transform | None = None,
) -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits, bilinearly upscaled (1 channel, 10 classes).

    The split is stratified and fixed by ``seed``; the returned dataset has an
    ``indices`` attribute: positions in ``sklearn.datasets.load_digits()``.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        image_size: Output height and width.
        test_fraction: Fraction of each class put in the test split, in (0, 1).
        seed: Seed of the split shuffle.
        transform: Optional callable applied to each (1, S, S) image.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _digits_upscaled(image_size)
    if split == "all":
        indices = np.arange(len(labels))
    else:
        train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
        indices = train_idx if split == "train" else test_idx
    ds = ArrayDataset(
        images[indices],
        labels[indices],
        num_classes=10,
        transform=transform,
        classes=[str(d) for d in range(10)],
    )
    ds.indices = indices
    return ds


# --- CIFAR -------------------------------------------------------------------------------


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


# --- Image folders -----------------------------------------------------------------------


class ImageFolder(Dataset):
    """ImageNet-style tree ``root/<class_name>/<image>`` decoded with PIL as RGB.

    Classes are the sorted subfolder names; images are found recursively inside
    each class folder. Without a transform each image is resized (bilinear) so its
    short side is ``image_size`` and center-cropped to ``image_size``; with one,
    the transform receives the full-resolution (3, H, W) image and must produce
    ``image_size`` x ``image_size`` output itself.

    Args:
        root: Folder holding one subfolder per class.
        image_size: Output height and width.
        transform: Optional callable replacing the resize + center crop.
        extensions: Accepted file suffixes (case-insensitive).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No class folders or no images; ``__getitem__`` raises it for an
            undecodable image, naming the file.
    """

    def __init__(
        self,
        root: PathLike,
        image_size: int = 224,
        transform: Transform | None = None,
        extensions: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp", ".webp"),
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        exts = tuple(e.lower() for e in extensions)
        classes = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not classes:
            raise ValueError(f"no class subfolders in {root}; expected root/<class_name>/<image>")
        samples = []
        for label, name in enumerate(classes):
            files = sorted(
                p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in exts
            )
            samples.extend((str(p), label) for p in files)
        if not samples:
            raise ValueError(f"no images with extensions {exts} found under {root}/<class_name>/")

        self.root = root
        self.classes = classes
        self.samples = samples
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.num_classes = len(classes)
        self.in_chans = 3
        self.image_size = image_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, path: str):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (
            OSError,
            UnidentifiedImageError,
            SyntaxError,
            ValueError,
            Image.DecompressionBombError,
        ) as e:
            raise ValueError(f"cannot decode image {path}: {e}") from e
        except Exception as e:  # PIL's plugins raise many other types for corrupt data
            raise ValueError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e

    def _resize_center_crop(self, im):
        from PIL import Image

        s = self.image_size
        w, h = im.size
        if w <= h:
            nw, nh = s, max(s, round(h * s / w))
        else:
            nw, nh = max(s, round(w * s / h)), s
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - s) // 2, (nh - s) // 2
        return im.crop((left, top, left + s, top + s))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        im = self._decode(path)
        if self.transform is None:
            im = self._resize_center_crop(im)
        img = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, label


# --- Spec strings -------------------------------------------------------------------------

_SPEC_FORMS = (
    "'digits', 'cifar:/path/to/cifar', 'imagefolder:/path/to/root', "
    "'npy:/path/images.npy' or 'npy:/path/images.npy,/path/labels.npy'"
)


def _check_fixed_size(ds: ArrayDataset, image_size: int | None, spec: str) -> ArrayDataset:
    if image_size is not None and image_size != ds.image_size:
        raise ValueError(
            f"{spec!r} holds {ds.image_size}x{ds.image_size} images but image_size={image_size} "
            f"was requested; leave image_size unset or resize with a transform"
        )
    return ds


def build_dataset(
    spec: str,
    split: str = "train",
    image_size: int | None = None,
    transform: Transform | None = None,
) -> Dataset:
    """Build a dataset from a one-string spec (used by the config and CLI).

    Forms:
        ``"digits"``: ``load_digits`` (``image_size`` defaults to 32).
        ``"cifar:/path"``: ``CIFAR``; images are 32x32.
        ``"imagefolder:/path"``: ``ImageFolder`` on ``/path/train`` (split "train")
            or ``/path/val`` (split "test") when those folders exist, else on
            ``/path`` itself for both splits (``image_size`` defaults to 224).
        ``"npy:/path/images.npy[,/path/labels.npy]"``: ``load_npy``; there is no
            split, so "train" and "test" return the same data.

    Args:
        spec: Data source string, see above.
        split: ``"train"`` or ``"test"``.
        image_size: Output size; for fixed-size sources (cifar, npy) it must match or be None.
        transform: Optional callable applied to each image.

    Raises:
        ValueError: Unknown spec form, bad split or size mismatch.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind == "digits" and not sep:
        return load_digits(split, image_size=image_size or 32, transform=transform)
    if sep and not arg and kind in ("cifar", "imagefolder", "npy"):
        raise ValueError(
            f"data spec {spec!r} is missing a path after ':'; accepted forms: {_SPEC_FORMS}"
        )
    if kind == "cifar" and sep:
        return _check_fixed_size(
            CIFAR(arg, train=split == "train", transform=transform), image_size, spec
        )
    if kind == "imagefolder" and sep:
        root = Path(arg).expanduser()
        sub = "train" if split == "train" else "val"
        if (root / sub).is_dir():
            root = root / sub
        elif (root / "train").is_dir() or (root / "val").is_dir():
            raise FileNotFoundError(
                f"{root} has a train/ or val/ folder but no {sub}/ folder for split {split!r}"
            )
        return ImageFolder(root, image_size=image_size or 224, transform=transform)
    if kind == "npy" and sep:
        paths = [p.strip() for p in arg.split(",")]
        if len(paths) > 2 or not all(paths):
            raise ValueError(f"npy spec takes 'images.npy' or 'images.npy,labels.npy', got {arg!r}")
        ds = load_npy(paths[0], paths[1] if len(paths) == 2 else None, transform=transform)
        return _check_fixed_size(ds, image_size, spec)
    raise ValueError(f"unknown data spec {spec!r}; accepted forms: {_SPEC_FORMS}")

"""Datasets from one-string specs (``"digits"``, ``"cifar:/path"``, ...), as the config and
the command line name them. The sources themselves live in ``arrays``, ``digits``, ``cifar``
and ``image_folder``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from mimir_fast.data.arrays import ArrayDataset, Transform, load_npy
from mimir_fast.data.cifar import CIFAR
from mimir_fast.data.digits import load_digits
from mimir_fast.data.image_folder import ImageFolder

__all__ = ["build_dataset"]


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

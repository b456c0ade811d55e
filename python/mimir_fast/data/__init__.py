"""Data: datasets and spec strings, the native (Rust) Loader, and torch-only transforms."""

from mimir_fast.data.datasets import (
    CIFAR,
    ArrayDataset,
    ImageFolder,
    build_dataset,
    load_digits,
    load_npy,
)
from mimir_fast.data.loader import Loader, LoaderBatch
from mimir_fast.data.transforms import (
    Compose,
    RandomCropWithPadding,
    RandomHorizontalFlip,
    RandomResizedCrop,
    default_train_transform,
)

__all__ = [
    "ArrayDataset",
    "CIFAR",
    "Compose",
    "ImageFolder",
    "Loader",
    "LoaderBatch",
    "RandomCropWithPadding",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "build_dataset",
    "default_train_transform",
    "load_digits",
    "load_npy",
]

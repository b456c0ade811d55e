"""Data: datasets and spec strings, the native (Rust) Loader, and torch-only transforms."""

from mimir_fast.data.arrays import ArrayDataset, load_npy
from mimir_fast.data.cifar import CIFAR
from mimir_fast.data.corruptions import CORRUPTION_FAMILIES, CORRUPTIONS, corrupt
from mimir_fast.data.datasets import build_dataset
from mimir_fast.data.digits import load_digits
from mimir_fast.data.image_folder import ImageFolder
from mimir_fast.data.loader import Loader, LoaderBatch
from mimir_fast.data.loader_config import LoaderConfig
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
    "CORRUPTIONS",
    "CORRUPTION_FAMILIES",
    "Compose",
    "ImageFolder",
    "Loader",
    "LoaderBatch",
    "LoaderConfig",
    "RandomCropWithPadding",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "build_dataset",
    "corrupt",
    "default_train_transform",
    "load_digits",
    "load_npy",
]

"""scikit-learn's bundled handwritten digits, upscaled, as an :class:`ArrayDataset`."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from mimir_fast._validate import check_choice, check_int, check_number
from mimir_fast.data.arrays import ArrayDataset, Transform

__all__ = ["load_digits"]


@functools.lru_cache(maxsize=4)
def _digits_upscaled(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 sklearn digits as read-only uint8 (N, S, S) plus int64 (N,) labels."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError(
            "the embedded digits dataset ships with scikit-learn, which is not installed: "
            "pip install 'mimir-fast[demo]' (or scikit-learn)"
        ) from None

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
    check_choice(split, "split", ("train", "test", "all"))
    image_size = check_int(image_size, "image_size", 1)
    check_number(test_fraction, "test_fraction", 0.0, 1.0, low_open=True, high_open=True)
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

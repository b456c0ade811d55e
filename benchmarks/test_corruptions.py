"""Common corruptions on the fly: the native Loader's ``corruption`` option vs numpy/PIL.

Groups:
    corrupt-32px: 32x32x3 uint8 images (CIFAR-10-C parameters), batch 128, one epoch of 1024.
    corrupt-224px: 224x224x3 uint8 images (ImageNet-C parameters), batch 32, one epoch of 64
        (glass blur: batch 16, one epoch of 16, as its reference takes about 2 s an image).

Each corruption at severity 3. The "numpy" provider is a torch ``DataLoader`` whose Dataset
corrupts each sample with ``benchmarks/corruption_reference.py`` (numpy, scipy, scikit-image,
PIL), with the faster of ``num_workers`` 0 and 2; "mimir_fast" is ``Loader(...,
corruption="name:3")``, which corrupts in Rust on its worker threads. Run
``python -m pytest benchmarks/test_corruptions.py --benchmark-only``.
"""

from __future__ import annotations

import time

import corruption_reference as ref
import numpy as np
import pytest
import torch
from mimir_fast.data import CORRUPTIONS, Loader, corrupt
from torch.utils.data import DataLoader, Dataset

SEVERITY = 3
SIZES = {32: (1024, 128), 224: (64, 32)}  # size: (images, batch)
FEWER = {(224, "glass_blur"): (16, 16)}  # a reference too slow for a whole epoch


class NumpyCorruption(Dataset):
    """Per-sample corruption with the numpy/PIL reference, as a (C, H, W) float tensor."""

    def __init__(self, images: np.ndarray, name: str):
        self.images, self.name = images, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng(i)
        out = ref.corrupt_image(self.images[i], self.name, SEVERITY, rng)
        return torch.from_numpy(out).permute(2, 0, 1).float().div_(255.0)


def images(n: int, size: int) -> np.ndarray:
    """Smooth random images: random colours on a grid of every 8th pixel, interpolated bicubic
    between them (noise images would make blur and JPEG unrepresentative, and flat 8x8 tiles
    on JPEG's block grid would flatter its blocks that need no transform)."""
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.integers(0, 256, (n, 3, size // 8, size // 8))).float()
    smooth = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic")
    return smooth.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def epoch(loader) -> int:
    return sum(len(b) if isinstance(b, torch.Tensor) else len(b.images) for b in loader)


def numpy_loader(ds: Dataset, batch: int, workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0)


def best_numpy_loader(ds: Dataset, batch: int) -> tuple[DataLoader, int]:
    """The faster of num_workers 0 and 2 (one timed epoch each after a warm-up epoch)."""
    best = None
    for workers in (0, 2):
        dl = numpy_loader(ds, batch, workers)
        epoch(dl)
        t = time.perf_counter()
        epoch(dl)
        dt = time.perf_counter() - t
        if best is None or dt < best[0]:
            best = (dt, dl, workers)
    return best[1], best[2]


def _run(benchmark, provider: str, name: str, size: int) -> None:
    n, batch = FEWER.get((size, name), SIZES[size])
    if benchmark.disabled:
        n, batch = 4, 2
    x = images(n, size)
    if provider == "mimir_fast":
        loader = Loader(
            x, batch_size=batch, shuffle=False, augment="none", corruption=f"{name}:{SEVERITY}"
        )
        expected = torch.from_numpy(corrupt(x[:batch], name, SEVERITY)).permute(0, 3, 1, 2)
        got = next(iter(loader)).images
        assert (got * 255 - expected.float()).abs().max() <= 0.5 + 1e-3
    else:
        ds = NumpyCorruption(x, name)
        if benchmark.disabled:
            loader, workers = numpy_loader(ds, batch, 0), 0
        else:
            loader, workers = best_numpy_loader(ds, batch)
        benchmark.extra_info["num_workers"] = workers
        got = next(iter(loader))
    clean = torch.from_numpy(x[:batch]).permute(0, 3, 1, 2).float() / 255
    assert got.shape == clean.shape and (got - clean).abs().mean() > 1e-3
    count = benchmark.pedantic(
        epoch,
        args=(loader,),
        rounds=1 if benchmark.disabled else 3,
        warmup_rounds=0 if benchmark.disabled else 1,
    )
    assert count == n
    benchmark.extra_info["images"] = count


@pytest.mark.benchmark(group="corrupt-32px")
@pytest.mark.parametrize("provider", ["numpy", "mimir_fast"])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_32px(benchmark, provider: str, name: str) -> None:
    _run(benchmark, provider, name, 32)


@pytest.mark.benchmark(group="corrupt-224px")
@pytest.mark.parametrize("provider", ["numpy", "mimir_fast"])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_224px(benchmark, provider: str, name: str) -> None:
    _run(benchmark, provider, name, 224)

"""Native loader vs a torch DataLoader doing the same per-sample work in Python.

Groups:
    loader-cifar: 32x32x3 uint8 images, random crop (padding 4) + flip + two MAE masks
        (patch 2, ratio 0.75) + a Gamma(25, 3) sigma and noise seed, batch 256, one epoch.
    loader-imagefolder: JPEGs of 300-500 px, random-resized-crop to 224 + flip, batch 64.

The torch provider is a ``DataLoader`` over a Dataset whose ``__getitem__`` does the work,
with the faster of ``num_workers`` 0 and 2 (picked by timing one epoch of each). Run
``python -m pytest benchmarks/test_loader.py --benchmark-only`` (or
``python benchmarks/loader_ratio.py`` for images/second and the ratios side by side).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mimir_fast.data.loader import Loader
from PIL import Image
from torch.utils.data import DataLoader, Dataset

PATCH, RATIO, PAD, BATCH = 2, 0.75, 4, 256
IMG_BATCH, IMG_SIZE = 64, 224


# --- the torch baselines ----------------------------------------------------------------------


class CifarWork(Dataset):
    """Per-sample crop with padding + flip + two random masks + Gamma sigma, in torch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(images)  # (N, H, W, C) uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.size = images.shape[1]
        self.L = (self.size // PATCH) ** 2
        self.len_keep = int(self.L * (1 - RATIO))
        self.gamma = torch.distributions.Gamma(torch.tensor(25.0), torch.tensor(1 / 3.0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        s = self.size
        x = self.images[i].permute(2, 0, 1).float().div_(255.0)  # (C, H, W)
        x = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
        top, left = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
        x = x[:, top : top + s, left : left + s]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        out = [x.contiguous(), self.labels[i], i]
        for _ in range(2):
            ids_shuffle = torch.argsort(torch.rand(self.L))
            ids_restore = torch.argsort(ids_shuffle)
            out += [
                ids_shuffle[: self.len_keep],
                (ids_restore >= self.len_keep).float(),
                ids_restore,
            ]
        out += [self.gamma.sample(), torch.randint(0, 2**62, ())]
        return tuple(out)


def _rrc_box(w: int, h: int, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box (left, top, width, height)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, side, side


class FolderWork(Dataset):
    """PIL decode + random-resized-crop (bilinear) + flip + to float tensor."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.rng = np.random.default_rng()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
        left, top, cw, ch = _rrc_box(im.width, im.height, self.rng)
        im = im.resize((IMG_SIZE, IMG_SIZE), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        if self.rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div_(255.0)
        return x, 0


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if isinstance(info.dataset, FolderWork):
        info.dataset.rng = np.random.default_rng(worker_id + 1000 * info.seed % (2**32))


def torch_loader(ds: Dataset, batch: int, workers: int) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers else None,
    )


def epoch(loader) -> int:
    n = 0
    for b in loader:
        n += len(b[0]) if isinstance(b, (list, tuple)) else len(b)
    return n


def best_torch_loader(ds: Dataset, batch: int) -> tuple[DataLoader, int]:
    """The faster of num_workers 0 and 2 (one timed epoch each after a warm-up epoch)."""
    best = None
    for workers in (0, 2):
        dl = torch_loader(ds, batch, workers)
        epoch(dl)  # warm-up (starts persistent workers)
        t = time.perf_counter()
        epoch(dl)
        dt = time.perf_counter() - t
        if best is None or dt < best[0]:
            best = (dt, dl, workers)
    return best[1], best[2]


# --- data ---------------------------------------------------------------------------------------


def cifar_like(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def make_jpeg_folder(root: Path, n: int) -> Path:
    """``n`` JPEGs of 300-500 px (smooth waves + noise, quality 90) in two class folders.

    32 distinct pictures are drawn and each is saved at several random sizes, which keeps
    the generation quick while every file still has to be decoded in full.
    """
    rng = np.random.default_rng(0)
    bases = []
    for _ in range(32):
        yy, xx = np.mgrid[0:500, 0:500].astype(np.float32)
        f = rng.uniform(0.005, 0.05, 3)
        img = np.stack([127 + 100 * np.sin(f[c] * (xx + 2 * yy) + c) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        bases.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    for k in range(n):
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        d = root / f"class{k % 2}"
        d.mkdir(parents=True, exist_ok=True)
        bases[k % 32].crop((0, 0, w, h)).save(d / f"{k:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs"), 480)


# --- correctness before timing ------------------------------------------------------------------


def _check_cifar_batch(b, L: int) -> None:
    assert b.images.shape == (BATCH, 3, 32, 32) and b.images.dtype == torch.float32
    assert 0.0 <= float(b.images.min()) and float(b.images.max()) <= 1.0
    assert len(b.masks) == 2
    for ids_keep, mask, ids_restore in b.masks:
        assert ids_keep.shape == (BATCH, int(L * (1 - RATIO)))
        assert torch.equal(torch.sort(ids_restore, 1).values, torch.arange(L).expand(BATCH, -1))
        assert torch.equal(mask.sum(1), torch.full((BATCH,), float(L - ids_keep.shape[1])))
    assert b.sigma.shape == (BATCH,) and float(b.sigma.mean()) > 40


def _check_torch_batch(b, L: int) -> None:
    assert b[0].shape == (BATCH, 3, 32, 32) and len(b) == 11
    assert torch.equal(torch.sort(b[5], 1).values, torch.arange(L).expand(BATCH, -1))


@pytest.mark.benchmark(group="loader-cifar")
@pytest.mark.parametrize("provider", ["torch", "mimir_fast"])
def test_loader_cifar(benchmark, provider):
    n = 1024 if benchmark.disabled else 10240
    images, labels = cifar_like(n)
    L = (32 // PATCH) ** 2
    if provider == "mimir_fast":
        loader = Loader(
            images,
            labels,
            batch_size=BATCH,
            augment="crop_flip",
            padding=PAD,
            num_masks=2,
            mask_ratio=RATIO,
            patch_size=PATCH,
            sigma=("gamma", 25, 3),
        )
        _check_cifar_batch(next(iter(loader)), L)
    else:
        ds = CifarWork(images, labels)
        if benchmark.disabled:
            loader, workers = torch_loader(ds, BATCH, 0), 0
        else:
            loader, workers = best_torch_loader(ds, BATCH)
        benchmark.extra_info["num_workers"] = workers
        _check_torch_batch(next(iter(loader)), L)
    count = benchmark.pedantic(
        epoch,
        args=(loader,),
        rounds=1 if benchmark.disabled else 3,
        warmup_rounds=0 if benchmark.disabled else 1,
    )
    assert count == n // BATCH * BATCH
    benchmark.extra_info["images"] = count


@pytest.mark.benchmark(group="loader-imagefolder")
@pytest.mark.parametrize("provider", ["torch", "mimir_fast"])
def test_loader_imagefolder(benchmark, provider, jpeg_folder):
    if provider == "mimir_fast":
        loader = Loader.from_image_folder(jpeg_folder, image_size=IMG_SIZE, batch_size=IMG_BATCH)
        b = next(iter(loader))
        assert b.images.shape == (IMG_BATCH, 3, IMG_SIZE, IMG_SIZE)
        assert 0.2 < float(b.images.mean()) < 0.8
    else:
        paths = sorted(str(p) for p in jpeg_folder.rglob("*.jpg"))
        ds = FolderWork(paths)
        if benchmark.disabled:
            loader, workers = torch_loader(ds, IMG_BATCH, 2), 2
        else:
            loader, workers = best_torch_loader(ds, IMG_BATCH)
        benchmark.extra_info["num_workers"] = workers
        b = next(iter(loader))
        assert b[0].shape == (IMG_BATCH, 3, IMG_SIZE, IMG_SIZE)
    count = benchmark.pedantic(
        epoch,
        args=(loader,),
        rounds=1 if benchmark.disabled else 5,
        warmup_rounds=0 if benchmark.disabled else 1,
    )
    assert count == 480 // IMG_BATCH * IMG_BATCH
    benchmark.extra_info["images"] = count

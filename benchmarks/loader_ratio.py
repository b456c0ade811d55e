"""Images/second of the native loader vs the torch DataLoader baselines, side by side.

Usage: ``python benchmarks/loader_ratio.py`` (prints a table for the README).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from test_loader import (  # noqa: E402
    BATCH, IMG_BATCH, IMG_SIZE, PAD, PATCH, RATIO, CifarWork, FolderWork, cifar_like, epoch,
    make_jpeg_folder, torch_loader,
)

from mimir_fast.data.loader import Loader  # noqa: E402


def rate(loader, rounds: int = 3) -> float:
    """Best images/second over ``rounds`` epochs after one warm-up epoch."""
    epoch(loader)
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        n = epoch(loader)
        best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> None:
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}")
    images, labels = cifar_like(10240)
    ds = CifarWork(images, labels)
    torch_rates = {w: rate(torch_loader(ds, BATCH, w)) for w in (0, 2)}
    native = Loader(images, labels, batch_size=BATCH, padding=PAD, num_masks=2, mask_ratio=RATIO,
                    patch_size=PATCH, sigma=("gamma", 25, 3))
    ours = rate(native)
    best_w = max(torch_rates, key=torch_rates.get)
    print(f"loader-cifar      torch (workers=0): {torch_rates[0]:9.0f} img/s")
    print(f"loader-cifar      torch (workers=2): {torch_rates[2]:9.0f} img/s")
    print(f"loader-cifar      mimir_fast:        {ours:9.0f} img/s  "
          f"ratio {ours / torch_rates[best_w]:.1f}x vs best torch (workers={best_w})")

    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_folder(Path(tmp), 480)
        paths = sorted(str(p) for p in root.rglob("*.jpg"))
        fds = FolderWork(paths)
        trates = {w: rate(torch_loader(fds, IMG_BATCH, w), rounds=2) for w in (0, 2)}
        ours = rate(Loader.from_image_folder(root, image_size=IMG_SIZE, batch_size=IMG_BATCH),
                    rounds=2)
        best_w = max(trates, key=trates.get)
        print(f"loader-imagefolder torch (workers=0): {trates[0]:8.0f} img/s")
        print(f"loader-imagefolder torch (workers=2): {trates[2]:8.0f} img/s")
        print(f"loader-imagefolder mimir_fast:        {ours:8.0f} img/s  "
              f"ratio {ours / trates[best_w]:.1f}x vs best torch (workers={best_w})")


if __name__ == "__main__":
    main()

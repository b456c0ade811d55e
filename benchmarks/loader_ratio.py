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
from mimir_fast.data.loader import Loader  # noqa: E402
from test_loader import (  # noqa: E402
    BATCH,
    IMG_BATCH,
    IMG_SIZE,
    PAD,
    PATCH,
    RATIO,
    CifarWork,
    FolderWork,
    cifar_like,
    epoch,
    make_jpeg_folder,
    torch_loader,
)


def rates(loaders: dict[str, object], rounds: int) -> dict[str, float]:
    """Best images/second of each loader over ``rounds`` epochs after a warm-up epoch, with the
    loaders' epochs interleaved so that a busy moment of the machine hits all of them alike."""
    for loader in loaders.values():
        epoch(loader)
    best = dict.fromkeys(loaders, 0.0)
    for _ in range(rounds):
        for name, loader in loaders.items():
            t = time.perf_counter()
            n = epoch(loader)
            best[name] = max(best[name], n / (time.perf_counter() - t))
    return best


def report(group: str, r: dict[str, float]) -> None:
    torch_best = max(("torch0", "torch2"), key=r.get)
    for name, label in (
        ("torch0", "torch (workers=0)"),
        ("torch2", "torch (workers=2)"),
        ("ours", "mimir_fast"),
    ):
        line = f"{group:18s} {label + ':':19s} {r[name]:9.0f} img/s"
        if name == "ours":
            line += (
                f"  ratio {r['ours'] / r[torch_best]:.2f}x vs best torch (workers={torch_best[-1]})"
            )
        print(line)


def main() -> None:
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}")
    images, labels = cifar_like(10240)
    ds = CifarWork(images, labels)
    native = Loader(
        images,
        labels,
        batch_size=BATCH,
        padding=PAD,
        num_masks=2,
        mask_ratio=RATIO,
        patch_size=PATCH,
        sigma=("gamma", 25, 3),
    )
    report(
        "loader-cifar",
        rates(
            {
                "torch0": torch_loader(ds, BATCH, 0),
                "torch2": torch_loader(ds, BATCH, 2),
                "ours": native,
            },
            rounds=3,
        ),
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_folder(Path(tmp), 480)
        paths = sorted(str(p) for p in root.rglob("*.jpg"))
        fds = FolderWork(paths)
        ours = Loader.from_image_folder(root, image_size=IMG_SIZE, batch_size=IMG_BATCH)
        report(
            "loader-imagefolder",
            rates(
                {
                    "torch0": torch_loader(fds, IMG_BATCH, 0),
                    "torch2": torch_loader(fds, IMG_BATCH, 2),
                    "ours": ours,
                },
                rounds=5,
            ),
        )


if __name__ == "__main__":
    main()

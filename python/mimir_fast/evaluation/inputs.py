"""The images and labels an evaluation runs on, and the device it runs on.

Shared by :func:`mimir_fast.evaluate` and
:func:`~mimir_fast.evaluation.corruptions.evaluate_corruptions`.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validate import check_int

__all__ = ["device_of", "load_data"]


def load_data(data: Any, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the first ``max_images`` items of ``data`` (every item when None).

    Args:
        data: a dataset of ``(image, label)``, an ``(x, y)`` tensor pair, or a DataLoader.
        max_images: how many items to use; None: all of them.
    """
    max_images = check_int(max_images, "max_images", low=1, allow_none=True)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader):
        xs, ys, count = [], [], 0
        for xb, yb in data:
            xs.append(xb)
            ys.append(torch.as_tensor(yb))
            count += xb.shape[0]
            if max_images is not None and count >= max_images:
                break
        x, y = torch.cat(xs), torch.cat(ys)
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data) if max_images is None else min(len(data), max_images)
        items = [data[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(im) for im, _ in items])  # (N, C, H, W)
        y = torch.as_tensor([int(lbl) for _, lbl in items])  # (N,)
    else:
        raise ValueError(
            "data must be a dataset of (image, label), an (x, y) tensor pair or a DataLoader"
        )
    if max_images is not None:
        x, y = x[:max_images], y[:max_images]
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"mismatched batch sizes: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def device_of(model: Any, device: str | torch.device | None) -> torch.device:
    """``device``, or by default the device of the model's first parameter (else the CPU)."""
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    return torch.device(device)

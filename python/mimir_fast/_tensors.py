"""Numbers onto a device without a host synchronisation."""

from __future__ import annotations

import torch

__all__ = ["as_device_tensor"]


def as_device_tensor(
    value: float | torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``value`` as a tensor of ``dtype`` on ``device``.

    ``torch.as_tensor(3.0, device="cuda")`` copies from pageable host memory, which blocks the
    host until the GPU is idle; a Python number here becomes a fill kernel instead (0-d), and a
    tensor is moved (a no-op when it is already there).
    """
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.full((), float(value), dtype=dtype, device=device)

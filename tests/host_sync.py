"""A CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``.

On a GPU these operations make the host wait for the device: reading a value back (``.item()``,
``bool(t)``, ``float(t)``), copying Python data onto the device (``torch.tensor(3.0,
device="cuda")`` copies from pageable memory), and the ops whose output size depends on the
data (``nonzero``, ``masked_select``, boolean-mask indexing). :func:`no_host_sync` records them
on any device, so a CPU test catches what would stall a GPU step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNCING_OPS", "no_host_sync"]

SYNCING_OPS = {
    "aten._local_scalar_dense.default": "a value read back to the host (.item(), bool, float)",
    "aten.lift_fresh.default": "Python data copied onto the device (torch.tensor / as_tensor)",
    "aten.nonzero.default": "nonzero: its output size depends on the data",
    "aten.masked_select.default": "masked_select: its output size depends on the data",
}


def _bool_index(func, args) -> bool:
    if str(func) not in ("aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default"):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in SYNCING_OPS:
            self.found.append(f"{name}: {SYNCING_OPS[name]}")
        elif _bool_index(func, args):
            self.found.append(f"{name}: boolean-mask indexing (its size depends on the data)")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Within: any op that would synchronise a GPU with the host fails the test, named."""
    recorder = _Recorder()
    with recorder:
        yield
    assert not recorder.found, "host synchronisation:\n" + "\n".join(recorder.found)

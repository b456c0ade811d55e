"""The one place that decides whether an op runs its Triton kernel or its PyTorch reference.

Two questions, each answered once:

- :func:`resolve_kernels`: which path does a user's ``kernels=`` choice name? "torch" and
  "triton" are taken as given ("triton" raises where Triton cannot run). "auto" is first
  replaced by the ``MIMIR_FAST_KERNELS`` environment variable when that is set, then picks
  Triton on CUDA (:func:`_auto_picks_triton`).
- :func:`triton_runs_on`: can Triton run on this tensor? A CUDA tensor, or any tensor under the
  CPU interpreter (``TRITON_INTERPRET=1``).

:func:`use_triton` combines them for one call of an op. Nothing here imports Triton's kernels,
only whether Triton is installed.
"""

from __future__ import annotations

import os

import torch

from .._validate import check_choice

__all__ = [
    "KERNEL_CHOICES",
    "KERNELS_ENV",
    "SDPA_PREFERRED",
    "resolve_kernels",
    "sdpa_preferred",
    "triton_available",
    "triton_runs_on",
    "use_triton",
]

KERNEL_CHOICES = ("auto", "torch", "triton")
# Replaces the default "auto" for the whole process; an explicit kernels= argument wins over it.
KERNELS_ENV = "MIMIR_FAST_KERNELS"

# (tokens, head_dim) shapes at which a GPU benchmark (benchmarks/test_vit_kernels.py, group
# "attention") measured ``scaled_dot_product_attention`` faster than the attention kernel, per
# device name; attention keeps SDPA there. Empty until the suite has run on that GPU (see
# benchmarks/results/); the README quotes the numbers.
SDPA_PREFERRED: dict[str, frozenset[tuple[int, int]]] = {}


def triton_available() -> bool:
    """True when Triton can run here: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1)."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        # Checked before importing Triton: its own @jit helpers (tl.sum, ...) are built at
        # import, for the interpreter only if TRITON_INTERPRET=1 is set by then.
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_runs_on(tensor: torch.Tensor) -> bool:
    """True when a Triton kernel can take ``tensor``: on CUDA, or anywhere under the interpreter."""
    return tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _auto_picks_triton(triton_ops: tuple[str, ...], device: str | None) -> bool:
    """What "auto" chooses for ``triton_ops`` on ``device``: the kernels wherever they run on CUDA.

    The CPU interpreter is only used when asked for. A table of where each kernel is verified
    faster (per GPU architecture and dtype) would narrow this rule here, and only here.
    """
    on_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    return on_cuda and triton_available()


def resolve_kernels(choice: str, triton_ops: tuple[str, ...], device: str | None = None) -> str:
    """Turn a user's ``kernels=`` choice into the path actually used: "torch" or "triton".

    Args:
        choice: "auto", "torch" or "triton". Only "auto" reads the ``MIMIR_FAST_KERNELS``
            environment variable (when set, its value replaces "auto"); an explicit "torch" or
            "triton" wins over it.
        triton_ops: the ops of the calling module that have Triton kernels.
        device: the device type the op runs on ("cuda", "cpu"); None: CUDA if available.

    Raises:
        ValueError: for an unknown choice, or "triton" where no kernel exists or Triton cannot run.
    """
    check_choice(choice, "kernels", KERNEL_CHOICES)
    if choice == "auto":
        choice = check_choice(os.environ.get(KERNELS_ENV, "auto"), KERNELS_ENV, KERNEL_CHOICES)
    if choice == "triton":
        if not triton_ops:
            raise ValueError(
                "kernels='triton' is not available: this module has no Triton kernels in this "
                "version of mimir-fast; use kernels='auto' or 'torch'"
            )
        if not triton_available():
            raise ValueError(
                "kernels='triton' is not available: Triton needs a CUDA GPU or TRITON_INTERPRET=1; "
                "use kernels='auto' or 'torch'"
            )
        return "triton"
    if choice == "torch" or not triton_ops:
        return "torch"
    return "triton" if _auto_picks_triton(triton_ops, device) else "torch"


def use_triton(kernels: str, op: str, tensor: torch.Tensor) -> bool:
    """Whether one call of ``op`` on ``tensor`` runs the Triton kernel.

    Args:
        kernels: the caller's choice ("auto", "torch", "triton"), or a path it resolved before
            (a module resolves once, then passes "torch" or "triton" on every call).
        op: the op's name, as its module ``kernels/<op>.py``.
        tensor: the op's main input; "auto" resolves for its device type, and Triton runs only
            where :func:`triton_runs_on` allows (elsewhere the reference runs).
    """
    path = resolve_kernels(kernels, (op,), tensor.device.type)
    return path == "triton" and triton_runs_on(tensor)


def sdpa_preferred(t: int, head_dim: int, device: torch.device) -> bool:
    """True where SDPA measured faster than the attention kernel on this device.

    Consulted whenever the attention kernel would run (see ``SDPA_PREFERRED``).
    """
    if device.type != "cuda" or not SDPA_PREFERRED:
        return False
    return (t, head_dim) in SDPA_PREFERRED.get(torch.cuda.get_device_name(device), frozenset())

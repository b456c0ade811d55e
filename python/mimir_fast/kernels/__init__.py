"""Fused Triton kernels, and the switch that picks between them and the PyTorch reference.

The plain-PyTorch definition of every op lives in :mod:`mimir_fast.ops`. A module asks
:func:`resolve_kernels` which path to take; ``MIMIR_FAST_KERNELS`` overrides the choice
("auto", "torch" or "triton") for the whole process.
"""

import os

KERNEL_CHOICES = ("auto", "torch", "triton")

# Ops that have a Triton implementation in this package. MaskedViT's ops are reference-only
# for now, so "auto" resolves to "torch" for them everywhere.
MASKED_VIT_TRITON_OPS: tuple[str, ...] = ()


def triton_available() -> bool:
    """True when Triton can run here: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_kernels(choice: str, triton_ops: tuple[str, ...]) -> str:
    """Turn a user's ``kernels=`` choice into the path actually used: "torch" or "triton".

    Args:
        choice: "auto", "torch" or "triton"; the ``MIMIR_FAST_KERNELS`` environment variable,
            when set, takes precedence.
        triton_ops: the ops of the calling module that have Triton kernels.

    Raises:
        ValueError: for an unknown choice, or "triton" where no kernel exists or Triton cannot run.
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    choice = os.environ.get("MIMIR_FAST_KERNELS", choice)
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"MIMIR_FAST_KERNELS must be one of {KERNEL_CHOICES}, got {choice!r}")
    if choice == "torch":
        return "torch"
    usable = bool(triton_ops) and triton_available()
    if choice == "triton" and not usable:
        reason = ("this module has no Triton kernels in this version of mimir-fast" if not triton_ops
                  else "Triton needs a CUDA GPU or TRITON_INTERPRET=1")
        raise ValueError(f"kernels='triton' is not available: {reason}; use kernels='auto' or 'torch'")
    return "triton" if usable else "torch"

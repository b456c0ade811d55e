"""Fused Triton kernels, and the switch that picks between them and the PyTorch reference.

The plain-PyTorch definition of every op lives in :mod:`mimir_fast.ops`. A module asks
:func:`resolve_kernels` which path to take; ``MIMIR_FAST_KERNELS`` overrides the choice
("auto", "torch" or "triton") for the whole process.
"""

import os

KERNEL_CHOICES = ("auto", "torch", "triton")

# MaskedViT's ops that have a Triton implementation in this package (kernels/<op>.py).
MASKED_VIT_TRITON_OPS: tuple[str, ...] = (
    "masked_patch_embed",
    "decoder_scatter",
    "attention",
    "norm_pix_loss",
)


def triton_available() -> bool:
    """True when Triton can run here: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_kernels(choice: str, triton_ops: tuple[str, ...], device: "str | None" = None) -> str:
    """Turn a user's ``kernels=`` choice into the path actually used: "torch" or "triton".

    Args:
        choice: "auto", "torch" or "triton"; the ``MIMIR_FAST_KERNELS`` environment variable,
            when set, takes precedence.
        triton_ops: the ops of the calling module that have Triton kernels.
        device: the device type the op runs on ("cuda", "cpu"); None: CUDA if available.
            "auto" picks Triton only on CUDA; the CPU interpreter is used only when asked for.

    Raises:
        ValueError: for an unknown choice, or "triton" where no kernel exists or Triton cannot run.
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    choice = os.environ.get("MIMIR_FAST_KERNELS", choice)
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"MIMIR_FAST_KERNELS must be one of {KERNEL_CHOICES}, got {choice!r}")
    if choice == "torch" or not triton_ops:
        if choice == "triton":
            raise ValueError(
                "kernels='triton' is not available: this module has no Triton kernels in this "
                "version of mimir-fast; use kernels='auto' or 'torch'"
            )
        return "torch"
    if choice == "triton":
        if not triton_available():
            raise ValueError(
                "kernels='triton' is not available: Triton needs a CUDA GPU or TRITON_INTERPRET=1; "
                "use kernels='auto' or 'torch'"
            )
        return "triton"
    import torch

    on_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    return "triton" if on_cuda and triton_available() else "torch"

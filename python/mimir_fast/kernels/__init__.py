"""Fused Triton kernels: one module per op, each registering its ``torch.library`` custom op.

``kernels/<op>.py`` holds the Triton kernels of one op, their host launchers, the autograd rule
and the ``mimir_fast::<op>`` custom op; ``ops/<op>.py`` (:mod:`mimir_fast.ops`) holds the same
op's plain-PyTorch reference and calls the kernel when :mod:`.dispatch` says so. Importing this
package needs no Triton: only the kernel modules import it.

Each fused op is a pair of custom ops, ``mimir_fast::<op>`` (forward) and
``mimir_fast::<op>_backward``, registered when its module is imported. Both are opaque to
``torch.compile`` (a fake implementation gives shapes and dtypes for tracing) and free of host
synchronisation (CUDA-graph safe). The forward op's autograd rule is the
``setup_context``/``backward`` pair of the module's ``torch.autograd.Function``, whose backward
calls the backward op, so AOTAutograd traces the backward graph too.
"""

from .dispatch import (
    KERNEL_CHOICES,
    KERNELS_ENV,
    resolve_kernels,
    triton_available,
    triton_runs_on,
    use_triton,
)

__all__ = [
    "KERNEL_CHOICES",
    "KERNELS_ENV",
    "resolve_kernels",
    "triton_available",
    "triton_runs_on",
    "use_triton",
]

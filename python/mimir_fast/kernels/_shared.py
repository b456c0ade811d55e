"""Constants and input checks that a kernel and its PyTorch reference share, and launch configs.

Both sides import them from here (the reference in :mod:`mimir_fast.ops`, the kernel beside
this module), so the two agree by construction. :class:`LaunchConfig` and :func:`device_arch`
serve the kernels' pure configuration functions (shapes, dtype, arch -> constexprs, num_warps,
num_stages), which both the launchers and the ahead-of-time compile test call.
Import-light: no Triton.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .._tensors import as_device_tensor
from .._validate import check_choice

__all__ = [
    "INTERPRETER_ARCH",
    "NORMS",
    "NORM_FLOOR",
    "NORM_PIX_EPS",
    "SHARED_MEMORY_BYTES",
    "LaunchConfig",
    "check_step_inputs",
    "device_arch",
    "next_power_of_2",
    "per_sample",
]

# The threat models of the projected-gradient step.
NORMS = ("linf", "l2")
# A zero gradient (or a zero delta) must not divide by zero in the L2 step.
NORM_FLOOR = 1e-12
# Added to each target patch's variance before the norm-pix normalisation (MAE's value).
NORM_PIX_EPS = 1e-6


def per_sample(value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """A step size or radius as an fp32 (N,) tensor: a Python number or a 0-d / (N,) tensor."""
    t = as_device_tensor(value, device)
    if t.ndim == 0:
        return t.expand(n)
    if t.shape != (n,):
        raise ValueError(
            f"alpha and eps must be numbers or (N,) tensors with N={n}, got shape {tuple(t.shape)}"
        )
    return t


def check_step_inputs(x_adv: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, norm: str) -> None:
    """Raise ValueError unless the three tensors form one batch of floats and ``norm`` is known."""
    check_choice(norm, "norm", NORMS)
    if x_adv.shape != grad.shape or x_adv.shape != x0.shape:
        raise ValueError(
            f"x_adv, grad and x0 must have the same shape, got {tuple(x_adv.shape)}, "
            f"{tuple(grad.shape)} and {tuple(x0.shape)}"
        )
    if x_adv.ndim < 1 or x_adv.shape[0] == 0:
        raise ValueError("x_adv must be a non-empty batch (N, ...)")
    if not x_adv.is_floating_point():
        raise ValueError(f"x_adv must be a floating-point tensor, got {x_adv.dtype}")


# Shared memory one thread block may use (opt-in maximum), by compute capability: A100 (sm_80),
# consumer Ampere / Ada (sm_86, sm_89), Hopper (sm_90). A config must fit its target's value.
SHARED_MEMORY_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
# The compute capability whose configurations the CPU interpreter runs (it ignores num_warps and
# num_stages, but block sizes change the arithmetic it checks).
INTERPRETER_ARCH = 80


@dataclass(frozen=True)
class LaunchConfig:
    """Everything a launcher passes besides tensors and sizes.

    Args:
        constexprs: the kernel's ``tl.constexpr`` block sizes and switches, by name.
        num_warps: warps per program (Triton's launch option).
        num_stages: software-pipelining depth of the kernel's loops (1: no prefetch).
    """

    constexprs: Mapping[str, int | bool] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 1

    def kwargs(self) -> dict[str, int | bool]:
        """The keyword arguments of ``kernel[grid](...)``."""
        return {**self.constexprs, "num_warps": self.num_warps, "num_stages": self.num_stages}


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def device_arch(tensor: torch.Tensor) -> int:
    """``tensor``'s CUDA compute capability as one number (80, 89, 90, ...).

    Off CUDA (the CPU interpreter) it is :data:`INTERPRETER_ARCH`.
    """
    if tensor.device.type != "cuda":
        return INTERPRETER_ARCH
    major, minor = torch.cuda.get_device_capability(tensor.device)
    return 10 * major + minor
